//! Base address registers of the vGPU, its vfio regions and its interrupts,
//! each declared once as a table that the device model and the transports
//! (the vfio-user server) both read.
//!
//! | BAR | type | size | contents |
//! |-----|------|------|----------|
//! | 0 | 32-bit memory, non-prefetchable | 64 KiB | registers ([`crate::regs`]) |
//! | 2 | 32-bit memory, non-prefetchable | 4 KiB | MSI-X table (offset 0) and PBA (offset 0x800) |
//! | 4 | 32-bit memory, non-prefetchable | 4 KiB | the doorbell page ([`crate::doorbell`], ABI 1.1): memory shared with the device, mappable |
//!
//! BARs 1, 3 and 5 are not implemented (read as zero, sizing returns 0).
//! A vfio-pci device reports nine regions (BAR0–5, expansion ROM, config
//! space, VGA) and five interrupt indexes (INTx, MSI, MSI-X, ERR, REQ);
//! the vGPU implements three regions and MSI-X.

/// Size of the configuration region exposed to the VMM (PCIe extended space).
pub const CONFIG_SPACE_SIZE: u64 = 0x1000;
/// Size of BAR0, the register aperture.
pub const BAR0_SIZE: u64 = 0x1_0000;
/// Size of BAR2, which holds the MSI-X table and pending-bit array.
pub const BAR2_SIZE: u64 = 0x1000;
/// Size of BAR4, the doorbell page.
pub const BAR4_SIZE: u64 = 0x1000;
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
/// vfio region index of BAR4, the doorbell page.
pub const REGION_BAR4: u32 = 4;
/// vfio region index of the configuration space (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const REGION_CONFIG: u32 = 7;
/// Number of vfio regions a vfio-pci device reports (BAR0-5, ROM, config, VGA).
pub const NUM_REGIONS: u32 = 9;

/// vfio interrupt index of MSI-X (`VFIO_PCI_MSIX_IRQ_INDEX`).
pub const IRQ_INDEX_MSIX: u32 = 2;
/// Number of vfio interrupt indexes of a PCI device (`VFIO_PCI_NUM_IRQS`).
pub const NUM_IRQ_INDEXES: u32 = 5;

/// One vfio region as the device offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The vfio region index.
    pub index: u32,
    /// What the region is, for logs.
    pub name: &'static str,
    /// Size in bytes; 0 for a region the device does not implement.
    pub size: u64,
    /// The guest may read and write it (every implemented region may).
    pub rw: bool,
    /// Backed by memory shared with the device, which a VMM may map into
    /// the guest (vfio `MMAP` flag, with the backing file): guest accesses
    /// then never leave the guest.
    pub mappable: bool,
}

/// Every vfio region, by index.
pub const REGIONS: [RegionInfo; NUM_REGIONS as usize] = [
    region(REGION_BAR0, "BAR0 (registers)", BAR0_SIZE),
    region(1, "BAR1", 0),
    region(REGION_BAR2, "BAR2 (MSI-X)", BAR2_SIZE),
    region(3, "BAR3", 0),
    RegionInfo {
        mappable: true,
        ..region(REGION_BAR4, "BAR4 (doorbell page)", BAR4_SIZE)
    },
    region(5, "BAR5", 0),
    region(6, "expansion ROM", 0),
    region(REGION_CONFIG, "configuration space", CONFIG_SPACE_SIZE),
    region(8, "VGA", 0),
];

const fn region(index: u32, name: &'static str, size: u64) -> RegionInfo {
    RegionInfo {
        index,
        name,
        size,
        rw: size > 0,
        mappable: false,
    }
}

/// The region with vfio index `index`, if the device reports one.
pub fn region_info(index: u32) -> Option<&'static RegionInfo> {
    REGIONS.get(usize::try_from(index).ok()?)
}

/// One vfio interrupt index as the device offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// The vfio interrupt index.
    pub index: u32,
    /// What it is, for logs.
    pub name: &'static str,
    /// Vectors it has; 0 for one the device does not implement (it may
    /// only be switched off).
    pub count: u32,
}

/// Every vfio interrupt index, by index: the vGPU signals through MSI-X only.
pub const IRQS: [IrqInfo; NUM_IRQ_INDEXES as usize] = [
    irq(0, "INTx", 0),
    irq(1, "MSI", 0),
    irq(IRQ_INDEX_MSIX, "MSI-X", MSIX_VECTORS as u32),
    irq(3, "ERR", 0),
    irq(4, "REQ", 0),
];

const fn irq(index: u32, name: &'static str, count: u32) -> IrqInfo {
    IrqInfo { index, name, count }
}

/// The interrupt index `index`, if the device reports one.
pub fn irq_info(index: u32) -> Option<&'static IrqInfo> {
    IRQS.get(usize::try_from(index).ok()?)
}

/// Size of a BAR by number, or 0 when the BAR is not implemented.
pub fn bar_size(bar: usize) -> u64 {
    REGIONS
        .get(bar)
        .filter(|r| r.index <= 5)
        .map_or(0, |r| r.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_indexed_by_their_vfio_index() {
        for (i, r) in REGIONS.iter().enumerate() {
            assert_eq!(r.index as usize, i, "{}", r.name);
        }
        for (i, q) in IRQS.iter().enumerate() {
            assert_eq!(q.index as usize, i, "{}", q.name);
        }
        assert_eq!(region_info(REGION_BAR0).map(|r| r.size), Some(BAR0_SIZE));
        assert_eq!(
            region_info(REGION_CONFIG).map(|r| r.size),
            Some(CONFIG_SPACE_SIZE)
        );
        assert_eq!(region_info(NUM_REGIONS), None);
        assert_eq!(irq_info(IRQ_INDEX_MSIX).map(|q| q.count), Some(1));
        assert_eq!(irq_info(NUM_IRQ_INDEXES), None);
        assert_eq!(
            (bar_size(0), bar_size(1), bar_size(2)),
            (BAR0_SIZE, 0, BAR2_SIZE)
        );
        assert_eq!((bar_size(3), bar_size(4), bar_size(5)), (0, BAR4_SIZE, 0));
        let mappable: Vec<u32> = REGIONS
            .iter()
            .filter(|r| r.mappable)
            .map(|r| r.index)
            .collect();
        assert_eq!(
            mappable,
            [REGION_BAR4],
            "only the doorbell page is shared memory"
        );
        assert_eq!(bar_size(6), 0, "the ROM is no BAR");
        assert_eq!(bar_size(7), 0, "config space is no BAR");
    }
}
