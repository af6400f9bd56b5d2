//! The CUDA driver calls the worker makes, as owned resources: each type
//! gives back what it holds when dropped (the worker's context stays
//! current on every thread that uses them, and is never destroyed before
//! the process ends).
//!
//! * [`VaReservation`]: a range of the context's GPU address space.
//! * [`Chunk`], [`Mapping`]: 2 MiB of physical VRAM, and one place it is
//!   mapped; [`Framebuffer`]: the vGPU's VRAM in chunks, mapped in order.
//! * [`HostRegistration`]: a guest RAM file mapped here and registered
//!   with the GPU (pinned, reachable by the device).
//! * [`EventPool`]: events kept for the next items.
//! * [`DeviceBuffer`], [`PinnedHost`], [`Module`], [`LinkState`]: device
//!   memory, mapped host memory, a loaded module, a link in progress.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use cudarc::driver::sys;
use devmodel::gmmu::PAGE_2M;
use devmodel::sync::lock;

/// `CUDA_ERROR_OUT_OF_MEMORY`: the device has no room.
pub const CUDA_ERROR_OUT_OF_MEMORY: u32 = 2;
/// `CUDA_ERROR_INVALID_IMAGE`: a guest image whose headers reach past its
/// bytes.
pub const CUDA_ERROR_INVALID_IMAGE: u32 = 200;
/// `CUDA_ERROR_INVALID_HANDLE`: no module under a handle (ABI 1.3's
/// module queries), or a handle past the vGPU's.
pub const CUDA_ERROR_INVALID_HANDLE: u32 = 400;
/// `CUDA_ERROR_NOT_FOUND`, `CUDA_ERROR_NOT_SUPPORTED`: reported for guest
/// launches refused before they reach the driver.
pub const CUDA_ERROR_NOT_FOUND: u32 = 500;
pub const CUDA_ERROR_NOT_SUPPORTED: u32 = 801;

/// A CUDA driver call that failed: which, and the driver's error number.
#[derive(Debug, thiserror::Error)]
#[error("{what}: CUDA error {code} ({name})")]
pub struct CuError {
    pub what: &'static str,
    pub code: u32,
    name: String,
}

impl CuError {
    pub fn new(what: &'static str, r: sys::CUresult) -> CuError {
        CuError {
            what,
            code: r as u32,
            name: format!("{r:?}"),
        }
    }
}

/// A driver call's result.
pub fn ck(what: &'static str, r: sys::CUresult) -> Result<(), CuError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError::new(what, r))
    }
}

/// A reserved range of GPU virtual addresses.
pub struct VaReservation {
    pub ptr: sys::CUdeviceptr,
    pub size: usize,
}

impl VaReservation {
    /// `size` bytes aligned to 2 MiB, at `at` if possible (0: anywhere).
    pub fn new(size: usize, at: u64) -> Result<VaReservation, CuError> {
        let mut ptr = 0;
        // SAFETY: a plain driver call with a valid out-pointer.
        ck("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut ptr, size, PAGE_2M as usize, at, 0)
        })?;
        Ok(VaReservation { ptr, size })
    }
}

impl Drop for VaReservation {
    fn drop(&mut self) {
        // SAFETY: the range this reservation took; nothing is mapped in it
        // any more (mappings drop first).
        unsafe { sys::cuMemAddressFree(self.ptr, self.size) };
    }
}

/// 2 MiB of physical device memory.
pub struct Chunk(pub sys::CUmemGenericAllocationHandle);

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: a handle this chunk created; its mappings drop first.
        unsafe { sys::cuMemRelease(self.0) };
    }
}

/// A chunk mapped at one address (in a reservation).
pub struct Mapping {
    at: sys::CUdeviceptr,
}

impl Mapping {
    /// Map `chunk` at `at`.
    pub fn new(at: sys::CUdeviceptr, chunk: &Chunk) -> Result<Mapping, CuError> {
        // SAFETY: `at` is 2 MiB-aligned inside a reservation the caller
        // holds; the chunk is 2 MiB.
        ck("cuMemMap", unsafe {
            sys::cuMemMap(at, PAGE_2M as usize, 0, chunk.0, 0)
        })?;
        Ok(Mapping { at })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the 2 MiB this mapping made.
        unsafe { sys::cuMemUnmap(self.at, PAGE_2M as usize) };
    }
}

/// Device memory on `dev` in 2 MiB chunks, as the framebuffer is
/// allocated; an error where the GPU cannot map memory at 2 MiB.
pub fn chunk_prop(dev: sys::CUdevice) -> Result<sys::CUmemAllocationProp, CuError> {
    // SAFETY: a plain C struct for which all-zero is valid (no handle
    // types, no flags); the fields that matter are set below.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    let mut gran = 0usize;
    // SAFETY: a query with valid pointers.
    ck("cuMemGetAllocationGranularity", unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut gran,
            &prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
    })?;
    if gran == 0 || !(PAGE_2M as usize).is_multiple_of(gran) {
        return Err(CuError::new(
            "the GPU's mapping granularity is not a divisor of 2 MiB",
            sys::CUresult::CUDA_ERROR_NOT_SUPPORTED,
        ));
    }
    Ok(prop)
}

/// Access to mapped device memory for `dev`: read-write, or read-only.
pub fn access(dev: sys::CUdevice, writable: bool) -> sys::CUmemAccessDesc {
    // SAFETY: a plain C struct for which all-zero is valid; every field
    // is set below.
    let mut a: sys::CUmemAccessDesc = unsafe { std::mem::zeroed() };
    a.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    a.location.id = dev;
    a.flags = if writable {
        sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    } else {
        sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READ
    };
    a
}

/// Set the access of `len` mapped bytes at `at`.
pub fn set_access(
    at: sys::CUdeviceptr,
    len: usize,
    dev: sys::CUdevice,
    writable: bool,
) -> Result<(), CuError> {
    // SAFETY: the range is mapped by the caller; the descriptor is valid.
    ck("cuMemSetAccess", unsafe {
        sys::cuMemSetAccess(at, len, &access(dev, writable), 1)
    })
}

/// The vGPU's VRAM: `len` bytes (rounded up to 2 MiB) of physical memory in
/// 2 MiB chunks (one `cuMemCreate` each: CUDA maps a physical allocation
/// only whole), mapped in order at [`Framebuffer::ptr`] and zeroed.
pub struct Framebuffer {
    // Drop order: the mappings, then the chunks, then the range.
    mappings: Vec<Mapping>,
    pub chunks: Vec<Chunk>,
    va: Option<VaReservation>,
    pub len: u64,
}

impl Framebuffer {
    /// A GPU without room fails with `CUDA_ERROR_OUT_OF_MEMORY`.
    pub fn new(dev: sys::CUdevice, len: u64) -> Result<Framebuffer, CuError> {
        let mut fb = Framebuffer {
            mappings: Vec::new(),
            chunks: Vec::new(),
            va: None,
            len,
        };
        if len == 0 {
            return Ok(fb);
        }
        let t = std::time::Instant::now();
        let prop = chunk_prop(dev)?;
        let n = len.div_ceil(PAGE_2M) as usize;
        let size = n * PAGE_2M as usize;
        let va = VaReservation::new(size, 0)?;
        let base = va.ptr;
        fb.va = Some(va);
        for i in 0..n {
            let mut h = 0;
            // SAFETY: a plain driver call with a valid out-pointer.
            ck("cuMemCreate (framebuffer)", unsafe {
                sys::cuMemCreate(&mut h, PAGE_2M as usize, &prop, 0)
            })?;
            fb.chunks.push(Chunk(h));
            let m = Mapping::new(base + (i as u64) * PAGE_2M, &fb.chunks[i])?;
            fb.mappings.push(m);
        }
        set_access(base, size, dev, true)?;
        // SAFETY: the whole range was just mapped read-write.
        ck("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(base, 0, size) })?;
        eprintln!(
            "framebuffer of {n} chunks of 2 MiB in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(fb)
    }

    /// Where the framebuffer is mapped for the engine's own work (0 when
    /// it is empty).
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.va.as_ref().map_or(0, |v| v.ptr)
    }

    /// Bytes of the chunks (the framebuffer rounded up to 2 MiB).
    pub fn chunk_bytes(&self) -> u64 {
        self.chunks.len() as u64 * PAGE_2M
    }
}

/// A guest RAM file mapped here and registered with the GPU: pinned, and
/// reachable by the device at [`HostRegistration::dev`].
pub struct HostRegistration {
    host: *mut libc::c_void,
    pub len: usize,
    pub dev: u64,
}

impl HostRegistration {
    pub fn new(f: &File, len: u64, writable: bool) -> Result<HostRegistration, crate::Error> {
        let len = usize::try_from(len).map_err(|_| crate::Error::GuestFile {
            what: "a guest RAM file larger than the address space",
            source: std::io::Error::from_raw_os_error(libc::EFBIG),
        })?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a new shared mapping of the file at an address the kernel
        // picks; checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(crate::Error::GuestFile {
                what: "mapping a guest RAM file",
                source: std::io::Error::last_os_error(),
            });
        }
        let flags = sys::CU_MEMHOSTREGISTER_DEVICEMAP
            | sys::CU_MEMHOSTREGISTER_PORTABLE
            | if writable {
                0
            } else {
                sys::CU_MEMHOSTREGISTER_READ_ONLY
            };
        // SAFETY: `p..p+len` is the mapping just made; registration pins it
        // for the GPU until it is unregistered before the unmap.
        if let Err(e) = ck("cuMemHostRegister", unsafe {
            sys::cuMemHostRegister_v2(p, len, flags)
        }) {
            // SAFETY: the mapping made above, not registered.
            unsafe { libc::munmap(p, len) };
            return Err(e.into());
        }
        // From here on, dropping `reg` unregisters and unmaps (an error
        // below, or the registration's end): it must be the value returned.
        let mut reg = HostRegistration {
            host: p,
            len,
            dev: 0,
        };
        // SAFETY: `p` is registered with DEVICEMAP.
        ck("cuMemHostGetDevicePointer", unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut reg.dev, p, 0)
        })?;
        Ok(reg)
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        // SAFETY: the mapping was registered and made by `new`; no queued
        // work names it (the daemon sends a new layout only after the VMM
        // unmapped the memory, and the worker drains before it exits).
        unsafe {
            sys::cuMemHostUnregister(self.host);
            libc::munmap(self.host, self.len);
        }
    }
}

/// Events that items have finished with, for the next ones: creating and
/// destroying two events per item costs the submitting and completion
/// threads more than a short kernel runs. Two kinds: untimed (an item's
/// completion marker; a timed record costs the submitting thread about ten
/// times as much, GPU-PERF.md §1.2) and timed (the GPU's timestamps of an
/// item queued to an idle stream).
#[derive(Default)]
pub struct EventPool {
    untimed: Mutex<Vec<usize>>,
    timed: Mutex<Vec<usize>>,
}

impl EventPool {
    /// An event, timed or not.
    pub fn take(&self, timed: bool) -> Result<sys::CUevent, CuError> {
        if let Some(e) = lock(self.pool(timed)).pop() {
            return Ok(e as sys::CUevent);
        }
        let mut e = std::ptr::null_mut();
        let flags = if timed {
            0
        } else {
            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32
        };
        // SAFETY: creates an event in the worker's current context.
        ck("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut e, flags)
        })?;
        Ok(e)
    }

    /// Give back an event of the kind it was taken as.
    pub fn give(&self, e: sys::CUevent, timed: bool) {
        lock(self.pool(timed)).push(e as usize);
    }

    fn pool(&self, timed: bool) -> &Mutex<Vec<usize>> {
        if timed {
            &self.timed
        } else {
            &self.untimed
        }
    }
}

impl Drop for EventPool {
    fn drop(&mut self) {
        let (a, b) = (
            lock(&self.untimed).split_off(0),
            lock(&self.timed).split_off(0),
        );
        for e in a.into_iter().chain(b) {
            // SAFETY: an event this pool holds, used by no queued item.
            unsafe { sys::cuEventDestroy_v2(e as sys::CUevent) };
        }
    }
}

/// Device memory from `cuMemAlloc`.
pub struct DeviceBuffer(pub sys::CUdeviceptr);

impl DeviceBuffer {
    pub fn new(bytes: usize) -> Result<DeviceBuffer, CuError> {
        let mut p = 0;
        // SAFETY: a plain driver call with a valid out-pointer.
        ck("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut p, bytes) })?;
        Ok(DeviceBuffer(p))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: memory this buffer allocated; its work has completed.
        unsafe { sys::cuMemFree_v2(self.0) };
    }
}

/// Host memory mapped into the device (`cuMemHostAlloc`, DEVICEMAP).
pub struct PinnedHost {
    pub host: *mut libc::c_void,
    pub dev: sys::CUdeviceptr,
}

impl PinnedHost {
    pub fn new(bytes: usize) -> Result<PinnedHost, CuError> {
        let mut host = std::ptr::null_mut();
        // SAFETY: plain driver calls with valid out-pointers.
        ck("cuMemHostAlloc", unsafe {
            sys::cuMemHostAlloc(&mut host, bytes, sys::CU_MEMHOSTALLOC_DEVICEMAP)
        })?;
        let mut dev = 0;
        // SAFETY: `host` was just allocated with DEVICEMAP.
        ck("cuMemHostGetDevicePointer", unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut dev, host, 0)
        })?;
        Ok(PinnedHost { host, dev })
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        // SAFETY: memory this value allocated; no queued work uses it.
        unsafe { sys::cuMemFreeHost(self.host) };
    }
}

/// A loaded module.
pub struct Module(pub sys::CUmodule);

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: a module this value loaded; none of its kernels is queued
        // (the owner synchronizes the stream first).
        unsafe { sys::cuModuleUnload(self.0) };
    }
}

/// A link in progress (`cuLinkCreate`): the JIT compiler and linker, whose
/// output lives until it is destroyed.
pub struct LinkState(pub sys::CUlinkState);

impl Drop for LinkState {
    fn drop(&mut self) {
        // SAFETY: a link this value created; its output was copied out.
        unsafe { sys::cuLinkDestroy(self.0) };
    }
}

/// A stream of the worker's context.
pub struct Stream(pub sys::CUstream);

impl Stream {
    /// A non-blocking stream.
    pub fn new() -> Result<Stream, CuError> {
        let mut s = std::ptr::null_mut();
        // SAFETY: a plain driver call with a valid out-pointer.
        ck("cuStreamCreate", unsafe { sys::cuStreamCreate(&mut s, 1) })?;
        Ok(Stream(s))
    }

    /// Wait for everything queued on the stream.
    pub fn sync(&self) -> Result<(), CuError> {
        // SAFETY: a stream of the current context.
        ck("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(self.0)
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: a stream this value created; the owner drained it.
        unsafe { sys::cuStreamDestroy_v2(self.0) };
    }
}
