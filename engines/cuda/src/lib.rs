//! The CUDA engine: vGPUs on a physical NVIDIA GPU.
//!
//! * [`worker`]: the worker process (`vgpud-cuda-worker`): the vGPU's CUDA
//!   context, framebuffer and registered guest RAM, the kernels of
//!   `kernels.cu` compiled with NVRTC at start-up.
//! * [`cli`]: the worker binary's command line.
//!
//! The daemon side (spawning workers, the wire, restarts) is the process
//! engine of `engine-worker`. The driver API is reached through `cudarc`
//! with dynamic loading: the workspace builds, and the cpu engine runs, on
//! hosts with no GPU and no CUDA; only a `cuda` parent needs `libcuda.so`
//! (and NVRTC) at run time.

pub mod cli;
pub mod worker;
