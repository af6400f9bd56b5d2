//! GPU MMU page tables (ABI §7), built by the driver in system memory.
//!
//! Three levels of 4 KiB tables of 512 little-endian 64-bit entries:
//! `VA[38:30]` indexes the L2 page directory at the instance block's `PDB`,
//! `VA[29:21]` an L1 directory (whose entries may be 2 MiB leaves), `VA[20:12]`
//! an L0 page table of 4 KiB leaves. Tables are addressed by GPA; leaves
//! point at a VRAM offset or a GPA according to their aperture.
//!
//! [`PageTables`] is pure bookkeeping over a [`TableStore`], which owns the
//! memory of the tables (DMA memory in the driver, a map in unit tests).

use crate::error::{Error, Result};

/// Width of a GPU virtual address.
pub const VA_BITS: u32 = 39;
/// Small page.
pub const PAGE_4K: u64 = 4096;
/// Large page (an L1 leaf).
pub const PAGE_2M: u64 = 2 << 20;
/// Entries per table.
pub const ENTRIES: usize = 512;

/// Entry bit 0.
pub const VALID: u64 = 1 << 0;
/// Entry bit 1: in L1, a 2 MiB leaf.
pub const LARGE: u64 = 1 << 1;
/// Entry bit 4: a device write through the leaf faults (`READ_ONLY`).
pub const READ_ONLY: u64 = 1 << 4;
/// Entry bits 51:12: next table's GPA, or the page address.
pub const ADDR_MASK: u64 = ((1 << 52) - 1) & !0xFFF;

/// Where a leaf points (entry bits 3:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aperture {
    /// A byte offset in the vGPU's framebuffer.
    Vram = 0,
    /// A guest physical address (DMA-mapped guest memory).
    Sysmem = 1,
}

/// A page-directory entry pointing at the next-level table.
pub fn pde(table_gpa: u64) -> u64 {
    (table_gpa & ADDR_MASK) | VALID
}

/// A 4 KiB leaf (L0 entry).
pub fn pte(addr: u64, aperture: Aperture, read_only: bool) -> u64 {
    (addr & ADDR_MASK) | VALID | (aperture as u64) << 2 | if read_only { READ_ONLY } else { 0 }
}

/// A 2 MiB leaf (L1 entry with `LARGE`).
pub fn large_pte(addr: u64, aperture: Aperture, read_only: bool) -> u64 {
    pte(addr, aperture, read_only) | LARGE
}

/// Table index of `va` at `level` (2 = top).
pub fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * level)) & 0x1FF) as usize
}

/// Memory for page tables.
pub trait TableStore {
    /// A zeroed 4 KiB table; returns its GPA.
    fn alloc_table(&mut self) -> Result<u64>;
    /// Give a table back (nothing points at it any more).
    fn free_table(&mut self, gpa: u64);
    /// Read entry `index` of the table at `table`.
    fn read_entry(&mut self, table: u64, index: usize) -> Result<u64>;
    /// Write entry `index` of the table at `table`.
    fn write_entry(&mut self, table: u64, index: usize, entry: u64) -> Result<()>;
}

/// The memory behind a mapping, in device terms.
#[derive(Clone, Copy, Debug)]
pub enum Backing<'a> {
    /// Contiguous from this VRAM offset or GPA.
    Contiguous(u64),
    /// One address per 4 KiB page.
    Pages(&'a [u64]),
}

/// How a mapping's leaves are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub aperture: Aperture,
    /// Device writes through the leaves fault (`READ_ONLY`).
    pub read_only: bool,
    /// Use 2 MiB leaves where VA and a contiguous backing allow.
    pub large: bool,
}

impl Leaf {
    /// Read-write 4 KiB leaves in `aperture`.
    pub fn small(aperture: Aperture) -> Leaf {
        Leaf {
            aperture,
            read_only: false,
            large: false,
        }
    }
}

/// What a VA translates to (a software walk, as the device does it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub addr: u64,
    pub aperture: Aperture,
    pub read_only: bool,
    pub large: bool,
}

/// One GPU address space: the L2 directory and everything below it.
#[derive(Debug)]
pub struct PageTables {
    pdb: u64,
}

impl PageTables {
    /// A fresh, empty address space.
    pub fn new(store: &mut impl TableStore) -> Result<PageTables> {
        Ok(PageTables {
            pdb: store.alloc_table()?,
        })
    }

    /// GPA of the top-level directory, for the instance block's `PDB`.
    pub fn pdb(&self) -> u64 {
        self.pdb
    }

    fn check_range(va: u64, len: u64) -> Result<()> {
        let end = va
            .checked_add(len)
            .ok_or_else(|| Error::InvalidArgument("VA range overflows".into()))?;
        if !va.is_multiple_of(PAGE_4K) || !len.is_multiple_of(PAGE_4K) || end > 1 << VA_BITS {
            return Err(Error::InvalidArgument(format!(
                "VA range {va:#x}+{len:#x} is not page aligned inside 2^{VA_BITS}"
            )));
        }
        Ok(())
    }

    /// The table an entry points at, creating it (and replacing a large
    /// leaf or nothing) when absent.
    fn next_table(store: &mut impl TableStore, table: u64, idx: usize) -> Result<u64> {
        let e = store.read_entry(table, idx)?;
        if e & VALID != 0 && e & LARGE == 0 {
            return Ok(e & ADDR_MASK);
        }
        let t = store.alloc_table()?;
        store.write_entry(table, idx, pde(t))?;
        Ok(t)
    }

    /// Map `len` bytes at `va` onto `backing`. With `leaf.large`, 2 MiB
    /// leaves are used wherever VA and a contiguous backing are both 2 MiB
    /// aligned over a whole large page.
    pub fn map(
        &mut self,
        store: &mut impl TableStore,
        va: u64,
        len: u64,
        backing: Backing<'_>,
        leaf: Leaf,
    ) -> Result<()> {
        let Leaf {
            aperture,
            read_only,
            large,
        } = leaf;
        Self::check_range(va, len)?;
        if let Backing::Pages(p) = backing {
            if (p.len() as u64) < len / PAGE_4K {
                return Err(Error::InvalidArgument(
                    "fewer backing pages than the mapping".into(),
                ));
            }
        }
        let mut off = 0;
        while off < len {
            let v = va + off;
            let l1 = Self::next_table(store, self.pdb, index(v, 2))?;
            if let (true, Backing::Contiguous(base)) = (large, backing) {
                if v.is_multiple_of(PAGE_2M) && len - off >= PAGE_2M && (base + off) % PAGE_2M == 0
                {
                    let old = store.read_entry(l1, index(v, 1))?;
                    store.write_entry(
                        l1,
                        index(v, 1),
                        large_pte(base + off, aperture, read_only),
                    )?;
                    if old & VALID != 0 && old & LARGE == 0 {
                        store.free_table(old & ADDR_MASK);
                    }
                    off += PAGE_2M;
                    continue;
                }
            }
            let addr = match backing {
                Backing::Contiguous(base) => base + off,
                Backing::Pages(p) => p[(off / PAGE_4K) as usize],
            };
            let l0 = Self::next_table(store, l1, index(v, 1))?;
            store.write_entry(l0, index(v, 0), pte(addr, aperture, read_only))?;
            off += PAGE_4K;
        }
        Ok(())
    }

    /// Invalidate the leaves covering `va..va+len` (tables are kept).
    /// The device caches translations: write `MMU_INVALIDATE` afterwards.
    pub fn unmap(&mut self, store: &mut impl TableStore, va: u64, len: u64) -> Result<()> {
        Self::check_range(va, len)?;
        let mut v = va;
        while v < va + len {
            let l2e = store.read_entry(self.pdb, index(v, 2))?;
            if l2e & VALID == 0 {
                v = (v | ((1 << 30) - 1)) + 1;
                continue;
            }
            let l1 = l2e & ADDR_MASK;
            let l1e = store.read_entry(l1, index(v, 1))?;
            if l1e & VALID == 0 {
                v = (v | (PAGE_2M - 1)) + 1;
            } else if l1e & LARGE != 0 {
                store.write_entry(l1, index(v, 1), 0)?;
                v = (v | (PAGE_2M - 1)) + 1;
            } else {
                store.write_entry(l1e & ADDR_MASK, index(v, 0), 0)?;
                v += PAGE_4K;
            }
        }
        Ok(())
    }

    /// Walk the tables for `va` as the device would.
    pub fn translate(&self, store: &mut impl TableStore, va: u64) -> Result<Option<Translation>> {
        if va >= 1 << VA_BITS {
            return Ok(None);
        }
        let l2e = store.read_entry(self.pdb, index(va, 2))?;
        if l2e & VALID == 0 || l2e & LARGE != 0 {
            return Ok(None);
        }
        let l1e = store.read_entry(l2e & ADDR_MASK, index(va, 1))?;
        if l1e & VALID == 0 {
            return Ok(None);
        }
        let (leaf, page) = if l1e & LARGE != 0 {
            (l1e, PAGE_2M)
        } else {
            let l0e = store.read_entry(l1e & ADDR_MASK, index(va, 0))?;
            if l0e & VALID == 0 {
                return Ok(None);
            }
            (l0e, PAGE_4K)
        };
        let aperture = match (leaf >> 2) & 3 {
            0 => Aperture::Vram,
            1 => Aperture::Sysmem,
            _ => return Ok(None),
        };
        Ok(Some(Translation {
            addr: (leaf & ADDR_MASK) + (va & (page - 1)),
            aperture,
            read_only: leaf & READ_ONLY != 0,
            large: page == PAGE_2M,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MapStore {
        tables: HashMap<u64, Vec<u64>>,
        next: u64,
        freed: Vec<u64>,
    }
    impl TableStore for MapStore {
        fn alloc_table(&mut self) -> Result<u64> {
            self.next += PAGE_4K;
            let gpa = 0x8000_0000 + self.next;
            self.tables.insert(gpa, vec![0; ENTRIES]);
            Ok(gpa)
        }
        fn free_table(&mut self, gpa: u64) {
            self.tables.remove(&gpa);
            self.freed.push(gpa);
        }
        fn read_entry(&mut self, table: u64, index: usize) -> Result<u64> {
            self.tables
                .get(&table)
                .map(|t| t[index])
                .ok_or_else(|| Error::Protocol(format!("no table {table:#x}")))
        }
        fn write_entry(&mut self, table: u64, index: usize, entry: u64) -> Result<()> {
            let t = self
                .tables
                .get_mut(&table)
                .ok_or_else(|| Error::Protocol(format!("no table {table:#x}")))?;
            t[index] = entry;
            Ok(())
        }
    }

    #[test]
    fn entry_encoding_follows_the_abi() {
        assert_eq!(pde(0x1234_5000), 0x1234_5001);
        assert_eq!(pte(0x1234_5000, Aperture::Vram, false), 0x1234_5001);
        assert_eq!(pte(0x1234_5000, Aperture::Sysmem, false), 0x1234_5005);
        assert_eq!(pte(0x1234_5000, Aperture::Sysmem, true), 0x1234_5015);
        assert_eq!(large_pte(0x4020_0000, Aperture::Vram, false), 0x4020_0003);
        assert_eq!(
            pte(0xFFFF_FFFF_FFFF_FFFF, Aperture::Vram, false) >> 52,
            0,
            "reserved high bits stay 0"
        );
        assert_eq!(index(0x40_0000_0000 - 1, 2), 255);
        assert_eq!(index(0x7F_C000_0000, 2), 511);
        assert_eq!(index(0x20_0000, 1), 1);
        assert_eq!(index(0x3000, 0), 3);
    }

    #[test]
    fn small_and_large_mappings_walk_back() {
        let mut s = MapStore::default();
        let mut pt = PageTables::new(&mut s).unwrap();
        // 4 MiB + 8 KiB of VRAM at a 2 MiB aligned VA: two large pages, two small.
        let va = 0x10_0000_0000;
        pt.map(
            &mut s,
            va,
            2 * PAGE_2M + 2 * PAGE_4K,
            Backing::Contiguous(0x40_0000),
            Leaf {
                aperture: Aperture::Vram,
                read_only: false,
                large: true,
            },
        )
        .unwrap();
        let t = pt.translate(&mut s, va + 0x1234).unwrap().unwrap();
        assert_eq!(
            t,
            Translation {
                addr: 0x40_1234,
                aperture: Aperture::Vram,
                read_only: false,
                large: true
            }
        );
        let t = pt
            .translate(&mut s, va + 2 * PAGE_2M + 0x1008)
            .unwrap()
            .unwrap();
        assert_eq!((t.addr, t.large), (0x80_1008, false));
        assert!(pt
            .translate(&mut s, va + 2 * PAGE_2M + 2 * PAGE_4K)
            .unwrap()
            .is_none());
        // Scattered system pages, read-only.
        let pages = [0x9000, 0x3000, 0x7000];
        pt.map(
            &mut s,
            0x40_0000_1000,
            3 * PAGE_4K,
            Backing::Pages(&pages),
            Leaf {
                aperture: Aperture::Sysmem,
                read_only: true,
                large: true,
            },
        )
        .unwrap();
        for (i, p) in pages.iter().enumerate() {
            let t = pt
                .translate(&mut s, 0x40_0000_1000 + i as u64 * PAGE_4K + 5)
                .unwrap()
                .unwrap();
            assert_eq!(
                t,
                Translation {
                    addr: p + 5,
                    aperture: Aperture::Sysmem,
                    read_only: true,
                    large: false
                }
            );
        }
        // A misaligned backing gets small pages only.
        pt.map(
            &mut s,
            0x20_0000_0000,
            PAGE_2M,
            Backing::Contiguous(0x1000),
            Leaf {
                aperture: Aperture::Vram,
                read_only: false,
                large: true,
            },
        )
        .unwrap();
        assert!(!pt.translate(&mut s, 0x20_0000_0000).unwrap().unwrap().large);
        // Unmap drops both kinds.
        pt.unmap(&mut s, va, 2 * PAGE_2M + 2 * PAGE_4K).unwrap();
        assert!(pt.translate(&mut s, va).unwrap().is_none());
        assert!(pt.translate(&mut s, va + 2 * PAGE_2M).unwrap().is_none());
        // Remapping a small-page region large frees its L0 table.
        pt.map(
            &mut s,
            0x20_0000_0000,
            PAGE_2M,
            Backing::Contiguous(0x20_0000),
            Leaf {
                aperture: Aperture::Vram,
                read_only: false,
                large: true,
            },
        )
        .unwrap();
        assert!(pt.translate(&mut s, 0x20_0000_0000).unwrap().unwrap().large);
        assert_eq!(s.freed.len(), 1);
    }

    #[test]
    fn rejects_bad_ranges() {
        let mut s = MapStore::default();
        let mut pt = PageTables::new(&mut s).unwrap();
        assert!(pt
            .map(
                &mut s,
                0x1001,
                PAGE_4K,
                Backing::Contiguous(0),
                Leaf::small(Aperture::Vram)
            )
            .is_err());
        assert!(pt
            .map(
                &mut s,
                (1 << 39) - PAGE_4K,
                2 * PAGE_4K,
                Backing::Contiguous(0),
                Leaf::small(Aperture::Vram)
            )
            .is_err());
        assert!(pt
            .map(
                &mut s,
                0,
                2 * PAGE_4K,
                Backing::Pages(&[0x1000]),
                Leaf::small(Aperture::Sysmem)
            )
            .is_err());
        assert!(pt.translate(&mut s, 1 << 39).unwrap().is_none());
    }
}
