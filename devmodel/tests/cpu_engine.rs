//! The cpu engine on its own: a `spin` occupies it for its nominal time.
//! (Its own test binary: the engine's threads would disturb the unit tests
//! that count the process's memory mappings.)

use std::sync::{mpsc, Arc};
use std::time::Duration;

use devmodel::backend::{Backend, WorkItem};
use devmodel::command::{Op, PIECE_FMAS};
use devmodel::gmmu::{Aperture, Extent};
use devmodel::memory::GuestRam;
use devmodel::CpuEngine;

/// Each item's measured engine time, for `n` spins of `ns` each.
fn spins(n: usize, ns: u32) -> Vec<Duration> {
    let engine = CpuEngine::new(1).unwrap();
    let ctx = engine.create_context(0).unwrap();
    let mem = Arc::new(GuestRam::new());
    let (tx, rx) = mpsc::channel();
    for _ in 0..n {
        let tx = tx.clone();
        ctx.submit(
            WorkItem {
                op: Op::Spin {
                    ns: ns as u64,
                    dst: None,
                    report: 1,
                },
                channel: 0,
                mem: mem.clone(),
                front_end: Duration::ZERO,
            },
            Box::new(move |c| {
                assert!(c.result.is_ok());
                let _ = tx.send(c.gpu_time);
            }),
        );
    }
    let mut v: Vec<Duration> = (0..n).map(|_| rx.recv().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn spin_takes_its_nominal_time_within_one_percent() {
    // The median item: a preempted worker may overshoot now and then
    // on a busy host, but a spin ends on time, not a sleep step late.
    for (n, ns) in [(200usize, 20_000u32), (40, 1_000_000), (6, 5_000_000)] {
        let v = spins(n, ns);
        let median = v[n / 2].as_nanos() as f64;
        let error = (median - ns as f64) / ns as f64;
        assert!(
            (0.0..0.01).contains(&error),
            "{ns} ns spin took {median} ns (median of {n})"
        );
    }
}

/// Run `op` on `ctx` and wait for it; panics if it fails.
fn run(ctx: &Arc<dyn devmodel::backend::EngineContext>, op: Op) {
    let (tx, rx) = mpsc::channel();
    ctx.submit(
        WorkItem {
            op,
            channel: 0,
            mem: Arc::new(GuestRam::new()),
            front_end: Duration::ZERO,
        },
        Box::new(move |c| {
            let _ = tx.send(c.result.map_err(|e| e.to_string()));
        }),
    );
    rx.recv().unwrap().expect("the item runs");
}

/// `len` bytes of VRAM from `at`, as extents of uneven lengths (a buffer
/// scattered over pages, as the GMMU hands it over).
fn scattered(at: u64, len: u64) -> Vec<Extent> {
    let mut v = Vec::new();
    let mut off = 0;
    for step in [4096u64, 12, 777, 65536].iter().cycle() {
        if off == len {
            break;
        }
        let n = (*step).min(len - off);
        v.push(Extent {
            aperture: Aperture::Vram,
            addr: at + off,
            len: n,
        });
        off += n;
    }
    v
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn gemm_and_reduce_in_pieces_give_the_bits_of_the_whole() {
    let engine = CpuEngine::new(1).unwrap();
    let ctx = engine.create_context(16 << 20).unwrap();
    let mut seed = 7u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    // Pieces crossing rows (87 elements of 50-wide rows) and pieces inside
    // rows (72 of 700).
    for (m, n, k) in [(40u32, 50u32, 3000u32), (5, 700, 3600)] {
        let (la, lb, lc) = (m * k * 4, k * n * 4, m * n * 4);
        let (at_a, at_b, at_c) = (0u64, 1 << 20, 12 << 20);
        let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
        let c: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
        ctx.write_vram(at_a, &f32s(&a)).unwrap();
        ctx.write_vram(at_b, &f32s(&b)).unwrap();
        let gemm = Op::Gemm {
            a: scattered(at_a, la as u64).into(),
            b: scattered(at_b, lb as u64).into(),
            c: scattered(at_c, lc as u64).into(),
            m,
            n,
            k,
            alpha: 1.25,
            beta: -0.75,
            span: 0..(m * n) as u64,
        };
        let mut whole = vec![0u8; lc as usize];
        ctx.write_vram(at_c, &f32s(&c)).unwrap();
        run(&ctx, gemm.clone());
        ctx.read_vram(at_c, &mut whole).unwrap();

        ctx.write_vram(at_c, &f32s(&c)).unwrap();
        let mut rest = gemm;
        let mut pieces = 0;
        while let Some(p) = rest.take_piece() {
            let Op::Gemm { span, .. } = &p else {
                panic!("a gemm splits into gemms")
            };
            assert!((span.end - span.start) * k as u64 <= PIECE_FMAS);
            run(&ctx, p);
            pieces += 1;
        }
        run(&ctx, rest);
        let mut by_pieces = vec![0u8; lc as usize];
        ctx.read_vram(at_c, &mut by_pieces).unwrap();
        assert!(pieces >= 10, "{m}x{n}x{k}: {pieces} pieces");
        assert!(whole == by_pieces, "{m}x{n}x{k}: C differs");
        // And C is the product (row 2, column 3, against f64).
        let (i, j) = (2usize, 3usize);
        let dot: f64 = (0..k as usize)
            .map(|p| a[i * k as usize + p] as f64 * b[p * n as usize + j] as f64)
            .sum();
        let want = 1.25 * dot - 0.75 * c[i * n as usize + j] as f64;
        let at = (i * n as usize + j) * 4;
        let got = f32::from_le_bytes(by_pieces[at..at + 4].try_into().unwrap());
        assert!((got as f64 - want).abs() < 1e-3, "C[2][3] {got} vs {want}");
    }

    // reduce_sum of 3 Mi elements: 3 pieces, the f64 sum carried along.
    let n = 3u32 << 20;
    let x: Vec<f32> = (0..n).map(|_| rnd() * 1000.0).collect();
    ctx.write_vram(0, &f32s(&x)).unwrap();
    let reduce = || Op::ReduceSum {
        src: scattered(0, n as u64 * 4),
        dst: scattered(15 << 20, 4),
        n,
        sum: Default::default(),
    };
    run(&ctx, reduce());
    let mut whole = [0u8; 4];
    ctx.read_vram(15 << 20, &mut whole).unwrap();
    ctx.write_vram(15 << 20, &[0; 4]).unwrap();
    let mut rest = reduce();
    let mut pieces = 0;
    while let Some(p) = rest.take_piece() {
        run(&ctx, p);
        pieces += 1;
    }
    run(&ctx, rest);
    let mut by_pieces = [0u8; 4];
    ctx.read_vram(15 << 20, &mut by_pieces).unwrap();
    assert_eq!(pieces, 2, "4 + 4 + 4 MiB");
    assert_eq!(whole, by_pieces);
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert_eq!(f32::from_le_bytes(by_pieces), want as f32);
}
