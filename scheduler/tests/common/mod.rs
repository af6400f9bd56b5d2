#![allow(dead_code)]
use scheduler::sim::{CmdLen, Sim, SimVgpu, Snapshot, Workload};
use scheduler::{ParentPolicy, PolicyKind, VgpuParams, MS, SEC, US};
use std::collections::BTreeMap;

/// Command lengths the issue asks for: 10 µs .. 10 ms, plus a log-uniform mix.
pub const LENGTHS: &[CmdLen] = &[
    CmdLen::Fixed(10 * US),
    CmdLen::Fixed(100 * US),
    CmdLen::Fixed(MS),
    CmdLen::Fixed(3 * MS),
    CmdLen::Fixed(10 * MS),
    CmdLen::LogUniform(10 * US, 10 * MS),
];

/// Simulated span for a command length: 1 s, or 10 s when a command can exceed 2 ms
/// (one second holds only 100 commands of 10 ms; see docs/scheduling.md).
pub fn span_for(c: CmdLen) -> u64 {
    let max = match c {
        CmdLen::Fixed(n) => n,
        CmdLen::Uniform(_, h) | CmdLen::LogUniform(_, h) => h,
    };
    if max > 2 * MS {
        10 * SEC
    } else {
        SEC
    }
}

pub fn params(max_instances: u32) -> VgpuParams {
    VgpuParams::for_type(max_instances)
}

pub fn weighted(weight: u32) -> VgpuParams {
    VgpuParams {
        weight,
        ..VgpuParams::for_type(1)
    }
}

pub fn policy(kind: PolicyKind) -> ParentPolicy {
    ParentPolicy::new(kind)
}

/// Runs saturating vGPUs (key i+1 gets params[i]) for `span` and returns
/// shares measured over the whole span and the held-idle fraction.
pub fn run_saturating(
    p: ParentPolicy,
    ps: &[VgpuParams],
    cmd: CmdLen,
    span: u64,
) -> (BTreeMap<u64, f64>, f64) {
    let mut sim = Sim::new(p, 7);
    for (i, &vp) in ps.iter().enumerate() {
        sim.add(SimVgpu::saturating(i as u64 + 1, vp, cmd));
    }
    let a = sim.snapshot();
    sim.run_until(span);
    let b = sim.snapshot();
    (b.shares_since(&a), b.held_idle_since(&a))
}

pub fn snapshot_shares(a: &Snapshot, b: &Snapshot) -> BTreeMap<u64, f64> {
    b.shares_since(a)
}

pub fn idle(key: u64, p: VgpuParams) -> SimVgpu {
    SimVgpu::saturating(key, p, CmdLen::Fixed(MS)).with_workload(Workload::Idle)
}
