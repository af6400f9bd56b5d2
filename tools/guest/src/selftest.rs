//! The self test: every class, built-in program, semaphore form, fault
//! path and interrupt of the device, each checked against a CPU reference.
//!
//! ```no_run
//! # fn demo(dev: &mut vgpu_guest::Device) {
//! let report = vgpu_guest::selftest::run(dev);
//! for c in &report.checks {
//!     println!("{c}");
//! }
//! assert!(report.passed());
//! # }
//! ```

use std::time::{Duration, Instant};

use crate::channel::{Channel, ChannelConfig, WaitMode};
pub use crate::check::Check;
use crate::device::{Buffer, Device, Placement, RunlistEntry};
use crate::error::{Error, ErrorCode};
use crate::programs::Program;
use crate::pushbuf::Pushbuf;
use crate::regs::{self, ChannelState};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long no MSI-X must come before earlier ones count as delivered.
const IRQ_QUIET: Duration = Duration::from_millis(100);

/// All checks of one run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Why a check failed.
struct Fail(String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(e.to_string())
    }
}

type Outcome = std::result::Result<String, Fail>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        // NaN comparisons are false, so they fail the check.
        let ok: bool = $cond;
        if !ok {
            return Err(Fail(format!($($arg)*)));
        }
    };
}

/// Run every check on `dev`. Uses channels 0 and (if present) 1, and
/// leaves the device with its engine reset.
pub fn run(dev: &mut Device) -> Report {
    run_with(dev, &mut |_| {})
}

/// Like [`run`], calling `on_check` as each check finishes.
pub fn run_with<'d>(dev: &'d mut Device, on_check: &mut dyn FnMut(&Check)) -> Report {
    let mut report = Report::default();
    let mut push = |report: &mut Report, name: &str, start: Instant, r: Outcome| {
        let c = Check::finished(name, start, r.map_err(|Fail(d)| d));
        on_check(&c);
        report.checks.push(c);
    };
    let start = Instant::now();
    let r = identity(dev);
    push(&mut report, "identity", start, r);

    // Channels: the rest needs them.
    let start = Instant::now();
    let cfg = ChannelConfig::default();
    let mut ch0 = match Channel::new(dev, 0, cfg) {
        Ok(c) => c,
        Err(e) => {
            push(&mut report, "channel setup", start, Err(e.into()));
            return report;
        }
    };
    let mut ch1 = if dev.identity().channels >= 2 {
        match Channel::new(dev, 1, cfg) {
            Ok(c) => Some(c),
            Err(e) => {
                push(&mut report, "channel setup", start, Err(e.into()));
                return report;
            }
        }
    } else {
        None
    };
    push(
        &mut report,
        "channel setup",
        start,
        Ok(format!("{} channel(s)", 1 + ch1.is_some() as u32)),
    );

    let mut t: Tests<'d> = Tests {
        dev,
        ch: ch0,
        seed: 0x5EED_1234,
    };
    type Test<'d> = fn(&mut Tests<'d>) -> Outcome;
    type Named<'d> = (String, Box<dyn Fn(&mut Tests<'d>) -> Outcome + 'd>);
    let mut tests: Vec<Named<'d>> = Vec::new();
    tests.push(("timer".into(), Box::new(Tests::timer)));
    for (s, d) in MIXES {
        tests.push((
            format!("copy 1D {}->{}", name(s), name(d)),
            Box::new(move |t: &mut Tests<'d>| t.copy_1d(s, d)),
        ));
    }
    for (s, d) in MIXES {
        tests.push((
            format!("copy 2D {}->{}", name(s), name(d)),
            Box::new(move |t: &mut Tests<'d>| t.copy_2d(s, d)),
        ));
    }
    for p in [Placement::Sysmem, Placement::Vram] {
        tests.push((
            format!("memset 1D+2D {}", name(p)),
            Box::new(move |t: &mut Tests<'d>| t.memset(p)),
        ));
    }
    let simple: [(&str, Test<'d>); 8] = [
        ("fill", Tests::fill),
        ("saxpy", Tests::saxpy),
        ("gemm_f32 vs f64 reference", Tests::gemm),
        ("reduce_sum", Tests::reduce_sum),
        ("spin + timestamp semaphores", Tests::spin),
        ("semaphore release 32/64-bit", Tests::sem_release),
        ("semaphore acquire (CPU release)", Tests::sem_acquire_cpu),
        ("interrupt delivery", Tests::interrupts),
    ];
    for (n, f) in simple {
        tests.push((n.into(), Box::new(f)));
    }
    for (n, f) in tests {
        let start = Instant::now();
        let r = f(&mut t);
        let failed = r.is_err();
        push(&mut report, &n, start, r);
        if failed {
            // Leave a clean channel for the next check.
            let _ = t.ch.recover(t.dev);
        }
    }
    if let Some(c1) = ch1.as_mut() {
        let start = Instant::now();
        let r = t.cross_channel(c1);
        push(&mut report, "semaphore acquire (other channel)", start, r);
        let start = Instant::now();
        let r = t.runlist(c1);
        push(&mut report, "runlist with timeslices", start, r);
        let _ = c1.recover(t.dev);
    }
    let faults: [(&str, Test<'d>); 6] = [
        ("fault: unmapped VA + recovery", Tests::fault_unmapped),
        ("fault: guard page (PTE_INVALID)", Tests::fault_guard),
        ("fault: read-only mapping", Tests::fault_read_only),
        ("error: malformed header", Tests::fault_malformed),
        ("error: misaligned semaphore", Tests::fault_misaligned_sem),
        ("PTX load", Tests::ptx),
    ];
    for (n, f) in faults {
        let start = Instant::now();
        let r = f(&mut t);
        push(&mut report, n, start, r);
        let _ = t.ch.recover(t.dev);
    }
    let start = Instant::now();
    let r = t.engine_reset(ch1.as_mut());
    push(&mut report, "engine reset", start, r);
    ch0 = t.ch;
    let dev = t.dev;
    let _ = ch0.destroy(dev);
    if let Some(c1) = ch1 {
        let _ = c1.destroy(dev);
    }
    let _ = dev.engine_reset();
    report
}

const MIXES: [(Placement, Placement); 4] = [
    (Placement::Sysmem, Placement::Sysmem),
    (Placement::Sysmem, Placement::Vram),
    (Placement::Vram, Placement::Vram),
    (Placement::Vram, Placement::Sysmem),
];

fn name(p: Placement) -> &'static str {
    match p {
        Placement::Sysmem => "sys",
        Placement::Vram => "vram",
    }
}

fn identity(dev: &mut Device) -> Outcome {
    let id = dev.identity().clone();
    ensure!(id.id == regs::ID_MAGIC, "ID {:#x}", id.id);
    ensure!(id.version >> 16 == 1, "VERSION {:#x}", id.version);
    ensure!(
        id.class_code == regs::PCI_CLASS_3D,
        "class {:#x}",
        id.class_code
    );
    ensure!(id.large_pages(), "CAPS.LARGE_PAGES is 0");
    ensure!(
        id.msix_vectors() == 1,
        "CAPS reports {} MSI-X vectors",
        id.msix_vectors()
    );
    ensure!(dev.read32(regs::ID)? == regs::ID_MAGIC, "ID changed");
    Ok(format!(
        "{:04x}:{:04x} rev {} ABI {}.{} caps {:#x} {} channels {} MiB VRAM via {}",
        id.vendor_id,
        id.device_id,
        id.revision,
        id.version >> 16,
        id.version & 0xFFFF,
        id.caps,
        id.channels,
        id.vram_bytes >> 20,
        dev.transport_name()
    ))
}

struct Tests<'a> {
    dev: &'a mut Device,
    ch: Channel,
    seed: u64,
}

impl Tests<'_> {
    fn rand_u32(&mut self) -> u32 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.seed >> 32) as u32
    }
    fn rand_f32(&mut self) -> f32 {
        (self.rand_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rand_u32() as u8).collect()
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rand_f32()).collect()
    }

    /// Run `pb` on the main channel and wait for it.
    fn exec(&mut self, pb: &Pushbuf) -> Result<(), Error> {
        let f = self.ch.submit(self.dev, pb)?;
        self.ch.wait(self.dev, f, WaitMode::Poll, TIMEOUT)
    }

    fn launch(&mut self, p: &Program) -> Result<(), Error> {
        let f = self.ch.launch(self.dev, p)?;
        self.ch.wait(self.dev, f, WaitMode::Interrupt, TIMEOUT)
    }

    fn put(&mut self, b: &Buffer, data: &[u8]) -> Result<(), Error> {
        self.ch.upload(self.dev, b, 0, data)
    }
    fn get(&mut self, b: &Buffer) -> Result<Vec<u8>, Error> {
        self.ch.download(self.dev, b, 0, b.len())
    }
    fn put_f32(&mut self, b: &Buffer, v: &[f32]) -> Result<(), Error> {
        self.put(
            b,
            &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        )
    }
    fn get_f32(&mut self, b: &Buffer) -> Result<Vec<f32>, Error> {
        Ok(self
            .get(b)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn free(&mut self, bufs: Vec<Buffer>) -> Result<(), Error> {
        bufs.into_iter().try_for_each(|b| self.dev.free(b))
    }

    fn timer(&mut self) -> Outcome {
        let t0 = self.dev.timer_ns()?;
        std::thread::sleep(Duration::from_millis(2));
        let t1 = self.dev.timer_ns()?;
        ensure!(
            t1 > t0 && t1 - t0 >= 2_000_000,
            "TIMER moved {} ns over 2 ms",
            t1.wrapping_sub(t0)
        );
        Ok(format!(
            "advanced {} us over a 2 ms sleep",
            (t1 - t0) / 1000
        ))
    }

    fn copy_1d(&mut self, s: Placement, d: Placement) -> Outcome {
        // Odd length across pages, odd offsets.
        let len = 3 * 4096 + 123;
        let src = self.dev.alloc(s, len as u64 + 8)?;
        let dst = self.dev.alloc(d, len as u64 + 8)?;
        let data = self.bytes(len + 8);
        self.put(&src, &data)?;
        self.put(&dst, &vec![0xEE; len + 8])?;
        let mut pb = Pushbuf::new();
        pb.copy_1d(src.va() + 3, dst.va() + 1, len as u32);
        self.exec(&pb)?;
        let got = self.get(&dst)?;
        self.free(vec![src, dst])?;
        ensure!(
            got[0] == 0xEE && got[len + 1] == 0xEE,
            "bytes outside the copy changed"
        );
        ensure!(got[1..len + 1] == data[3..len + 3], "copied bytes differ");
        Ok(format!("{len} bytes"))
    }

    fn copy_2d(&mut self, s: Placement, d: Placement) -> Outcome {
        let (line, lines, sp, dp) = (100u32, 37u32, 160u32, 128u32);
        let src = self.dev.alloc(s, (sp * lines) as u64)?;
        let dst = self.dev.alloc(d, (dp * lines) as u64)?;
        let data = self.bytes((sp * lines) as usize);
        self.put(&src, &data)?;
        self.put(&dst, &vec![0xEE; (dp * lines) as usize])?;
        let mut pb = Pushbuf::new();
        pb.copy_2d(src.va(), sp, dst.va(), dp, line, lines);
        self.exec(&pb)?;
        let got = self.get(&dst)?;
        self.free(vec![src, dst])?;
        for l in 0..lines as usize {
            let (g, w) = (
                &got[l * dp as usize..][..dp as usize],
                &data[l * sp as usize..][..line as usize],
            );
            ensure!(&g[..line as usize] == w, "line {l} differs");
            ensure!(
                g[line as usize..].iter().all(|&b| b == 0xEE),
                "pitch gap of line {l} changed"
            );
        }
        Ok(format!("{lines} lines of {line} B, pitches {sp}/{dp}"))
    }

    fn memset(&mut self, p: Placement) -> Outcome {
        let n = 8192usize;
        let b = self.dev.alloc(p, n as u64)?;
        self.put(&b, &vec![0x11; n])?;
        let mut pb = Pushbuf::new();
        pb.memset_1d(b.va() + 4, 0xA1B2_C3D4, 4000).memset_2d(
            b.va() + 4096,
            256,
            0x0102_0304,
            64,
            10,
        );
        self.exec(&pb)?;
        let got = self.get(&b)?;
        self.free(vec![b])?;
        let mut want = vec![0x11u8; n];
        for i in 0..1000 {
            want[4 + 4 * i..8 + 4 * i].copy_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
        }
        for l in 0..10 {
            for w in 0..16 {
                let o = 4096 + l * 256 + 4 * w;
                want[o..o + 4].copy_from_slice(&0x0102_0304u32.to_le_bytes());
            }
        }
        ensure!(
            got == want,
            "memset result differs at byte {:?}",
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
        Ok("1D 4000 B + 2D 10x64 B".into())
    }

    fn fill(&mut self) -> Outcome {
        let n = 5000u32;
        let b = self.dev.alloc(Placement::Vram, n as u64 * 4 + 4)?;
        self.put(&b, &[0x55; 20004])?;
        self.launch(&Program::Fill {
            dst: b.va(),
            count: n,
            value: 0xCAFE_F00D,
        })?;
        let got = self.get(&b)?;
        self.free(vec![b])?;
        let words: Vec<u32> = got
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        ensure!(
            words[..n as usize].iter().all(|&w| w == 0xCAFE_F00D),
            "fill value wrong"
        );
        ensure!(words[n as usize] == 0x5555_5555, "fill wrote past count");
        Ok(format!("{n} words in VRAM"))
    }

    fn saxpy(&mut self) -> Outcome {
        let n = 10_000usize;
        let (x, y) = (self.f32s(n), self.f32s(n));
        let a = 2.5f32;
        let xb = self.dev.alloc(Placement::Sysmem, n as u64 * 4)?;
        let yb = self.dev.alloc(Placement::Vram, n as u64 * 4)?;
        self.put_f32(&xb, &x)?;
        self.put_f32(&yb, &y)?;
        self.launch(&Program::Saxpy {
            x: xb.va(),
            y: yb.va(),
            n: n as u32,
            a,
        })?;
        let got = self.get_f32(&yb)?;
        self.free(vec![xb, yb])?;
        for i in 0..n {
            let want = a.mul_add(x[i], y[i]);
            ensure!(got[i] == want, "y[{i}] = {}, want {want}", got[i]);
        }
        Ok(format!("n = {n}, x in sysmem, y in VRAM, bit-exact FMA"))
    }

    fn gemm(&mut self) -> Outcome {
        let (m, n, k) = (37usize, 29usize, 41usize);
        let (a, b, c) = (self.f32s(m * k), self.f32s(k * n), self.f32s(m * n));
        let (alpha, beta) = (1.5f32, -0.5f32);
        let ab = self.dev.alloc(Placement::Vram, (m * k * 4) as u64)?;
        let bb = self.dev.alloc(Placement::Sysmem, (k * n * 4) as u64)?;
        let cb = self.dev.alloc(Placement::Vram, (m * n * 4) as u64)?;
        self.put_f32(&ab, &a)?;
        self.put_f32(&bb, &b)?;
        self.put_f32(&cb, &c)?;
        self.launch(&Program::Gemm {
            a: ab.va(),
            b: bb.va(),
            c: cb.va(),
            m: m as u32,
            n: n as u32,
            k: k as u32,
            alpha,
            beta,
        })?;
        let got = self.get_f32(&cb)?;
        self.free(vec![ab, bb, cb])?;
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let (mut dot, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let t = a[i * k + p] as f64 * b[p * n + j] as f64;
                    dot += t;
                    mag += t.abs();
                }
                let want = alpha as f64 * dot + beta as f64 * c[i * n + j] as f64;
                let tol = 4.0
                    * f32::EPSILON as f64
                    * (k as f64 + 2.0)
                    * (alpha.abs() as f64 * mag + (beta * c[i * n + j]).abs() as f64 + 1e-30);
                let err = (got[i * n + j] as f64 - want).abs();
                ensure!(
                    err <= tol,
                    "C[{i}][{j}] = {}, want {want} (tolerance {tol:e})",
                    got[i * n + j]
                );
                worst = worst.max(err);
            }
        }
        Ok(format!("{m}x{n}x{k}, max |error| {worst:.2e}"))
    }

    fn reduce_sum(&mut self) -> Outcome {
        let n = 100_000usize;
        let x = self.f32s(n);
        let xb = self.dev.alloc(Placement::Vram, n as u64 * 4)?;
        let out = self.dev.alloc(Placement::Sysmem, 4)?;
        self.put_f32(&xb, &x)?;
        self.launch(&Program::ReduceSum {
            src: xb.va(),
            dst: out.va(),
            n: n as u32,
        })?;
        let got = out.host()?.read_f32s(0, 1)?[0] as f64;
        self.free(vec![xb, out])?;
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let tol = n as f64 * f32::EPSILON as f64 * x.iter().map(|v| v.abs() as f64).sum::<f64>();
        ensure!(
            (got - want).abs() <= tol,
            "sum {got}, want {want} (tolerance {tol:e})"
        );
        Ok(format!(
            "n = {n}, |error| {:.2e} <= {tol:.2e}",
            (got - want).abs()
        ))
    }

    fn spin(&mut self) -> Outcome {
        let sem = self.dev.alloc(Placement::Sysmem, 64)?;
        let (units, unit_ns) = (5u32, 200_000u32);
        let mut seg = self.ch.segment(self.dev, TIMEOUT)?;
        seg.pb.sem_release_timestamp(sem.va(), 0x1111);
        seg.launch(&Program::Spin {
            dst: sem.va() + 32,
            units,
            unit_ns,
        })?;
        seg.pb.sem_release_timestamp(sem.va() + 16, 0x2222);
        let f = seg.submit(self.dev)?;
        self.ch.wait(self.dev, f, WaitMode::Interrupt, TIMEOUT)?;
        let h = sem.host()?;
        let (p0, t0, p1, t1, done) = (
            h.read_u64(0)?,
            h.read_u64(8)?,
            h.read_u64(16)?,
            h.read_u64(24)?,
            h.read_u32(32)?,
        );
        let now = self.dev.timer_ns()?;
        self.free(vec![sem])?;
        ensure!(
            p0 == 0x1111 && p1 == 0x2222,
            "timestamp payloads {p0:#x} {p1:#x}"
        );
        ensure!(done == units, "spin wrote {done}, want {units}");
        let want = units as u64 * unit_ns as u64;
        ensure!(
            t1 >= t0 + want,
            "timestamps {t0} .. {t1}: spin took {} ns < {want} ns",
            t1.saturating_sub(t0)
        );
        ensure!(t1 <= now, "timestamp {t1} is in the future (TIMER {now})");
        Ok(format!(
            "{units} x {unit_ns} ns took {} us between timestamps",
            (t1 - t0) / 1000
        ))
    }

    fn sem_release(&mut self) -> Outcome {
        let sem = self.dev.alloc(Placement::Sysmem, 64)?;
        sem.host()?.fill(0, 64, 0xFF)?;
        let mut pb = Pushbuf::new();
        pb.sem_release(sem.va(), 0x1234_5678, false).sem_release64(
            sem.va() + 8,
            0x0123_4567_89AB_CDEF,
            false,
        );
        self.exec(&pb)?;
        let h = sem.host()?;
        let (a, pad, b) = (h.read_u32(0)?, h.read_u32(4)?, h.read_u64(8)?);
        self.free(vec![sem])?;
        ensure!(a == 0x1234_5678, "32-bit release wrote {a:#x}");
        ensure!(pad == 0xFFFF_FFFF, "32-bit release wrote more than 4 bytes");
        ensure!(b == 0x0123_4567_89AB_CDEF, "64-bit release wrote {b:#x}");
        Ok("32-bit and 64-bit payloads".into())
    }

    fn sem_acquire_cpu(&mut self) -> Outcome {
        let sem = self.dev.alloc(Placement::Sysmem, 64)?;
        let h = sem.host()?;
        h.write_u64(0, 0xFFFF_FFFF_FFFF_FFF0)?;
        // 64-bit GEQ across a wrap, then 32-bit EQ.
        let mut pb = Pushbuf::new();
        pb.sem_acquire(sem.va(), 0xFFFF_FFFF_FFFF_FFF8, false, true)
            .sem_acquire(sem.va() + 8, 7, true, false);
        let f = self.ch.submit(self.dev, &pb)?;
        std::thread::sleep(Duration::from_millis(20));
        let st = self.ch.status(self.dev)?;
        ensure!(
            st.state == ChannelState::Blocked,
            "channel {:?} while its acquire is unsatisfied",
            st.state
        );
        ensure!(!self.ch.reached(f)?, "fence passed an unsatisfied acquire");
        h.write_u64(0, 2)?; // wrapped past the payload: GEQ holds
        std::thread::sleep(Duration::from_millis(20));
        ensure!(
            !self.ch.reached(f)?,
            "fence passed the unsatisfied EQ acquire"
        );
        h.write_u32(8, 7)?;
        self.ch.wait(self.dev, f, WaitMode::Poll, TIMEOUT)?;
        self.free(vec![sem])?;
        Ok("BLOCKED until the CPU wrote the semaphores (64-bit GEQ wrap, 32-bit EQ)".into())
    }

    /// Consume the MSI-X messages of earlier checks and acknowledge their
    /// causes. A message the device sent before can still be on its way:
    /// a VMM delivers MSI-X on its own path, not ordered with the replies
    /// to register reads (under TCG, milliseconds later), so the drain
    /// ends only once none has come for [`IRQ_QUIET`].
    fn drain_interrupts(&mut self) -> Result<(), Error> {
        while self.dev.wait_interrupt(IRQ_QUIET)? {}
        self.dev.take_interrupts()?;
        Ok(())
    }

    fn interrupts(&mut self) -> Outcome {
        let id = self.ch.id();
        // Masked: the cause is recorded but not signalled.
        self.dev.set_interrupt_enable(0)?;
        self.drain_interrupts()?;
        let mut pb = Pushbuf::new();
        pb.non_stall_interrupt();
        self.exec(&pb)?;
        let i = self.dev.interrupts()?;
        let early = self.dev.wait_interrupt(Duration::from_millis(20))?;
        // Enabling a pending cause signals once.
        self.dev.set_interrupt_enable(regs::INTR_ALL)?;
        let late = self.dev.wait_interrupt(Duration::from_secs(2))?;
        let cleared = self.dev.take_interrupts()?;
        let after = self.dev.interrupts()?;
        ensure!(
            i.causes & regs::INTR_HOST != 0,
            "INTR_STATUS {:#x} lacks HOST",
            i.causes
        );
        ensure!(
            i.channels & (1 << id) != 0,
            "INTR_CHANNEL {:#x} lacks channel {id}",
            i.channels
        );
        ensure!(!early, "MSI-X fired while HOST was masked");
        ensure!(late, "no MSI-X after enabling the pending cause");
        ensure!(cleared.causes & regs::INTR_HOST != 0, "HOST vanished");
        ensure!(
            after.causes == 0 && after.channels == 0,
            "W1C left {after:?}"
        );
        // Unmasked: a release with INTERRUPT signals directly.
        let sem = self.dev.alloc(Placement::Sysmem, 16)?;
        let mut pb = Pushbuf::new();
        pb.sem_release(sem.va(), 1, true);
        let t = Instant::now();
        let f = self.ch.submit(self.dev, &pb)?;
        let fired = self.dev.wait_interrupt(Duration::from_secs(2))?;
        let lat = t.elapsed();
        self.ch.wait(self.dev, f, WaitMode::Interrupt, TIMEOUT)?;
        self.drain_interrupts()?;
        self.free(vec![sem])?;
        ensure!(fired, "no MSI-X for a release with INTERRUPT");
        Ok(format!(
            "masking, pending-enable and release interrupts; MSI after {} us",
            lat.as_micros()
        ))
    }

    fn cross_channel(&mut self, other: &mut Channel) -> Outcome {
        let sem = self.dev.alloc(Placement::Sysmem, 16)?;
        let mut pb = Pushbuf::new();
        pb.sem_acquire(sem.va(), 3, false, false);
        let f1 = other.submit(self.dev, &pb)?;
        std::thread::sleep(Duration::from_millis(10));
        let blocked = other.status(self.dev)?.state;
        let mut pb = Pushbuf::new();
        pb.sem_release(sem.va(), 3, false);
        self.exec(&pb)?;
        other.wait(self.dev, f1, WaitMode::Poll, TIMEOUT)?;
        self.free(vec![sem])?;
        ensure!(
            blocked == ChannelState::Blocked,
            "channel {} was {blocked:?}, not BLOCKED",
            other.id()
        );
        Ok(format!(
            "channel {} released channel {}",
            self.ch.id(),
            other.id()
        ))
    }

    fn runlist(&mut self, other: &mut Channel) -> Outcome {
        let (a, b) = (self.ch.id(), other.id());
        let dup = self.dev.submit_runlist(&[
            RunlistEntry {
                channel: a,
                timeslice_us: 100,
            },
            RunlistEntry {
                channel: a,
                timeslice_us: 100,
            },
        ]);
        ensure!(
            matches!(dup, Err(Error::RunlistRejected(ErrorCode::RunlistInvalid))),
            "duplicate runlist: {dup:?}"
        );
        self.dev.submit_runlist(&[RunlistEntry {
            channel: a,
            timeslice_us: 2000,
        }])?;
        // Off the runlist, the other channel keeps its work queued.
        let buf = self.dev.alloc(Placement::Sysmem, 64)?;
        let f = other.launch(
            self.dev,
            &Program::Fill {
                dst: buf.va(),
                count: 16,
                value: 9,
            },
        )?;
        std::thread::sleep(Duration::from_millis(20));
        let early = other.reached(f)?;
        self.dev.submit_runlist(&[
            RunlistEntry {
                channel: b,
                timeslice_us: 500,
            },
            RunlistEntry {
                channel: a,
                timeslice_us: 1000,
            },
        ])?;
        other.wait(self.dev, f, WaitMode::Poll, TIMEOUT)?;
        let v = buf.host()?.read_u32(60)?;
        self.free(vec![buf])?;
        ensure!(!early, "a channel off the runlist ran");
        ensure!(v == 9, "fill wrote {v}");
        // The main channel, on both runlists, still runs.
        let buf = self.dev.alloc(Placement::Sysmem, 64)?;
        self.launch(&Program::Fill {
            dst: buf.va(),
            count: 16,
            value: 4,
        })?;
        let v = buf.host()?.read_u32(0)?;
        self.free(vec![buf])?;
        ensure!(v == 4, "channel {a} on the runlist did not run");
        Ok(format!(
            "rejected duplicate; [{b}:500us, {a}:1000us] accepted; off-list channel waited"
        ))
    }

    /// Run `pb` expecting the channel to fault with `code`.
    fn expect_fault(&mut self, pb: &Pushbuf, code: ErrorCode) -> Result<u32, Fail> {
        self.drain_interrupts()?;
        let r = self.exec(pb);
        match r {
            Err(Error::ChannelFault { code: c, info, .. }) if c == code => Ok(info),
            other => Err(Fail(format!("expected {code}, got {other:?}"))),
        }
    }

    fn check_fault_state(&mut self, code: ErrorCode, va: Option<u64>) -> Outcome {
        let id = self.ch.id();
        let st = self.ch.status(self.dev)?;
        ensure!(
            st.state == ChannelState::Faulted && st.error == Some(code),
            "CH_STATUS {st:?}"
        );
        let n = self.ch.notifier()?;
        ensure!(n.map(|n| n.code) == Some(code), "error notifier {n:?}");
        let i = self.dev.interrupts()?;
        let cause = if code.is_mmu_fault() {
            regs::INTR_MMU_FAULT
        } else {
            regs::INTR_CHANNEL_ERROR
        };
        ensure!(
            i.causes & cause != 0 && i.channels & (1 << id) != 0,
            "interrupts {i:?} lack cause {cause:#x} for channel {id}"
        );
        let mut detail = format!("{code}, notifier at {} ns", n.map_or(0, |n| n.timestamp_ns));
        if let Some(va) = va {
            let f = self.dev.mmu_fault()?;
            ensure!(
                matches!(f, Some(f) if f.code == code && f.channel == id && f.va == va),
                "MMU_FAULT record {f:?}, want {code} at {va:#x}"
            );
            detail += &format!(", MMU_FAULT at {va:#x}");
        }
        // Recovery: reset, rebuild, and the channel works again.
        self.ch.recover(self.dev)?;
        ensure!(
            self.dev.mmu_fault()?.is_none(),
            "MMU fault record not cleared"
        );
        self.dev.take_interrupts()?;
        let b = self.dev.alloc(Placement::Sysmem, 64)?;
        self.launch(&Program::Fill {
            dst: b.va(),
            count: 16,
            value: 0xABCD,
        })?;
        let v = b.host()?.read_u32(60)?;
        self.free(vec![b])?;
        ensure!(v == 0xABCD, "channel does not work after recovery");
        Ok(detail + "; recovered")
    }

    fn fault_unmapped(&mut self) -> Outcome {
        let src = self.dev.alloc(Placement::Sysmem, 4096)?;
        let bad = 0x10_0000; // below every VA the driver hands out
        let mut pb = Pushbuf::new();
        pb.copy_1d(src.va(), bad, 256);
        let r = self.expect_fault(&pb, ErrorCode::PdeInvalid);
        self.free(vec![src])?;
        r?;
        let f = self.dev.mmu_fault()?;
        ensure!(
            matches!(f, Some(f) if f.write),
            "fault record should be a write: {f:?}"
        );
        self.check_fault_state(ErrorCode::PdeInvalid, Some(bad))
    }

    fn fault_guard(&mut self) -> Outcome {
        let b = self.dev.alloc(Placement::Vram, 4096)?;
        let r = (|| {
            let mut seg = self.ch.segment(self.dev, TIMEOUT)?;
            seg.launch(&Program::Fill {
                dst: b.va(),
                count: 1025,
                value: 1,
            })?;
            let f = seg.submit(self.dev)?;
            Ok::<_, Error>(self.ch.wait(self.dev, f, WaitMode::Poll, TIMEOUT))
        })();
        self.free(vec![b])?;
        match r? {
            Err(Error::ChannelFault {
                code: ErrorCode::PteInvalid,
                ..
            }) => {}
            other => return Err(Fail(format!("expected PTE_INVALID, got {other:?}"))),
        }
        self.check_fault_state(ErrorCode::PteInvalid, None)
    }

    fn fault_read_only(&mut self) -> Outcome {
        let b = self.dev.alloc_read_only(Placement::Sysmem, 4096)?;
        b.host()?.write_u32(0, 77)?;
        let dst = self.dev.alloc(Placement::Sysmem, 4096)?;
        // Reading through a read-only mapping works…
        let mut pb = Pushbuf::new();
        pb.copy_1d(b.va(), dst.va(), 4);
        self.exec(&pb)?;
        let copied = dst.host()?.read_u32(0)?;
        // …writing faults.
        let mut pb = Pushbuf::new();
        pb.memset_1d(b.va(), 0, 64);
        let r = self.expect_fault(&pb, ErrorCode::ReadOnly);
        let untouched = b.host()?.read_u32(0)?;
        let va = b.va();
        self.free(vec![b, dst])?;
        r?;
        ensure!(copied == 77, "read through a read-only PTE gave {copied}");
        ensure!(untouched == 77, "a faulted memset changed memory");
        self.check_fault_state(ErrorCode::ReadOnly, Some(va))
    }

    fn fault_malformed(&mut self) -> Outcome {
        let mut pb = Pushbuf::new();
        pb.nop().raw(&[0x4000_0000]); // opcode 2
        let info = self.expect_fault(&pb, ErrorCode::MalformedHeader)?;
        let d = self.check_fault_state(ErrorCode::MalformedHeader, None)?;
        Ok(format!("{d}; CH_ERROR_INFO word {info}"))
    }

    fn fault_misaligned_sem(&mut self) -> Outcome {
        let sem = self.dev.alloc(Placement::Sysmem, 64)?;
        let mut pb = Pushbuf::new();
        pb.sem_release64(sem.va() + 4, 1, false);
        let r = self.expect_fault(&pb, ErrorCode::InvalidArgument);
        let untouched = sem.host()?.read_u64(0)?;
        self.free(vec![sem])?;
        r?;
        ensure!(untouched == 0, "the refused release wrote memory");
        self.check_fault_state(ErrorCode::InvalidArgument, None)
    }

    fn ptx(&mut self) -> Outcome {
        let ptx = ".version 7.0\n.target sm_70\n.address_size 64\n.visible .entry nop() { ret; }\n";
        if self.dev.identity().ptx() {
            let log = self.ch.load_ptx(self.dev, 0, ptx)?;
            let f = self
                .ch
                .launch_ptx(self.dev, 0, "nop", [1, 1, 1], [1, 1, 1], &[])?;
            self.ch.wait(self.dev, f, WaitMode::Poll, TIMEOUT)?;
            // A module the JIT rejects: MODULE_INVALID with its log, and the
            // channel recovered.
            let bad = self.ch.load_ptx(self.dev, 1, crate::ptx::BROKEN_PTX);
            ensure!(
                matches!(&bad, Err(Error::ModuleInvalid { log, .. }) if !log.is_empty()),
                "broken PTX gave {bad:?}"
            );
            let f = self
                .ch
                .launch_ptx(self.dev, 0, "nop", [1, 1, 1], [1, 1, 1], &[])?;
            self.ch.wait(self.dev, f, WaitMode::Poll, TIMEOUT)?;
            return Ok(format!(
                "CAPS.PTX = 1: loaded (info log {} B) and launched; broken module MODULE_INVALID; slot 0 ran again",
                log.len()
            ));
        }
        let api = self.ch.load_ptx(self.dev, 0, ptx);
        ensure!(
            matches!(api, Err(Error::Unsupported(_))),
            "load_ptx on a non-PTX device gave {api:?}"
        );
        // The device itself answers UNSUPPORTED.
        let text = self.dev.alloc(Placement::Sysmem, ptx.len() as u64)?;
        text.host()?.write(0, ptx.as_bytes())?;
        let mut pb = Pushbuf::new();
        pb.module_load(0, text.va(), ptx.len() as u32);
        let r = self.expect_fault(&pb, ErrorCode::Unsupported);
        self.free(vec![text])?;
        r?;
        let d = self.check_fault_state(ErrorCode::Unsupported, None)?;
        Ok(format!("CAPS.PTX = 0: API refuses, device faults {d}"))
    }

    fn engine_reset(&mut self, other: Option<&mut Channel>) -> Outcome {
        // Queue a long spin, then reset under it.
        let f = self.ch.launch(
            self.dev,
            &Program::Spin {
                dst: 0,
                units: 1000,
                unit_ns: 1_000_000,
            },
        )?;
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        self.dev.write32(regs::RESET, 1)?;
        let took = t.elapsed();
        let st = self.ch.status(self.dev)?;
        let enable = self.dev.read32(regs::INTR_ENABLE)?;
        let id = self.dev.read32(regs::ID)?;
        let reached = self.ch.reached(f)?;
        self.dev.set_interrupt_enable(regs::INTR_ALL)?;
        ensure!(
            st.state == ChannelState::Disabled,
            "channel {:?} after reset",
            st.state
        );
        ensure!(enable == 0, "INTR_ENABLE {enable:#x} after reset");
        ensure!(id == regs::ID_MAGIC, "ID {id:#x} after reset");
        ensure!(!reached, "the cancelled spin's fence was released");
        ensure!(
            took < Duration::from_secs(5),
            "reset took {took:?}: the spin was not cut short"
        );
        self.ch.recover(self.dev)?;
        if let Some(o) = other {
            o.recover(self.dev)?;
        }
        let b = self.dev.alloc(Placement::Vram, 64)?;
        self.launch(&Program::Fill {
            dst: b.va(),
            count: 16,
            value: 5,
        })?;
        let v = self.get(&b)?;
        self.free(vec![b])?;
        ensure!(
            v[60..64] == 5u32.to_le_bytes(),
            "channel does not work after reset"
        );
        Ok(format!(
            "a 1 s spin was cut short after {} us; channels rebuilt",
            took.as_micros()
        ))
    }
}
