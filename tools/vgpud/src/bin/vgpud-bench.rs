//! vgpud-bench: latency of the vfio-user path, measured with an
//! independent client (the guest driver over the rust-vmm `vfio_user`
//! crate's `Client`) against a vGPU served by the daemon's server, side by
//! side with the same operation on the device model's face in-process.
//!
//! `vgpud-bench latency [--iterations N]` prints a Markdown table for
//! docs/benchmarks.md:
//! * REGION_WRITE round trip: a 4-byte BAR0 register write, from sending the
//!   message to its reply; baseline: `Vgpu::region_write` called directly.
//! * the floor under both: a bare Unix-socket ping-pong of the same sizes.
//! * doorbell to first command: from writing the doorbell to the moment the
//!   guest sees the effect of the segment's first command (a semaphore
//!   release, which starts and ends at once) in its own memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use devmodel::{CpuEngine, Vgpu, VgpuConfig};
use mmio::pci::PciIdentity;
use vgpu_guest::pushbuf::Pushbuf;
use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpu_guest::{Channel, ChannelConfig, Device};
use vgpud::daemon::Daemon;

#[path = "vgpud_bench/fastpath.rs"]
mod fastpath;

#[derive(Parser)]
#[command(about = "vgpud benchmarks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// vfio-user latencies: REGION_WRITE round trip, doorbell to first command.
    Latency {
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
    },
    /// The submission fast path: lone utilization, fixed_share 4c:2c,
    /// doorbell-to-start latency trapped and untrapped, daemon CPU per
    /// active vGPU (docs/benchmarks.md, "Submission fast path").
    Fastpath {
        /// Seconds per utilization or share measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Command lengths in µs.
        #[arg(long, value_delimiter = ',', default_value = "10,50,200,1000,5000")]
        sizes: Vec<u32>,
        /// Most active vGPUs in the CPU scaling run.
        #[arg(long, default_value_t = 64)]
        max_vgpus: u32,
    },
}

/// INTR_ENABLE: a plain read/write BAR0 register with no side effect.
const INTR_ENABLE: u32 = 0x024;

/// A channel for timing doorbells: 64 entries of small segments.
fn bench_channel(dev: &mut Device) -> Result<Channel, String> {
    let cfg = ChannelConfig {
        gpfifo_entries: 64,
        segment_bytes: 256,
        interrupt_fences: false,
    };
    Channel::new(dev, 0, cfg).map_err(|e| e.to_string())
}

/// Ring `ch` for an empty segment (its only command the fence, a semaphore
/// release that starts and ends at once) and wait for it: µs from the
/// doorbell to the guest seeing the first command done.
fn first_command_us(dev: &mut Device, ch: &mut Channel) -> Result<f64, String> {
    let t = Instant::now();
    let f = ch.submit(dev, &Pushbuf::new()).map_err(|e| e.to_string())?;
    while !ch.reached(f).map_err(|e| e.to_string())? {
        if t.elapsed() > Duration::from_secs(5) {
            return Err("fence not reached in 5 s".into());
        }
        std::hint::spin_loop();
    }
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99), v.iter().sum::<f64>() / v.len() as f64)
}

fn main() -> Result<(), String> {
    let iterations = match Args::parse().cmd {
        Cmd::Latency { iterations } => iterations,
        Cmd::Fastpath {
            seconds,
            sizes,
            max_vgpus,
        } => return fastpath::run(seconds, &sizes, max_vgpus),
    };
    let n = iterations.max(100);

    // Baseline: the device model's face, called in-process.
    let engine = CpuEngine::new(1).map_err(|e| format!("cpu engine: {e}"))?;
    let identity = PciIdentity {
        vendor_id: 0x7667,
        device_id: 0x1001,
        subsystem_vendor_id: 0x7667,
        subsystem_id: 1,
        revision: 1,
    };
    let vgpu = Vgpu::new(
        VgpuConfig {
            name: "baseline".into(),
            identity,
            vram_bytes: 1 << 20,
            channels: 1,
        },
        &engine,
    )
    .map_err(|e| e.to_string())?;
    let mut direct = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        vgpu.region_write(0, INTR_ENABLE as u64, &((i as u32) & 7).to_le_bytes())
            .map_err(|e| e.to_string())?;
        direct.push(t.elapsed().as_secs_f64() * 1e6);
    }

    // The floor: a 32-byte request and reply over a Unix socket between
    // two threads, as a vfio-user message is, with nothing done in between.
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut buf = [0u8; 32];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf[..16]).is_err() {
                break;
            }
        }
    });
    let mut floor = Vec::with_capacity(n);
    {
        use std::io::{Read, Write};
        let (msg, mut reply) = ([0u8; 32], [0u8; 16]);
        for _ in 0..n {
            let t = Instant::now();
            a.write_all(&msg).map_err(|e| e.to_string())?;
            a.read_exact(&mut reply).map_err(|e| e.to_string())?;
            floor.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(a);
    let _ = echo.join();

    // The daemon's vfio-user server, an independent client.
    let dir = std::env::temp_dir().join(format!("vgpud-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let daemon = Arc::new(Mutex::new(
        Daemon::new(
            &dir,
            None,
            scheduler::Config::default(),
            &mdev_types::Catalog::default(),
        )
        .map_err(|e| e.to_string())?,
    ));
    let created = daemon
        .lock()
        .map_err(|e| e.to_string())?
        .create("vgpud-1c", None, None)
        .map_err(|e| e.to_string())?;
    let t = VfioUserTransport::connect(&created.socket, 16 << 20).map_err(|e| e.to_string())?;
    let mut dev = Device::open(Box::new(t)).map_err(|e| e.to_string())?;
    let mut socket_rt = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        dev.write32(INTR_ENABLE, (i as u32) & 7)
            .map_err(|e| e.to_string())?;
        socket_rt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    dev.write32(INTR_ENABLE, 7).map_err(|e| e.to_string())?;

    let mut ch = bench_channel(&mut dev)?;
    let doorbells = (n / 4).max(100);
    let db = (0..doorbells)
        .map(|_| first_command_us(&mut dev, &mut ch))
        .collect::<Result<Vec<f64>, String>>()?;
    drop(ch);
    drop(dev);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);

    let row = |name: &str, n: usize, v: Vec<f64>| {
        let (p50, p99, mean) = percentiles(v);
        println!("| {name} | {n} | {p50:.1} | {p99:.1} | {mean:.1} |");
    };
    println!("| measurement | samples | median µs | p99 µs | mean µs |");
    println!("|---|---|---|---|---|");
    row("BAR0 write, in-process face (baseline)", n, direct);
    row(
        "Unix socket ping-pong, 32 B request / 16 B reply, two threads (floor)",
        n,
        floor,
    );
    row("BAR0 REGION_WRITE round trip over the socket", n, socket_rt);
    row(
        "doorbell to first command done (semaphore release seen by the guest)",
        doorbells,
        db,
    );
    Ok(())
}
