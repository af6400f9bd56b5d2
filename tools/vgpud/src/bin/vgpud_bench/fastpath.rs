//! `vgpud-bench fastpath`: the submission fast path measured end to end,
//! with the guest driver as the tenant over vfio-user against an in-process
//! daemon (cpu engine), and the numbers printed as the Markdown tables of
//! docs/benchmarks.md:
//!
//! * lone utilization (one vGPU, best_effort, 1 and 4 channels) and the
//!   fixed_share ratio of a `vgpud-4c` beside a `vgpud-2c` (wanted 2.00), at
//!   each command length;
//! * doorbell to first command (a semaphore release, which starts and ends
//!   at once) through the doorbell page and through the trapped register;
//! * the daemon's own CPU (front ends, dispatcher, vfio-user servers; the
//!   engine's execution is reported apart) for an idle vGPU and for 1…N
//!   active ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use mdev_types::{Catalog, Engine, ParentCapacity, ParentDef, VgpuType};
use vgpu_guest::load::{LoadConfig, LoadReport};
use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpu_guest::Device;
use vgpud::daemon::Daemon;

type R<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A daemon in a fresh run directory, removed on drop.
struct Host {
    daemon: Arc<Mutex<Daemon>>,
    dir: PathBuf,
}

impl Host {
    fn new(tag: &str, catalog: &Catalog, policy: &str) -> R<Host> {
        let dir = std::env::temp_dir().join(format!("vgpud-fastpath-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(err)?;
        let mut d = Daemon::new(&dir, None, scheduler::Config::default(), catalog).map_err(err)?;
        d.policy_set(None, policy, None).map_err(err)?;
        Ok(Host {
            daemon: Arc::new(Mutex::new(d)),
            dir,
        })
    }

    fn create(&self, type_id: &str) -> R<PathBuf> {
        let mut d = self.daemon.lock().map_err(err)?;
        Ok(d.create(type_id, None, None).map_err(err)?.socket)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect(socket: &Path) -> R<Device> {
    let t = VfioUserTransport::connect(socket, 16 << 20).map_err(err)?;
    Device::open(Box::new(t)).map_err(err)
}

/// The load on one socket with `channels` channels.
fn load(socket: &Path, unit_us: u32, channels: u32, seconds: f64) -> R<LoadReport> {
    let mut all = loads(&[socket.to_path_buf()], unit_us, channels, seconds)?;
    all.pop().ok_or_else(|| "no load report".to_string())
}

/// The guest driver's load on every socket at once, each with `channels`
/// channels; their reports in order.
fn loads(sockets: &[PathBuf], unit_us: u32, channels: u32, seconds: f64) -> R<Vec<LoadReport>> {
    let gate = Arc::new(Barrier::new(sockets.len()));
    let threads: Vec<_> = sockets
        .iter()
        .cloned()
        .map(|s| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                // Every tenant passes the gate, connected or not: none waits
                // for one that failed.
                let dev = connect(&s);
                gate.wait();
                let mut dev = dev?;
                vgpu_guest::load::run(
                    &mut dev,
                    &LoadConfig {
                        unit_us,
                        duration: Duration::from_secs_f64(seconds),
                        channels,
                    },
                )
                .map_err(err)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().map_err(|_| "load thread panicked".to_string())?)
        .collect()
}

pub fn run(seconds: f64, sizes: &[u32], max_vgpus: u32) -> R<()> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("host: {cpus} CPUs; {seconds} s per measurement\n");
    utilization_and_shares(seconds, sizes)?;
    latency()?;
    cpu(seconds, max_vgpus)?;
    Ok(())
}

fn utilization_and_shares(seconds: f64, sizes: &[u32]) -> R<()> {
    println!("| command µs | lone, 1 channel | lone, 4 channels | fixed_share 4c | fixed_share 2c | 4c : 2c (wanted 2.00) | doorbells untrapped / trapped (lone, 1 ch) |");
    println!("|---|---|---|---|---|---|---|");
    let catalog = Catalog::default();
    for &u in sizes {
        let lone1 = {
            let h = Host::new("lone1", &catalog, "best_effort")?;
            load(&h.create("vgpud-4c")?, u, 1, seconds)?
        };
        let lone4 = {
            let h = Host::new("lone4", &catalog, "best_effort")?;
            load(&h.create("vgpud-4c")?, u, 4, seconds)?
        };
        let shares = {
            let h = Host::new("share", &catalog, "fixed_share")?;
            let s = [h.create("vgpud-4c")?, h.create("vgpud-2c")?];
            loads(&s, u, 1, seconds)?
        };
        let (a, b) = (shares[0].utilization, shares[1].utilization);
        println!(
            "| {u} | {:.3} | {:.3} | {a:.3} | {b:.3} | {:.3} | {} / {} |",
            lone1.utilization,
            lone4.utilization,
            a / b.max(1e-9),
            lone1.doorbells.untrapped,
            lone1.doorbells.trapped
        );
    }
    println!();
    Ok(())
}

/// Doorbell to the segment's first command (a semaphore release) seen done
/// by the guest, through the page and through the trapped register.
fn latency() -> R<()> {
    let h = Host::new("latency", &Catalog::default(), "best_effort")?;
    let mut dev = connect(&h.create("vgpud-1c")?)?;
    let mut ch = super::bench_channel(&mut dev)?;
    println!("| doorbell | samples | median µs | p99 µs | doorbells untrapped / trapped |");
    println!("|---|---|---|---|---|");
    for (name, page) in [
        ("doorbell page (untrapped)", true),
        ("DOORBELL register (trapped)", false),
    ] {
        dev.set_doorbell_page(page);
        let before = dev.doorbells();
        for _ in 0..200 {
            super::first_command_us(&mut dev, &mut ch)?;
        }
        let v = (0..5_000)
            .map(|_| super::first_command_us(&mut dev, &mut ch))
            .collect::<R<Vec<f64>>>()?;
        let after = dev.doorbells();
        let n = v.len();
        let (p50, p99, _) = super::percentiles(v);
        println!(
            "| {name} | {n} | {p50:.1} | {p99:.1} | {} / {} |",
            after.untrapped - before.untrapped,
            after.trapped - before.trapped
        );
    }
    println!();
    Ok(())
}

/// CPU time (ns) of this process's threads by role, from
/// `/proc/self/task/*/schedstat` (time on CPU) and `comm` (the name).
fn cpu_by_role() -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let role = if name.starts_with("pfifo") {
            "front ends"
        } else if name.starts_with("sched-") {
            "dispatcher"
        } else if name.starts_with("vfio-user") {
            "vfio-user servers"
        } else if name.starts_with("cpu-engine-done") {
            "completions"
        } else if name.starts_with("cpu-engine") {
            "engine"
        } else {
            "tenants"
        };
        *out.entry(role).or_insert(0) += ns;
    }
    out
}

/// Cores each role used between two samples `dt` apart.
fn cores(
    a: &BTreeMap<&'static str, u64>,
    b: &BTreeMap<&'static str, u64>,
    dt: Duration,
) -> BTreeMap<&'static str, f64> {
    b.iter()
        .map(|(k, v)| {
            let used = v.saturating_sub(a.get(k).copied().unwrap_or(0));
            (*k, used as f64 / dt.as_nanos() as f64)
        })
        .collect()
}

fn daemon_cores(c: &BTreeMap<&'static str, f64>) -> f64 {
    [
        "front ends",
        "dispatcher",
        "vfio-user servers",
        "completions",
    ]
    .iter()
    .map(|k| c.get(k).copied().unwrap_or(0.0))
    .sum()
}

fn cpu(seconds: f64, max_vgpus: u32) -> R<()> {
    // An idle vGPU: attached, after some work, then nothing.
    let idle = {
        let h = Host::new("idle", &Catalog::default(), "best_effort")?;
        let socket = h.create("vgpud-1c")?;
        let mut dev = connect(&socket)?;
        vgpu_guest::load::run(
            &mut dev,
            &LoadConfig {
                unit_us: 100,
                duration: Duration::from_millis(200),
                channels: 1,
            },
        )
        .map_err(err)?;
        std::thread::sleep(Duration::from_millis(300));
        let (a, t) = (cpu_by_role(), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(seconds.max(2.0)));
        let c = cores(&a, &cpu_by_role(), t.elapsed());
        drop(dev);
        daemon_cores(&c)
    };
    println!(
        "Idle vGPU (client attached, no work): the daemon used {:.3} % of one core.\n",
        idle * 100.0
    );

    // 1..max_vgpus active vGPUs of 16 MiB on one parent, 100 µs commands.
    let bench_type = VgpuType {
        id: "bench-16m".into(),
        name: "BENCH-16M".into(),
        framebuffer_bytes: 16 << 20,
        max_instances: max_vgpus.max(1),
        channels: 4,
        vendor_id: mdev_types::VENDOR_ID,
        device_id: 0x1100,
    };
    let catalog = Catalog {
        parents: vec![ParentDef {
            id: "bench".into(),
            engine: Engine::Cpu,
            capacity: ParentCapacity {
                framebuffer_bytes: (16 << 20) * max_vgpus.max(1) as u64,
                max_vgpus: max_vgpus.max(1),
                reserve_per_vgpu: 0,
            },
            types: vec![Arc::new(bench_type)],
        }],
        placement: Default::default(),
    };
    println!("| active vGPUs | engine busy | daemon cores (all but the engine's execution) | per active vGPU | front ends | dispatcher | engine completions | vfio-user servers | doorbells untrapped / trapped |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut n = 1;
    while n <= max_vgpus.max(1) {
        let h = Host::new(&format!("cpu{n}"), &catalog, "best_effort")?;
        let sockets = (0..n)
            .map(|_| h.create("bench-16m"))
            .collect::<R<Vec<_>>>()?;
        let sampler = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(seconds * 0.2));
            let (a, t) = (cpu_by_role(), Instant::now());
            std::thread::sleep(Duration::from_secs_f64(seconds * 0.6));
            cores(&a, &cpu_by_role(), t.elapsed())
        });
        let reports = loads(&sockets, 100, 1, seconds)?;
        let c = sampler.join().map_err(|_| "sampler panicked".to_string())?;
        let busy: f64 = reports.iter().map(|r| r.utilization).sum();
        let (untrapped, trapped) = reports.iter().fold((0, 0), |(u, t), r| {
            (u + r.doorbells.untrapped, t + r.doorbells.trapped)
        });
        let d = daemon_cores(&c);
        let get = |k: &str| c.get(k).copied().unwrap_or(0.0);
        println!(
            "| {n} | {busy:.3} | {d:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {untrapped} / {trapped} |",
            d / n as f64,
            get("front ends"),
            get("dispatcher"),
            get("completions"),
            get("vfio-user servers"),
        );
        n *= 2;
    }
    println!();
    Ok(())
}
