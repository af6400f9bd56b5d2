//! Register-level model of the vgpud virtual GPU (ABI v1, see `docs/abi.md`).
//!
//! This crate knows what the hardware interface *looks like* — the PCI
//! configuration space, the BAR layout, every BAR0 register with its access
//! type and reset value, and the bit layout of each register — but nothing
//! about channels, scheduling or transports. The device model (`devmodel`)
//! owns the behaviour behind the registers.
//!
//! * [`bar`]: BAR numbering, sizes, and the vfio regions and interrupts as tables.
//! * [`devinfo`]: the device-info block (ABI 1.3): the engine's identity and attributes.
//! * [`doorbell`]: the doorbell page shared with the driver (ABI 1.1).
//! * [`methods`]: pushbuffer method headers, class ids and methods.
//! * [`regs`]: the BAR0 register map, declared once as data, and register
//!   bitfields.
//! * [`regfile`]: the MMIO dispatch table and register storage (access width
//!   and alignment rules, RO / RW / W1C / WO semantics, holes).
//! * [`pci`]: type-0 configuration space with BAR sizing, the command
//!   register and a capability list (MSI-X, PCI Express with FLR).

pub mod bar;
pub mod devinfo;
pub mod doorbell;
pub mod methods;
pub mod pci;
pub mod regfile;
pub mod regs;

pub use regfile::{Decoded, RegRef, RegisterFile, WriteOutcome};

/// Errors raised by an access that the hardware cannot decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioError {
    /// The access does not fit inside the region it targets.
    #[error("access of {len} bytes at offset {offset:#x} is outside the {size:#x}-byte region")]
    OutOfRange { offset: u64, len: usize, size: u64 },
    /// Registers are 32 bits wide and must be accessed with naturally
    /// aligned 4-byte (or 8-byte, split into two) accesses.
    #[error("{len}-byte access at offset {offset:#x} is not a 4- or 8-byte aligned access")]
    BadWidth { offset: u64, len: usize },
}
