//! best_effort is round robin in GPU time: two vGPUs that always have work get
//! equal engine time over any 100 slices, whatever their item sizes, their
//! batching, or slices cut short because a driver was late with its next item.
//!
//! A small engine on a virtual clock drives the real scheduler here as vgpud's
//! parents do: up to four picked items queued at the engine, run in order,
//! each completed with its own length.

use std::collections::VecDeque;

use scheduler::{Nanos, ParentPolicy, Pick, PolicyKind, Scheduler, VgpuParams, MS, US};

/// How one synthetic vGPU's driver keeps its queue filled.
struct Driver {
    /// Length of its `k`-th item.
    len: fn(u64) -> Nanos,
    /// Items it keeps submitted and not completed.
    outstanding: usize,
    /// After its queue at the scheduler drains, the driver needs this long to
    /// submit more (a late vCPU); 0: it refills the moment an item completes.
    late: Nanos,
    submitted: u64,
    completed: u64,
    /// When the driver's next refill lands.
    refill_at: Option<Nanos>,
}

/// Runs two vGPUs under best_effort for `slices` slices; returns the engine time
/// each got in every run of 100 consecutive slices.
fn run(mut drivers: [Driver; 2], slices: usize) -> Vec<[Nanos; 2]> {
    let mut s: Scheduler<(usize, Nanos)> =
        Scheduler::new(ParentPolicy::new(PolicyKind::BestEffort).with_timeslice(2 * MS));
    s.set_engine_depth(4);
    for id in 0..2u64 {
        s.add_vgpu(id, VgpuParams::for_type(2), 0).unwrap();
        s.set_runlist(id, &[(0, 2 * MS)]).unwrap();
    }
    let mut now: Nanos = 0;
    let mut engine: VecDeque<(usize, Nanos)> = VecDeque::new();
    let mut windows = Vec::new();
    let mut acc = [0; 2];
    let mut last_slices = 0;
    loop {
        // Drivers submit what they may now.
        for (i, d) in drivers.iter_mut().enumerate() {
            let due = d.refill_at.is_none_or(|t| t <= now);
            if due {
                d.refill_at = None;
                while (d.submitted - d.completed) < d.outstanding as u64 {
                    let len = (d.len)(d.submitted);
                    s.enqueue(i as u64, 0, (i, len), now).unwrap();
                    d.submitted += 1;
                }
            }
        }
        // The dispatcher fills the engine's queue.
        while let Pick::Run { item, .. } = s.pick(now) {
            engine.push_back(item);
        }
        let Some((i, len)) = engine.pop_front() else {
            panic!("the engine ran dry at {now} ns with work outstanding");
        };
        now += len;
        s.complete(i as u64, 0, len, now).unwrap();
        acc[i] += len;
        let d = &mut drivers[i];
        d.completed += 1;
        let queued = s.stats(now).vgpus[i].queue_depth;
        if d.late > 0 && queued == 0 && d.refill_at.is_none() {
            d.refill_at = Some(now + d.late);
        }
        let total: u64 = s.stats(now).vgpus.iter().map(|v| v.slices).sum();
        if total >= last_slices + 100 {
            windows.push(acc);
            acc = [0; 2];
            last_slices = total;
            if windows.len() * 100 >= slices {
                return windows;
            }
        }
    }
}

fn saturating(len: fn(u64) -> Nanos) -> Driver {
    Driver {
        len,
        outstanding: 8,
        late: 0,
        submitted: 0,
        completed: 0,
        refill_at: None,
    }
}

fn assert_fair(what: &str, windows: &[[Nanos; 2]]) {
    let mut worst: f64 = 1.0;
    for w in windows {
        let ratio = w[0] as f64 / w[1] as f64;
        if (ratio - 1.0).abs() > (worst - 1.0).abs() {
            worst = ratio;
        }
    }
    eprintln!(
        "{what}: worst ratio over 100 slices {worst:.4} ({} windows)",
        windows.len()
    );
    assert!(
        (worst - 1.0).abs() <= 0.05,
        "{what}: engine time {worst:.4} : 1 over some 100 slices"
    );
}

#[test]
fn equal_engine_time_whatever_the_item_sizes() {
    // 10 µs items against 1.5 ms ones: a slice of the latter overshoots the 2 ms
    // timeslice by 1 ms, which round robin by slices would give away (3 : 2).
    let w = run([saturating(|_| 10 * US), saturating(|_| 1_500 * US)], 2_000);
    assert_fair("10 us vs 1.5 ms", &w);
}

#[test]
fn equal_engine_time_whatever_the_batching() {
    // Batches of 1..=90 small commands (an item of 11..=990 µs) against 700 µs items.
    let w = run(
        [
            saturating(|k| (1 + (k * 37) % 90) * 11 * US),
            saturating(|_| 700 * US),
        ],
        2_000,
    );
    assert_fair("batches vs 700 us", &w);
}

#[test]
fn a_slice_cut_short_by_a_late_driver_is_made_up() {
    // vGPU 0's driver keeps 3 items of 500 µs submitted but is 300 µs late
    // whenever its queue at the scheduler drains: its slices end early, with
    // time left. It is still backlogged (items at the engine, more coming).
    let late = Driver {
        outstanding: 3,
        late: 300 * US,
        ..saturating(|_| 500 * US)
    };
    let w = run([late, saturating(|_| 500 * US)], 2_000);
    assert_fair("late driver vs saturating", &w);
}
