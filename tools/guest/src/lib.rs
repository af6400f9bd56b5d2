//! The vgpud guest driver, written against `docs/abi.md` (ABI v1).
//!
//! A vGPU is a PCI 3D controller whose work comes from *channels* the
//! driver builds in its own memory: an instance block naming a GPFIFO
//! ring, USERD and an error notifier; GPFIFO entries pointing at
//! pushbuffer segments of method headers; a 3-level GPU MMU the driver
//! fills with page tables. This crate does all of that from user space,
//! over one of two [`transport`]s:
//!
//! * vfio-user ([`transport::vfio_user::VfioUserTransport`]): a client of
//!   a vGPU's socket, with a memfd as guest RAM;
//! * vfio ([`transport::vfio::VfioTransport`]): inside a Linux guest, a
//!   function bound to `vfio-pci`.
//!
//! Module map, after the hardware concepts:
//! * [`regs`]: BAR0 registers and configuration-space offsets.
//! * [`transport`]: config space, BAR0, DMA memory, MSI-X, reset.
//! * [`gmmu`]: page-table entries and the page-table builder.
//! * [`pushbuf`]: method headers, GPFIFO entries, the HOST/COPY/COMPUTE
//!   method builder.
//! * [`programs`]: built-in COMPUTE programs and their parameter blocks.
//! * [`device`]: an opened vGPU: identity, buffers, runlist, interrupts,
//!   faults, resets.
//! * [`channel`]: channels, segments, fences, recovery.
//! * [`selftest`], [`load`]: the CLI's checks and load generators.
//! * [`ptx`]: guest PTX kernels: the `ptx` check and the `ptx-fault`
//!   scenarios.
//!
//! ```no_run
//! use std::time::Duration;
//! use vgpu_guest::{Channel, ChannelConfig, Device, Placement, WaitMode};
//! use vgpu_guest::programs::Program;
//! use vgpu_guest::transport::vfio_user::{VfioUserTransport, DEFAULT_RAM_BYTES};
//!
//! let t = VfioUserTransport::connect("/run/vgpud/vgpu0.sock".as_ref(), DEFAULT_RAM_BYTES)?;
//! let mut dev = Device::open(Box::new(t))?;
//! let mut ch = Channel::new(&mut dev, 0, ChannelConfig::default())?;
//! let x = dev.alloc(Placement::Sysmem, 4 * 1024)?;
//! let y = dev.alloc(Placement::Sysmem, 4 * 1024)?;
//! x.host()?.write_f32s(0, &[1.0; 1024])?;
//! let f = ch.launch(&mut dev, &Program::Saxpy { x: x.va(), y: y.va(), n: 1024, a: 2.0 })?;
//! ch.wait(&mut dev, f, WaitMode::Interrupt, Duration::from_secs(5))?;
//! assert_eq!(y.host()?.read_f32s(0, 1)?[0], 2.0);
//! # Ok::<(), vgpu_guest::Error>(())
//! ```

// `x % n == 0` rather than `is_multiple_of` (Rust 1.87): the workspace's MSRV is 1.85.

pub mod alloc;
pub mod channel;
pub mod check;
pub mod device;
pub mod error;
pub mod gmmu;
pub mod load;
pub mod programs;
pub mod ptx;
pub mod pushbuf;
pub mod regs;
pub mod selftest;
pub mod transport;

pub use channel::{Channel, ChannelConfig, ChannelStatus, Fence, Notifier, Segment, WaitMode};
pub use device::{
    Buffer, Device, DeviceInfo, Doorbells, Identity, Interrupts, MmuFault, Placement, RunlistEntry,
};
pub use error::{Error, ErrorCode, Result};
pub use transport::Transport;
