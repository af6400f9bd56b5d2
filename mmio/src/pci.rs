//! PCI type-0 configuration space of the vGPU.
//!
//! The function is a 3D controller (class 0x030200) with one register BAR,
//! one MSI-X BAR and a capability list holding MSI-X (0x40) and a PCI
//! Express v2 endpoint capability (0x50) that advertises Function Level
//! Reset. BARs follow the standard sizing protocol: writing all ones reads
//! back the size mask. The configuration region is 4 KiB; the extended
//! space above 0x100 has no capabilities and reads as zero.

pub use crate::bar::CONFIG_SPACE_SIZE;
use crate::bar::{bar_size, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, MSIX_VECTORS};
use crate::MmioError;

/// Size of conventional configuration space that this model stores.
const CONVENTIONAL: usize = 0x100;

pub const PCI_COMMAND: usize = 0x04;
pub const PCI_STATUS: usize = 0x06;
pub const PCI_BAR0: usize = 0x10;
pub const PCI_CAP_PTR: usize = 0x34;
/// Offset of the MSI-X capability.
pub const MSIX_CAP: usize = 0x40;
/// Offset of the PCI Express capability.
pub const PCIE_CAP: usize = 0x50;
/// PCIe Device Control register (inside the PCIe capability).
pub const PCIE_DEVCTL: usize = PCIE_CAP + 0x08;

pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
pub const MSIX_CTRL_MASK: u16 = 1 << 14;
/// PCIe DevCap: Function Level Reset capability.
pub const DEVCAP_FLR: u32 = 1 << 28;
/// PCIe DevCtl: Initiate Function Level Reset (write-1 action, reads 0).
pub const DEVCTL_INITIATE_FLR: u16 = 1 << 15;

/// What a configuration write asks the device model to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigEffect {
    /// The guest initiated a Function Level Reset.
    pub flr: bool,
    /// MSI-X enable or function mask changed.
    pub msix_changed: bool,
}

/// PCI identity of a vGPU type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub revision: u8,
}

/// Emulated configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    data: [u8; CONVENTIONAL],
    /// Bits the guest may write.
    wmask: [u8; CONVENTIONAL],
    /// Bits that are write-1-to-clear.
    w1cmask: [u8; CONVENTIONAL],
    reset_image: [u8; CONVENTIONAL],
}

impl ConfigSpace {
    pub fn new(id: PciIdentity) -> Self {
        let mut cs = ConfigSpace {
            data: [0; CONVENTIONAL],
            wmask: [0; CONVENTIONAL],
            w1cmask: [0; CONVENTIONAL],
            reset_image: [0; CONVENTIONAL],
        };
        cs.put16(0x00, id.vendor_id);
        cs.put16(0x02, id.device_id);
        cs.put16(PCI_STATUS, 1 << 4); // capability list
        cs.data[0x08] = id.revision;
        cs.data[0x09] = 0x00; // programming interface
        cs.data[0x0A] = 0x02; // subclass: 3D controller
        cs.data[0x0B] = 0x03; // class: display controller
        cs.data[0x0E] = 0x00; // header type 0, single function
        cs.put16(0x2C, id.subsystem_vendor_id);
        cs.put16(0x2E, id.subsystem_id);
        cs.data[PCI_CAP_PTR] = MSIX_CAP as u8;
        cs.data[0x3D] = 0; // no INTx pin
        cs.wmask16(
            PCI_COMMAND,
            CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE | (1 << 6) | (1 << 8),
        );
        cs.w1cmask16(PCI_STATUS, 0xF900); // error bits
        cs.wmask[0x0C] = 0xFF; // cache line size
        cs.wmask[0x0D] = 0xFF; // latency timer
        cs.wmask[0x3C] = 0xFF; // interrupt line
        for bar in 0..6 {
            let size = bar_size(bar);
            if size > 0 {
                // 32-bit non-prefetchable memory BAR: flags read as 0.
                cs.wmask32(PCI_BAR0 + 4 * bar, !(size as u32 - 1));
            }
        }
        // MSI-X capability: table and PBA in BAR2.
        cs.data[MSIX_CAP] = 0x11;
        cs.data[MSIX_CAP + 1] = PCIE_CAP as u8;
        cs.put16(MSIX_CAP + 2, MSIX_VECTORS - 1);
        cs.wmask16(MSIX_CAP + 2, MSIX_CTRL_ENABLE | MSIX_CTRL_MASK);
        cs.put32(MSIX_CAP + 4, MSIX_TABLE_OFFSET | 2);
        cs.put32(MSIX_CAP + 8, MSIX_PBA_OFFSET | 2);
        // PCI Express capability v2, endpoint, FLR capable, x1 2.5 GT/s link.
        cs.data[PCIE_CAP] = 0x10;
        cs.data[PCIE_CAP + 1] = 0;
        cs.put16(PCIE_CAP + 2, 0x0002);
        cs.put32(PCIE_CAP + 4, DEVCAP_FLR);
        cs.wmask16(PCIE_DEVCTL, 0x7FFF);
        cs.w1cmask16(PCIE_CAP + 0x0A, 0x000F);
        cs.put32(PCIE_CAP + 0x0C, 0x0000_0011);
        cs.wmask16(PCIE_CAP + 0x10, 0x01C3);
        cs.put16(PCIE_CAP + 0x12, 0x0011);
        cs.reset_image = cs.data;
        cs
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(&mut self, off: usize, v: u32) {
        self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn wmask16(&mut self, off: usize, v: u16) {
        self.wmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn wmask32(&mut self, off: usize, v: u32) {
        self.wmask[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn w1cmask16(&mut self, off: usize, v: u16) {
        self.w1cmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn read16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.data[off], self.data[off + 1]])
    }

    /// Read any byte range of the 4 KiB configuration region.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), MmioError> {
        check(offset, out.len())?;
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.data.get(offset as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }

    /// Write any byte range of the configuration region; read-only bits and
    /// the extended space ignore writes.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<ConfigEffect, MmioError> {
        check(offset, bytes.len())?;
        let before_msix = self.read16(MSIX_CAP + 2);
        let mut effect = ConfigEffect::default();
        for (i, &v) in bytes.iter().enumerate() {
            let off = offset as usize + i;
            if off >= CONVENTIONAL {
                break;
            }
            // Initiate FLR is an action bit: it never sticks.
            if off == PCIE_DEVCTL + 1 && v & 0x80 != 0 {
                effect.flr = true;
            }
            let w = self.wmask[off];
            let c = self.w1cmask[off];
            self.data[off] = (self.data[off] & !w) | (v & w);
            self.data[off] &= !(v & c);
        }
        effect.msix_changed = self.read16(MSIX_CAP + 2) != before_msix;
        if effect.flr {
            self.reset();
        }
        Ok(effect)
    }

    /// Return to the power-on image (what a Function Level Reset does).
    pub fn reset(&mut self) {
        self.data = self.reset_image;
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read16(PCI_COMMAND)
    }
    /// MSI-X is enabled and the function is not masked.
    pub fn msix_enabled(&self) -> bool {
        let ctrl = self.read16(MSIX_CAP + 2);
        ctrl & MSIX_CTRL_ENABLE != 0 && ctrl & MSIX_CTRL_MASK == 0
    }
}

fn check(offset: u64, len: usize) -> Result<(), MmioError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= CONFIG_SPACE_SIZE => Ok(()),
        _ => Err(MmioError::OutOfRange {
            offset,
            len,
            size: CONFIG_SPACE_SIZE,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs() -> ConfigSpace {
        ConfigSpace::new(PciIdentity {
            vendor_id: 0x7667,
            device_id: 0x1001,
            subsystem_vendor_id: 0x7667,
            subsystem_id: 0x0001,
            revision: 1,
        })
    }
    fn r32(cs: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0; 4];
        cs.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_class() {
        let c = cs();
        assert_eq!(r32(&c, 0), 0x1001_7667);
        assert_eq!(r32(&c, 8) >> 8, 0x030200);
        assert_eq!(r32(&c, 0x2C), 0x0001_7667);
        assert_eq!(r32(&c, 0x100), 0, "no extended capabilities");
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = cs();
        for bar in 0..6u64 {
            c.write(0x10 + 4 * bar, &0xFFFF_FFFFu32.to_le_bytes())
                .unwrap();
        }
        assert_eq!(r32(&c, 0x10), 0xFFFF_0000, "BAR0 is 64 KiB, 32-bit memory");
        assert_eq!(r32(&c, 0x14), 0, "BAR1 not implemented");
        assert_eq!(r32(&c, 0x18), 0xFFFF_F000, "BAR2 is 4 KiB");
        assert_eq!(r32(&c, 0x1C), 0);
        c.write(0x10, &0xFEB4_1234u32.to_le_bytes()).unwrap();
        assert_eq!(r32(&c, 0x10), 0xFEB4_0000);
    }

    #[test]
    fn capability_list_walk() {
        let c = cs();
        let mut ids = vec![];
        let mut p = r32(&c, 0x34) as u64 & 0xFF;
        while p != 0 {
            let h = r32(&c, p);
            ids.push((p, h & 0xFF));
            p = ((h >> 8) & 0xFF) as u64;
        }
        assert_eq!(ids, vec![(0x40, 0x11), (0x50, 0x10)]);
        assert_ne!(r32(&c, 0x54) & DEVCAP_FLR, 0);
        assert_eq!(r32(&c, 0x44), 2, "MSI-X table in BAR2 at 0");
        assert_eq!(r32(&c, 0x48), 0x802, "PBA in BAR2 at 0x800");
    }

    #[test]
    fn command_msix_and_flr() {
        let mut c = cs();
        c.write(4, &0xFFFFu16.to_le_bytes()).unwrap();
        assert_eq!(
            c.command(),
            CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE | (1 << 6) | (1 << 8)
        );
        let e = c.write(0x42, &MSIX_CTRL_ENABLE.to_le_bytes()).unwrap();
        assert!(e.msix_changed && c.msix_enabled());
        assert_eq!(
            r32(&c, 0x40) >> 16 & 0x7FF,
            0,
            "table size N-1 is read-only"
        );
        let e = c
            .write(PCIE_DEVCTL as u64, &DEVCTL_INITIATE_FLR.to_le_bytes())
            .unwrap();
        assert!(e.flr);
        assert_eq!(c.command(), 0, "FLR restores the power-on image");
        assert!(!c.msix_enabled());
        assert_eq!(
            r32(&c, PCIE_DEVCTL as u64) & 0xFFFF,
            0,
            "initiate-FLR reads as 0"
        );
        assert!(c.write(0xFFF, &[0, 0]).is_err());
    }
}
