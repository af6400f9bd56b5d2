//! The CUDA engine: vGPUs on a physical NVIDIA GPU, each vGPU's work in a
//! worker process of its own (`vgpud-cuda-worker`). The daemon side —
//! spawning workers, the wire, restarts, the sandbox — is the process
//! engine of `engine-worker`; this crate is the worker.
//!
//! * [`cli`]: the worker binary's `main`: its command line, then confined
//!   ([`engine_worker::sandbox`]) before its first message.
//! * [`worker`]: the vGPU's CUDA context, framebuffer and registered guest
//!   RAM, the submitting and completion threads.
//! * [`ops`]: the built-in operations (copies, fills, the kernels of
//!   `kernels.cu` compiled with NVRTC at start-up).
//! * [`ptx`]: guest code: modules and their queries, the address space
//!   guest kernels see, launches.
//! * [`modules`]: a vGPU's modules by handle, their bounds, the images
//!   told apart and audited, the cache of compiled PTX.
//! * [`timeline`]: the GPU's own timeline of `spin` kernels, where the
//!   environment asks for it (what a switch between vGPUs costs the GPU).
//! * [`driver`]: the driver calls as owned resources.
//! * [`probe`]: what a GPU is (`--probe`, and the device-info block's
//!   contents), and which ordinal has a UUID.
//! * [`gpus`]: every GPU the host shows (`--gpus`).
//! * [`syscalls`]: what the driver calls once running, for the seccomp
//!   filter.
//!
//! The driver API is reached through `cudarc` with dynamic loading (this
//! is the only crate of the workspace that links it): the workspace builds,
//! and the cpu engine runs, on hosts with no GPU and no CUDA; only a `cuda`
//! parent needs `libcuda.so` (and NVRTC) at run time.

pub mod cli;
pub mod driver;
pub mod gpus;
pub mod modules;
pub mod ops;
pub mod probe;
pub mod ptx;
pub mod syscalls;
pub mod timeline;
pub mod worker;

use engine_worker::wire::FatalReason;

/// What goes wrong in the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA driver library (libcuda.so) on this host")]
    NoDriver,
    #[error(transparent)]
    Driver(#[from] driver::CuError),
    #[error("compiling the kernels (NVRTC)")]
    Compile(#[source] cudarc::nvrtc::CompileError),
    #[error("{what}")]
    GuestFile {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no GPU with UUID {0} on this host")]
    NoSuchGpu(String),
    #[error(transparent)]
    Worker(#[from] engine_worker::Error),
}

impl Error {
    /// How the worker reports this to the daemon: why, and the CUDA error
    /// number (the daemon tells a framebuffer that does not fit by it).
    pub fn fatal(&self) -> (FatalReason, u32) {
        match self {
            Error::Driver(e) if e.code == driver::CUDA_ERROR_OUT_OF_MEMORY => {
                (FatalReason::OutOfMemory, e.code)
            }
            Error::Driver(e) => (FatalReason::Start, e.code),
            Error::Worker(engine_worker::Error::Sandbox { .. })
            | Error::Worker(engine_worker::Error::Seccomp(_)) => (FatalReason::Sandbox, 0),
            Error::Worker(_) => (FatalReason::Protocol, 0),
            _ => (FatalReason::Start, 0),
        }
    }
}
