//! `vgpud-cuda-worker`: one vGPU's GPU work, in a process of its own
//! (started by vgpud's CUDA engine; not run by hand). `--probe` prints
//! what the GPU is, `--gpus` every GPU the host shows, as JSON.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::Parser;
use engine_worker::endpoint::Endpoint;
use engine_worker::sandbox::{self, SandboxPolicy};

#[derive(Parser)]
#[command(about = "vgpud's CUDA worker: one vGPU's context, framebuffer and guest RAM")]
struct Args {
    /// The GPU (CUDA device ordinal).
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// The GPU by UUID (32 hex digits), instead of --device.
    #[arg(long, value_name = "HEX")]
    device_uuid: Option<String>,
    /// Framebuffer bytes to allocate.
    #[arg(long, default_value_t = 0)]
    vram: u64,
    /// The descriptor of the socket to the daemon.
    #[arg(long, default_value_t = 3)]
    fd: RawFd,
    /// The descriptor of the daemon's ring file; its two doorbells (daemon
    /// to worker, worker to daemon) follow it. Without it, the socket
    /// carries everything.
    #[arg(long)]
    ring_fd: Option<RawFd>,
    /// Print the GPU's name, memory and multiprocessors, and exit.
    #[arg(long)]
    probe: bool,
    /// Print every GPU the host shows (ordinal, UUID, PCI address, name,
    /// memory, multiprocessors) as a JSON array, and exit.
    #[arg(long, conflicts_with = "probe")]
    gpus: bool,
    /// No GPU: run every operation on the cpu engine in this process (the
    /// tests of the CUDA engine's process side; vgpud passes it when
    /// VGPUD_CUDA_EMULATE is set, which also says which GPUs --gpus lists).
    #[arg(long)]
    emulate: bool,
    /// Run as this user once started (engine_worker::sandbox).
    #[arg(long, requires_all = ["sandbox_gid", "sandbox_root"], conflicts_with = "no_sandbox")]
    sandbox_uid: Option<u32>,
    /// Run as this group once started.
    #[arg(long, requires = "sandbox_uid")]
    sandbox_gid: Option<u32>,
    /// An empty directory: the worker's root once started.
    #[arg(long, requires = "sandbox_uid")]
    sandbox_root: Option<PathBuf>,
    /// Run with the daemon's privileges (measurements only).
    #[arg(long)]
    no_sandbox: bool,
}

fn fail(e: &(dyn std::error::Error + 'static)) -> ! {
    eprintln!("vgpud-cuda-worker: {}", devmodel::Chain(e));
    std::process::exit(1);
}

/// The worker binary's `main`.
pub fn main() {
    let args = Args::parse();
    if args.probe {
        probe(&args);
        return;
    }
    if args.gpus {
        gpus(&args);
        return;
    }
    let policy = match (args.sandbox_uid, args.sandbox_gid, &args.sandbox_root) {
        (Some(uid), Some(gid), Some(root)) => Some(SandboxPolicy {
            uid,
            gid,
            root: root.clone(),
        }),
        _ if args.no_sandbox => None,
        _ => {
            eprintln!("vgpud-cuda-worker: --sandbox-uid/gid/root or --no-sandbox is required");
            std::process::exit(2);
        }
    };
    // The worker is on the data path (its threads submit and complete every
    // item): it runs at the daemon's data-path priority, raised while it
    // still may (before it gives up its privileges), with one thread, so
    // that every thread after it, the CUDA driver's included, inherits it.
    // Left at the default, it waits for a core behind the VMs' vCPUs on a
    // busy host (measured on the H100 machine's host beside 16 CPU-bound
    // processes: its submitting thread waited 1.5 s of 2 s).
    devmodel::thread::raise_current(devmodel::thread::DATA_PATH_NICE);
    // First of all, with one thread: the device is opened unprivileged.
    let confinement = sandbox::prepare(policy).unwrap_or_else(|e| fail(&e));
    // SAFETY: the daemon passed these descriptors to this process for this
    // purpose; nothing else in the process owns them.
    let ep = unsafe { Endpoint::from_fd(args.fd, args.ring_fd) }.unwrap_or_else(|e| fail(&e));
    if args.emulate {
        std::process::exit(engine_worker::emulated::run(ep, args.vram, confinement));
    }
    let device = match &args.device_uuid {
        None => args.device,
        Some(hex) => crate::probe::ordinal_of(hex).unwrap_or_else(|e| fail(&e)),
    };
    std::process::exit(crate::worker::run(ep, device, args.vram, confinement));
}

/// `--probe`: what the GPU is, as JSON on stdout.
fn probe(args: &Args) {
    if args.emulate {
        println!("{}", engine_worker::emulated::PROBE);
        return;
    }
    let device = match &args.device_uuid {
        None => args.device,
        Some(hex) => crate::probe::ordinal_of(hex).unwrap_or_else(|e| fail(&e)),
    };
    match crate::probe::probe(device) {
        Ok(json) => println!("{json}"),
        Err(e) => fail(&e),
    }
}

/// `--gpus`: every GPU the host shows, as a JSON array on stdout.
fn gpus(args: &Args) {
    use engine_worker::emulated::{self, EMULATE_ENV};
    let list = if args.emulate {
        let spec = std::env::var(EMULATE_ENV).unwrap_or_else(|_| "1".into());
        emulated::gpus(&spec).unwrap_or_else(|| {
            eprintln!(
                "vgpud-cuda-worker: {EMULATE_ENV}={spec:?} is neither a count of GPUs (1 ..= {}) nor a list of their sizes (\"16GiB,8GiB\")",
                emulated::MAX_EMULATED_GPUS
            );
            std::process::exit(2);
        })
    } else {
        crate::gpus::list().unwrap_or_else(|e| fail(&e))
    };
    match serde_json::to_string(&list) {
        Ok(json) => println!("{json}"),
        Err(e) => fail(&e),
    }
}
