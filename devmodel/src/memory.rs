//! Guest RAM as the device sees it: regions the VMM DMA-maps from file
//! descriptors (vfio `DMA_MAP`), mapped into the daemon and pinned.
//!
//! A bus-mastering PCI device can only reach guest memory the IOMMU (here:
//! the VMM) mapped for it. Guest memory is never copied: each backing file
//! the VMM shares (QEMU's RAM memfd) is `mmap`ed once, whole, and
//! `mlock`ed (pinned) while any DMA region uses it, as VFIO pins the RAM of
//! an assigned device; a DMA region is a window into that mapping. A VMM
//! behind a vIOMMU maps guest memory page by page — thousands of regions
//! into one file — which this keeps at one mapping and one descriptor.
//! Users take a *snapshot* of the region set for the duration of one access
//! or one command; `unmap` removes the region from the set at once (no new
//! access can start) and then waits until no snapshot still holds it, so a
//! command in flight finishes first and nothing touches the memory after
//! `unmap` returns.

use crate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use vm_memory::bitmap::BS;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion, VolatileMemory, VolatileSlice,
};

/// Errors of guest-memory access and DMA mapping.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("guest physical range {gpa:#x}+{len:#x} is not DMA-mapped")]
    Unmapped { gpa: u64, len: u64 },
    #[error("guest physical address {gpa:#x} is mapped read-only")]
    ReadOnly { gpa: u64 },
    #[error("DMA map {gpa:#x}+{size:#x} is empty, overflows or overlaps an existing mapping")]
    BadMap { gpa: u64, size: u64 },
    #[error("no DMA mapping lies inside {gpa:#x}+{size:#x}, or one straddles its edge")]
    BadUnmap { gpa: u64, size: u64 },
    #[error("DMA map {gpa:#x}+{size:#x} at file offset {offset:#x} is not inside its file ({file_size:#x} bytes, or not a regular file)")]
    BeyondFile {
        gpa: u64,
        size: u64,
        offset: u64,
        file_size: u64,
    },
    #[error("cannot inspect the file backing DMA map {gpa:#x}+{size:#x}")]
    Metadata {
        gpa: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("writable DMA map {gpa:#x}+{size:#x} of a file opened read-only")]
    ReadOnlyFile { gpa: u64, size: u64 },
    #[error(
        "guest memory file of {file_size} bytes is larger than the host's memory ({host} bytes)"
    )]
    LargerThanHost { file_size: u64, host: u64 },
    #[error("mapping the guest memory file ({len} bytes) failed")]
    MapFile {
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("making a DMA region of {gpa:#x}+{size:#x} failed")]
    Region {
        gpa: u64,
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// One snapshot of the DMA-mapped regions; holding it keeps them mapped.
pub type Snapshot = Arc<GuestMemoryMmap>;

/// One backing file of guest RAM, mapped whole and pinned while any DMA
/// region looks into it.
#[derive(Debug)]
struct FileMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    writable: bool,
    pinned: bool,
    counter: Arc<AtomicU64>,
    _file: File,
}

// SAFETY: FileMap owns its mapping outright (the raw pointer is the only
// thing keeping it from being Send automatically): it is created and unmapped
// exactly once, and the memory behind it is only ever accessed through
// vm-memory's volatile slices, which are sound to use from any thread.
unsafe impl Send for FileMap {}
// SAFETY: `&FileMap` gives no access to the memory itself (only `len`, flags
// and the pointer value, all immutable after creation); concurrent access goes
// through volatile slices of the regions that look into it.
unsafe impl Sync for FileMap {}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is exactly the mapping `file_map` made for
        // this struct, unmapped only here; no region looks into it any more,
        // since each region holds an Arc of this FileMap until its last user
        // (a snapshot) is gone.
        unsafe {
            if self.pinned {
                libc::munlock(self.ptr.as_ptr().cast(), self.len);
            }
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
        if self.pinned {
            self.counter.fetch_sub(self.len as u64, Ordering::Relaxed);
        }
    }
}

/// The DMA-mapped guest RAM of one vGPU.
#[derive(Debug, Default)]
pub struct GuestRam {
    map: Mutex<Snapshot>,
    pinned: Arc<AtomicU64>,
    /// The mapping of each backing file (device, inode, access mode).
    files: Mutex<HashMap<(u64, u64, i32), Weak<FileMap>>>,
    /// Every DMA region by guest address, with the file mapping it looks
    /// into (which it keeps alive).
    owners: Mutex<BTreeMap<u64, RegionOwner>>,
    /// Bumped by every map and unmap ([`GuestRam::layout`]).
    generation: AtomicU64,
}

/// Where the DMA-mapped guest RAM lives: the files behind it and the
/// windows of them at each guest address. An engine in another process
/// maps the same files to reach guest memory (its GPA translation).
#[derive(Debug)]
pub struct RamLayout {
    /// Changes whenever the layout does.
    pub generation: u64,
    pub files: Vec<RamFile>,
    pub regions: Vec<RamRegion>,
}

/// One file guest RAM lives in (a VMM's memfd), as mapped here.
#[derive(Debug)]
pub struct RamFile {
    /// A duplicate of the descriptor.
    pub file: File,
    pub len: u64,
    pub writable: bool,
}

/// A DMA-mapped window: `len` bytes at guest address `gpa`, `offset` bytes
/// into `files[file]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    pub gpa: u64,
    pub len: u64,
    pub file: usize,
    pub offset: u64,
}

/// A DMA region and the file mapping it is a window into.
type RegionOwner = (Arc<GuestRegionMmap>, Arc<FileMap>);

impl Drop for GuestRam {
    /// The file mappings go only after every region is out of use: a
    /// snapshot must never look into unmapped memory.
    fn drop(&mut self) {
        if self.snapshot().num_regions() > 0 {
            let _ = self.unmap(0, u64::MAX);
        }
    }
}

impl GuestRam {
    pub fn new() -> Self {
        Self::default()
    }

    /// The regions mapped now. Keep it only as long as one access lasts.
    pub fn snapshot(&self) -> Snapshot {
        lock(&self.map).clone()
    }

    /// Bytes currently pinned in host memory.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned.load(Ordering::Relaxed)
    }

    /// The layout's generation now (cheap: compare before asking for
    /// [`GuestRam::layout`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The files and windows of the DMA-mapped guest RAM now.
    pub fn layout(&self) -> std::io::Result<RamLayout> {
        let owners = lock(&self.owners);
        let generation = self.generation();
        let mut files: Vec<RamFile> = Vec::new();
        let mut seen: Vec<*const FileMap> = Vec::new();
        let mut regions = Vec::new();
        for (gpa, (region, file)) in owners.iter() {
            let key = Arc::as_ptr(file);
            let idx = match seen.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    files.push(RamFile {
                        file: file._file.try_clone()?,
                        len: file.len as u64,
                        writable: file.writable,
                    });
                    seen.push(key);
                    seen.len() - 1
                }
            };
            let offset = region.as_ptr() as u64 - file.ptr.as_ptr() as u64;
            regions.push(RamRegion {
                gpa: *gpa,
                len: region.len(),
                file: idx,
                offset,
            });
        }
        Ok(RamLayout {
            generation,
            files,
            regions,
        })
    }

    /// Make `size` bytes of `fd` at `file_offset` guest physical
    /// `gpa..gpa+size`; the file is mapped and pinned if it is not yet.
    pub fn map(
        &self,
        gpa: u64,
        size: u64,
        fd: File,
        file_offset: u64,
        writable: bool,
    ) -> Result<(), MemError> {
        let bad = || MemError::BadMap { gpa, size };
        if size == 0 || gpa.checked_add(size).is_none() || usize::try_from(size).is_err() {
            return Err(bad());
        }
        // A window past the end of its file would fault (SIGBUS) on first
        // access, so the whole range must lie inside a regular file.
        let meta = fd
            .metadata()
            .map_err(|source| MemError::Metadata { gpa, size, source })?;
        if !meta.file_type().is_file()
            || file_offset
                .checked_add(size)
                .is_none_or(|end| end > meta.len())
        {
            return Err(MemError::BeyondFile {
                gpa,
                size,
                offset: file_offset,
                file_size: meta.len(),
            });
        }
        if !file_offset.is_multiple_of(4096) {
            return Err(bad());
        }
        let file = self.file_map(fd, &meta)?;
        if writable && !file.writable {
            return Err(MemError::ReadOnlyFile { gpa, size });
        }
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: `file_offset + size` lies inside the file mapping (checked
        // above against the file size the mapping was made with, which the
        // seal keeps); the mapping outlives the region through `owners`.
        let mmap = unsafe {
            MmapRegion::build_raw(
                file.ptr.as_ptr().add(file_offset as usize),
                size as usize,
                prot,
                libc::MAP_SHARED,
            )
        }
        .map_err(|source| MemError::Region { gpa, size, source })?;
        let region = Arc::new(GuestRegionMmap::new(mmap, GuestAddress(gpa)).ok_or_else(bad)?);
        let mut guard = lock(&self.map);
        let next = guard.insert_region(region.clone()).map_err(|_| bad())?;
        *guard = Arc::new(next);
        lock(&self.owners).insert(gpa, (region, file));
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(gpa, size, writable, "dma map");
        Ok(())
    }

    /// The mapping of `fd`'s backing file: the one already made, or a new
    /// one of the whole file, pinned.
    fn file_map(&self, fd: File, meta: &std::fs::Metadata) -> Result<Arc<FileMap>, MemError> {
        // SAFETY: fcntl(F_GETFL) takes no pointer argument; it only reads the
        // status flags of `fd`, an open descriptor owned by this call.
        let mode = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) } & libc::O_ACCMODE;
        let key = (meta.dev(), meta.ino(), mode);
        let mut files = lock(&self.files);
        if let Some(f) = files.get(&key).and_then(Weak::upgrade) {
            if f.len as u64 >= meta.len() {
                return Ok(f);
            }
        }
        // Pinning populates the whole file: one that cannot fit in the
        // host's memory is refused rather than left to the OOM killer.
        let host = host_memory_bytes();
        let too_large = MemError::LargerThanHost {
            file_size: meta.len(),
            host,
        };
        if meta.len() > host {
            return Err(too_large);
        }
        if !shrink_sealed(&fd) {
            tracing::warn!(size = meta.len(), "guest memory file is not sealed against shrinking; a client that truncates it would fault the daemon");
        }
        let len = usize::try_from(meta.len()).map_err(|_| too_large)?;
        let writable = mode == libc::O_RDWR;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a new mapping at an address the kernel chooses (a null
        // hint), so no existing memory is replaced; `len` is the file's size
        // and the result is checked against MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        let map_err = |source| MemError::MapFile {
            len: len as u64,
            source,
        };
        if p == libc::MAP_FAILED {
            return Err(map_err(std::io::Error::last_os_error()));
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| {
            map_err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "mmap returned address 0",
            ))
        })?;
        // SAFETY: mlock only changes residency of `p..p+len`, which is
        // exactly the mapping just made and owned by nothing else yet.
        let pinned = unsafe { libc::mlock(p, len) } == 0;
        if pinned {
            self.pinned.fetch_add(len as u64, Ordering::Relaxed);
        } else {
            tracing::warn!(size = len, err = %std::io::Error::last_os_error(), "could not pin guest memory (mlock); continuing unpinned");
        }
        let f = Arc::new(FileMap {
            ptr,
            len,
            writable,
            pinned,
            counter: self.pinned.clone(),
            _file: fd,
        });
        if files.len() >= 64 {
            files.retain(|_, w| w.strong_count() > 0);
        }
        files.insert(key, Arc::downgrade(&f));
        Ok(f)
    }

    /// Unmap every region inside `gpa..gpa+size`, waiting until no command
    /// still uses them. A region that straddles the range is an error and
    /// nothing is unmapped.
    pub fn unmap(&self, gpa: u64, size: u64) -> Result<(), MemError> {
        let end = gpa
            .checked_add(size)
            .ok_or(MemError::BadUnmap { gpa, size })?;
        let removed = {
            let mut guard = lock(&self.map);
            let mut owners = lock(&self.owners);
            // Regions are disjoint and keyed by start: those touching the
            // range start below its end and end above its start.
            let touching: Vec<u64> = owners
                .range(..end)
                .filter(|(_, (r, _))| r.start_addr().0 + r.len() > gpa)
                .map(|(k, _)| *k)
                .collect();
            if touching
                .iter()
                .any(|k| *k < gpa || owners[k].0.start_addr().0 + owners[k].0.len() > end)
            {
                return Err(MemError::BadUnmap { gpa, size });
            }
            if touching.is_empty() {
                return Err(MemError::BadUnmap { gpa, size });
            }
            // One pass over what stays (a vIOMMU guest has thousands of
            // page-sized regions; removing them one by one is quadratic).
            // Nothing changes unless the new set could be built.
            let rest: Vec<Arc<GuestRegionMmap>> = owners
                .iter()
                .filter(|(k, _)| touching.binary_search(k).is_err())
                .map(|(_, (r, _))| r.clone())
                .collect();
            let next = if rest.is_empty() {
                GuestMemoryMmap::default()
            } else {
                GuestMemoryMmap::from_arc_regions(rest)
                    .map_err(|_| MemError::BadUnmap { gpa, size })?
            };
            *guard = Arc::new(next);
            self.generation.fetch_add(1, Ordering::AcqRel);
            touching
                .iter()
                .filter_map(|k| owners.remove(k))
                .collect::<Vec<_>>()
        };
        // Wait until no command still uses the removed regions (a snapshot
        // taken before the swap holds them); then let go of their files: the
        // last window into a file unmaps and unpins it.
        let start = Instant::now();
        for (r, _) in &removed {
            while Arc::strong_count(r) > 1 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let n = removed.len();
        drop(removed);
        tracing::debug!(
            gpa,
            size,
            regions = n,
            waited_us = start.elapsed().as_micros() as u64,
            "dma unmap"
        );
        Ok(())
    }

    /// Copy guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let snap = self.snapshot();
        let mut done = 0;
        for_each_slice(&snap, gpa, buf.len() as u64, false, |s| {
            let n = s.len();
            s.copy_to(&mut buf[done..done + n]);
            done += n;
        })
    }

    /// Copy `buf` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let snap = self.snapshot();
        let mut done = 0;
        for_each_slice(&snap, gpa, buf.len() as u64, true, |s| {
            let n = s.len();
            s.copy_from(&buf[done..done + n]);
            done += n;
        })
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemError> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Whether `gpa..gpa+len` is mapped (and writable, if `write`).
    pub fn check(&self, gpa: u64, len: u64, write: bool) -> Result<(), MemError> {
        for_each_slice(&self.snapshot(), gpa, len, write, |_| {})
    }
}

/// Visit the host slices backing `gpa..gpa+len` in order. Fails before
/// visiting anything if any byte is unmapped (or read-only for a write).
pub fn for_each_slice<'a>(
    snap: &'a GuestMemoryMmap,
    gpa: u64,
    len: u64,
    write: bool,
    mut f: impl FnMut(VolatileSlice<'a, BS<'a, ()>>),
) -> Result<(), MemError> {
    let mut pieces = Vec::new();
    let mut at = gpa;
    let end = gpa
        .checked_add(len)
        .ok_or(MemError::Unmapped { gpa, len })?;
    while at < end {
        let region = snap
            .find_region(GuestAddress(at))
            .ok_or(MemError::Unmapped {
                gpa: at,
                len: end - at,
            })?;
        if write && region.get_mmap().prot() & libc::PROT_WRITE == 0 {
            return Err(MemError::ReadOnly { gpa: at });
        }
        let off = at - region.start_addr().0;
        let n = (region.len() - off).min(end - at);
        let slice = region
            .get_mmap_slice(off as usize, n as usize)
            .map_err(|_| MemError::Unmapped { gpa: at, len: n })?;
        pieces.push(slice);
        at += n;
    }
    pieces.into_iter().for_each(&mut f);
    Ok(())
}

/// Access to a region's host mapping as a volatile slice.
trait MmapSlice {
    fn get_mmap_slice(
        &self,
        off: usize,
        len: usize,
    ) -> Result<VolatileSlice<'_, BS<'_, ()>>, vm_memory::volatile_memory::Error>;
}
impl MmapSlice for GuestRegionMmap {
    fn get_mmap_slice(
        &self,
        off: usize,
        len: usize,
    ) -> Result<VolatileSlice<'_, BS<'_, ()>>, vm_memory::volatile_memory::Error> {
        VolatileMemory::get_slice(&**self, off, len)
    }
}

/// The host's physical memory.
fn host_memory_bytes() -> u64 {
    // SAFETY: libc::sysinfo is a plain C struct of integers, for which all
    // zero bytes is a valid value.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo(2) writes only into the struct it is given, which is a
    // live, exclusively borrowed `libc::sysinfo` of the right layout.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return u64::MAX;
    }
    (si.totalram as u64).saturating_mul(si.mem_unit.max(1) as u64)
}

/// Whether `fd` carries `F_SEAL_SHRINK` (QEMU's memfd backend seals by
/// default), so that its size can no longer go below a mapping.
fn shrink_sealed(fd: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl(F_GET_SEALS) takes no pointer argument; it only reads the
    // seals of `fd`, an open descriptor borrowed for the call.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::memfd;

    /// Host mappings of guest-RAM memfds (other tests' allocations, which
    /// come and go meanwhile, are not counted).
    fn mappings() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.contains("memfd:guest-ram"))
            .count()
    }

    #[test]
    fn page_by_page_maps_share_one_pinned_file_mapping() {
        // What a vIOMMU guest's VMM does: 4 KiB windows into one memfd, in
        // scattered order, each with a fresh descriptor.
        const PAGES: u64 = 2048;
        let ram = GuestRam::new();
        let file = memfd(PAGES * 4096);
        let before = mappings();
        for i in 0..PAGES {
            let page = (i * 7919) % PAGES; // a permutation: PAGES is a power of two, 7919 odd
            ram.map(
                0x1_0000_0000 + i * 4096,
                4096,
                file.try_clone().unwrap(),
                page * 4096,
                true,
            )
            .unwrap();
        }
        let added = mappings().saturating_sub(before);
        assert!(added <= 1, "{PAGES} windows took {added} host mappings");
        assert_eq!(
            ram.pinned_bytes(),
            PAGES * 4096,
            "the file is pinned once, whole"
        );
        // A write through window i lands at its page of the file.
        ram.write(0x1_0000_0000 + 5 * 4096 + 8, &[0xAB; 4]).unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, ((5 * 7919) % PAGES) * 4096 + 8)
            .unwrap();
        assert_eq!(b, [0xAB; 4]);
        // Read-only windows refuse writes; windows past the file are refused.
        ram.map(0x2_0000_0000, 4096, file.try_clone().unwrap(), 0, false)
            .unwrap();
        assert!(matches!(
            ram.write(0x2_0000_0000, &[1]),
            Err(MemError::ReadOnly { .. })
        ));
        assert!(matches!(
            ram.map(
                0x3_0000_0000,
                8192,
                file.try_clone().unwrap(),
                (PAGES - 1) * 4096,
                true
            ),
            Err(MemError::BeyondFile { .. })
        ));
        // A (sparse) file larger than the host's memory is never pinned.
        let huge = memfd(host_memory_bytes() + (1 << 30));
        assert!(matches!(
            ram.map(0x4_0000_0000, 4096, huge, 0, true),
            Err(MemError::LargerThanHost { .. })
        ));
        // A range that would split a window changes nothing; a range of
        // whole windows removes just those.
        assert!(matches!(
            ram.unmap(0x1_0000_0000 + 2048, 8192),
            Err(MemError::BadUnmap { .. })
        ));
        ram.unmap(0x1_0000_0000 + 10 * 4096, 5 * 4096).unwrap();
        assert!(matches!(
            ram.read(0x1_0000_0000 + 12 * 4096, &mut b),
            Err(MemError::Unmapped { .. })
        ));
        ram.read(0x1_0000_0000 + 15 * 4096, &mut b).unwrap();
        ram.read(0x1_0000_0000 + 9 * 4096, &mut b).unwrap();
        assert_eq!(
            ram.pinned_bytes(),
            PAGES * 4096,
            "the file stays pinned while windows remain"
        );
        // Unmapping everything unpins and unmaps the file.
        ram.unmap(0, u64::MAX).unwrap();
        assert_eq!(ram.pinned_bytes(), 0);
        assert!(mappings() <= before, "the file is unmapped");
        assert!(matches!(
            ram.read(0x1_0000_0000, &mut b),
            Err(MemError::Unmapped { .. })
        ));
    }
}
