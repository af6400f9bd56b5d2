//! Base address registers of the vGPU and their vfio region indices.
//!
//! | BAR | type | size | contents |
//! |-----|------|------|----------|
//! | 0 | 32-bit memory, non-prefetchable | 64 KiB | registers ([`crate::regs`]) |
//! | 2 | 32-bit memory, non-prefetchable | 4 KiB | MSI-X table (offset 0) and PBA (offset 0x800) |
//!
//! BARs 1, 3, 4 and 5 are not implemented (read as zero, sizing returns 0).

/// Size of BAR0, the register aperture.
pub const BAR0_SIZE: u64 = 0x1_0000;
/// Size of BAR2, which holds the MSI-X table and pending-bit array.
pub const BAR2_SIZE: u64 = 0x1000;
/// Offset of the MSI-X table inside BAR2.
pub const MSIX_TABLE_OFFSET: u32 = 0x000;
/// Offset of the MSI-X pending-bit array inside BAR2.
pub const MSIX_PBA_OFFSET: u32 = 0x800;
/// Number of MSI-X vectors: vector 0 carries every interrupt cause.
pub const MSIX_VECTORS: u16 = 1;

/// vfio region index of BAR0 (`VFIO_PCI_BAR0_REGION_INDEX`).
pub const REGION_BAR0: u32 = 0;
/// vfio region index of BAR2.
pub const REGION_BAR2: u32 = 2;
/// vfio region index of the configuration space (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const REGION_CONFIG: u32 = 7;
/// Number of vfio regions a vfio-pci device reports (BAR0-5, ROM, config, VGA).
pub const NUM_REGIONS: u32 = 9;

/// Size of a BAR by number, or 0 when the BAR is not implemented.
pub fn bar_size(bar: usize) -> u64 {
    match bar {
        0 => BAR0_SIZE,
        2 => BAR2_SIZE,
        _ => 0,
    }
}
