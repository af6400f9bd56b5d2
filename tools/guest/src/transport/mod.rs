//! How the driver reaches a vGPU: configuration space, BAR0, DMA-able
//! memory, MSI-X vector 0 and reset, behind one trait.
//!
//! * [`vfio_user::VfioUserTransport`]: a vfio-user client of a vGPU's Unix
//!   socket, with a memfd as its "guest RAM".
//! * [`vfio::VfioTransport`]: inside a Linux guest, a function bound to
//!   `vfio-pci` (type1 IOMMU, or a no-IOMMU group).
//!
//! Other transports (e.g. an in-process device in tests) implement
//! [`Transport`] with the building blocks here: [`Mapping`] for memory,
//! [`DmaArena`] for allocation and [`EventFd`] for the interrupt.

pub mod vfio;
pub mod vfio_user;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::alloc::RangeAllocator;
use crate::error::{Error, Result};

/// The page size of DMA allocations and of the GPU MMU's small pages.
pub const PAGE_SIZE: u64 = 4096;

/// Access to one vGPU function.
///
/// BAR0 accesses follow ABI §2: 4-byte aligned 32-bit or 8-byte aligned
/// 64-bit (two registers, low first). DMA memory is what the device
/// reaches by DMA: the driver writes page tables, instance blocks,
/// GPFIFO rings, pushbuffers and data there.
pub trait Transport: Send {
    /// A short name for messages ("vfio-user", "vfio", …).
    fn name(&self) -> &'static str;
    /// Read `data.len()` bytes of configuration space at `offset`.
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<()>;
    /// Write configuration space at `offset`.
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<()>;
    /// Read a 32-bit BAR0 register.
    fn bar0_read32(&mut self, offset: u32) -> Result<u32>;
    /// Write a 32-bit BAR0 register.
    fn bar0_write32(&mut self, offset: u32, value: u32) -> Result<()>;
    /// Read two consecutive BAR0 registers as one 64-bit access.
    fn bar0_read64(&mut self, offset: u32) -> Result<u64>;
    /// Write two consecutive BAR0 registers as one 64-bit access.
    fn bar0_write64(&mut self, offset: u32, value: u64) -> Result<()>;
    /// Zeroed DMA memory of at least `len` bytes, page aligned.
    fn dma_alloc(&mut self, len: u64) -> Result<DmaBuffer>;
    /// Give DMA memory back. The device must no longer use it.
    fn dma_free(&mut self, buf: DmaBuffer);
    /// Wait until MSI-X vector 0 fires or `timeout` passes; returns
    /// whether it fired (and consumes the event).
    fn wait_irq(&mut self, timeout: Duration) -> Result<bool>;
    /// Function-level reset (vfio `DEVICE_RESET`): engine reset plus
    /// configuration space back to its power-on image (ABI §8).
    fn reset(&mut self) -> Result<()>;
}

// ---- memory -----------------------------------------------------------------

/// A region of host memory mapped into this process (`munmap` on drop).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct; all access goes
// through raw pointers with explicit copies.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A shared memfd of `len` bytes, mapped; returns the mapping and the
    /// file so that it can be handed to a device (vfio-user `DMA_MAP`).
    pub fn memfd(name: &str, len: u64) -> Result<(Mapping, File)> {
        let cname = std::ffi::CString::new(name)
            .map_err(|_| Error::InvalidArgument(format!("memfd name {name:?}")))?;
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(Error::last_os("memfd_create"));
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len)
            .map_err(|e| Error::io("size the memfd", e))?;
        // Sealed against resizing, as QEMU's memfd backend is: the device
        // side may then rely on every mapped page staying there.
        // SAFETY: adds seals to our own descriptor; the result is checked.
        if unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        } != 0
        {
            return Err(Error::last_os("seal the memfd"));
        }
        let map = Self::mmap(len, libc::MAP_SHARED, file.as_raw_fd())?;
        Ok((map, file))
    }

    /// Anonymous private memory of `len` bytes, locked in RAM (`mlock`) so
    /// that its physical pages stay put while a device uses them.
    pub fn anonymous_locked(len: u64) -> Result<Mapping> {
        let map = Self::mmap(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
        )?;
        // SAFETY: the range is our own mapping.
        if unsafe { libc::mlock(map.ptr.as_ptr().cast(), map.len) } != 0 {
            return Err(Error::last_os("mlock DMA memory"));
        }
        Ok(map)
    }

    fn mmap(len: u64, flags: i32, fd: i32) -> Result<Mapping> {
        let ulen = usize::try_from(len)
            .map_err(|_| Error::InvalidArgument(format!("mapping of {len} bytes")))?;
        if ulen == 0 {
            return Err(Error::InvalidArgument("empty mapping".into()));
        }
        // SAFETY: a fresh mapping chosen by the kernel; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ulen,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::last_os("mmap DMA memory"));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::Protocol("mmap returned NULL".into()))?;
        Ok(Mapping { ptr, len: ulen })
    }

    /// The start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never, for a successfully created mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing refers to it any more
        // (every DmaBuffer holds an Arc of it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Device addresses of a piece of DMA memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevAddrs {
    /// Contiguous: the device address of the first byte.
    Linear(u64),
    /// One device address per 4 KiB page (no-IOMMU physical pages).
    Pages(Vec<u64>),
}

/// DMA-able memory: a CPU view plus the address the device uses for it.
///
/// The device writes this memory concurrently with the CPU, so every
/// access goes through explicit copies, never through Rust references.
#[derive(Debug)]
pub struct DmaBuffer {
    map: Arc<Mapping>,
    /// Offset of the buffer in the mapping.
    offset: usize,
    len: usize,
    addrs: DevAddrs,
}

impl DmaBuffer {
    /// A buffer over `map[offset .. offset + len]` with device addresses
    /// `addrs`. `Pages` must list one address per started 4 KiB page.
    pub fn new(map: Arc<Mapping>, offset: usize, len: usize, addrs: DevAddrs) -> Result<DmaBuffer> {
        let fits = offset.checked_add(len).is_some_and(|e| e <= map.len());
        let pages_ok = match &addrs {
            DevAddrs::Linear(_) => true,
            DevAddrs::Pages(p) => {
                p.len() as u64 == (len as u64).div_ceil(PAGE_SIZE) && offset as u64 % PAGE_SIZE == 0
            }
        };
        if !fits || !pages_ok {
            return Err(Error::InvalidArgument(format!(
                "DMA buffer {offset:#x}+{len:#x} in a {:#x}-byte mapping",
                map.len()
            )));
        }
        Ok(DmaBuffer {
            map,
            offset,
            len,
            addrs,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the buffer in its transport's mapping.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The device addresses.
    pub fn addrs(&self) -> &DevAddrs {
        &self.addrs
    }

    /// The device address of byte `off` (which must be inside the buffer).
    pub fn dev_addr(&self, off: u64) -> u64 {
        match &self.addrs {
            DevAddrs::Linear(base) => base + off,
            DevAddrs::Pages(p) => p
                .get((off / PAGE_SIZE) as usize)
                .map_or(0, |a| a + off % PAGE_SIZE),
        }
    }

    /// The device address of the start when the whole buffer is
    /// contiguous for the device.
    pub fn contiguous(&self) -> Option<u64> {
        match &self.addrs {
            DevAddrs::Linear(base) => Some(*base),
            DevAddrs::Pages(p) => p
                .windows(2)
                .all(|w| w[1] == w[0] + PAGE_SIZE)
                .then(|| p.first().copied())
                .flatten(),
        }
    }

    fn check(&self, off: usize, len: usize) -> Result<*mut u8> {
        match off.checked_add(len) {
            // SAFETY: in bounds of the mapping (checked at construction).
            Some(end) if end <= self.len => Ok(unsafe { self.map.as_ptr().add(self.offset + off) }),
            _ => Err(Error::InvalidArgument(format!(
                "access {off:#x}+{len:#x} past a {:#x}-byte DMA buffer",
                self.len
            ))),
        }
    }

    /// Copy `data` into the buffer at `off`.
    pub fn write(&self, off: usize, data: &[u8]) -> Result<()> {
        let p = self.check(off, data.len())?;
        // SAFETY: p..p+len is inside our mapping; the source is a separate slice.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// Copy from the buffer at `off` into `out`.
    pub fn read(&self, off: usize, out: &mut [u8]) -> Result<()> {
        let p = self.check(off, out.len())?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: as in write.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Fill `len` bytes at `off` with `byte`.
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> Result<()> {
        let p = self.check(off, len)?;
        // SAFETY: in bounds.
        unsafe { std::ptr::write_bytes(p, byte, len) };
        Ok(())
    }

    /// A volatile 32-bit read (a value the device may be updating).
    pub fn read_u32(&self, off: usize) -> Result<u32> {
        let p = self.check(off, 4)?;
        // SAFETY: in bounds; unaligned-tolerant volatile read.
        Ok(u32::from_le_bytes(unsafe {
            std::ptr::read_volatile(p.cast::<[u8; 4]>())
        }))
    }

    /// A volatile 64-bit read.
    pub fn read_u64(&self, off: usize) -> Result<u64> {
        let p = self.check(off, 8)?;
        // SAFETY: in bounds.
        Ok(u64::from_le_bytes(unsafe {
            std::ptr::read_volatile(p.cast::<[u8; 8]>())
        }))
    }

    /// A volatile 32-bit write.
    pub fn write_u32(&self, off: usize, v: u32) -> Result<()> {
        let p = self.check(off, 4)?;
        // SAFETY: in bounds.
        unsafe { std::ptr::write_volatile(p.cast::<[u8; 4]>(), v.to_le_bytes()) };
        Ok(())
    }

    /// A volatile 64-bit write.
    pub fn write_u64(&self, off: usize, v: u64) -> Result<()> {
        let p = self.check(off, 8)?;
        // SAFETY: in bounds.
        unsafe { std::ptr::write_volatile(p.cast::<[u8; 8]>(), v.to_le_bytes()) };
        Ok(())
    }

    /// Write `f32`s (little-endian) at `off`.
    pub fn write_f32s(&self, off: usize, v: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.write(off, &bytes)
    }

    /// Read `n` `f32`s at `off`.
    pub fn read_f32s(&self, off: usize, n: usize) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; n * 4];
        self.read(off, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Read `n` `u32`s at `off`.
    pub fn read_u32s(&self, off: usize, n: usize) -> Result<Vec<u32>> {
        let mut bytes = vec![0u8; n * 4];
        self.read(off, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// How the device addresses an arena's memory.
#[derive(Clone, Debug)]
pub enum ArenaAddressing {
    /// The whole mapping is contiguous at this device address (a vfio-user
    /// DMA map, or one type1 IOMMU mapping).
    Linear(u64),
    /// Per-page device addresses (no-IOMMU physical pages).
    Pages(Vec<u64>),
}

/// A pool of DMA memory: one mapping the device can reach, carved into
/// page-aligned buffers.
#[derive(Debug)]
pub struct DmaArena {
    map: Arc<Mapping>,
    addressing: ArenaAddressing,
    alloc: RangeAllocator,
}

impl DmaArena {
    /// An arena over all of `map`.
    pub fn new(map: Mapping, addressing: ArenaAddressing) -> Result<DmaArena> {
        if let ArenaAddressing::Pages(p) = &addressing {
            if (p.len() as u64) < map.len() as u64 / PAGE_SIZE {
                return Err(Error::InvalidArgument(
                    "fewer page addresses than pages".into(),
                ));
            }
        }
        let size = map.len() as u64;
        Ok(DmaArena {
            map: Arc::new(map),
            addressing,
            alloc: RangeAllocator::new(0, size),
        })
    }

    /// The mapping (for a device-side `DMA_MAP`).
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// Zeroed, page-aligned memory of at least `len` bytes.
    pub fn alloc(&mut self, len: u64) -> Result<DmaBuffer> {
        let rounded = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let off = self
            .alloc
            .alloc(rounded, PAGE_SIZE)
            .ok_or(Error::OutOfMemory {
                what: "DMA memory",
                bytes: rounded,
            })?;
        let addrs = match &self.addressing {
            ArenaAddressing::Linear(base) => DevAddrs::Linear(base + off),
            ArenaAddressing::Pages(p) => {
                let first = (off / PAGE_SIZE) as usize;
                DevAddrs::Pages(p[first..first + (rounded / PAGE_SIZE) as usize].to_vec())
            }
        };
        let buf = DmaBuffer::new(self.map.clone(), off as usize, rounded as usize, addrs)?;
        buf.fill(0, buf.len(), 0)?;
        Ok(buf)
    }

    /// Return a buffer of this arena.
    pub fn free(&mut self, buf: DmaBuffer) {
        if Arc::ptr_eq(&buf.map, &self.map) {
            self.alloc.free(buf.offset as u64, buf.len as u64);
        }
    }
}

// ---- interrupts ---------------------------------------------------------------

/// An eventfd: the device signals MSI-X vector 0 by adding to it.
#[derive(Debug)]
pub struct EventFd(File);

impl EventFd {
    /// A fresh non-blocking eventfd.
    pub fn new() -> Result<EventFd> {
        // SAFETY: eventfd with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os("eventfd"));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        Ok(EventFd(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// A duplicate descriptor (to hand to a device).
    pub fn try_clone_file(&self) -> Result<File> {
        self.0.try_clone().map_err(|e| Error::io("dup eventfd", e))
    }

    /// The raw descriptor.
    pub fn as_raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    /// Wait up to `timeout` for the counter to become non-zero, then read
    /// (and so reset) it. Returns whether it had fired.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // Round sub-millisecond timeouts up so that a short wait still sleeps.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Error::io("poll eventfd", e));
        }
        if r == 0 {
            return Ok(false);
        }
        let mut b = [0u8; 8];
        match std::io::Read::read(&mut &self.0, &mut b) {
            Ok(8) => Ok(u64::from_ne_bytes(b) > 0),
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(Error::io("read eventfd", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_hands_out_zeroed_disjoint_pages() {
        let (map, _f) = Mapping::memfd("t", 64 * 1024).unwrap();
        let mut a = DmaArena::new(map, ArenaAddressing::Linear(0x8000_0000)).unwrap();
        let b1 = a.alloc(100).unwrap();
        let b2 = a.alloc(5000).unwrap();
        assert_eq!(b1.len(), 4096);
        assert_eq!(b2.len(), 8192);
        assert_eq!(b1.dev_addr(0), 0x8000_0000);
        assert_eq!(b2.dev_addr(4), 0x8000_1004);
        b1.write_u32(0, 0xDEAD_BEEF).unwrap();
        assert_eq!(b1.read_u32(0).unwrap(), 0xDEAD_BEEF);
        assert!(b1.read_u32(4094).is_err());
        a.free(b1);
        let b3 = a.alloc(4096).unwrap();
        assert_eq!(b3.read_u32(0).unwrap(), 0, "reused memory is zeroed");
        assert!(a.alloc(1 << 20).is_err());
    }

    #[test]
    fn paged_arena_addresses() {
        let map = Mapping::anonymous_locked(4 * 4096)
            .or_else(|_| Mapping::memfd("t", 4 * 4096).map(|m| m.0))
            .unwrap();
        let pages = vec![0x9000, 0x3000, 0x4000, 0x1000];
        let mut a = DmaArena::new(map, ArenaAddressing::Pages(pages)).unwrap();
        let b = a.alloc(8192).unwrap();
        assert_eq!(b.dev_addr(4100), 0x3004);
        assert_eq!(b.contiguous(), None);
        let c = a.alloc(8192).unwrap();
        assert_eq!(c.contiguous(), None);
        let d = DmaBuffer::new(
            c.map.clone(),
            2 * 4096,
            8192,
            DevAddrs::Pages(vec![0x4000, 0x5000]),
        )
        .unwrap();
        assert_eq!(d.contiguous(), Some(0x4000));
    }

    #[test]
    fn eventfd_times_out_and_fires() {
        let e = EventFd::new().unwrap();
        assert!(!e.wait(Duration::from_millis(1)).unwrap());
        let mut f = e.try_clone_file().unwrap();
        std::io::Write::write_all(&mut f, &1u64.to_ne_bytes()).unwrap();
        assert!(e.wait(Duration::from_millis(100)).unwrap());
        assert!(!e.wait(Duration::ZERO).unwrap());
    }
}
