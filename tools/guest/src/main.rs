//! `vgpu-guest`: the vgpud guest driver's command line.

// `x % n == 0` rather than `is_multiple_of` (Rust 1.87): the workspace's MSRV is 1.85.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use vgpu_guest::load::{self, LoadConfig, SaxpyConfig};
use vgpu_guest::programs::Program;
use vgpu_guest::ptx::{self, FaultKind};
use vgpu_guest::pushbuf::Pushbuf;
use vgpu_guest::transport::vfio::VfioTransport;
use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpu_guest::{
    regs, selftest, Channel, ChannelConfig, Device, Error, Placement, Result, Transport, WaitMode,
};

#[derive(Parser)]
#[command(
    name = "vgpu-guest",
    about = "Drive a vgpud vGPU (ABI v1) from user space"
)]
struct Cli {
    /// How to reach the vGPU.
    #[arg(long, value_enum, default_value = "vfio-user", global = true)]
    transport: TransportKind,
    /// vfio-user: the vGPU's Unix socket.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// vfio: the PCI function (e.g. 0000:00:04.0), bound to vfio-pci.
    #[arg(long, global = true)]
    device: Option<String>,
    /// DMA memory the driver allocates for the device, in MiB.
    #[arg(long, default_value_t = 64, global = true)]
    ram_mib: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum TransportKind {
    /// A vfio-user client of the vGPU's socket.
    VfioUser,
    /// A function bound to vfio-pci inside a Linux guest.
    Vfio,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the device's identity and interrupt/fault state.
    Info,
    /// Check every class and program against CPU references.
    Selftest,
    /// Run one workload and check its result.
    Run {
        #[arg(value_enum)]
        workload: Workload,
        /// Elements (saxpy, fill), matrix order (gemm) or bytes (copy).
        #[arg(long)]
        size: u32,
    },
    /// Keep the vGPU saturated with spin work and report throughput and
    /// latency, or run checked saxpy items and report their progress.
    Load {
        #[arg(value_enum)]
        workload: LoadWorkload,
        /// spin: GPU time per command, in µs (required).
        #[arg(long)]
        unit_us: Option<u32>,
        /// saxpy: elements per item.
        #[arg(long, default_value_t = load::SAXPY_N)]
        n: u32,
        /// How long to submit, in seconds.
        #[arg(long)]
        seconds: f64,
        /// Channels submitting concurrently.
        #[arg(long, default_value_t = 1)]
        channels: u32,
        /// Probe instead of saturating: one command at a time, each waited
        /// for, this many milliseconds apart (latency percentiles).
        #[arg(long, value_name = "MS")]
        probe_gap_ms: Option<f64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Guest PTX: load the kernels of tests/gpu/ptx/kernels.cu, run
    /// vec_add on VRAM and check it exactly, check a broken module is
    /// rejected with its JIT log.
    Ptx {
        /// The PTX text (nvcc -ptx of tests/gpu/ptx/kernels.cu).
        #[arg(long)]
        ptx: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Provoke a guest kernel's fault and report how the vGPU stopped.
    PtxFault {
        /// The PTX text (nvcc -ptx of tests/gpu/ptx/kernels.cu).
        #[arg(long)]
        ptx: PathBuf,
        #[arg(long, value_enum)]
        kind: FaultKindArg,
        /// repeat: how long to keep faulting, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FaultKindArg {
    /// poke through a pointer to an unmapped VA: KERNEL_FAULT.
    Illegal,
    /// spin_forever: ENGINE_TIMEOUT at the host's kernel limit.
    Runaway,
    /// Reset, load, illegal poke, over and over for --seconds.
    Repeat,
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    Saxpy,
    Gemm,
    Copy,
    Fill,
}

#[derive(Clone, Copy, ValueEnum)]
enum LoadWorkload {
    /// Fixed-size spin commands (--unit-us).
    Spin,
    /// Checked saxpy items (--n elements each).
    Saxpy,
}

fn open(cli: &Cli) -> Result<Device> {
    let bytes = cli.ram_mib << 20;
    let t: Box<dyn Transport> = match cli.transport {
        TransportKind::VfioUser => {
            let socket = cli.socket.as_ref().ok_or_else(|| {
                Error::InvalidArgument("--transport vfio-user needs --socket PATH".into())
            })?;
            Box::new(VfioUserTransport::connect(socket, bytes)?)
        }
        TransportKind::Vfio => {
            let bdf = cli.device.as_ref().ok_or_else(|| {
                Error::InvalidArgument("--transport vfio needs --device BDF".into())
            })?;
            Box::new(VfioTransport::open(bdf, bytes)?)
        }
    };
    Device::open(t)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vgpu-guest: {e}");
            ExitCode::from(2)
        }
    }
}

/// Ok(false) when a check failed.
fn real_main(cli: &Cli) -> Result<bool> {
    let mut dev = open(cli)?;
    match &cli.cmd {
        Cmd::Info => info(&mut dev).map(|_| true),
        Cmd::Selftest => {
            let r = selftest::run_with(&mut dev, &mut |c| println!("{c}"));
            let failed = r.failures().count();
            println!("{} checks, {} failed", r.checks.len(), failed);
            Ok(r.passed())
        }
        Cmd::Run { workload, size } => run(&mut dev, *workload, *size),
        Cmd::Load {
            workload,
            unit_us,
            n,
            seconds,
            channels,
            probe_gap_ms,
            json,
        } => {
            if !(seconds.is_finite() && *seconds > 0.0) {
                return Err(Error::InvalidArgument(format!("--seconds {seconds}")));
            }
            let duration = Duration::from_secs_f64(*seconds);
            if let LoadWorkload::Saxpy = workload {
                let r = load::saxpy(
                    &mut dev,
                    &SaxpyConfig {
                        n: *n,
                        duration,
                        channels: *channels,
                    },
                )?;
                if *json {
                    print_json(&r)?;
                } else {
                    println!(
                        "{} saxpy items of {} on {} channel(s) in {:.3} s: {:.1}/s, {} wrong, {} errors, gap p50 {:.0} us max {:.0} us",
                        r.items,
                        r.n,
                        r.channels,
                        r.wall_us as f64 / 1e6,
                        r.items_per_s,
                        r.wrong,
                        r.errors,
                        r.p50_gap_us,
                        r.max_gap_us
                    );
                }
                return Ok(r.wrong == 0);
            }
            let unit_us = unit_us
                .ok_or_else(|| Error::InvalidArgument("load spin needs --unit-us".into()))?;
            let r = match probe_gap_ms {
                Some(ms) if ms.is_finite() && *ms >= 0.0 && *ms < 10_000.0 => load::probe(
                    &mut dev,
                    unit_us,
                    duration,
                    Duration::from_secs_f64(ms / 1000.0),
                )?,
                Some(ms) => return Err(Error::InvalidArgument(format!("--probe-gap-ms {ms}"))),
                None => load::run(
                    &mut dev,
                    &LoadConfig {
                        unit_us,
                        duration,
                        channels: *channels,
                    },
                )?,
            };
            if *json {
                print_json(&r)?;
            } else {
                println!(
                    "{} commands of {} us on {} channel(s) in {:.3} s: {:.1}/s, utilization {:.1}%, latency p50 {:.0} us p99 {:.0} us",
                    r.completed,
                    r.unit_us,
                    r.channels,
                    r.wall_us as f64 / 1e6,
                    r.rate_per_s,
                    100.0 * r.utilization,
                    r.latency_p50_us,
                    r.latency_p99_us
                );
            }
            Ok(true)
        }
        Cmd::Ptx { ptx: path, json } => {
            let text = read_ptx(path)?;
            let r = ptx::check(&mut dev, &text, &mut |c| {
                if !*json {
                    println!("{c}")
                }
            });
            if *json {
                print_json(&r)?;
            } else {
                println!(
                    "{} ptx: {} checks, {} failed",
                    if r.passed { "PASS" } else { "FAIL" },
                    r.checks.len(),
                    r.checks.iter().filter(|c| !c.passed).count()
                );
            }
            Ok(r.passed)
        }
        Cmd::PtxFault {
            ptx: path,
            kind,
            seconds,
            json,
        } => {
            if !(seconds.is_finite() && *seconds > 0.0) {
                return Err(Error::InvalidArgument(format!("--seconds {seconds}")));
            }
            let text = read_ptx(path)?;
            let kind = match kind {
                FaultKindArg::Illegal => FaultKind::Illegal,
                FaultKindArg::Runaway => FaultKind::Runaway,
                FaultKindArg::Repeat => FaultKind::Repeat,
            };
            let r = ptx::fault(&mut dev, &text, kind, Duration::from_secs_f64(*seconds));
            if *json {
                print_json(&r)?;
            } else {
                println!(
                    "{} ptx-fault {}: {}",
                    if r.passed { "PASS" } else { "FAIL" },
                    r.kind,
                    r.detail
                );
            }
            Ok(r.passed)
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(v).map_err(|e| Error::Protocol(e.to_string()))?
    );
    Ok(())
}

fn read_ptx(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn info(dev: &mut Device) -> Result<()> {
    let id = dev.identity().clone();
    println!("transport     {}", dev.transport_name());
    println!(
        "pci id        {:04x}:{:04x} rev {} class {:06x}",
        id.vendor_id, id.device_id, id.revision, id.class_code
    );
    println!(
        "abi           {}.{} (ID {:#010x})",
        id.version >> 16,
        id.version & 0xFFFF,
        id.id
    );
    println!(
        "caps          {:#x} (ptx {}, large pages {}, msi-x vectors {})",
        id.caps,
        id.ptx(),
        id.large_pages(),
        id.msix_vectors()
    );
    println!("channels      {}", id.channels);
    println!("vram          {} MiB", id.vram_bytes >> 20);
    println!("timer         {} ns", dev.timer_ns()?);
    let i = dev.interrupts()?;
    println!(
        "interrupts    status {:#x} channels {:#x}",
        i.causes, i.channels
    );
    match dev.mmu_fault()? {
        Some(f) => println!(
            "mmu fault     {} channel {} va {:#x} write {}",
            f.code, f.channel, f.va, f.write
        ),
        None => println!("mmu fault     none"),
    }
    println!("busy          {}", dev.busy()?);
    Ok(())
}

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Time one launch on `ch` (submit to fence).
fn timed(
    dev: &mut Device,
    ch: &mut Channel,
    pb: Option<&Pushbuf>,
    prog: Option<&Program>,
) -> Result<Duration> {
    let t = Instant::now();
    let f = match (pb, prog) {
        (Some(pb), _) => ch.submit(dev, pb)?,
        (None, Some(p)) => ch.launch(dev, p)?,
        (None, None) => return Err(Error::InvalidArgument("nothing to run".into())),
    };
    ch.wait(dev, f, WaitMode::Interrupt, Duration::from_secs(120))?;
    Ok(t.elapsed())
}

/// `run saxpy`: `y = a·x + y` over `size` floats in VRAM, checked exactly.
fn run_saxpy(dev: &mut Device, ch: &mut Channel, rng: &mut Rng, size: u32) -> Result<Outcome> {
    let n = size as usize;
    let (x, y, a) = (rng.vec(n), rng.vec(n), 0.75f32);
    let xb = dev.alloc(Placement::Vram, n as u64 * 4)?;
    let yb = dev.alloc(Placement::Vram, n as u64 * 4)?;
    ch.upload(dev, &xb, 0, &f32_bytes(&x))?;
    ch.upload(dev, &yb, 0, &f32_bytes(&y))?;
    let took = timed(
        dev,
        ch,
        None,
        Some(&Program::Saxpy {
            x: xb.va(),
            y: yb.va(),
            n: size,
            a,
        }),
    )?;
    let got = bytes_f32(&ch.download(dev, &yb, 0, n as u64 * 4)?);
    let bad = (0..n).find(|&i| got[i] != a.mul_add(x[i], y[i]));
    if let Some(i) = bad {
        println!(
            "mismatch: y[{i}] = {}, want {}",
            got[i],
            a.mul_add(x[i], y[i])
        );
    }
    Ok((bad.is_none(), format!("saxpy n={n}"), took, 12 * n as u64))
}

/// `run gemm`: a `size`³ GEMM in VRAM, a sample of C checked against f64.
fn run_gemm(dev: &mut Device, ch: &mut Channel, rng: &mut Rng, size: u32) -> Result<Outcome> {
    let n = size as usize;
    if size > vgpu_guest::programs::GEMM_MAX_DIM {
        return Err(Error::InvalidArgument(format!(
            "gemm order {size} > {}",
            vgpu_guest::programs::GEMM_MAX_DIM
        )));
    }
    let (a, b) = (rng.vec(n * n), rng.vec(n * n));
    let bufs = [
        dev.alloc(Placement::Vram, (n * n * 4) as u64)?,
        dev.alloc(Placement::Vram, (n * n * 4) as u64)?,
        dev.alloc(Placement::Vram, (n * n * 4) as u64)?,
    ];
    ch.upload(dev, &bufs[0], 0, &f32_bytes(&a))?;
    ch.upload(dev, &bufs[1], 0, &f32_bytes(&b))?;
    let p = Program::Gemm {
        a: bufs[0].va(),
        b: bufs[1].va(),
        c: bufs[2].va(),
        m: size,
        n: size,
        k: size,
        alpha: 1.0,
        beta: 0.0,
    };
    let took = timed(dev, ch, None, Some(&p))?;
    let c = bytes_f32(&ch.download(dev, &bufs[2], 0, (n * n * 4) as u64)?);
    // Check a sample of elements against an f64 reference.
    let mut ok = true;
    for s in 0..256.min(n * n) {
        let idx = (s * 7919) % (n * n);
        let (i, j) = (idx / n, idx % n);
        let (mut dot, mut mag) = (0f64, 0f64);
        for p in 0..n {
            let t = a[i * n + p] as f64 * b[p * n + j] as f64;
            dot += t;
            mag += t.abs();
        }
        let tol = 4.0 * f32::EPSILON as f64 * (n as f64 + 2.0) * mag + 1e-30;
        if (c[idx] as f64 - dot).abs() > tol {
            println!("mismatch: C[{i}][{j}] = {}, want {dot}", c[idx]);
            ok = false;
            break;
        }
    }
    Ok((ok, format!("gemm {n}x{n}x{n}"), took, 2 * (n as u64).pow(3)))
}

/// `run copy`: `size` bytes sysmem → VRAM → sysmem, checked; each direction timed.
fn run_copy(dev: &mut Device, ch: &mut Channel, size: u32) -> Result<Outcome> {
    let n = size as usize;
    let data: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
    let src = dev.alloc(Placement::Sysmem, n as u64)?;
    let mid = dev.alloc(Placement::Vram, n as u64)?;
    let dst = dev.alloc(Placement::Sysmem, n as u64)?;
    src.host()?.write(0, &data)?;
    // The first round trip pays for first use (the host pins guest
    // RAM for the engine); then each direction is timed alone, the
    // best of five.
    let mut pb = Pushbuf::new();
    pb.copy_1d(src.va(), mid.va(), size)
        .copy_1d(mid.va(), dst.va(), size);
    let first = timed(dev, ch, Some(&pb), None)?;
    let mut got = vec![0u8; n];
    dst.host()?.read(0, &mut got)?;
    let mut best = |from: u64, to: u64| -> Result<Duration> {
        let mut pb = Pushbuf::new();
        pb.copy_1d(from, to, size);
        let mut best = Duration::MAX;
        for _ in 0..5 {
            best = best.min(timed(dev, ch, Some(&pb), None)?);
        }
        Ok(best)
    };
    let down = best(mid.va(), dst.va())?;
    let up = best(src.va(), mid.va())?;
    let gbs = |t: Duration| n as f64 / t.as_secs_f64() / 1e9;
    println!(
        "copy {n} B: first round trip {:.3} ms; VRAM->sysmem {:.2} GB/s (best of 5)",
        first.as_secs_f64() * 1e3,
        gbs(down)
    );
    Ok((
        got == data,
        format!("copy {n} B sysmem->VRAM (best of 5)"),
        up,
        n as u64,
    ))
}

/// `run fill`: `size` words of VRAM filled, checked.
fn run_fill(dev: &mut Device, ch: &mut Channel, size: u32) -> Result<Outcome> {
    let n = size as usize;
    let b = dev.alloc(Placement::Vram, n as u64 * 4)?;
    let took = timed(
        dev,
        ch,
        None,
        Some(&Program::Fill {
            dst: b.va(),
            count: size,
            value: 0x3F80_0000,
        }),
    )?;
    let got = ch.download(dev, &b, 0, n as u64 * 4)?;
    Ok((
        got.chunks_exact(4)
            .all(|c| c == 0x3F80_0000u32.to_le_bytes()),
        format!("fill {n} words in VRAM"),
        took,
        4 * n as u64,
    ))
}

/// What a workload run gives: whether its results were right, what it
/// was, how long it took, and its bytes (or flops) for the rate.
type Outcome = (bool, String, Duration, u64);

fn run(dev: &mut Device, w: Workload, size: u32) -> Result<bool> {
    if size == 0 {
        return Err(Error::InvalidArgument("--size must be positive".into()));
    }
    let mut ch = Channel::new(dev, 0, ChannelConfig::default())?;
    let mut rng = Rng(42);
    let (ok, what, took, bytes) = match w {
        Workload::Saxpy => run_saxpy(dev, &mut ch, &mut rng, size)?,
        Workload::Gemm => run_gemm(dev, &mut ch, &mut rng, size)?,
        Workload::Copy => run_copy(dev, &mut ch, size)?,
        Workload::Fill => run_fill(dev, &mut ch, size)?,
    };
    let s = took.as_secs_f64();
    let rate = match w {
        Workload::Gemm => format!("{:.2} GFLOP/s", bytes as f64 / s / 1e9),
        _ => format!("{:.2} GB/s", bytes as f64 / s / 1e9),
    };
    println!(
        "{} {what}: {:.3} ms submit-to-fence, {rate}",
        if ok { "PASS" } else { "FAIL" },
        s * 1e3
    );
    let st = dev.read32(regs::STATUS)?;
    if st & regs::STATUS_BUSY != 0 {
        println!("note: STATUS.BUSY still set");
    }
    Ok(ok)
}
