//! Weighted shares, caps, reservations, latency class, channel level, live reload.
mod common;
use common::*;
use scheduler::sim::{CmdLen, Sim, SimVgpu, Workload};
use scheduler::{LatencyClass, ParentPolicy, Pick, PolicyKind, Scheduler, VgpuParams, MS, SEC, US};

const TOL: f64 = 0.01;

#[test]
fn weighted_is_proportional() {
    for &cmd in LENGTHS {
        let span = span_for(cmd);
        let (s, held) = run_saturating(
            policy(PolicyKind::Weighted),
            &[weighted(3), weighted(1)],
            cmd,
            span,
        );
        eprintln!("weighted 3:1 {cmd:?}: {:.4} {:.4}", s[&1], s[&2]);
        assert_eq!(held, 0.0);
        assert!(
            (s[&1] - 0.75).abs() <= TOL && (s[&2] - 0.25).abs() <= TOL,
            "{cmd:?}: {s:?}"
        );
    }
}

#[test]
fn caps_hold() {
    for &cmd in LENGTHS {
        let span = span_for(cmd);
        let capped = VgpuParams {
            cap: Some(0.2),
            ..weighted(4)
        };
        let (s, _) = run_saturating(
            policy(PolicyKind::Weighted),
            &[capped, weighted(1)],
            cmd,
            span,
        );
        eprintln!("cap 0.2 {cmd:?}: {:.4} {:.4}", s[&1], s[&2]);
        assert!(s[&1] <= 0.2 + TOL && s[&1] >= 0.2 - TOL, "{cmd:?}: {s:?}");
        assert!(
            (s[&2] - 0.8).abs() <= TOL,
            "work-conserving for the others: {s:?}"
        );
        // alone, a capped vGPU still stops at its cap (the GPU idles)
        let (s, held) = run_saturating(policy(PolicyKind::Weighted), &[capped], cmd, span);
        assert!(
            (s[&1] - 0.2).abs() <= TOL && held > 0.75,
            "{cmd:?}: {s:?} held {held}"
        );
    }
}

#[test]
fn reservations_hold() {
    for &cmd in LENGTHS {
        let span = span_for(cmd);
        let reserved = VgpuParams {
            reservation: Some(0.5),
            ..weighted(1)
        };
        let ps = [reserved, weighted(1), weighted(1), weighted(1)];
        let (s, _) = run_saturating(policy(PolicyKind::Weighted), &ps, cmd, span);
        eprintln!(
            "reservation 0.5 {cmd:?}: {:.4} {:.4} {:.4} {:.4}",
            s[&1], s[&2], s[&3], s[&4]
        );
        assert!(s[&1] >= 0.5 - TOL, "{cmd:?}: {s:?}");
        assert!(
            s[&1] <= 0.5 + 0.03,
            "reservation is a floor, not a boost beyond it: {s:?}"
        );
        for k in 2..=4 {
            assert!((s[&k] - 0.5 / 3.0).abs() <= TOL, "{cmd:?}: {s:?}");
        }
    }
}

#[test]
fn latency_class_starts_within_one_command() {
    for kind in [
        PolicyKind::BestEffort,
        PolicyKind::Weighted,
        PolicyKind::EqualShare,
        PolicyKind::FixedShare,
    ] {
        for other in [100 * US, MS, 5 * MS] {
            let mut sim = Sim::new(policy(kind), 9);
            for k in 1..=4 {
                sim.add(SimVgpu::saturating(k, params(8), CmdLen::Fixed(other)));
            }
            let lat = VgpuParams {
                class: LatencyClass::Latency,
                cap: Some(0.1),
                ..params(8)
            };
            sim.add(
                SimVgpu::saturating(9, lat, CmdLen::Fixed(50 * US)).with_workload(
                    Workload::Periodic {
                        period: 16_666 * US,
                        phase: 333 * US,
                    },
                ),
            );
            sim.run_until(SEC);
            let r = sim.result(9);
            eprintln!(
                "{kind:?} others {other} ns: latency max wait {} ns over {} cmds",
                r.max_wait, r.completed
            );
            assert!(r.completed >= 59, "{kind:?}: {r:?}");
            assert!(
                r.max_wait <= other,
                "{kind:?}: waited {} > one command {other}",
                r.max_wait
            );
        }
    }
}

#[test]
fn channels_round_robin_with_guest_timeslices() {
    let mut sim = Sim::new(policy(PolicyKind::FixedShare), 2);
    sim.add(
        SimVgpu::saturating(1, params(2), CmdLen::Fixed(100 * US))
            .with_runlist(vec![(10, MS), (11, 3 * MS)]),
    );
    sim.add(SimVgpu::saturating(2, params(2), CmdLen::Fixed(100 * US)));
    sim.run_until(SEC);
    let st = sim.sched.stats(sim.now());
    let v = st.vgpu(1).unwrap();
    let (a, b) = (v.channels[0].total as f64, v.channels[1].total as f64);
    eprintln!("channels 1ms:3ms -> {a} {b}");
    assert!((b / a - 3.0).abs() < 0.05, "{}", b / a);
    assert_eq!(sim.result(1).fifo_violations, 0);
    assert!((v.total as f64 / sim.now() as f64 - 0.5).abs() <= TOL);
}

#[test]
fn blocked_or_faulted_channel_never_blocks_the_rest() {
    let mut s: Scheduler<u32> = Scheduler::new(ParentPolicy::new(PolicyKind::BestEffort));
    s.add_vgpu(1, params(4), 0).unwrap();
    s.add_vgpu(2, params(4), 0).unwrap();
    s.set_runlist(1, &[(0, MS), (1, MS)]).unwrap();
    s.set_runlist(2, &[(0, MS)]).unwrap();
    for i in 0..3 {
        s.enqueue(1, 0, i, 0).unwrap();
        s.enqueue(1, 1, 100 + i, 0).unwrap();
        s.enqueue(2, 0, 200 + i, 0).unwrap();
    }
    s.set_channel_blocked(1, 0, true, 0).unwrap(); // semaphore acquire
    let mut now = 0;
    let mut ran = vec![];
    loop {
        match s.pick(now) {
            Pick::Run {
                vgpu,
                channel,
                item,
            } => {
                now += 10 * US;
                s.complete(vgpu, channel, 10 * US, now).unwrap();
                ran.push(item);
            }
            Pick::Empty => break,
            p => panic!("{p:?}"),
        }
    }
    assert_eq!(ran.len(), 6, "channel 1 of vGPU 1 and vGPU 2 ran: {ran:?}");
    assert!(!ran.contains(&0));
    // a fault on the blocked channel drops its items, in order
    assert_eq!(s.drop_channel(1, 0), vec![0, 1, 2]);
    s.set_channel_blocked(1, 0, false, now).unwrap();
    assert_eq!(s.pick(now), Pick::Empty);
    let st = s.stats(now);
    assert_eq!(st.vgpu(1).unwrap().commands, 3);
    assert_eq!(st.vgpu(2).unwrap().commands, 3);
}

#[test]
fn channels_off_the_runlist_do_not_run() {
    let mut s: Scheduler<u32> = Scheduler::new(ParentPolicy::new(PolicyKind::Weighted));
    s.add_vgpu(1, params(4), 0).unwrap();
    s.enqueue(1, 5, 1, 0).unwrap();
    assert_eq!(s.pick(0), Pick::Empty);
    s.set_runlist(1, &[(5, MS)]).unwrap();
    assert_eq!(
        s.pick(0),
        Pick::Run {
            vgpu: 1,
            channel: 5,
            item: 1
        }
    );
    assert_eq!(s.pick(0), Pick::Busy);
    assert!(s.complete(1, 4, 1, 1).is_err());
    s.complete(1, 5, 1, 1).unwrap();
    assert_eq!(s.remove_vgpu(1, 2), Vec::<u32>::new());
    assert!(s.enqueue(1, 5, 7, 3).is_err_and(|r| r.item == 7));
}

#[test]
fn live_reload_takes_effect_at_slice_boundary_without_loss_or_reorder() {
    let mut sim = Sim::new(policy(PolicyKind::BestEffort), 4);
    sim.add(
        SimVgpu::saturating(1, params(2), CmdLen::LogUniform(10 * US, 3 * MS))
            .with_runlist(vec![(0, MS), (1, MS)]),
    );
    sim.add(SimVgpu::saturating(
        2,
        params(4),
        CmdLen::LogUniform(10 * US, 3 * MS),
    ));
    sim.add(
        SimVgpu::saturating(3, params(4), CmdLen::Fixed(200 * US)).with_workload(
            Workload::Bursty {
                on: 5 * MS,
                off: 5 * MS,
                depth: 3,
            },
        ),
    );
    sim.reload_at(SEC, ParentPolicy::new(PolicyKind::FixedShare));
    sim.reload_at(
        3 * SEC,
        ParentPolicy::new(PolicyKind::Weighted).with_timeslice(5 * MS),
    );
    sim.run_until(SEC + 10 * MS);
    assert_eq!(sim.sched.policy().kind, PolicyKind::FixedShare);
    let a = sim.snapshot();
    sim.run_until(3 * SEC);
    let s = sim.snapshot().shares_since(&a);
    eprintln!("after reload to fixed share: {s:?}");
    assert!((s[&1] - 0.5).abs() <= TOL && (s[&2] - 0.25).abs() <= TOL && s[&3] <= 0.25 + TOL);
    sim.run_until(4 * SEC);
    assert_eq!(sim.sched.policy().kind, PolicyKind::Weighted);
    assert_eq!(sim.sched.timeslice(), 5 * MS);
    let st = sim.sched.stats(sim.now());
    for k in 1..=3 {
        let r = sim.result(k);
        assert_eq!(r.fifo_violations, 0);
        let queued = st.vgpu(k).unwrap().queue_depth as u64;
        let in_flight = u64::from(sim.sched.in_flight().is_some_and(|f| f.0 == k));
        assert_eq!(
            r.submitted,
            r.completed + queued + in_flight + r.dropped,
            "vGPU {k}: {r:?}"
        );
        assert_eq!(r.dropped, 0);
    }
}

#[test]
fn reload_waits_for_the_slice_boundary() {
    let mut s: Scheduler<u32> =
        Scheduler::new(ParentPolicy::new(PolicyKind::BestEffort).with_timeslice(2 * MS));
    s.add_vgpu(1, params(2), 0).unwrap();
    s.add_vgpu(2, params(2), 0).unwrap();
    s.set_runlist(1, &[(0, MS)]).unwrap();
    s.set_runlist(2, &[(0, MS)]).unwrap();
    for i in 0..10 {
        s.enqueue(1, 0, i, 0).unwrap();
        s.enqueue(2, 0, 100 + i, 0).unwrap();
    }
    let mut now = 0;
    let step = |s: &mut Scheduler<u32>, now: &mut u64| match s.pick(*now) {
        Pick::Run {
            vgpu,
            channel,
            item,
        } => {
            *now += 500 * US;
            s.complete(vgpu, channel, 500 * US, *now).unwrap();
            (vgpu, item)
        }
        p => panic!("{p:?}"),
    };
    assert_eq!(step(&mut s, &mut now), (1, 0));
    s.set_policy(
        ParentPolicy::new(PolicyKind::FixedShare).with_timeslice(MS),
        now,
    )
    .unwrap();
    assert_eq!(
        s.policy().kind,
        PolicyKind::BestEffort,
        "pending until the slice ends"
    );
    // vGPU 1's 2 ms slice runs to its end
    for i in 1..4 {
        assert_eq!(step(&mut s, &mut now), (1, i));
    }
    assert_eq!(step(&mut s, &mut now), (2, 100));
    assert_eq!(s.policy().kind, PolicyKind::FixedShare);
    assert_eq!(s.timeslice(), MS);
}

#[test]
fn simulator_is_deterministic() {
    let run = || {
        let mut sim = Sim::new(policy(PolicyKind::Weighted), 11);
        for k in 1..=8 {
            sim.add(SimVgpu::saturating(
                k,
                weighted(k as u32),
                CmdLen::LogUniform(10 * US, 10 * MS),
            ));
        }
        sim.run_until(SEC);
        (sim.snapshot(), sim.sched.stats(sim.now()))
    };
    assert_eq!(run(), run());
}

#[test]
fn accounting_per_vgpu_and_channel() {
    let mut s: Scheduler<()> = Scheduler::new(ParentPolicy::new(PolicyKind::EqualShare));
    s.add_vgpu(1, params(2), 0).unwrap();
    s.set_runlist(1, &[(3, MS)]).unwrap();
    s.enqueue(1, 3, (), 0).unwrap();
    s.enqueue(1, 3, (), 0).unwrap();
    let Pick::Run { .. } = s.pick(100) else {
        panic!()
    };
    s.complete(1, 3, 400, 500).unwrap();
    let st = s.stats(500);
    let v = st.vgpu(1).unwrap();
    assert_eq!(
        (v.total, v.commands, v.queue_depth, v.wait),
        (400, 1, 1, 100)
    );
    assert_eq!(v.configured_share, Some(1.0));
    let c = &v.channels[0];
    assert_eq!(
        (c.channel, c.total, c.commands, c.queue_depth, c.wait),
        (3, 400, 1, 1, 100)
    );
    assert!((v.share_window - 400.0 / 500.0).abs() < 1e-9);
    assert_eq!(st.busy, 400);
    assert_eq!(st.timeslice, 2 * MS);
}

#[test]
fn equal_share_divides_among_running_vgpus_only() {
    use scheduler::{ParentPolicy, PolicyKind, Scheduler, VgpuParams};
    let mut s: Scheduler<u32> = Scheduler::new(ParentPolicy::new(PolicyKind::EqualShare));
    for k in 1..=3 {
        s.add_vgpu(k, VgpuParams::for_type(4), 0).unwrap();
    }
    assert_eq!(s.configured_share(1), Some(1.0 / 3.0));
    // Two exist with no VM attached: the running one gets the whole GPU.
    s.set_running(2, false, 0).unwrap();
    s.set_running(3, false, 0).unwrap();
    assert_eq!(s.configured_share(1), Some(1.0));
    s.set_running(3, true, 0).unwrap();
    assert_eq!(s.configured_share(1), Some(0.5));
    assert_eq!(s.configured_share(3), Some(0.5));
    assert!(s.set_running(9, true, 0).is_err(), "unknown vGPU");
}
