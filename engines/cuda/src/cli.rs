//! `vgpud-cuda-worker`: one vGPU's GPU work, in a process of its own
//! (started by vgpud's CUDA engine; not run by hand). `--probe` prints
//! what the GPU is, as JSON.

use clap::Parser;

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
    fd: i32,
    /// Print the GPU's name, memory and multiprocessors, and exit.
    #[arg(long)]
    probe: bool,
    /// No GPU: run every operation on the cpu engine in this process (the
    /// tests of the CUDA engine's process side; vgpud passes it when
    /// VGPUD_CUDA_EMULATE=1).
    #[arg(long)]
    emulate: bool,
}

/// The worker binary's `main`.
pub fn main() {
    let args = Args::parse();
    if args.emulate {
        if args.probe {
            println!("{}", engine_worker::emulated::PROBE);
            return;
        }
        std::process::exit(engine_worker::emulated::run(args.fd, args.vram));
    }
    let device = match &args.device_uuid {
        None => args.device,
        Some(hex) => match crate::worker::ordinal_of(hex) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("vgpud-cuda-worker: {e}");
                std::process::exit(1);
            }
        },
    };
    if args.probe {
        match crate::worker::probe(device) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("vgpud-cuda-worker: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    std::process::exit(crate::worker::run(args.fd, device, args.vram));
}
