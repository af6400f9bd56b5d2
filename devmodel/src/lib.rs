//! The vgpud device model: one virtual GPU, as a VM's driver sees it.
//!
//! A [`Vgpu`] is a PCI 3D controller whose registers (BAR0) are emulated,
//! whose work comes from channels the guest builds in its own memory, and
//! whose copy and compute operations execute on a [`backend::Backend`]
//! (the [`cpu_engine::CpuEngine`] here; a CUDA backend later). The
//! interface is specified normatively in `docs/abi.md`.
//!
//! Module map, after the hardware concepts:
//! * [`memory`]: DMA-mapped guest RAM, pinned while mapped.
//! * [`gmmu`]: the GPU page-table walk and its TLB.
//! * [`channel`]: instance blocks, GPFIFO entries, USERD, channel state.
//! * [`pushbuf`]: method headers and the audit of a pushbuffer segment.
//! * [`classes`]: HOST, COPY and COMPUTE methods.
//! * [`command`]: audited commands and engine operations.
//! * [`backend`], [`cpu_engine`]: the engine trait and the reference engine.
//! * [`vgpu`]: the device face and the channel front end.

pub mod backend;
pub mod channel;
pub mod classes;
pub mod command;
pub mod cpu_engine;
pub mod doorbell;
pub mod gmmu;
#[cfg(feature = "harness")]
pub mod harness;
pub mod identity;
pub mod memory;
pub mod pushbuf;
pub mod sync;
pub mod thread;
pub mod vgpu;

pub use backend::{Backend, EngineContext};
pub use cpu_engine::CpuEngine;
pub use vgpu::{Vgpu, VgpuConfig, VgpuStats};

/// An error and its sources on one line (`a: b: c`), for logs and messages
/// where only the outermost error would otherwise show.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut e = self.0.source();
        while let Some(s) = e {
            write!(f, ": {s}")?;
            e = s.source();
        }
        Ok(())
    }
}

/// Errors returned through the device face.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Mmio(#[from] mmio::MmioError),
    #[error("region {0} does not exist")]
    NoSuchRegion(u32),
    #[error(transparent)]
    Memory(#[from] memory::MemError),
    #[error("an interrupt must be signalled through an eventfd, not {0}")]
    NotEventFd(String),
    #[error("irq index {index} vectors {start}+{count} do not exist")]
    BadIrq { index: u32, start: u32, count: u32 },
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error("cannot create the doorbell page")]
    DoorbellPage(#[source] std::io::Error),
    #[error(transparent)]
    Thread(#[from] thread::SpawnError),
}
