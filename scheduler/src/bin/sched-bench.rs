//! Scheduler bench: achieved vs configured shares in the simulator, and the wall-clock
//! cost of one scheduling decision (`pick` + `complete`) for 1, 16, 64 and 256 vGPUs.
//!
//! `cargo run --release -p scheduler --bin sched-bench`  (add `-- --quick` for less)

use std::time::Instant;

use scheduler::sim::{CmdLen, Sim, SimVgpu};
use scheduler::{ParentPolicy, PolicyKind, VgpuParams, MS, SEC, US};

fn shares_table() {
    println!("## Achieved vs configured shares (saturating vGPUs, virtual clock)\n");
    println!("| policy | vGPUs (params) | command length | span | configured | achieved | GPU held idle |");
    println!("|---|---|---|---|---|---|---|");
    let lens = [
        ("10us", CmdLen::Fixed(10 * US)),
        ("1ms", CmdLen::Fixed(MS)),
        ("10ms", CmdLen::Fixed(10 * MS)),
        ("mix 10us-10ms", CmdLen::LogUniform(10 * US, 10 * MS)),
    ];
    type Case = (PolicyKind, &'static str, Vec<VgpuParams>, Vec<f64>);
    let w = |weight, cap, reservation| VgpuParams {
        weight,
        cap,
        reservation,
        ..VgpuParams::for_type(1)
    };
    let cases: Vec<Case> = vec![
        (
            PolicyKind::FixedShare,
            "1/2, 1/4",
            vec![VgpuParams::for_type(2), VgpuParams::for_type(4)],
            vec![0.5, 0.25],
        ),
        (
            PolicyKind::FixedShare,
            "1/2, 1/6, 1/6",
            vec![
                VgpuParams::for_type(2),
                VgpuParams::for_type(6),
                VgpuParams::for_type(6),
            ],
            vec![0.5, 1.0 / 6.0, 1.0 / 6.0],
        ),
        (
            PolicyKind::EqualShare,
            "x4",
            vec![VgpuParams::for_type(8); 4],
            vec![0.25; 4],
        ),
        (
            PolicyKind::Weighted,
            "w3, w1",
            vec![w(3, None, None), w(1, None, None)],
            vec![0.75, 0.25],
        ),
        (
            PolicyKind::Weighted,
            "w4 cap .2, w1",
            vec![w(4, Some(0.2), None), w(1, None, None)],
            vec![0.2, 0.8],
        ),
        (
            PolicyKind::Weighted,
            "resv .5, w1 x3",
            vec![
                w(1, None, Some(0.5)),
                w(1, None, None),
                w(1, None, None),
                w(1, None, None),
            ],
            vec![0.5, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0],
        ),
        (
            PolicyKind::BestEffort,
            "x2",
            vec![VgpuParams::for_type(2); 2],
            vec![],
        ),
    ];
    for (kind, label, ps, want) in &cases {
        for (lname, len) in lens {
            for span in [SEC, 10 * SEC] {
                let mut sim = Sim::new(ParentPolicy::new(*kind), 42);
                for (i, p) in ps.iter().enumerate() {
                    sim.add(SimVgpu::saturating(i as u64 + 1, *p, len));
                }
                let a = sim.snapshot();
                sim.run_until(span);
                let b = sim.snapshot();
                let s = b.shares_since(&a);
                let got: Vec<String> = s.values().map(|x| format!("{x:.4}")).collect();
                let cfg: Vec<String> = if want.is_empty() {
                    vec!["-".into()]
                } else {
                    want.iter().map(|x| format!("{x:.4}")).collect()
                };
                println!(
                    "| {} | {label} | {lname} | {} s | {} | {} | {:.4} |",
                    kind.name(),
                    span / SEC,
                    cfg.join(" "),
                    got.join(" "),
                    b.held_idle_since(&a)
                );
            }
        }
    }
    println!();
}

fn decision_cost(quick: bool) {
    // Cost of Instant::now() pairs, which the measurement includes.
    let t = Instant::now();
    let mut x = 0u128;
    for _ in 0..1_000_000 {
        let a = Instant::now();
        x += a.elapsed().as_nanos();
    }
    let _ = t.elapsed();
    // mean reading of an empty timed interval; a decision holds two timed intervals
    let timer = x as f64 / 1e6;
    println!("## Scheduler decision cost\n");
    println!("ns per decision = wall time in `pick` + `complete` / decisions (best of 3 runs), saturating vGPUs;");
    println!(
        "includes the timer's own cost (~{:.0} ns: two timed intervals per decision).\n",
        timer * 2.0
    );
    let span = if quick { SEC / 5 } else { SEC };
    for (title, cmd, ts) in [
        (
            "10 us commands, default timeslice (most decisions continue a slice)",
            10 * US,
            None,
        ),
        (
            "1 ms commands, 1 ms timeslice (every decision starts a new slice)",
            MS,
            Some(MS),
        ),
    ] {
        println!("{title}:\n");
        println!("| policy | 1 vGPU | 16 vGPUs | 64 vGPUs | 256 vGPUs |");
        println!("|---|---|---|---|---|");
        let span = if cmd >= MS { span * 20 } else { span };
        for kind in [
            PolicyKind::BestEffort,
            PolicyKind::EqualShare,
            PolicyKind::FixedShare,
            PolicyKind::Weighted,
        ] {
            let mut row = format!("| {} |", kind.name());
            for n in [1u64, 16, 64, 256] {
                let mut best = f64::MAX;
                for rep in 0..3 {
                    let mut pol = ParentPolicy::new(kind);
                    pol.timeslice = ts;
                    let mut sim = Sim::new(pol, rep);
                    for k in 1..=n {
                        let mut p = VgpuParams::for_type(n as u32);
                        p.weight = 1 + (k % 4) as u32;
                        if kind == PolicyKind::Weighted && k % 8 == 0 {
                            p.cap = Some(2.0 / n as f64);
                        }
                        sim.add(SimVgpu::saturating(k, p, CmdLen::Fixed(cmd)));
                    }
                    sim.run_until(1); // attach everything outside the measurement
                    sim.timed = true;
                    sim.decision_ns = 0;
                    sim.decisions = 0;
                    sim.run_until(span);
                    best = best.min(sim.decision_ns as f64 / sim.decisions.max(1) as f64);
                }
                row += &format!(" {best:.0} ns |");
            }
            println!("{row}");
        }
        println!();
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !std::env::args().any(|a| a == "--cost-only") {
        shares_table();
    }
    decision_cost(quick);
}
