//! The execution backend: the physical engine that runs audited work.
//!
//! The trait is shaped for an asynchronous GPU: [`EngineContext::submit`]
//! returns at once, the backend may hold several items in flight (from
//! different channels and vGPUs), and each item completes later through
//! its callback with the execution time the backend measured. Each vGPU
//! gets its own context, which owns that vGPU's VRAM.

use std::sync::Arc;
use std::time::Duration;

use crate::command::Op;
use crate::memory::{GuestRam, MemError};

/// An item of work for the engine.
pub struct WorkItem {
    pub op: Op,
    /// The channel (of its vGPU) that submitted the item.
    pub channel: u32,
    /// The submitting vGPU's guest RAM, for system-memory extents. The
    /// backend resolves guest addresses only while it executes the item.
    pub mem: Arc<GuestRam>,
    /// The device model's own CPU time spent on the commands that led to this
    /// item (fetching and auditing their GPFIFO entries; CPU time, so a front
    /// end that waited for a core meanwhile does not inflate it): a scheduler
    /// charges it to the vGPU with the engine time, so that a flood of tiny
    /// commands costs the flooder.
    pub front_end: Duration,
}

/// Why an item did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("guest memory: {0}")]
    Memory(#[from] MemError),
    #[error("VRAM range {offset:#x}+{len:#x} is outside the {size:#x}-byte framebuffer")]
    VramRange { offset: u64, len: u64, size: u64 },
    #[error("cancelled by a reset")]
    Cancelled,
    /// The operation's extents cover fewer bytes on one side than it
    /// moves (an audit bug; the channel faults with ENGINE_ERROR).
    #[error("the {0} extents are shorter than the operation")]
    ShortExtents(&'static str),
    /// The physical engine failed the item or went away (a GPU fault, a
    /// worker process that died): the engine's own error says why.
    #[error("engine failure")]
    EngineFailed(#[source] EngineFault),
    /// A guest module or kernel reached an engine that runs no guest PTX
    /// (the audit refuses them first: a device model bug).
    #[error("this engine runs no guest PTX")]
    NoPtx,
    /// The engine was stopped because an item ran past the kernel limit.
    #[error("stopped after running past the kernel limit")]
    Timeout,
    /// The GPU's JIT rejected a guest module (its CUDA error number).
    #[error("the PTX module did not load (CUDA error {0})")]
    ModuleInvalid(u32),
    /// The GPU refused a guest kernel launch: no such function, a grid or
    /// block it cannot run, parameters that do not fit (CUDA error number).
    #[error("the kernel launch was refused (CUDA error {0})")]
    LaunchRefused(u32),
    /// The GPU faulted running the item (a guest kernel's illegal address
    /// or trap): the vGPU's engine context is lost. The CUDA error number.
    #[error("the GPU faulted running the item (CUDA error {0})")]
    KernelFault(u32),
}

impl ExecError {
    /// What `CH_ERROR_INFO` says with the error code: the CUDA error number
    /// where the GPU gave one.
    pub fn info(&self) -> u32 {
        match self {
            ExecError::ModuleInvalid(n) | ExecError::LaunchRefused(n) => *n,
            _ => 0,
        }
    }
}

/// Why an engine failed, as the engine itself tells it (shared by every
/// item that failed for the same reason).
pub type EngineFault = Arc<dyn std::error::Error + Send + Sync>;

/// The outcome of one item.
#[derive(Debug)]
pub struct Completion {
    /// Time the item occupied the engine, as the backend measured it.
    pub gpu_time: Duration,
    pub result: Result<(), ExecError>,
}

/// Called exactly once per submitted item, from a backend thread, never
/// from inside `submit`.
pub type DoneFn = Box<dyn FnOnce(Completion) + Send>;

/// Errors creating backend resources.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("a framebuffer of {bytes} bytes does not fit in this host's address space")]
    VramTooLarge { bytes: u64 },
    #[error(transparent)]
    Thread(#[from] crate::thread::SpawnError),
    /// The engine could not be reached or started (a GPU worker): the
    /// engine's own error says why.
    #[error("the {engine} engine could not start")]
    Engine {
        engine: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot allocate {bytes} bytes of VRAM")]
    VramAlloc {
        bytes: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// A physical engine shared by the vGPUs of one parent.
pub trait Backend: Send + Sync {
    /// Short name (`cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Create a vGPU's context with `vram_bytes` of zeroed framebuffer.
    fn create_context(&self, vram_bytes: u64) -> Result<Arc<dyn EngineContext>, BackendError>;
    /// Items a scheduler should keep queued at the engine so that it never
    /// waits between items (more where each item's round trip is longer,
    /// as through a GPU worker process).
    fn queue_depth(&self) -> usize {
        4
    }
    /// Whether the engine runs on other hardware than the device model's
    /// front end, so that an item's fetch, decode and audit overlap the
    /// engine's work on the items before it (a GPU). A scheduler then
    /// charges an item the larger of its engine and front-end times, not
    /// their sum: the sum would bill a busy tenant for more engine time than
    /// there is, and a policy that idles the engine for credit (equal and
    /// fixed shares) would idle it for that.
    fn front_end_overlaps(&self) -> bool {
        false
    }
    /// Whether going from one vGPU's work to another's costs the engine time
    /// that no item is charged for: a GPU switches contexts (139 µs a switch
    /// on an H100, measured on its own clock). A scheduler then makes fewer, longer
    /// slices where it may (`docs/scheduling.md`).
    fn switches_cost(&self) -> bool {
        false
    }
    /// Whether a vGPU's framebuffer is host memory (the cpu engine's), so
    /// that the daemon must not commit more of them than the host can back;
    /// a device's own memory is counted by its parent's capacity instead.
    fn framebuffer_in_host_memory(&self) -> bool {
        false
    }
    /// Time the engine held items past their length because the host gave
    /// its threads no CPU in time (the cpu engine, whose engine is a host
    /// thread: a `spin` whose worker woke late). It is in no item's engine
    /// time, so no vGPU is charged for it; a GPU engine, timed on the GPU,
    /// has none.
    fn host_stall(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Whether a context's engine can run its work now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineHealth {
    /// It runs work (or would, given some).
    Ok,
    /// Its engine process (a GPU worker) exited or was killed and has not
    /// been replaced yet: the vGPU's work fails with `ENGINE_ERROR`.
    WorkerDown,
    /// Its engine process was stopped by the daemon: a sticky GPU error
    /// lost its context, or an item ran past the kernel limit.
    Faulted,
}

/// One vGPU's share of the engine: its VRAM and its work.
pub trait EngineContext: Send + Sync {
    /// Queue an item; `done` runs when it has finished or failed.
    fn submit(&self, item: WorkItem, done: DoneFn);
    /// Copy VRAM at `offset` into `buf` (HOST semaphores, parameter blocks).
    fn read_vram(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExecError>;
    /// Copy `buf` into VRAM at `offset`.
    fn write_vram(&self, offset: u64, buf: &[u8]) -> Result<(), ExecError>;
    /// The guest submitted a runlist: `(channel, timeslice µs)` in order
    /// (timeslice 0 = the parent's default). Backends that schedule
    /// between vGPUs use it; others ignore it.
    fn set_runlist(&self, _entries: &[(u32, u32)]) {}
    /// A VM attached to the vGPU (`true`) or left it. Backends that share
    /// time among running vGPUs use it; others ignore it.
    fn set_attached(&self, _attached: bool) {}
    /// Whether the engine can run this context's work now (an engine in
    /// the daemon's own process always can).
    fn health(&self) -> EngineHealth {
        EngineHealth::Ok
    }
    /// Give the framebuffer's memory back to the host: its contents become
    /// zero, as a new vGPU's are (the VM went away). Only while no item runs.
    fn release_vram(&self) {}
    /// Channel `channel` stopped (reset, disabled, faulted): drop its items
    /// that wait to run; the one running, if any, runs out (one piece).
    /// Their callbacks still run. Backends that queue nothing ignore it.
    fn cancel_channel(&self, _channel: u32) {}
    /// The most bytes one piece of a copy, memset or streaming program
    /// moves ([`crate::command::PIECE_BYTES`] unless the engine moves bytes
    /// so much faster that a piece of that size would be mostly overhead).
    fn piece_bytes(&self) -> u64 {
        crate::command::PIECE_BYTES
    }
    /// The GPU address at which this context's guest kernels see VA 0
    /// (`PTX_VA_BASE`); `None` where the backend runs no guest PTX.
    fn ptx_va_base(&self) -> Option<u64> {
        None
    }
    /// What the engine is, as CUDA describes a device (ABI 1.3's device-info block);
    /// `None` where it says nothing (the block reads empty).
    fn device_info(&self) -> Option<mmio::devinfo::DeviceInfo> {
        None
    }
    /// Abort this context's queued and running items as soon as possible
    /// (their callbacks still run, with [`ExecError::Cancelled`] or a
    /// result). Items submitted afterwards are not affected.
    fn cancel(&self);
}
