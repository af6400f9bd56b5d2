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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Append `len` bytes at `addr` (first byte at `va`) to `out`, joining the
/// last extent when it continues it.
fn push(out: &mut Vec<(Extent, u64)>, aperture: Aperture, addr: u64, len: u64, va: u64) {
    match out.last_mut() {
        Some((last, _)) if last.aperture == aperture && last.addr + last.len == addr => {
            last.len += len
        }
        _ => out.push((
            Extent {
                aperture,
                addr,
                len,
            },
            va,
        )),
    }
}

/// A run of an address space that guest kernels reach: `len` bytes (whole
/// 2 MiB chunks) from `va`, backed by the framebuffer from `vram`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRun {
    pub va: u64,
    pub vram: u64,
    pub len: u64,
    pub read_only: bool,
}

/// What a guest kernel reaches in the address space of the channel that
/// launches it (ABI §7.1): every 2 MiB-aligned VA chunk that the page
/// tables map wholly to VRAM, contiguously from a 2 MiB-aligned framebuffer
/// offset, with one permission: a 2 MiB leaf, or a page table of 512 such
/// 4 KiB leaves. A GPU maps its own virtual memory at that granularity;
/// system memory and partly mapped chunks are not reachable by kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelMap {
    /// Unique among the maps this process made: a backend that holds a
    /// map applies a new one only when the id changes.
    pub id: u64,
    /// Runs in VA order, each as long as the mapping continues.
    pub runs: Vec<KernelRun>,
}

static NEXT_KERNEL_MAP: AtomicU64 = AtomicU64::new(1);

/// One 4 KiB page table or directory, read whole.
fn read_table(mem: &GuestRam, gpa: u64) -> Option<Vec<Pte>> {
    let mut raw = vec![0u8; PAGE_4K as usize];
    mem.read(gpa, &mut raw).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|w| {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                Pte(u64::from_le_bytes(b))
            })
            .collect(),
    )
}

/// One vGPU's GMMU with its TLB.
#[derive(Debug)]
pub struct Gmmu {
    vram_size: u64,
    tlb: HashMap<(u64, u64), Leaf>,
    /// Kernel maps by page directory base, until the next invalidate.
    kernel_maps: HashMap<u64, Arc<KernelMap>>,
    pub hits: u64,
    pub misses: u64,
}

impl Gmmu {
    pub fn new(vram_size: u64) -> Self {
        Gmmu {
            vram_size,
            tlb: HashMap::new(),
            kernel_maps: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Drop every cached translation (`MMU_INVALIDATE`).
    pub fn invalidate(&mut self) {
        self.tlb.clear();
        self.kernel_maps.clear();
    }

    /// Drop every cached translation and the TLB's memory with them (an
    /// engine reset, or the VM going away: up to a few MiB per vGPU).
    pub fn reset(&mut self) {
        self.tlb = HashMap::new();
        self.kernel_maps = HashMap::new();
    }

    /// What guest kernels reach in the address space rooted at `pdb`
    /// ([`KernelMap`]), cached until the next invalidate as translations
    /// are. Tables that cannot be read, or entries that are not valid,
    /// leave their range unreachable (a kernel touching it faults on the
    /// GPU). The walk reads at most twice as many page tables as the
    /// framebuffer has 2 MiB chunks (plus 64): a guest that aliases its
    /// VRAM more than that reaches only the first of its aliases.
    pub fn kernel_map(&mut self, mem: &GuestRam, pdb: u64) -> Arc<KernelMap> {
        if let Some(m) = self.kernel_maps.get(&pdb) {
            return m.clone();
        }
        let mut budget = 2 * (self.vram_size / PAGE_2M) + 64;
        let mut runs: Vec<KernelRun> = Vec::new();
        let mut add = |va: u64, vram: u64, read_only: bool| match runs.last_mut() {
            Some(r) if r.va + r.len == va && r.vram + r.len == vram && r.read_only == read_only => {
                r.len += PAGE_2M
            }
            _ => runs.push(KernelRun {
                va,
                vram,
                len: PAGE_2M,
                read_only,
            }),
        };
        let in_vram = |addr: u64| {
            addr.checked_add(PAGE_2M)
                .is_some_and(|e| e <= self.vram_size)
        };
        'walk: for (i, l2) in read_table(mem, pdb).unwrap_or_default().iter().enumerate() {
            if !l2.valid() || l2.large() {
                continue;
            }
            let Some(l1s) = read_table(mem, l2.addr()) else {
                continue;
            };
            for (j, l1) in l1s.iter().enumerate() {
                let va = (i as u64) << 30 | (j as u64) << 21;
                if !l1.valid() {
                    continue;
                }
                if l1.large() {
                    if l1.aperture() == 0 && l1.addr() % PAGE_2M == 0 && in_vram(l1.addr()) {
                        add(va, l1.addr(), l1.read_only());
                    }
                    continue;
                }
                if budget == 0 {
                    break 'walk;
                }
                budget -= 1;
                let Some(l0) = read_table(mem, l1.addr()) else {
                    continue;
                };
                let first = l0[0];
                let whole = first.addr() % PAGE_2M == 0
                    && in_vram(first.addr())
                    && l0.iter().enumerate().all(|(k, p)| {
                        p.valid()
                            && p.aperture() == 0
                            && p.read_only() == first.read_only()
                            && p.addr() == first.addr() + k as u64 * PAGE_4K
                    });
                if whole {
                    add(va, first.addr(), first.read_only());
                }
            }
        }
        let map = Arc::new(KernelMap {
            id: NEXT_KERNEL_MAP.fetch_add(1, Ordering::Relaxed),
            runs,
        });
        if self.kernel_maps.len() >= 64 {
            self.kernel_maps.clear();
        }
        self.kernel_maps.insert(pdb, map.clone());
        map
    }

    /// Translate `va..va+len` of the address space rooted at `pdb` for a
    /// read or a write, checking every byte, into merged extents.
    ///
    /// A one-page access goes through the TLB. A longer one walks the
    /// directory once per 2 MiB and reads the page-table entries it needs
    /// in one access (a 256 MiB buffer of 4 KiB pages is 128 walks, not
    /// 65,536), without filling the TLB with pages used once.
    pub fn translate(
        &mut self,
        mem: &GuestRam,
        pdb: u64,
        va: u64,
        len: u64,
        write: bool,
    ) -> Result<Vec<Extent>, Fault> {
        let end = va
            .checked_add(len)
            .filter(|&e| e <= 1 << VA_BITS)
            .ok_or(Fault {
                code: ErrorCode::VaRange,
                va,
                write,
            })?;
        // Each extent with the VA it starts at, for the fault address.
        let mut out: Vec<(Extent, u64)> = Vec::new();
        let mut at = va;
        while at < end {
            if end - at <= PAGE_4K - (at & (PAGE_4K - 1)) {
                let leaf = self.leaf(mem, pdb, at, write)?;
                push(
                    &mut out,
                    leaf.aperture,
                    leaf.base + (at & (PAGE_4K - 1)),
                    end - at,
                    at,
                );
                at = end;
            } else {
                at = self.walk_run(mem, pdb, at, end, write, &mut out)?;
            }
        }
        for (e, start) in &out {
            if e.aperture == Aperture::Sysmem && mem.check(e.addr, e.len, write).is_err() {
                // The first page that fails, for the fault's address.
                let mut off = 0;
                while off < e.len {
                    let n = (PAGE_4K - ((e.addr + off) & (PAGE_4K - 1))).min(e.len - off);
                    if let Err(err) = mem.check(e.addr + off, n, write) {
                        return Err(Fault {
                            code: if matches!(err, MemError::ReadOnly { .. }) {
                                ErrorCode::ReadOnly
                            } else {
                                ErrorCode::SysmemUnmapped
                            },
                            va: start + off,
                            write,
                        });
                    }
                    off += n;
                }
            }
        }
        Ok(out.into_iter().map(|(e, _)| e).collect())
    }

    /// Translate from `at` to `end` or the end of `at`'s 2 MiB region,
    /// whichever comes first, appending to `out`; returns where it stopped.
    fn walk_run(
        &mut self,
        mem: &GuestRam,
        pdb: u64,
        at: u64,
        end: u64,
        write: bool,
        out: &mut Vec<(Extent, u64)>,
    ) -> Result<u64, Fault> {
        self.misses += 1;
        let stop = end.min((at | (PAGE_2M - 1)) + 1);
        let l1 = self.directory(mem, pdb, at, write)?;
        if l1.large() {
            let within = at & (PAGE_2M - 1);
            let leaf = self.leaf_of(l1, PAGE_2M, within & !(PAGE_4K - 1), at, write)?;
            push(
                out,
                leaf.aperture,
                leaf.base + (at & (PAGE_4K - 1)),
                stop - at,
                at,
            );
            return Ok(stop);
        }
        let first = (at >> 12) & 0x1FF;
        let count = ((stop - 1) >> 12) - (at >> 12) + 1;
        let mut raw = vec![0u8; count as usize * 8];
        mem.read(l1.addr() + first * 8, &mut raw)
            .map_err(|_| Fault {
                code: ErrorCode::PageTableUnmapped,
                va: at,
                write,
            })?;
        let mut va = at;
        for word in raw.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(word);
            let pte = Pte(u64::from_le_bytes(b));
            if !pte.valid() {
                return Err(Fault {
                    code: ErrorCode::PteInvalid,
                    va,
                    write,
                });
            }
            let leaf = self.leaf_of(pte, PAGE_4K, 0, va, write)?;
            let n = (PAGE_4K - (va & (PAGE_4K - 1))).min(stop - va);
            push(out, leaf.aperture, leaf.base + (va & (PAGE_4K - 1)), n, va);
            va += n;
        }
        Ok(stop)
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

    /// The L1 entry (a 2 MiB leaf, or the page table) for `va`.
    fn directory(&self, mem: &GuestRam, pdb: u64, va: u64, write: bool) -> Result<Pte, Fault> {
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
        Ok(l1)
    }

    fn walk(&self, mem: &GuestRam, pdb: u64, va: u64, write: bool) -> Result<Leaf, Fault> {
        let l1 = self.directory(mem, pdb, va, write)?;
        if l1.large() {
            return self.leaf_of(l1, PAGE_2M, va & (PAGE_2M - 1) & !(PAGE_4K - 1), va, write);
        }
        let l0 = mem
            .read_u64(l1.addr() + ((va >> 12) & 0x1FF) * 8)
            .map(Pte)
            .map_err(|_| Fault {
                code: ErrorCode::PageTableUnmapped,
                va,
                write,
            })?;
        if !l0.valid() {
            return Err(Fault {
                code: ErrorCode::PteInvalid,
                va,
                write,
            });
        }
        self.leaf_of(l0, PAGE_4K, 0, va, write)
    }

    /// The 4 KiB page `within` bytes into the `page`-sized leaf `pte`
    /// maps, checked (alignment, aperture, VRAM bounds, and for a write,
    /// not read-only).
    fn leaf_of(
        &self,
        pte: Pte,
        page: u64,
        within: u64,
        va: u64,
        write: bool,
    ) -> Result<Leaf, Fault> {
        let fault = |code| Fault { code, va, write };
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
        if write && pte.read_only() {
            return Err(fault(ErrorCode::ReadOnly));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest RAM of `bytes` at GPA 0, backed by a memfd.
    fn ram(bytes: u64) -> GuestRam {
        let ram = GuestRam::new();
        ram.map(0, bytes, crate::harness::memfd(bytes), 0, true)
            .expect("map");
        ram
    }

    fn put(ram: &GuestRam, table: u64, index: u64, pte: Pte) {
        ram.write(table + index * 8, &pte.0.to_le_bytes())
            .expect("table write");
    }

    fn pde(next: u64) -> Pte {
        let mut p = Pte(0);
        p.set_valid(true);
        p.set_addr_4k(next >> 12);
        p
    }

    fn leaf(addr: u64, aperture: u8, large: bool, read_only: bool) -> Pte {
        let mut p = pde(addr);
        p.set_aperture(aperture);
        p.set_large(large);
        p.set_read_only(read_only);
        p
    }

    #[test]
    fn kernels_reach_the_vram_mapped_in_whole_2mib_chunks() {
        const M2: u64 = PAGE_2M;
        let ram = ram(1 << 20);
        let (pdb, l1, l0a, l0b, l0c) = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000);
        put(&ram, pdb, 0, pde(l1));
        // VA 0: a 2 MiB leaf at VRAM 4 MiB. VA 2 MiB: 512 4 KiB leaves at
        // VRAM 6 MiB in order: together one run of 4 MiB.
        put(&ram, l1, 0, leaf(2 * M2, 0, true, false));
        put(&ram, l1, 1, pde(l0a));
        for k in 0..512 {
            put(&ram, l0a, k, leaf(3 * M2 + k * PAGE_4K, 0, false, false));
        }
        // VA 4 MiB: 4 KiB leaves with one page out of order: not reachable.
        put(&ram, l1, 2, pde(l0b));
        for k in 0..512 {
            let page = if k == 7 { 9 } else { k };
            put(&ram, l0b, k, leaf(8 * M2 + page * PAGE_4K, 0, false, false));
        }
        // VA 6 MiB: system memory: not reachable.
        put(&ram, l1, 3, leaf(0, 1, true, false));
        // VA 10 MiB: read-only VRAM at 0, a run of its own.
        put(&ram, l1, 5, leaf(0, 0, true, true));
        // VA 12 MiB: 4 KiB leaves with a hole: not reachable.
        put(&ram, l1, 6, pde(l0c));
        for k in 0..511 {
            put(&ram, l0c, k, leaf(10 * M2 + k * PAGE_4K, 0, false, false));
        }
        // VA 14 MiB: a leaf past the 32 MiB framebuffer: not reachable.
        put(&ram, l1, 7, leaf(16 * M2, 0, true, false));
        let mut mmu = Gmmu::new(32 << 20);
        let map = mmu.kernel_map(&ram, pdb);
        assert_eq!(
            map.runs,
            [
                KernelRun {
                    va: 0,
                    vram: 2 * M2,
                    len: 2 * M2,
                    read_only: false
                },
                KernelRun {
                    va: 5 * M2,
                    vram: 0,
                    len: M2,
                    read_only: true
                },
            ]
        );
        // Cached until an invalidate; a new map gets a new id.
        assert_eq!(mmu.kernel_map(&ram, pdb).id, map.id);
        put(&ram, l1, 5, Pte(0));
        assert_eq!(mmu.kernel_map(&ram, pdb).runs.len(), 2, "still cached");
        mmu.invalidate();
        let fresh = mmu.kernel_map(&ram, pdb);
        assert_ne!(fresh.id, map.id);
        assert_eq!(fresh.runs.len(), 1);
        // An unreadable directory reaches nothing.
        assert!(mmu.kernel_map(&ram, 1 << 40).runs.is_empty());
    }

    #[test]
    fn a_walk_of_aliased_tables_is_bounded() {
        // Every L1 entry of every L2 entry points at the same page table of
        // 512 VRAM leaves: 262,144 aliases of one 2 MiB chunk.
        let ram = ram(1 << 20);
        let (pdb, l1, l0) = (0x1000, 0x2000, 0x3000);
        for i in 0..512 {
            put(&ram, pdb, i, pde(l1));
            put(&ram, l1, i, pde(l0));
            put(&ram, l0, i, leaf(i * PAGE_4K, 0, false, false));
        }
        let mut mmu = Gmmu::new(4 << 20);
        let map = mmu.kernel_map(&ram, pdb);
        let chunks: u64 = map.runs.iter().map(|r| r.len / PAGE_2M).sum();
        assert_eq!(
            chunks,
            2 * 2 + 64,
            "twice the framebuffer's chunks, plus 64"
        );
    }
}
