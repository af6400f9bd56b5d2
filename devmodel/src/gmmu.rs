//! The GPU memory-management unit: a three-level page table in guest RAM
//! that maps a channel's 39-bit GPU virtual addresses to this vGPU's VRAM
//! or to guest system memory, with a translation cache (TLB).
//!
//! ```text
//!  VA[38:30] → L2 (page directory)   entries: PDE
//!  VA[29:21] → L1 (page directory)   entries: PDE, or a 2 MiB leaf PTE (LARGE=1)
//!  VA[20:12] → L0 (page table)       entries: 4 KiB leaf PTE
//! ```
//! Every table is 4 KiB (512 eight-byte entries) in guest system memory,
//! addressed by guest physical address. A leaf names its aperture: VRAM
//! (an offset inside this vGPU's framebuffer) or SYSMEM (a guest physical
//! address that must be DMA-mapped). Anything else is a fault.
//!
//! The TLB caches validated leaves per (page directory base, 4 KiB page)
//! until software writes `MMU_INVALIDATE` (or the vGPU resets); a guest
//! that edits a live page table must invalidate before relying on it.
//! System-memory leaves are re-checked against the DMA map on every use.

use std::collections::HashMap;

use bitfield::bitfield;
use mmio::regs::ErrorCode;

use crate::memory::{GuestRam, MemError};

/// Width of a GPU virtual address.
pub const VA_BITS: u32 = 39;
pub const PAGE_4K: u64 = 1 << 12;
pub const PAGE_2M: u64 = 1 << 21;
/// Most translations the TLB holds before it is flushed wholesale.
const TLB_CAPACITY: usize = 1 << 16;

bitfield! {
    /// A page-directory or page-table entry (64 bits, little-endian).
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct Pte(pub u64);
    impl Debug;
    /// The entry is present.
    pub valid, set_valid: 0;
    /// In L1: this entry is a 2 MiB leaf. Must be 0 in L2.
    pub large, set_large: 1;
    /// Leaf aperture: 0 VRAM, 1 SYSMEM; 2 and 3 are invalid.
    pub u8, aperture, set_aperture: 3, 2;
    /// Leaf is read-only: a device write through it faults.
    pub read_only, set_read_only: 4;
    /// Bits 51:12 of the next table's GPA (PDE) or of the page (leaf).
    pub u64, addr_4k, set_addr_4k: 51, 12;
}

impl Pte {
    pub fn addr(&self) -> u64 {
        self.addr_4k() << 12
    }
}

/// Where a piece of a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aperture {
    /// Offset inside this vGPU's framebuffer.
    Vram,
    /// Guest physical address.
    Sysmem,
}

/// A physically contiguous piece of a translated buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub aperture: Aperture,
    pub addr: u64,
    pub len: u64,
}

/// A GPU-MMU fault: what went wrong, at which VA, on what kind of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub code: ErrorCode,
    pub va: u64,
    pub write: bool,
}

#[derive(Clone, Copy, Debug)]
struct Leaf {
    aperture: Aperture,
    /// Physical address of the 4 KiB page.
    base: u64,
    read_only: bool,
}

/// One vGPU's GMMU with its TLB.
#[derive(Debug)]
pub struct Gmmu {
    vram_size: u64,
    tlb: HashMap<(u64, u64), Leaf>,
    pub hits: u64,
    pub misses: u64,
}

impl Gmmu {
    pub fn new(vram_size: u64) -> Self {
        Gmmu {
            vram_size,
            tlb: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Drop every cached translation (`MMU_INVALIDATE`).
    pub fn invalidate(&mut self) {
        self.tlb.clear();
    }

    /// Drop every cached translation and the TLB's memory with them (an
    /// engine reset, or the VM going away: up to a few MiB per vGPU).
    pub fn reset(&mut self) {
        self.tlb = HashMap::new();
    }

    /// Translate `va..va+len` of the address space rooted at `pdb` for a
    /// read or a write, checking every byte, into merged extents.
    pub fn translate(
        &mut self,
        mem: &GuestRam,
        pdb: u64,
        va: u64,
        len: u64,
        write: bool,
    ) -> Result<Vec<Extent>, Fault> {
        let mut out: Vec<Extent> = Vec::new();
        let end = va
            .checked_add(len)
            .filter(|&e| e <= 1 << VA_BITS)
            .ok_or(Fault {
                code: ErrorCode::VaRange,
                va,
                write,
            })?;
        let mut at = va;
        while at < end {
            let leaf = self.leaf(mem, pdb, at, write)?;
            let in_page = at & (PAGE_4K - 1);
            let n = (PAGE_4K - in_page).min(end - at);
            let phys = leaf.base + in_page;
            if leaf.aperture == Aperture::Sysmem {
                mem.check(phys, n, write).map_err(|e| Fault {
                    code: if matches!(e, MemError::ReadOnly { .. }) {
                        ErrorCode::ReadOnly
                    } else {
                        ErrorCode::SysmemUnmapped
                    },
                    va: at,
                    write,
                })?;
            }
            match out.last_mut() {
                Some(last) if last.aperture == leaf.aperture && last.addr + last.len == phys => {
                    last.len += n
                }
                _ => out.push(Extent {
                    aperture: leaf.aperture,
                    addr: phys,
                    len: n,
                }),
            }
            at += n;
        }
        Ok(out)
    }

    fn leaf(&mut self, mem: &GuestRam, pdb: u64, va: u64, write: bool) -> Result<Leaf, Fault> {
        let key = (pdb, va >> 12);
        let leaf = match self.tlb.get(&key) {
            Some(l) => {
                self.hits += 1;
                *l
            }
            None => {
                self.misses += 1;
                let l = self.walk(mem, pdb, va, write)?;
                if self.tlb.len() >= TLB_CAPACITY {
                    self.tlb.clear();
                }
                self.tlb.insert(key, l);
                l
            }
        };
        if write && leaf.read_only {
            return Err(Fault {
                code: ErrorCode::ReadOnly,
                va,
                write,
            });
        }
        Ok(leaf)
    }

    fn walk(&self, mem: &GuestRam, pdb: u64, va: u64, write: bool) -> Result<Leaf, Fault> {
        let fault = |code| Fault { code, va, write };
        let read = |table: u64, index: u64| -> Result<Pte, Fault> {
            mem.read_u64(table + index * 8)
                .map(Pte)
                .map_err(|_| fault(ErrorCode::PageTableUnmapped))
        };
        let l2 = read(pdb, (va >> 30) & 0x1FF)?;
        if !l2.valid() || l2.large() {
            return Err(fault(ErrorCode::PdeInvalid));
        }
        let l1 = read(l2.addr(), (va >> 21) & 0x1FF)?;
        if !l1.valid() {
            return Err(fault(ErrorCode::PdeInvalid));
        }
        let (pte, page, within) = if l1.large() {
            (l1, PAGE_2M, va & (PAGE_2M - 1) & !(PAGE_4K - 1))
        } else {
            let l0 = read(l1.addr(), (va >> 12) & 0x1FF)?;
            if !l0.valid() {
                return Err(fault(ErrorCode::PteInvalid));
            }
            (l0, PAGE_4K, 0)
        };
        if pte.addr() & (page - 1) != 0 {
            return Err(fault(ErrorCode::MisalignedPage));
        }
        let aperture = match pte.aperture() {
            0 => Aperture::Vram,
            1 => Aperture::Sysmem,
            _ => return Err(fault(ErrorCode::PteInvalid)),
        };
        if aperture == Aperture::Vram
            && pte
                .addr()
                .checked_add(page)
                .is_none_or(|e| e > self.vram_size)
        {
            return Err(fault(ErrorCode::VramRange));
        }
        Ok(Leaf {
            aperture,
            base: pte.addr() + within,
            read_only: pte.read_only(),
        })
    }
}

/// Total length of a list of extents.
pub fn extents_len(e: &[Extent]) -> u64 {
    e.iter().map(|x| x.len).sum()
}
