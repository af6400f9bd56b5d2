//! The doorbell page (BAR4, ABI 1.1): a page of memory shared between the
//! driver and the device, so that ringing a channel's doorbell is a store
//! to memory instead of a trapped register write.
//!
//! Layout (little-endian 32-bit words):
//!
//! | offset | name | written by | meaning |
//! |---|---|---|---|
//! | `0x000 + 4c` | `DB_PUT[c]` | driver | the `GP_PUT` it last stored in channel *c*'s USERD |
//! | `0x800` | `DB_DEVICE` | device | bit 0 `POLLING`: the device is watching `DB_PUT` |
//!
//! Notification suppression, in the style of virtio's event index and
//! NVMe's shadow doorbells: the device polls the page while a vGPU is
//! active and publishes `POLLING`; before it sleeps it clears `POLLING`,
//! issues a full fence and looks at `DB_PUT` once more. The driver stores
//! `GP_PUT` to USERD and to `DB_PUT[c]`, issues a full fence, and rings the
//! trapped `DOORBELL` register only when it then reads `POLLING` = 0. Each
//! side stores, fences, then loads what the other stores, so at least one
//! of them sees the other's store: no doorbell is lost on the edge between
//! polling and sleeping.

/// Offset of channel `c`'s `DB_PUT` word.
pub const fn put_offset(channel: u32) -> u64 {
    4 * channel as u64
}

/// Offset of `DB_DEVICE`.
pub const DEVICE_OFFSET: u64 = 0x800;

/// `DB_DEVICE` bit 0: the device polls `DB_PUT`; the driver need not ring
/// the trapped doorbell.
pub const DEVICE_POLLING: u32 = 1 << 0;

// Every channel's word and the device word fit the page without overlap.
const _: () = assert!(put_offset(crate::regs::MAX_CHANNELS - 1) + 4 <= DEVICE_OFFSET);
const _: () = assert!(DEVICE_OFFSET + 4 <= crate::bar::BAR4_SIZE);
