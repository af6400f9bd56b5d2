//! The process's one driver: the vGPU it opened at `cuInit`, the channels work goes to, the
//! handles it gave out, and waiting for work to finish.
//!
//! All state sits behind one lock ([`with`]). Waits never hold it while they sleep
//! ([`wait`]): a thread waiting for a stream does not stop another from submitting, and the
//! thread that runs host functions reaches the device between them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vgpu_guest::transport::vfio::VfioTransport;
use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpu_guest::{Channel, ChannelConfig, Device, ErrorCode, Fence, Segment};

use crate::context::Contexts;
use crate::device::Identity;
use crate::error::{err, from_fault, is_sticky, CuError, Result};
use crate::event::Events;
use crate::memory::Memory;
use crate::module::Modules;
use crate::stream::{StreamKey, Streams};
use crate::types::*;

/// Where device pointers start when the backend runs no guest PTX (`PTX_VA_BASE` = 0): the
/// CUDA engine's `PTX_VA_BASE`, so that pointers look alike on every backend.
pub const DEFAULT_POINTER_BASE: u64 = 0x2000_0000_0000;
/// The GPU VA space of a vGPU (ABI §7): device pointers lie in `[base, base + VA_SPACE)`.
pub const VA_SPACE: u64 = 1 << 39;
/// GPFIFO entries and bytes per entry of the channels this driver builds: a launch's
/// parameters and small host-to-device copies travel inline in their segment.
const GPFIFO_ENTRIES: u32 = 256;
const SEGMENT_BYTES: u32 = 32 * 1024;
/// How long a submission waits for room in a channel's ring.
const RING_TIMEOUT: Duration = Duration::from_secs(30);

/// A channel and the last fence submitted to it.
pub struct Chan {
    pub ch: Channel,
    pub last: Option<Fence>,
}

/// The driver state.
pub struct Driver {
    pub dev: Device,
    /// `CUdeviceptr` of VA 0.
    pub base: u64,
    pub ident: Identity,
    /// Channels by id, built on first use.
    pub chans: Vec<Option<Chan>>,
    pub ctx: Contexts,
    pub streams: Streams,
    pub events: Events,
    pub mem: Memory,
    pub modules: Modules,
    pub gates: crate::stream::Gates,
    /// DMA memory pageable copies and module images pass through ([`crate::copy`]).
    pub staging: Option<vgpu_guest::Buffer>,
    /// A sticky error (an illegal address, a timeout): every call fails with it until the
    /// context is reset.
    pub sticky: Option<CUresult>,
    /// An error of earlier asynchronous work, returned by the next call that waits.
    pub pending_error: Option<CUresult>,
    next_handle: usize,
    /// `[base, base + VA_SPACE)` reserved in this process (unmapped on drop).
    _window: Window,
}

/// The device-pointer window, reserved with `PROT_NONE` so that no host pointer of this
/// process ever equals a device pointer.
struct Window {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the window is an address range this process reserved; the pointer is never
// dereferenced, only passed back to munmap.
unsafe impl Send for Window {}

impl Window {
    fn reserve(base: u64) -> Result<Window> {
        let len = VA_SPACE as usize;
        // SAFETY: an anonymous PROT_NONE mapping at a fixed address that must not replace
        // anything (MAP_FIXED_NOREPLACE): it touches no memory of this process and the
        // result is checked.
        let addr = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED || addr as u64 != base {
            if addr != libc::MAP_FAILED {
                // SAFETY: unmapping the mapping just made (an older kernel placed it
                // elsewhere); nothing uses it.
                unsafe { libc::munmap(addr, len) };
            }
            crate::log(format_args!(
                "cannot reserve the device-pointer window at {base:#x}"
            ));
            return err(CUDA_ERROR_OPERATING_SYSTEM);
        }
        Ok(Window { addr, len })
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping the reservation this value made; nothing maps or reads it.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);
static INIT: OnceLock<CUresult> = OnceLock::new();

fn lock() -> MutexGuard<'static, Option<Driver>> {
    DRIVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// `cuInit`: open the vGPU (once per process; later calls return the first's result).
pub fn init() -> Result<()> {
    let r = *INIT.get_or_init(|| match open() {
        Ok(d) => {
            *lock() = Some(d);
            CUDA_SUCCESS
        }
        Err(e) => e.0,
    });
    if r == CUDA_SUCCESS {
        Ok(())
    } else {
        err(r)
    }
}

/// Whether `cuInit` succeeded.
pub fn initialized() -> bool {
    INIT.get() == Some(&CUDA_SUCCESS)
}

/// Run `f` on the driver (`CUDA_ERROR_NOT_INITIALIZED` before a successful `cuInit`).
pub fn with<R>(f: impl FnOnce(&mut Driver) -> Result<R>) -> Result<R> {
    let mut g = lock();
    match g.as_mut() {
        Some(d) => f(d),
        None => err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

/// The DMA memory the driver asks for (`VGPU_DMA_MB`, default 1 GiB over vfio-user, where it
/// is a sparse memfd, 256 MiB inside a VM, where it is locked memory).
fn dma_bytes(default_mb: u64) -> u64 {
    std::env::var("VGPU_DMA_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&mb| (16..=65536).contains(&mb))
        .unwrap_or(default_mb)
        << 20
}

/// The vgpud functions bound to vfio-pci in this (guest) kernel, in PCI order.
fn guest_functions() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return Vec::new();
    };
    let mut found: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter(|e| {
            let p = e.path();
            let class = std::fs::read_to_string(p.join("class")).unwrap_or_default();
            let driver = std::fs::read_link(p.join("driver")).unwrap_or_default();
            class.trim() == "0x030200" && driver.file_name().is_some_and(|n| n == "vfio-pci")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

/// A transport error at open: the vGPU is attached to another process (a vfio-user server
/// turns a second client away; vfio's group is busy) or missing.
fn open_error(e: vgpu_guest::Error) -> CuError {
    crate::log(format_args!("opening the vGPU: {e}"));
    match &e {
        vgpu_guest::Error::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            CuError(CUDA_ERROR_DEVICE_UNAVAILABLE)
        }
        vgpu_guest::Error::VfioUser(_) => CuError(CUDA_ERROR_DEVICE_UNAVAILABLE),
        vgpu_guest::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CuError(CUDA_ERROR_NO_DEVICE)
        }
        _ => CuError(CUDA_ERROR_NO_DEVICE),
    }
}

/// Open the vGPU: `VGPU_SOCKET` (vfio-user), else `VGPU_DEVICE` (a PCI address bound to
/// vfio-pci), else the first vgpud function bound to vfio-pci.
fn open() -> Result<Driver> {
    let mut pci = (0, 0, 0);
    let dev = if let Some(sock) = std::env::var_os("VGPU_SOCKET") {
        let path = std::path::PathBuf::from(sock);
        if !path.exists() {
            crate::log(format_args!(
                "VGPU_SOCKET {} does not exist",
                path.display()
            ));
            return err(CUDA_ERROR_NO_DEVICE);
        }
        let t = VfioUserTransport::connect(&path, dma_bytes(1024)).map_err(open_error)?;
        Device::open(Box::new(t)).map_err(open_error)?
    } else {
        let bdf = match std::env::var("VGPU_DEVICE") {
            Ok(b) => b,
            Err(_) => guest_functions()
                .into_iter()
                .next()
                .ok_or(CuError(CUDA_ERROR_NO_DEVICE))?,
        };
        pci = crate::device::parse_bus_id(&bdf).unwrap_or(pci);
        let t = VfioTransport::open(&bdf, dma_bytes(256)).map_err(open_error)?;
        Device::open(Box::new(t)).map_err(open_error)?
    };
    Driver::new(dev, pci)
}

impl Driver {
    fn new(mut dev: Device, pci: (u32, u32, u32)) -> Result<Driver> {
        let ident = Identity::read(&mut dev, pci)?;
        let base = match dev.ptx_va_base() {
            0 => DEFAULT_POINTER_BASE,
            b => b,
        };
        let window = Window::reserve(base)?;
        let n = dev.identity().channels as usize;
        let mut d = Driver {
            dev,
            base,
            ident,
            chans: (0..n).map(|_| None).collect(),
            ctx: Contexts::default(),
            streams: Streams::default(),
            events: Events::default(),
            mem: Memory::default(),
            modules: Modules::default(),
            gates: Default::default(),
            staging: None,
            sticky: None,
            pending_error: None,
            next_handle: 0x1000,
            _window: window,
        };
        d.ctx.primary = d.handle();
        Ok(d)
    }

    /// A fresh handle: a distinct non-null integer (never dereferenced, looked up in a table).
    pub fn handle(&mut self) -> usize {
        self.next_handle += 16;
        self.next_handle
    }

    /// Whether the backend runs guest kernels (`CAPS.PTX`).
    pub fn runs_kernels(&self) -> bool {
        self.dev.identity().ptx()
    }

    /// The VA of device pointer `p`, if it lies in the window.
    pub fn va_of(&self, p: CUdeviceptr) -> Option<u64> {
        p.checked_sub(self.base).filter(|&v| v < VA_SPACE)
    }

    /// Fail with the sticky error, if there is one.
    pub fn check_sticky(&self) -> Result<()> {
        match self.sticky {
            Some(e) => err(e),
            None => Ok(()),
        }
    }

    /// Channel `id`, built and enabled on first use.
    pub fn chan(&mut self, id: u32) -> Result<&mut Chan> {
        let slot = self
            .chans
            .get_mut(id as usize)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        if slot.is_none() {
            let cfg = ChannelConfig {
                gpfifo_entries: GPFIFO_ENTRIES,
                segment_bytes: SEGMENT_BYTES,
                interrupt_fences: false,
            };
            *slot = Some(Chan {
                ch: Channel::new(&mut self.dev, id, cfg)?,
                last: None,
            });
        }
        slot.as_mut().ok_or(CuError(CUDA_ERROR_UNKNOWN))
    }

    /// The channel module loads and queries go to: the last one when there are three or
    /// more (the legacy default stream has channel 0, created streams those between).
    pub fn control_channel(&self) -> u32 {
        let n = self.chans.len() as u32;
        if n >= 3 {
            n - 1
        } else {
            0
        }
    }

    /// Build a segment on stream `s` with `build`, after the waits its ordering needs, and
    /// ring it. Returns the fence that marks its completion.
    pub fn submit(
        &mut self,
        s: StreamKey,
        build: impl FnOnce(&mut Segment<'_>) -> Result<()>,
    ) -> Result<Fence> {
        self.check_sticky()?;
        let (chan_id, waits) = self.ordering(s)?;
        let fence = self.submit_on(chan_id, &waits, build)?;
        self.streams.submitted(s, fence);
        Ok(fence)
    }

    /// Submit on channel `id` after acquiring each `(semaphore VA, value)` of `waits`.
    pub fn submit_on(
        &mut self,
        id: u32,
        waits: &[(u64, u32)],
        build: impl FnOnce(&mut Segment<'_>) -> Result<()>,
    ) -> Result<Fence> {
        self.chan(id)?;
        let Driver { dev, chans, .. } = self;
        let c = chans
            .get_mut(id as usize)
            .and_then(|c| c.as_mut())
            .ok_or(CuError(CUDA_ERROR_UNKNOWN))?;
        let mut seg = c.ch.segment(dev, RING_TIMEOUT)?;
        for &(va, value) in waits {
            seg.pb.sem_acquire(va, value as u64, false, false);
        }
        build(&mut seg)?;
        let fence = seg.queue()?;
        c.ch.ring(dev)?;
        c.last = Some(fence);
        Ok(fence)
    }

    /// The channel of stream `s` and the semaphores it must wait for first: the legacy
    /// default stream waits for every blocking stream's work so far, a blocking stream for
    /// the legacy stream's (CUDA's legacy default-stream semantics).
    fn ordering(&mut self, s: StreamKey) -> Result<(u32, Vec<(u64, u32)>)> {
        let (chan_id, kind) = self.streams.route(s)?;
        let mut waits = Vec::new();
        let mut want = |d: &Driver, c: u32| -> Result<()> {
            if c == chan_id {
                return Ok(());
            }
            if let Some(Some(Chan { ch, last: Some(f) })) = d.chans.get(c as usize) {
                if !ch.reached(*f)? {
                    waits.push((ch.fence_va(), f.value));
                }
            }
            Ok(())
        };
        match kind {
            crate::stream::Kind::Legacy => {
                for c in self.streams.blocking_channels() {
                    want(self, c)?;
                }
            }
            crate::stream::Kind::Blocking => want(self, crate::stream::LEGACY_CHANNEL)?,
            crate::stream::Kind::NonBlocking => {}
        }
        Ok((chan_id, waits))
    }

    /// The last fence of every channel that has work not yet finished.
    pub fn outstanding(&self) -> Result<Vec<Fence>> {
        let mut out = Vec::new();
        for c in self.chans.iter().flatten() {
            if let Some(f) = c.last {
                if !c.ch.reached(f)? {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }

    /// Whether `f` has been reached; a fault of its channel is handled here ([`Self::fault`]).
    pub fn reached(&mut self, f: Fence, check: bool) -> Result<bool> {
        let Some(Some(c)) = self.chans.get(f.channel as usize) else {
            return err(CUDA_ERROR_INVALID_HANDLE);
        };
        if c.ch.reached(f)? {
            return Ok(true);
        }
        if check {
            if let Err(vgpu_guest::Error::ChannelFault { code, info, .. }) =
                c.ch.check(&mut self.dev)
            {
                return Err(self.fault(f.channel, code, info));
            }
        }
        Ok(false)
    }

    /// Channel `id` stopped with `code`: a sticky error stays until the context is reset;
    /// any other is reported once and the channel is rebuilt, its lost work counting as done.
    pub fn fault(&mut self, id: u32, code: ErrorCode, info: u32) -> CuError {
        let e = from_fault(code, info);
        crate::log(format_args!("channel {id} faulted: {code:?} info {info}"));
        if is_sticky(code) {
            self.sticky.get_or_insert(e);
            return CuError(self.sticky.unwrap_or(e));
        }
        if let Err(r) = self.recover(id) {
            self.sticky.get_or_insert(r.0);
        }
        CuError(e)
    }

    /// Rebuild channel `id` and release its fence past everything issued before, so that
    /// waits for its lost work end.
    pub fn recover(&mut self, id: u32) -> Result<()> {
        let Driver { dev, chans, .. } = self;
        let Some(Some(c)) = chans.get_mut(id as usize) else {
            return Ok(());
        };
        c.ch.recover(dev)?;
        let seg = c.ch.segment(dev, RING_TIMEOUT)?;
        let f = seg.queue()?;
        c.ch.ring(dev)?;
        c.last = Some(f);
        let t = Instant::now();
        while !c.ch.reached(f)? {
            c.ch.check(dev)?;
            if t.elapsed() > Duration::from_secs(10) {
                return err(CUDA_ERROR_LAUNCH_TIMEOUT);
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }

    /// After a sticky error, the context reset: an engine reset (a new engine context) and
    /// every channel rebuilt.
    pub fn reset_engine(&mut self) -> Result<()> {
        if self.sticky.take().is_none() {
            return Ok(());
        }
        self.dev.engine_reset()?;
        for id in 0..self.chans.len() as u32 {
            self.recover(id)?;
        }
        self.pending_error = None;
        Ok(())
    }
}

/// Wait until every fence of `fences` is reached, without holding the driver's lock while
/// sleeping. A fault of a channel ends the wait with its error; an error of earlier
/// asynchronous work is returned once.
pub fn wait(fences: &[Fence]) -> Result<()> {
    let mut left: Vec<Fence> = fences.to_vec();
    let start = Instant::now();
    let mut last_check = Instant::now();
    let mut nap = Duration::from_micros(2);
    loop {
        let check = last_check.elapsed() > Duration::from_millis(1);
        with(|d| {
            let mut keep = Vec::with_capacity(left.len());
            for &f in &left {
                if !d.reached(f, check)? {
                    keep.push(f);
                }
            }
            left = keep;
            if left.is_empty() {
                if let Some(e) = d.pending_error.take() {
                    return err(e);
                }
            }
            Ok(())
        })?;
        if left.is_empty() {
            return Ok(());
        }
        if check {
            last_check = Instant::now();
        }
        if start.elapsed() < Duration::from_micros(50) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_micros(200));
        }
    }
}

/// Handles of each kind, looked up by value.
pub type Table<T> = HashMap<usize, T>;
