//! The demo workload: what `vgpud` shows on a fresh machine.
//!
//! One cpu-engine parent, two vGPUs of the default types `vgpud-4c` and
//! `vgpud-2c`, each driven by an in-process guest (guest RAM in a memfd,
//! only the device face is used). Each guest checks saxpy, gemm_f32,
//! reduce_sum, copies through VRAM and semaphores against CPU references;
//! then both saturate the parent with spin work while the scheduler's
//! policy shares it, and the measured shares are printed.

use std::time::{Duration, Instant};

use devmodel::classes::{compute, host};
use devmodel::harness::{Chan, Guest, Params, Pb, STATE_IDLE};
use devmodel::{CpuEngine, Vgpu, VgpuConfig};
use mdev_types::VgpuType;
use mmio::pci::PciIdentity;
use scheduler::{Config, PolicyKind, VgpuParams};

/// The demo parent's id (its section in the policy file: `[parent."cpu0"]`).
pub const PARENT: &str = "cpu0";

use crate::parent::Parent;

/// What the demo measured.
#[derive(Debug)]
pub struct DemoReport {
    pub checks_passed: usize,
    /// (type id, configured share, achieved share of wall time, commands)
    pub shares: Vec<(String, f64, f64, u64)>,
}

fn vgpu_on(parent: &Parent, t: &VgpuType, params: VgpuParams, name: &str) -> Result<(u64, Vgpu), String> {
    let (key, ctx) = parent.attach(t.framebuffer_bytes, t.channels, params).map_err(|e| e.to_string())?;
    let cfg = VgpuConfig {
        name: name.to_string(),
        identity: PciIdentity { vendor_id: t.vendor_id, device_id: t.device_id, subsystem_vendor_id: t.vendor_id, subsystem_id: t.device_id, revision: 1 },
        vram_bytes: t.framebuffer_bytes,
        channels: t.channels,
    };
    Ok((key, Vgpu::with_context(cfg, ctx).map_err(|e| e.to_string())?))
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Run every class once and compare with CPU references.
fn correctness(g: &mut Guest, ch: &mut Chan) -> Result<usize, String> {
    let mut seed = 42;
    let n = 1 << 16;
    let x: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
    let y: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
    let (xg, xv) = g.sys_buf(n as u64 * 4);
    let (yg, yv) = g.sys_buf(n as u64 * 4);
    let (sg, sv) = g.sys_buf(64);
    g.wf32(xg, &x);
    g.wf32(yg, &y);
    let (m, k, nn) = (64u32, 48u32, 32u32);
    let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
    let b: Vec<f32> = (0..k * nn).map(|_| lcg(&mut seed)).collect();
    let (ag, av) = g.sys_buf(a.len() as u64 * 4);
    let (bg, bv) = g.sys_buf(b.len() as u64 * 4);
    let (cg, cv) = g.sys_buf((m * nn) as u64 * 4);
    g.wf32(ag, &a);
    g.wf32(bg, &b);
    let (_, va) = g.vram_buf(a.len() as u64 * 4);
    let (_, vb) = g.vram_buf(b.len() as u64 * 4);
    let (_, vc) = g.vram_buf((m * nn) as u64 * 4);
    let (p_saxpy, s_saxpy) = g.params(Params::default().u64(xv).u64(yv).u32(n as u32).f32(3.0));
    let (p_gemm, s_gemm) = g.params(Params::default().u64(va).u64(vb).u64(vc).u32(m).u32(nn).u32(k).f32(1.0).f32(0.0).u32(0));
    let (p_sum, s_sum) = g.params(Params::default().u64(xv).u64(sv).u32(n as u32).u32(0));
    let pb = Pb::new()
        .bind()
        .launch(compute::PROG_SAXPY, p_saxpy, s_saxpy)
        .copy(av, va, a.len() as u32 * 4)
        .copy(bv, vb, b.len() as u32 * 4)
        .launch(compute::PROG_GEMM_F32, p_gemm, s_gemm)
        .copy(vc, cv, m * nn * 4)
        .launch(compute::PROG_REDUCE_SUM, p_sum, s_sum)
        .sem(sv + 16, 0xC0FFEE, host::SEM_OP_RELEASE | host::SEM_TIMESTAMP);
    g.submit(ch, &pb.0);
    if g.wait(ch) != STATE_IDLE {
        return Err(format!("channel stopped: status {:#x}", g.chreg(ch.id, 0x0C)));
    }
    let mut passed = 0;
    let got = g.rf32(yg, n);
    if (0..n).any(|i| got[i] != 3.0f32.mul_add(x[i], y[i])) {
        return Err("saxpy mismatch".into());
    }
    passed += 1;
    let c = g.rf32(cg, (m * nn) as usize);
    for i in 0..m as usize {
        for j in 0..nn as usize {
            let want: f64 = (0..k as usize).map(|p| a[i * k as usize + p] as f64 * b[p * nn as usize + j] as f64).sum();
            if (c[i * nn as usize + j] as f64 - want).abs() > 1e-4 {
                return Err(format!("gemm mismatch at ({i},{j})"));
            }
        }
    }
    passed += 1;
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    if (g.rf32(sg, 1)[0] as f64 - want).abs() > 1e-2 {
        return Err("reduce_sum mismatch".into());
    }
    passed += 1;
    if g.r64(sg + 16) != 0xC0FFEE || g.r64(sg + 24) == 0 {
        return Err("semaphore release mismatch".into());
    }
    passed += 1;
    Ok(passed)
}

/// Keep channels full of spin work of `unit_us` until `until`: a few
/// segments of 20 commands queued ahead, which the device model pipelines
/// into the host scheduler, as a busy guest's would be.
fn saturate(g: &mut Guest, chans: &mut [Chan], unit_us: u32, until: Instant) {
    let (_, dst) = g.sys_buf(64);
    let (p, s) = g.params(Params::default().u64(dst).u32(1).u32(unit_us * 1000));
    let mut pb = Pb::new().bind();
    for _ in 0..20 {
        pb = pb.launch(compute::PROG_SPIN, p, s);
    }
    while Instant::now() < until {
        let mut idle = true;
        for ch in chans.iter_mut() {
            // Keep up to 4 segments queued on each channel.
            let get = g.chreg(ch.id, 0x10);
            if (ch.put + ch.entries - get) % ch.entries < 4 {
                g.submit(ch, &pb.0);
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// Run the demo under the default policy settings of `policy`.
pub fn run(policy: PolicyKind, seconds: f64) -> Result<DemoReport, String> {
    run_with(&Config::default(), Some(policy), seconds)
}

/// Run the demo with the parent policy and vGPU parameters of `config`
/// (parent id `cpu0`), the policy kind optionally overridden.
pub fn run_with(config: &Config, policy: Option<PolicyKind>, seconds: f64) -> Result<DemoReport, String> {
    let mut parent_policy = config.parent_policy(PARENT);
    if let Some(kind) = policy {
        parent_policy.kind = kind;
    }
    let parent = Parent::new(PARENT, Box::new(CpuEngine::new(1)), parent_policy);
    let types: Vec<&VgpuType> = ["vgpud-4c", "vgpud-2c"].iter().filter_map(|id| mdev_types::default_type(id)).collect();
    let mut guests = Vec::new();
    let mut checks = 0;
    let mut keys = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let params = config.vgpu_params("", t.id, t.max_instances).map_err(|e| e.to_string())?;
        let (key, vgpu) = vgpu_on(&parent, t, params, &format!("demo{i}-{}", t.id))?;
        keys.push(key);
        let mut g = Guest::attach(vgpu, 64);
        let mut ch = g.channel(0, 64);
        checks += correctness(&mut g, &mut ch)?;
        println!("vGPU {} ({}): saxpy, gemm_f32, copies via VRAM, reduce_sum, semaphores: ok", i, t.name);
        let load = vec![g.channel(1, 64)];
        guests.push((g, load));
    }
    let before = parent.stats();
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (g, load) in guests.iter_mut() {
            s.spawn(move || saturate(g, load, 1000, until));
        }
    });
    let wall = t0.elapsed().as_nanos() as f64;
    let after = parent.stats();
    let mut shares = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let key = keys[i];
        let b = before.vgpus.iter().find(|v| v.vgpu == key).map_or(0, |v| v.total);
        let a = after.vgpus.iter().find(|v| v.vgpu == key).ok_or("vGPU missing from the scheduler's statistics")?;
        let configured = a.configured_share.unwrap_or(f64::NAN);
        shares.push((t.id.to_string(), configured, (a.total - b) as f64 / wall, a.commands));
    }
    Ok(DemoReport { checks_passed: checks, shares })
}
