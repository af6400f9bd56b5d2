//! The cpu engine on its own: a `spin` occupies it for its nominal time.
//! (Its own test binary: the engine's threads would disturb the unit tests
//! that count the process's memory mappings.)

use std::sync::{mpsc, Arc};
use std::time::Duration;

use devmodel::backend::{Backend, WorkItem};
use devmodel::command::Op;
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
