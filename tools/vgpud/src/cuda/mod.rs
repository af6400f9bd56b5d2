//! The CUDA engine: vGPUs on a physical NVIDIA GPU.
//!
//! * [`engine`]: the [`devmodel::Backend`] the daemon's parent uses; each
//!   vGPU's context is a worker process of its own.
//! * [`worker`]: that process (`vgpud-cuda-worker`): the vGPU's CUDA
//!   context, framebuffer and registered guest RAM, the kernels of
//!   `kernels.cu` compiled with NVRTC at start-up.
//! * [`wire`]: the messages between the two.
//! * [`emulated`]: the worker's protocol served by the cpu engine, for
//!   testing the process side where there is no GPU.
//!
//! The driver API is reached through `cudarc` with dynamic loading: the
//! workspace builds, and the cpu engine runs, on hosts with no GPU and no
//! CUDA; only a `cuda` parent needs `libcuda.so` (and NVRTC) at run time.

pub mod emulated;
pub mod engine;
pub mod wire;
pub mod worker;
