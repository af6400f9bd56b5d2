//! The demo workload `vgpud --demo` runs: the daemon used as an operator
//! and two tenants would use it.
//!
//! Two vGPUs (`vgpud-4c`, fixed share 1/2, and `vgpud-2c`, 1/4) are
//! created on the default cpu-engine parent through the daemon's control
//! operations. For each, a guest driver ([`vgpu_guest`]) connects to the
//! vGPU's vfio-user socket exactly as a VMM would — its guest RAM a memfd
//! shared with the daemon — and runs the driver's selftest (every engine
//! class and program against CPU references). Then both tenants keep their
//! vGPU saturated with 1 ms `spin` commands at once, and the scheduler's
//! measured shares are reported next to the configured ones.

use devmodel::sync::{lock, wait};
use std::path::PathBuf;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use vgpu_guest::load::{self, LoadConfig, LoadReport};
use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpu_guest::{selftest, Device};

use crate::daemon::Daemon;

/// The part of the load before shares are measured (channels being set up,
/// queues filling), and the part measured; the rest, up to the end of the
/// load, keeps both tenants submitting until the measurement ends.
const WARM_UP: f64 = 0.2;
const MEASURED: f64 = 0.7;

/// The types the demo's two tenants get.
pub const DEMO_TYPES: [&str; 2] = ["vgpud-4c", "vgpud-2c"];

/// One tenant's results.
#[derive(Debug)]
pub struct Tenant {
    pub uuid: String,
    pub type_id: String,
    pub checks_passed: usize,
    pub checks: usize,
    /// The share the policy promises (strict policies), if any.
    pub configured: Option<f64>,
    /// Engine time the scheduler measured for the vGPU while both tenants
    /// were submitting, over that wall time.
    pub achieved: f64,
    /// Slices the vGPU was given during the load, and how many of them ended
    /// early because it had nothing more queued (its driver was late).
    pub slices: u64,
    pub slices_dry: u64,
    /// What the guest saw.
    pub load: LoadReport,
}

/// What the demo measured.
#[derive(Debug)]
pub struct DemoReport {
    pub policy: String,
    pub tenants: Vec<Tenant>,
    /// The engine's idle time while shares were measured, over that wall
    /// time: no work queued, held by the policy, late (the daemon's threads).
    pub idle_empty: f64,
    pub idle_held: f64,
    pub idle_late: f64,
}

/// What the scheduler says of a vGPU at one moment.
struct Sample {
    parent: String,
    gpu_time_ns: u64,
    slices: u64,
    slices_dry: u64,
    configured: Option<f64>,
}

fn sample(daemon: &Mutex<Daemon>, uuid: &str) -> Result<Sample, String> {
    let d = lock(daemon);
    let st = d.status(Some(uuid)).map_err(|e| e.to_string())?;
    let v = st
        .first()
        .ok_or_else(|| format!("no status for vGPU {uuid}"))?;
    Ok(Sample {
        parent: v.parent.clone(),
        gpu_time_ns: v.gpu_time_ns.unwrap_or(0),
        slices: v.slices.unwrap_or(0),
        slices_dry: v.slices_dry.unwrap_or(0),
        configured: v.configured_share,
    })
}

/// A parent's engine idle time so far, by why: `[empty, held, late]` in ns.
fn idle(daemon: &Mutex<Daemon>, parent: &str) -> Result<[u64; 3], String> {
    let d = lock(daemon);
    let p = d.parents_status(Some(parent)).map_err(|e| e.to_string())?;
    let p = p
        .first()
        .ok_or_else(|| format!("no status for parent {parent}"))?;
    Ok([p.idle_empty_ns, p.idle_held_ns, p.idle_late_ns])
}

/// Create the demo's vGPUs on `daemon`, run the tenants for `seconds` of
/// shared load, remove the vGPUs and report.
pub fn run(daemon: &Arc<Mutex<Daemon>>, seconds: f64) -> Result<DemoReport, String> {
    let mut created = Vec::new();
    for t in DEMO_TYPES {
        let r = lock(daemon)
            .create(t, None, None)
            .map_err(|e| format!("create {t}: {e}"))?;
        created.push((r.uuid, t.to_string(), r.socket));
    }
    let result = run_tenants(daemon, &created, seconds);
    for (uuid, _, _) in &created {
        let _ = lock(daemon).remove(uuid);
    }
    result
}

fn run_tenants(
    daemon: &Arc<Mutex<Daemon>>,
    created: &[(String, String, PathBuf)],
    seconds: f64,
) -> Result<DemoReport, String> {
    let policy = lock(daemon)
        .policy_show(None)
        .map_err(|e| e.to_string())?
        .policy;
    let start = Arc::new(Barrier::new(created.len() + 1));
    let done = Arc::new(Barrier::new(created.len() + 1));
    let cfg = LoadConfig {
        unit_us: 1000,
        duration: Duration::from_secs_f64(seconds),
        channels: 1,
    };
    // Every tenant must start before any meets the barriers: one that cannot
    // start has the others stop at the gate instead.
    let gate = Arc::new(Gate::default());
    let mut threads = Vec::new();
    for (uuid, type_id, socket) in created {
        let (start, done, at_gate, socket, name) = (
            start.clone(),
            done.clone(),
            gate.clone(),
            socket.clone(),
            format!("{type_id} {}", &uuid[..8]),
        );
        let spawned = devmodel::thread::spawn(
            format!("tenant-{}", &uuid[..8]),
            move || -> Result<(usize, usize, LoadReport), String> {
                let tenant = || -> Result<(usize, usize, Device), String> {
                    let t = VfioUserTransport::connect(&socket, 64 << 20)
                        .map_err(|e| format!("{name}: connect: {e}"))?;
                    let mut dev =
                        Device::open(Box::new(t)).map_err(|e| format!("{name}: open: {e}"))?;
                    let report = selftest::run(&mut dev);
                    for c in report.failures() {
                        eprintln!("{name}: FAIL {}: {}", c.name, c.detail);
                    }
                    let passed = report.checks.iter().filter(|c| c.passed).count();
                    Ok((passed, report.checks.len(), dev))
                };
                let outcome = tenant();
                if !at_gate.pass() {
                    return Err(format!("{name}: stopped, another tenant did not start"));
                }
                start.wait();
                let r = match outcome {
                    Ok((passed, total, mut dev)) => load::run(&mut dev, &cfg)
                        .map(|l| (passed, total, l))
                        .map_err(|e| format!("{name}: load: {e}")),
                    Err(e) => Err(e),
                };
                done.wait();
                r
            },
        );
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                gate.set(false);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e.to_string());
            }
        }
    }
    gate.set(true);
    start.wait();
    // Shares are measured while every tenant is submitting: not while they
    // set up their channels, nor while they drain their last commands and
    // tear down (that is their drivers' time, not the policy's).
    std::thread::sleep(Duration::from_secs_f64(seconds * WARM_UP));
    let take = || -> Result<(Vec<Sample>, [u64; 3]), String> {
        let vgpus = created
            .iter()
            .map(|(u, _, _)| sample(daemon, u))
            .collect::<Result<Vec<_>, _>>()?;
        let parent = vgpus.first().map(|s| s.parent.clone()).unwrap_or_default();
        Ok((vgpus, idle(daemon, &parent)?))
    };
    let before = take();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds * MEASURED));
    let after = take();
    let wall = t0.elapsed().as_nanos() as f64;
    done.wait();
    let ((before, idle0), (after, idle1)) = (before?, after?);
    let idle_share = |i: usize| idle1[i].saturating_sub(idle0[i]) as f64 / wall;
    let mut tenants = Vec::new();
    for (i, th) in threads.into_iter().enumerate() {
        let (passed, total, load) = th
            .join()
            .map_err(|_| "a tenant thread panicked".to_string())??;
        let (uuid, type_id, _) = &created[i];
        let (a, b) = (&after[i], &before[i]);
        tenants.push(Tenant {
            uuid: uuid.clone(),
            type_id: type_id.clone(),
            checks_passed: passed,
            checks: total,
            configured: a.configured,
            achieved: a.gpu_time_ns.saturating_sub(b.gpu_time_ns) as f64 / wall,
            slices: a.slices.saturating_sub(b.slices),
            slices_dry: a.slices_dry.saturating_sub(b.slices_dry),
            load,
        });
    }
    Ok(DemoReport {
        policy,
        tenants,
        idle_empty: idle_share(0),
        idle_held: idle_share(1),
        idle_late: idle_share(2),
    })
}

/// The report as the demo prints it.
pub fn render(r: &DemoReport) -> String {
    let mut out = format!("policy {}\n", r.policy);
    out += &format!(
        "{:<10} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        "type", "selftest", "configured", "achieved", "commands", "p50_ms", "p99_ms"
    );
    for t in &r.tenants {
        let conf = t.configured.map_or("-".to_string(), |c| format!("{c:.3}"));
        out += &format!(
            "{:<10} {:>8} {:>10} {:>9.3} {:>9} {:>9.2} {:>9.2}\n",
            t.type_id,
            format!("{}/{}", t.checks_passed, t.checks),
            conf,
            t.achieved,
            t.load.completed,
            t.load.latency_p50_us / 1000.0,
            t.load.latency_p99_us / 1000.0
        );
    }
    out += &format!(
        "engine idle: {:.3} no work queued, {:.3} held by the policy, {:.3} late (the daemon's threads)\n",
        r.idle_empty, r.idle_held, r.idle_late
    );
    out
}

/// Whether every tenant's selftest passed.
pub fn all_passed(r: &DemoReport) -> bool {
    r.tenants
        .iter()
        .all(|t| t.checks_passed == t.checks && t.checks > 0)
}

/// Opened or closed once for every thread waiting at it.
#[derive(Default)]
struct Gate {
    open: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        *lock(&self.open) = Some(open);
        self.changed.notify_all();
    }

    /// Waits until the gate is set; whether it opened.
    fn pass(&self) -> bool {
        let mut g = lock(&self.open);
        loop {
            if let Some(open) = *g {
                return open;
            }
            g = wait(&self.changed, g);
        }
    }
}
