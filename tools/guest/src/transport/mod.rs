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
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::mmap::MmapRegionError;
use vm_memory::{
    ByteValued, FileOffset, MmapRegion, VolatileMemory, VolatileMemoryError, VolatileRef,
    VolatileSlice,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::alloc::RangeAllocator;
use crate::error::{Error, Result};
use crate::regs;

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
    /// The doorbell page (BAR4, ABI §4.5) mapped into this driver, when the
    /// device has one and the transport could map it.
    fn doorbell_page(&self) -> Option<&DoorbellPage> {
        None
    }
    /// Whether a BAR0 write may still be on its way to the device when the
    /// call returns: a VMM posts a guest's MMIO writes (QEMU's vfio-user
    /// client sends them without waiting for the reply), and a store to the
    /// doorbell page can pass them (ABI §4.5).
    fn posts_writes(&self) -> bool {
        false
    }
}

// ---- the doorbell page ----------------------------------------------------

/// The doorbell page (ABI §4.5) mapped into the driver: ringing a channel
/// is a store here, and a trapped `DOORBELL` write only when the device
/// says it is not polling.
#[derive(Debug)]
pub struct DoorbellPage(MmapRegion);

impl DoorbellPage {
    /// Map `len` bytes of `file` at `offset` (a vfio region offered with
    /// `VFIO_REGION_INFO_FLAG_MMAP`).
    pub fn map(file: File, offset: u64, len: u64) -> Result<DoorbellPage> {
        if len < regs::DB_PAGE_SIZE {
            return Err(Error::NotVgpu(format!("doorbell page of {len:#x} bytes")));
        }
        let map = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            regs::DB_PAGE_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(mmap_error)?;
        Ok(DoorbellPage(map))
    }

    /// Store `put` as channel `channel`'s `DB_PUT`, then fence, then tell
    /// whether the device polls (the caller need not trap) — ABI §4.5
    /// steps 1–3.
    pub fn ring(&self, channel: u32, put: u32) -> Result<bool> {
        use std::sync::atomic::{fence, Ordering};
        use vm_memory::Bytes;
        let page = self.0.as_volatile_slice();
        page.store(put, regs::db_put(channel) as usize, Ordering::SeqCst)
            .map_err(vol_error)?;
        fence(Ordering::SeqCst);
        let device: u32 = page
            .load(regs::DB_DEVICE as usize, Ordering::SeqCst)
            .map_err(vol_error)?;
        Ok(device & regs::DB_DEVICE_POLLING != 0)
    }
}

// ---- memory -----------------------------------------------------------------

/// A region of host memory mapped into this process (unmapped on drop).
///
/// The memory is shared with a device, which reads and writes it
/// concurrently, so it is only ever reached through vm-memory's volatile
/// accessors ([`DmaBuffer`]), never through Rust references.
#[derive(Debug)]
pub struct Mapping {
    region: MmapRegion,
}

impl Mapping {
    /// A shared memfd of `len` bytes, mapped; returns the mapping and the
    /// file so that it can be handed to a device (vfio-user `DMA_MAP`).
    pub fn memfd(name: &str, len: u64) -> Result<(Mapping, File)> {
        let ulen = Self::check_len(len)?;
        let cname = std::ffi::CString::new(name)
            .map_err(|_| Error::InvalidArgument(format!("memfd name {name:?}")))?;
        // SAFETY: memfd_create only reads the NUL-terminated name, which
        // `cname` owns and keeps alive for the call; it touches no other
        // memory of this process. The result is checked below.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(Error::last_os("memfd_create"));
        }
        // SAFETY: `fd` (>= 0) is the descriptor memfd_create just opened
        // for this call; no other object owns or will close it, so the
        // OwnedFd becomes its sole owner.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len)
            .map_err(|e| Error::io("size the memfd", e))?;
        // Sealed against resizing, as QEMU's memfd backend is: the device
        // side may then rely on every mapped page staying there.
        // SAFETY: F_ADD_SEALS takes an integer argument and only changes the
        // seals of the memfd `file` owns (open for the call); it reads or
        // writes no memory of this process. The result is checked.
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
        let dup = file
            .try_clone()
            .map_err(|e| Error::io("dup the memfd", e))?;
        let region = MmapRegion::build(
            Some(FileOffset::new(dup, 0)),
            ulen,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(mmap_error)?;
        Ok((Mapping { region }, file))
    }

    /// Anonymous private memory of `len` bytes, locked in RAM (`mlock`) so
    /// that its physical pages stay put while a device uses them.
    pub fn anonymous_locked(len: u64) -> Result<Mapping> {
        let ulen = Self::check_len(len)?;
        let region = MmapRegion::build(
            None,
            ulen,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
        )
        .map_err(mmap_error)?;
        // SAFETY: mlock only pins the pages of an address range in RAM; it
        // neither reads nor writes their contents, so it cannot break any
        // Rust invariant. The range is exactly the mapping `region` made and
        // owns (`as_ptr()`, `size()`), alive for the call.
        if unsafe { libc::mlock(region.as_ptr().cast(), region.size()) } != 0 {
            return Err(Error::last_os("mlock DMA memory"));
        }
        Ok(Mapping { region })
    }

    fn check_len(len: u64) -> Result<usize> {
        let ulen = usize::try_from(len)
            .map_err(|_| Error::InvalidArgument(format!("mapping of {len} bytes")))?;
        if ulen == 0 {
            return Err(Error::InvalidArgument("empty mapping".into()));
        }
        Ok(ulen)
    }

    /// The start of the mapping (its address, for the kernel: an IOMMU
    /// `MAP_DMA`, `/proc/self/pagemap`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.region.size()
    }

    /// Whether it is empty (never, for a successfully created mapping).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Volatile access to `len` bytes at `offset`.
    fn slice(&self, offset: usize, len: usize) -> Result<VolatileSlice<'_>> {
        self.region.get_slice(offset, len).map_err(|e| {
            Error::InvalidArgument(format!("mapping access {offset:#x}+{len:#x}: {e}"))
        })
    }
}

/// An `mmap` failure of vm-memory as the driver's error.
fn mmap_error(e: MmapRegionError) -> Error {
    match e {
        MmapRegionError::Mmap(io) => Error::io("mmap DMA memory", io),
        other => Error::InvalidArgument(format!("mmap DMA memory: {other}")),
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
/// access is a volatile load or store (vm-memory's `VolatileSlice`),
/// never a Rust reference or a plain copy.
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
                p.len() as u64 == (len as u64).div_ceil(PAGE_SIZE)
                    && (offset as u64).is_multiple_of(PAGE_SIZE)
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

    /// The CPU address of the buffer's first byte, for code outside Rust (the CUDA
    /// library hands pinned host memory to its C callers this way). Rust code reaches the
    /// memory only through the volatile accessors.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr().wrapping_add(self.offset)
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

    /// The offset in the mapping of `len` bytes at `off` of the buffer, if
    /// they lie inside it (and so inside the mapping: checked at
    /// construction; vm-memory checks the range against the mapping again).
    fn at(&self, off: usize, len: usize) -> Result<usize> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + off),
            _ => Err(Error::InvalidArgument(format!(
                "access {off:#x}+{len:#x} past a {:#x}-byte DMA buffer",
                self.len
            ))),
        }
    }

    /// Volatile access to `len` bytes at `off` of the buffer.
    fn slice(&self, off: usize, len: usize) -> Result<VolatileSlice<'_>> {
        self.map.slice(self.at(off, len)?, len)
    }

    /// The `T` at `off` of the buffer, for one volatile load or store.
    fn get_ref<T: ByteValued>(&self, off: usize) -> Result<VolatileRef<'_, T>> {
        let at = self.at(off, std::mem::size_of::<T>())?;
        self.map.region.get_ref::<T>(at).map_err(vol_error)
    }

    /// Copy `data` into the buffer at `off` (volatile stores).
    pub fn write(&self, off: usize, data: &[u8]) -> Result<()> {
        volatile_copy_in(&self.slice(off, data.len())?, data)
    }

    /// Copy from the buffer at `off` into `out` (volatile loads).
    pub fn read(&self, off: usize, out: &mut [u8]) -> Result<()> {
        let s = self.slice(off, out.len())?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        volatile_copy_out(&s, out)
    }

    /// Fill `len` bytes at `off` with `byte` (volatile stores).
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> Result<()> {
        let s = self.slice(off, len)?;
        let words = len / 8;
        let w = s.get_array_ref::<u64>(0, words).map_err(vol_error)?;
        let pattern = u64::from_ne_bytes([byte; 8]);
        for i in 0..words {
            w.store(i, pattern);
        }
        let tail = s
            .get_array_ref::<u8>(words * 8, len - words * 8)
            .map_err(vol_error)?;
        for i in 0..tail.len() {
            tail.store(i, byte);
        }
        Ok(())
    }

    /// A volatile 32-bit read (a value the device may be updating).
    pub fn read_u32(&self, off: usize) -> Result<u32> {
        let r = self.get_ref::<u32>(off)?;
        Ok(u32::from_le(r.load()))
    }

    /// A volatile 64-bit read.
    pub fn read_u64(&self, off: usize) -> Result<u64> {
        let r = self.get_ref::<u64>(off)?;
        Ok(u64::from_le(r.load()))
    }

    /// A volatile 32-bit write.
    pub fn write_u32(&self, off: usize, v: u32) -> Result<()> {
        let r = self.get_ref::<u32>(off)?;
        r.store(v.to_le());
        Ok(())
    }

    /// A volatile 64-bit write.
    pub fn write_u64(&self, off: usize, v: u64) -> Result<()> {
        let r = self.get_ref::<u64>(off)?;
        r.store(v.to_le());
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

/// A vm-memory range error as the driver's error (ranges are checked
/// before, so this is a driver bug if it ever shows).
fn vol_error(e: VolatileMemoryError) -> Error {
    Error::InvalidArgument(format!("DMA memory access: {e}"))
}

/// Copy `data` into `dst` (of the same length) with volatile stores: whole
/// 64-bit words, then the remaining bytes. Memory shared with a device is
/// never copied with plain (non-volatile) loads and stores.
fn volatile_copy_in(dst: &VolatileSlice<'_>, data: &[u8]) -> Result<()> {
    let words = data.len() / 8;
    let w = dst.get_array_ref::<u64>(0, words).map_err(vol_error)?;
    let (head, tail) = data.split_at(words * 8);
    for (i, c) in head.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        w.store(i, u64::from_ne_bytes(b));
    }
    let t = dst
        .get_array_ref::<u8>(words * 8, tail.len())
        .map_err(vol_error)?;
    for (i, &b) in tail.iter().enumerate() {
        t.store(i, b);
    }
    Ok(())
}

/// Copy `src` into `out` (of the same length) with volatile loads.
fn volatile_copy_out(src: &VolatileSlice<'_>, out: &mut [u8]) -> Result<()> {
    let words = out.len() / 8;
    let w = src.get_array_ref::<u64>(0, words).map_err(vol_error)?;
    let (head, tail) = out.split_at_mut(words * 8);
    for (i, c) in head.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&w.load(i).to_ne_bytes());
    }
    let t = src
        .get_array_ref::<u8>(words * 8, tail.len())
        .map_err(vol_error)?;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = t.load(i);
    }
    Ok(())
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
pub struct EventFd {
    fd: vmm_sys_util::eventfd::EventFd,
    /// Watches `fd` for readability (a timed wait).
    epoll: Epoll,
}

impl EventFd {
    /// A fresh non-blocking eventfd.
    pub fn new() -> Result<EventFd> {
        let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| Error::io("eventfd", e))?;
        let epoll = Epoll::new().map_err(|e| Error::io("epoll_create", e))?;
        epoll
            .ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(|e| Error::io("watch the eventfd", e))?;
        Ok(EventFd { fd, epoll })
    }

    /// A duplicate descriptor (to hand to a device).
    pub fn try_clone_file(&self) -> Result<File> {
        let dup = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup eventfd", e))?;
        let raw = dup.into_raw_fd();
        // SAFETY: `raw` is the descriptor `try_clone` just created (a dup);
        // `into_raw_fd` gave up the only ownership of it, so the File
        // becomes its sole owner and closes it exactly once.
        Ok(unsafe { File::from_raw_fd(raw) })
    }

    /// The raw descriptor.
    pub fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Wait up to `timeout` for the counter to become non-zero, then read
    /// (and so reset) it. Returns whether it had fired.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // Round sub-millisecond timeouts up so that a short wait still sleeps.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        let mut events = [EpollEvent::default()];
        match self.epoll.wait(ms, &mut events) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(Error::io("poll eventfd", e)),
        }
        match self.fd.read() {
            Ok(n) => Ok(n > 0),
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
    fn memfd_is_sealed_against_resizing() {
        let (map, f) = Mapping::memfd("t", 8192).unwrap();
        assert_eq!(map.len(), 8192);
        assert!(f.set_len(16384).is_err(), "F_SEAL_GROW");
        assert!(f.set_len(4096).is_err(), "F_SEAL_SHRINK");
        assert_eq!(f.metadata().unwrap().len(), 8192);
    }

    #[test]
    fn copies_of_any_length_and_alignment() {
        let (map, f) = Mapping::memfd("t", 16 * 1024).unwrap();
        let mut a = DmaArena::new(map, ArenaAddressing::Linear(0)).unwrap();
        let b = a.alloc(8192).unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        for (off, len) in [(0, 0), (0, 1), (1, 13), (5, 8), (7, 100), (4096 - 9, 17)] {
            b.fill(0, 8192, 0xAA).unwrap();
            b.write(off, &data[..len]).unwrap();
            let mut out = vec![0u8; len + 2];
            b.read(off, &mut out).unwrap();
            assert_eq!(&out[..len], &data[..len], "{off}+{len}");
            assert_eq!(&out[len..], &[0xAA, 0xAA], "bytes after {off}+{len}");
            if off > 0 {
                assert_eq!(
                    b.read_u32(off - 1).unwrap() & 0xFF,
                    0xAA,
                    "byte before {off}"
                );
            }
        }
        // The bytes land in the memfd, where the device sees them.
        b.write(0x10, b"vgpu").unwrap();
        let mut seen = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut seen, b.offset() as u64 + 0x10).unwrap();
        assert_eq!(&seen, b"vgpu");
        b.fill(1, 11, 0x5A).unwrap();
        assert_eq!(b.read_u64(0).unwrap(), 0x5A5A_5A5A_5A5A_5AAA);
        assert_eq!(b.read_u32(8).unwrap(), 0x5A5A_5A5A);
        assert_eq!(b.read_u32(12).unwrap(), 0xAAAA_AAAA);
        b.write_u64(3, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(b.read_u32(3).unwrap(), 0x0506_0708);
        assert!(b.write(8190, &[0; 3]).is_err());
        assert!(b.fill(8000, 193, 0).is_err());
        assert!(b.read_u64(8185).is_err());
        let floats = [1.5f32, -2.0, 3.25];
        b.write_f32s(21, &floats).unwrap();
        assert_eq!(b.read_f32s(21, 3).unwrap(), floats);
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
