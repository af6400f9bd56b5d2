//! Guest RAM as the device sees it: regions the VMM DMA-maps from file
//! descriptors (vfio `DMA_MAP`), mapped into the daemon and pinned.
//!
//! A bus-mastering PCI device can only reach guest memory the IOMMU (here:
//! the VMM) mapped for it. Each mapped region is `mmap`ed from the guest's
//! memory file descriptor — never copied — and `mlock`ed while mapped.
//! Users take a *snapshot* of the region set for the duration of one access
//! or one command; `unmap` removes the region from the set at once (no new
//! access can start) and then waits until no snapshot still holds it, so a
//! command in flight finishes first and nothing touches the memory after
//! `unmap` returns.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::FileOffset;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion, VolatileMemory, VolatileSlice};

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
    BeyondFile { gpa: u64, size: u64, offset: u64, file_size: u64 },
    #[error("mmap of the DMA region failed: {0}")]
    Mmap(String),
}

/// One snapshot of the DMA-mapped regions; holding it keeps them mapped.
pub type Snapshot = Arc<GuestMemoryMmap>;

/// The DMA-mapped guest RAM of one vGPU.
#[derive(Debug, Default)]
pub struct GuestRam {
    map: Mutex<Snapshot>,
    pinned: AtomicU64,
    /// One open file per backing file (device, inode, access mode): a VMM
    /// behind a vIOMMU maps guest memory page by page, each time with a
    /// new descriptor of the same memfd, and thousands of them must not
    /// each hold a descriptor of the daemon's.
    files: Mutex<HashMap<(u64, u64, i32), Weak<File>>>,
}

impl GuestRam {
    pub fn new() -> Self {
        Self::default()
    }

    /// The regions mapped now. Keep it only as long as one access lasts.
    pub fn snapshot(&self) -> Snapshot {
        match self.map.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Bytes currently pinned in host memory.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Map `size` bytes of `fd` at `file_offset` as guest physical
    /// `gpa..gpa+size` and pin them.
    pub fn map(&self, gpa: u64, size: u64, fd: File, file_offset: u64, writable: bool) -> Result<(), MemError> {
        let bad = || MemError::BadMap { gpa, size };
        if size == 0 || gpa.checked_add(size).is_none() || usize::try_from(size).is_err() {
            return Err(bad());
        }
        // A mapping past the end of its file would fault (SIGBUS) on first
        // access, so the whole range must lie inside a regular file.
        let meta = fd.metadata().map_err(|e| MemError::Mmap(e.to_string()))?;
        if !meta.file_type().is_file() || file_offset.checked_add(size).map_or(true, |end| end > meta.len()) {
            return Err(MemError::BeyondFile { gpa, size, offset: file_offset, file_size: meta.len() });
        }
        if !shrink_sealed(&fd) {
            tracing::warn!(gpa, size, "DMA region's file is not sealed against shrinking; a client that truncates it would fault the daemon");
        }
        let file = self.shared_file(fd, &meta);
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let mmap = MmapRegion::build(Some(FileOffset::from_arc(file, file_offset)), size as usize, prot, libc::MAP_SHARED)
            .map_err(|e| MemError::Mmap(e.to_string()))?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(gpa)).ok_or_else(bad)?;
        // SAFETY: the range is exactly the mapping just created and owned by `region`.
        let locked = unsafe { libc::mlock(region.get_mmap().as_ptr() as *const libc::c_void, size as usize) } == 0;
        if !locked {
            tracing::warn!(gpa, size, err = %std::io::Error::last_os_error(), "could not pin DMA region (mlock); continuing unpinned");
        }
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let next = guard.insert_region(Arc::new(region)).map_err(|_| bad())?;
        *guard = Arc::new(next);
        if locked {
            self.pinned.fetch_add(size, Ordering::Relaxed);
        }
        tracing::debug!(gpa, size, writable, "dma map");
        Ok(())
    }

    /// The open file already used for `fd`'s backing file, or `fd` itself.
    fn shared_file(&self, fd: File, meta: &std::fs::Metadata) -> Arc<File> {
        // SAFETY: F_GETFL only reads the flags of a descriptor we own.
        let mode = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) } & libc::O_ACCMODE;
        let key = (meta.dev(), meta.ino(), mode);
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(&key).and_then(Weak::upgrade) {
            return f;
        }
        if files.len() >= 64 {
            files.retain(|_, w| w.strong_count() > 0);
        }
        let f = Arc::new(fd);
        files.insert(key, Arc::downgrade(&f));
        f
    }

    /// Unmap every region inside `gpa..gpa+size`, waiting until no command
    /// still uses them. A region that straddles the range is an error and
    /// nothing is unmapped.
    pub fn unmap(&self, gpa: u64, size: u64) -> Result<(), MemError> {
        let end = gpa.checked_add(size).ok_or(MemError::BadUnmap { gpa, size })?;
        let removed = {
            let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let mut next: GuestMemoryMmap = (**guard).clone();
            let mut removed = Vec::new();
            for r in guard.iter() {
                let (s, e) = (r.start_addr().0, r.start_addr().0 + r.len());
                if e <= gpa || s >= end {
                    continue;
                }
                if s < gpa || e > end {
                    return Err(MemError::BadUnmap { gpa, size });
                }
                let (n, reg) = next.remove_region(r.start_addr(), r.len()).map_err(|_| MemError::BadUnmap { gpa, size })?;
                next = n;
                removed.push(reg);
            }
            if removed.is_empty() {
                return Err(MemError::BadUnmap { gpa, size });
            }
            *guard = Arc::new(next);
            removed
        };
        // Wait for every in-flight user of the removed regions.
        let start = Instant::now();
        for r in &removed {
            while Arc::strong_count(r) > 1 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for r in removed {
            let len = r.len();
            let mm = r.get_mmap();
            // SAFETY: the range is the region's own mapping, still alive here.
            if unsafe { libc::munlock(mm.as_ptr() as *const libc::c_void, len as usize) } == 0 {
                self.pinned.fetch_sub(len.min(self.pinned.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
        }
        tracing::debug!(gpa, size, waited_us = start.elapsed().as_micros() as u64, "dma unmap");
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
    let end = gpa.checked_add(len).ok_or(MemError::Unmapped { gpa, len })?;
    while at < end {
        let region = snap.find_region(GuestAddress(at)).ok_or(MemError::Unmapped { gpa: at, len: end - at })?;
        if write && region.get_mmap().prot() & libc::PROT_WRITE == 0 {
            return Err(MemError::ReadOnly { gpa: at });
        }
        let off = at - region.start_addr().0;
        let n = (region.len() - off).min(end - at);
        let slice = region.get_mmap_slice(off as usize, n as usize).map_err(|_| MemError::Unmapped { gpa: at, len: n })?;
        pieces.push(slice);
        at += n;
    }
    pieces.into_iter().for_each(&mut f);
    Ok(())
}

/// Access to a region's host mapping as a volatile slice.
trait MmapSlice {
    fn get_mmap_slice(&self, off: usize, len: usize) -> Result<VolatileSlice<'_, BS<'_, ()>>, vm_memory::volatile_memory::Error>;
}
impl MmapSlice for GuestRegionMmap {
    fn get_mmap_slice(&self, off: usize, len: usize) -> Result<VolatileSlice<'_, BS<'_, ()>>, vm_memory::volatile_memory::Error> {
        VolatileMemory::get_slice(&**self, off, len)
    }
}

/// Whether `fd` carries `F_SEAL_SHRINK` (QEMU's memfd backend seals by
/// default), so that its size can no longer go below a mapping.
fn shrink_sealed(fd: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}
