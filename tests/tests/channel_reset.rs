//! A channel reset (or recovery, or a fault) ends that channel's work on
//! the engine within a documented bound, whatever the command: its items
//! waiting at the parent are dropped, those at the engine (the engine's
//! queue depth, each at most a piece) run out.

use std::time::{Duration, Instant};

use devmodel::harness::{vgpu_config, Guest, Params, Pb, CH_CTRL};
use devmodel::{CpuEngine, Vgpu};
use mmio::methods::compute;
use scheduler::{ParentPolicy, PolicyKind, VgpuParams};
use vgpud::parent::Parent;

#[test]
fn a_channel_reset_ends_its_work_on_the_engine_within_10_ms() {
    let parent = Parent::new(
        "reset",
        Box::new(CpuEngine::new(1).unwrap()),
        ParentPolicy::new(PolicyKind::BestEffort),
    )
    .unwrap();
    let (_, ctx) = parent.attach(16 << 20, 2, VgpuParams::for_type(2)).unwrap();
    let mut g = Guest::attach(
        Vgpu::with_context(vgpu_config("a", 16 << 20, 2), ctx).unwrap(),
        8,
    );
    let mut ch = g.channel(0, 8);
    // A 10 s spin: 1 ms pieces, as many handed over as the channel may.
    let (_, sv) = g.sys_buf(64);
    let (p, s) = g.params(Params::default().u64(sv).u32(10_000).u32(1_000_000));
    g.submit(
        &mut ch,
        &Pb::new().bind().launch(compute::PROG_SPIN, p, s).0,
    );
    std::thread::sleep(Duration::from_millis(100));
    let busy = || parent.stats().busy;
    assert!(busy() > 50_000_000, "the spin runs");

    let t = Instant::now();
    g.set_chreg(0, CH_CTRL, 2); // CH_CTRL.RESET
                                // The engine goes quiet within the bound: sample the engine time it
                                // has done until two samples 5 ms apart agree.
    let mut last = busy();
    let quiet = loop {
        std::thread::sleep(Duration::from_millis(5));
        let now = busy();
        if now == last {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the reset channel's work runs on"
        );
        last = now;
    };
    assert!(
        quiet <= Duration::from_millis(15),
        "the engine went quiet {quiet:?} after the reset (bound 10 ms, sampled every 5 ms)"
    );
    // And stays quiet: nothing of the reset channel was left queued.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        busy(),
        last,
        "work of the reset channel ran after it went quiet"
    );
}
