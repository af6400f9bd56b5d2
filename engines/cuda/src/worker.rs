//! The CUDA worker: one process per vGPU, holding that vGPU's CUDA context,
//! its framebuffer (one device allocation of exactly the type's size) and
//! the guest RAM it was handed (the VMM's files, mapped here and registered
//! with the GPU: the pinning and GPA translation of the design). A sticky
//! CUDA error (an illegal address, a trap) ends this process only: the
//! daemon faults this vGPU's channels and starts a new worker on reset.
//!
//! It reads operations from the daemon ([`engine_worker::wire`]) and queues them on
//! one stream, each followed by an event; a second thread reports each item
//! as its event completes, in order, with the GPU time since the event
//! before it. Items queued back to back share events that way (the end of
//! one is the start of the next): one event record per item, not two, which
//! on the GPU costs about as much as a 10 µs kernel's launch gap.
//!
//! Guest kernels (PTX the guest loads) run in a 512 GiB range of this
//! process's GPU address space reserved at [`PTX_VA_BASE`]: the vGPU's VA
//! `v` is at `PTX_VA_BASE + v`. The framebuffer is physical memory in 2 MiB
//! chunks (one `cuMemCreate` each: CUDA maps a physical allocation only
//! whole), mapped once in order for the engine's own work and again, chunk
//! by chunk, where the launching channel's page tables put it
//! ([`devmodel::gmmu::KernelMap`]). Nothing else is mapped in that range:
//! a guest pointer outside its mapped VRAM faults this process's context.

use std::collections::HashMap;
use std::ffi::c_void;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys;
use devmodel::command::{KernelLaunch, Op};
use devmodel::gmmu::{Aperture, Extent, KernelMap, KernelRun, PAGE_2M, VA_BITS};

use engine_worker::wire::{self, to_daemon, to_worker, Reader, Status, Writer};

/// A CUDA driver call that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: CUDA error {code:?}")]
pub struct CuError {
    what: &'static str,
    code: sys::CUresult,
}

fn ck(what: &'static str, r: sys::CUresult) -> Result<(), CuError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError { what, code: r })
    }
}

/// Where guest kernels see the vGPU's VA 0 (`PTX_VA_BASE`, ABI §7.1): a
/// fixed address, so that a new worker (after a fault) gives the guest the
/// same pointers. 32 TiB lies between where Linux puts programs' own
/// mappings and CUDA's; a worker that cannot reserve the range there runs
/// no guest PTX and says so.
pub const PTX_VA_BASE: u64 = 0x2000_0000_0000;

/// CUDA error numbers reported for launches refused before they reach the
/// driver.
const CUDA_ERROR_NOT_FOUND: u32 = 500;
const CUDA_ERROR_NOT_SUPPORTED: u32 = 801;

/// The kernels of `kernels.cu`.
struct Kernels {
    fill: sys::CUfunction,
    saxpy: sys::CUfunction,
    gemm: sys::CUfunction,
    reduce: sys::CUfunction,
    store_sum: sys::CUfunction,
    spin: sys::CUfunction,
}

/// A guest RAM file mapped here and registered with the GPU.
struct MappedFile {
    host: *mut u8,
    len: usize,
    dev: u64,
}

/// A window of guest RAM: `len` bytes at `gpa`, reachable at `dev`.
#[derive(Clone, Copy)]
struct Window {
    gpa: u64,
    len: u64,
    dev: u64,
}

/// An item queued on the GPU, for the completion thread.
struct InFlight {
    tag: u64,
    /// The event before the item: the previous item's end while that was
    /// still queued, else one of its own.
    start: sys::CUevent,
    owns_start: bool,
    end: sys::CUevent,
    /// A reduce's f64 accumulator (mapped host memory) and the sum carried
    /// in; the item's value is their sum.
    sum: Option<(*mut f64, f64)>,
    scratch: Vec<sys::CUdeviceptr>,
    status: Status,
    /// The CUDA error number of a refused module or launch.
    error: u32,
}

// SAFETY: the raw CUDA handles and host pointers in an InFlight are used by
// one thread at a time (handed from the submitting thread to the
// completion thread through a channel); CUDA handles are valid in every
// thread of the process that has the context current.
unsafe impl Send for InFlight {}

/// Events that items have finished with, for the next ones: creating and
/// destroying two events per item costs the submitting and completion
/// threads more than a short kernel runs.
struct EventPool(Mutex<Vec<usize>>);

impl EventPool {
    fn take(&self) -> Result<sys::CUevent, CuError> {
        if let Some(e) = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(e as sys::CUevent);
        }
        let mut e = std::ptr::null_mut();
        // SAFETY: creates an event in the worker's current context.
        ck("cuEventCreate", unsafe { sys::cuEventCreate(&mut e, 0) })?;
        Ok(e)
    }

    fn give(&self, e: sys::CUevent) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e as usize);
    }
}

struct Worker {
    sock: UnixStream,
    out: Arc<Mutex<UnixStream>>,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    io: sys::CUstream,
    vram: sys::CUdeviceptr,
    vram_len: u64,
    /// The framebuffer's physical memory, one allocation per 2 MiB chunk.
    vram_chunks: Vec<sys::CUmemGenericAllocationHandle>,
    device: sys::CUdevice,
    /// Guest kernels' view of the vGPU's VA 0 (0: no guest PTX here).
    ptx_base: u64,
    /// The kernel map in force (id, runs) and the one sent for the next
    /// launch.
    kernel_map: (u64, Vec<KernelRun>),
    next_map: Option<KernelMap>,
    /// Guest modules by slot, and their functions by (slot, name).
    modules: HashMap<u32, sys::CUmodule>,
    functions: HashMap<(u32, String), sys::CUfunction>,
    sms: u32,
    k: Kernels,
    /// `spin`'s common start and finished-block count (16 bytes, zero
    /// between launches).
    spin_sync: sys::CUdeviceptr,
    files: HashMap<(u64, u64), MappedFile>,
    windows: Vec<Window>,
    /// Mapped host memory for reduce accumulators, one slot per item in
    /// flight (a ring).
    sums: *mut f64,
    sum_dev: sys::CUdeviceptr,
    next_sum: usize,
    done: mpsc::Sender<InFlight>,
    /// The last item's end event, and how many items are queued and not
    /// yet reported (the completion thread counts them down).
    last_end: sys::CUevent,
    queued: Arc<AtomicUsize>,
    events: Arc<EventPool>,
}

const SUM_SLOTS: usize = 4096;

fn send(out: &Mutex<UnixStream>, body: &[u8]) -> std::io::Result<()> {
    let s = out.lock().unwrap_or_else(|e| e.into_inner());
    wire::send(&s, body, &[])
}

/// Run the worker on the socket at descriptor `fd`: `device` ordinal,
/// `vram` bytes of framebuffer. Returns the process's exit code.
pub fn run(fd: i32, device: i32, vram: u64) -> i32 {
    // SAFETY: the daemon passed this descriptor to this process for this
    // purpose; nothing else in the process owns it.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let out = match sock.try_clone() {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            eprintln!("vgpud-cuda-worker: {e}");
            return 1;
        }
    };
    let fatal = |out: &Mutex<UnixStream>, msg: String| {
        let mut w = Writer::new(to_daemon::FATAL);
        w.0.extend_from_slice(msg.as_bytes());
        let _ = send(out, &w.0);
        eprintln!("vgpud-cuda-worker: {msg}");
        2
    };
    let (tx, rx) = mpsc::channel();
    let mut w = match Worker::start(sock, out.clone(), device, vram, tx) {
        Ok(w) => w,
        Err(e) => return fatal(&out, e),
    };
    let (ctx, out2) = (w.ctx as usize, out.clone());
    let (events, queued) = (w.events.clone(), w.queued.clone());
    let reporter =
        std::thread::spawn(move || completions(ctx as sys::CUcontext, rx, &out2, &events, &queued));
    let mut r = Writer::new(to_daemon::READY);
    r.u64(w.vram_len).u32(w.sms).u64(w.ptx_base);
    if send(&out, &r.0).is_err() {
        return 1;
    }
    let code = match w.serve() {
        Ok(()) => 0,
        Err(e) => fatal(&out, e),
    };
    // The completion thread ends once the last item is reported.
    drop(w);
    let _ = reporter.join();
    code
}

/// Report each item as its end event completes, in submission order, with
/// the GPU time from its start event. An event goes back to the pool once
/// the item after the one it ended has been reported (it may be that
/// item's start). A failed wait is a sticky error: the process cannot go on.
fn completions(
    ctx: sys::CUcontext,
    rx: mpsc::Receiver<InFlight>,
    out: &Mutex<UnixStream>,
    events: &EventPool,
    queued: &AtomicUsize,
) {
    // SAFETY: makes the worker's context current on this thread; `ctx` is
    // the live context the worker created.
    if unsafe { sys::cuCtxSetCurrent(ctx) } != sys::CUresult::CUDA_SUCCESS {
        std::process::exit(3);
    }
    let (mut waiting, mut busy, mut items) =
        (std::time::Duration::ZERO, std::time::Duration::ZERO, 0u64);
    let mut prev_end: Option<sys::CUevent> = None;
    while let Ok(item) = rx.recv() {
        let t = std::time::Instant::now();
        // SAFETY: `end` was taken from the pool and recorded on the work
        // stream by the submitting thread.
        let r = unsafe { sys::cuEventSynchronize(item.end) };
        let synced = std::time::Instant::now();
        waiting += synced - t;
        if r != sys::CUresult::CUDA_SUCCESS {
            // A sticky error: this item's channel faults with KERNEL_FAULT,
            // every other item of the vGPU with ENGINE_ERROR as the process
            // ends.
            let mut w = Writer::new(to_daemon::DONE);
            w.u64(item.tag)
                .u64(0)
                .u8(Status::Fault as u8)
                .f64(r as u32 as f64);
            let _ = send(out, &w.0);
            let mut w = Writer::new(to_daemon::FATAL);
            w.0.extend_from_slice(format!("GPU fault: {r:?}").as_bytes());
            let _ = send(out, &w.0);
            std::process::exit(4);
        }
        let mut ms = 0f32;
        // SAFETY: both events completed (end after start on one stream);
        // `ms` is a valid out-pointer for the call.
        unsafe {
            sys::cuEventElapsedTime_v2(&mut ms, item.start, item.end);
        }
        // The previous item's end is done with now (whether or not it was
        // this item's start); so is a start of this item's own.
        if let Some(e) = prev_end.replace(item.end) {
            events.give(e);
        }
        if item.owns_start {
            events.give(item.start);
        }
        let value = match item.sum {
            // SAFETY: the slot is mapped host memory the kernel wrote before
            // the end event; nothing else writes it until it is reused.
            Some((slot, carry)) => carry + unsafe { std::ptr::read_volatile(slot) },
            None => item.error as f64,
        };
        for p in item.scratch {
            // SAFETY: the scratch buffer was allocated for this item, whose
            // work is complete.
            unsafe { sys::cuMemFree_v2(p) };
        }
        queued.fetch_sub(1, Ordering::AcqRel);
        let mut w = Writer::new(to_daemon::DONE);
        w.u64(item.tag)
            .u64((ms as f64 * 1e6) as u64)
            .u8(item.status as u8)
            .f64(value);
        if send(out, &w.0).is_err() {
            std::process::exit(0);
        }
        busy += synced.elapsed();
        items += 1;
    }
    if items > 0 {
        eprintln!(
            "vgpud-cuda-worker: completion thread {:.1} us an item waiting for the GPU, {:.1} us an item busy",
            waiting.as_secs_f64() * 1e6 / items as f64,
            busy.as_secs_f64() * 1e6 / items as f64
        );
    }
}

impl Worker {
    fn start(
        sock: UnixStream,
        out: Arc<Mutex<UnixStream>>,
        device: i32,
        vram: u64,
        done: mpsc::Sender<InFlight>,
    ) -> Result<Worker, String> {
        // SAFETY: only tries to load the library by its candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver library (libcuda.so) on this host".into());
        }
        let e = |x: CuError| x.to_string();
        // SAFETY: plain driver API calls with valid out-pointers; the
        // context is created for this process and made current here.
        unsafe {
            ck("cuInit", sys::cuInit(0)).map_err(e)?;
            let mut dev = 0;
            ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, device)).map_err(e)?;
            let mut ctx = std::ptr::null_mut();
            ck(
                "cuDevicePrimaryCtxRetain",
                sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
            )
            .map_err(e)?;
            ck("cuCtxSetCurrent", sys::cuCtxSetCurrent(ctx)).map_err(e)?;
            let mut sms = 0;
            ck(
                "cuDeviceGetAttribute",
                sys::cuDeviceGetAttribute(
                    &mut sms,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                    dev,
                ),
            )
            .map_err(e)?;
            let (vram_ptr, vram_chunks) = framebuffer(dev, vram).map_err(e)?;
            let ptx_base = reserve_kernel_space(dev);
            let mut stream = std::ptr::null_mut();
            ck("cuStreamCreate", sys::cuStreamCreate(&mut stream, 1)).map_err(e)?;
            let mut io = std::ptr::null_mut();
            ck("cuStreamCreate", sys::cuStreamCreate(&mut io, 1)).map_err(e)?;
            let k = compile()?;
            let mut spin_sync = 0;
            ck("cuMemAlloc", sys::cuMemAlloc_v2(&mut spin_sync, 16)).map_err(e)?;
            ck("cuMemsetD8", sys::cuMemsetD8_v2(spin_sync, 0, 16)).map_err(e)?;
            let mut sums = std::ptr::null_mut();
            ck(
                "cuMemHostAlloc",
                sys::cuMemHostAlloc(&mut sums, SUM_SLOTS * 8, sys::CU_MEMHOSTALLOC_DEVICEMAP),
            )
            .map_err(e)?;
            let mut sum_dev = 0;
            ck(
                "cuMemHostGetDevicePointer",
                sys::cuMemHostGetDevicePointer_v2(&mut sum_dev, sums, 0),
            )
            .map_err(e)?;
            Ok(Worker {
                sock,
                out,
                ctx,
                stream,
                io,
                vram: vram_ptr,
                vram_len: vram,
                vram_chunks,
                device: dev,
                ptx_base,
                kernel_map: (0, Vec::new()),
                next_map: None,
                modules: HashMap::new(),
                functions: HashMap::new(),
                sms: sms.max(1) as u32,
                k,
                spin_sync,
                files: HashMap::new(),
                windows: Vec::new(),
                sums: sums.cast(),
                sum_dev,
                next_sum: 0,
                done,
                last_end: std::ptr::null_mut(),
                queued: Arc::new(AtomicUsize::new(0)),
                events: Arc::new(EventPool(Mutex::new(Vec::new()))),
            })
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        // Where this thread's time goes, per item: reported on stderr when
        // the daemon closes the socket (vgpud's log).
        let (mut busy, mut items) = (std::time::Duration::ZERO, 0u64);
        loop {
            let (body, files) = match wire::recv(&self.sock) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    if items > 0 {
                        eprintln!(
                            "vgpud-cuda-worker: {items} items, submitting thread busy {:.1} us an item",
                            busy.as_secs_f64() * 1e6 / items as f64
                        );
                    }
                    return Ok(());
                }
                Err(e) => return Err(format!("reading from the daemon: {e}")),
            };
            let t = std::time::Instant::now();
            items += 1;
            let mut r = Reader::new(&body);
            let what = r.u8().map_err(|e| e.to_string())?;
            match what {
                to_worker::LAYOUT => self.layout(&mut r, files).map_err(|e| e.to_string())?,
                to_worker::SUBMIT => {
                    let tag = r.u64().map_err(|e| e.to_string())?;
                    let op = r.op().map_err(|e| e.to_string())?;
                    self.submit(tag, &op).map_err(|e| e.to_string())?;
                }
                to_worker::READ_VRAM => {
                    let (tag, off, len) = (
                        r.u64().map_err(|e| e.to_string())?,
                        r.u64().map_err(|e| e.to_string())?,
                        r.u64().map_err(|e| e.to_string())?,
                    );
                    let mut data = vec![0u8; len.min(1 << 20) as usize];
                    let status = self.vram_io(off, &mut data, false);
                    self.reply(tag, status, &data)?;
                }
                to_worker::WRITE_VRAM => {
                    let (tag, off) = (
                        r.u64().map_err(|e| e.to_string())?,
                        r.u64().map_err(|e| e.to_string())?,
                    );
                    let mut data = r.bytes().map_err(|e| e.to_string())?.to_vec();
                    let status = self.vram_io(off, &mut data, true);
                    self.reply(tag, status, &[])?;
                }
                to_worker::KERNEL_MAP => {
                    self.next_map = Some(r.kernel_map().map_err(|e| e.to_string())?);
                }
                to_worker::CLEAR_VRAM => {
                    let tag = r.u64().map_err(|e| e.to_string())?;
                    // SAFETY: the framebuffer allocation is `vram_len` bytes;
                    // the work stream orders this after every queued item.
                    let st = unsafe {
                        if self.vram_len > 0 {
                            sys::cuMemsetD8Async(self.vram, 0, self.vram_len as usize, self.stream);
                        }
                        sys::cuStreamSynchronize(self.stream)
                    };
                    if st != sys::CUresult::CUDA_SUCCESS {
                        return Err(format!("clearing the framebuffer: {st:?}"));
                    }
                    // The VM went away: its modules go with it (the stream
                    // is idle: nothing of theirs runs).
                    self.functions.clear();
                    for (_, m) in self.modules.drain() {
                        // SAFETY: a module this worker loaded; no queued work.
                        unsafe { sys::cuModuleUnload(m) };
                    }
                    self.reply(tag, Status::Ok, &[])?;
                }
                _ => return Err(format!("unknown message {what}")),
            }
            busy += t.elapsed();
        }
    }

    fn reply(&self, tag: u64, status: Status, data: &[u8]) -> Result<(), String> {
        let mut w = Writer::new(to_daemon::DATA);
        w.u64(tag).u8(status as u8).bytes(data);
        send(&self.out, &w.0).map_err(|e| e.to_string())
    }

    /// Copy between VRAM at `off` and `data` (a write when `write`), in
    /// order after nothing: HOST accesses come after their work completed.
    fn vram_io(&self, off: u64, data: &mut [u8], write: bool) -> Status {
        if off
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.vram_len)
        {
            return Status::VramRange;
        }
        // SAFETY: the range lies inside the framebuffer (checked above) and
        // `data` is a live buffer of that length; the io stream is synced
        // before `data` is used again.
        let r = unsafe {
            if write {
                sys::cuMemcpyHtoDAsync_v2(
                    self.vram + off,
                    data.as_ptr().cast(),
                    data.len(),
                    self.io,
                );
            } else {
                sys::cuMemcpyDtoHAsync_v2(
                    data.as_mut_ptr().cast(),
                    self.vram + off,
                    data.len(),
                    self.io,
                );
            }
            sys::cuStreamSynchronize(self.io)
        };
        if r == sys::CUresult::CUDA_SUCCESS {
            Status::Ok
        } else {
            Status::Engine
        }
    }

    /// A new guest RAM layout: files (descriptors in `files`, in order) and
    /// windows. Files already mapped stay mapped and registered.
    fn layout(&mut self, r: &mut Reader, files: Vec<File>) -> Result<(), wire::Malformed> {
        let n = r.u32()? as usize;
        if n != files.len() {
            return Err(wire::Malformed("file count"));
        }
        let mut keys = Vec::with_capacity(n);
        for f in files {
            let (len, writable) = (r.u64()?, r.u8()? != 0);
            let Ok(meta) = f.metadata() else {
                return Err(wire::Malformed("file"));
            };
            let key = (meta.dev(), meta.ino());
            if let std::collections::hash_map::Entry::Vacant(slot) = self.files.entry(key) {
                match map_file(&f, len, writable) {
                    Ok(m) => {
                        slot.insert(m);
                    }
                    Err(e) => eprintln!("vgpud-cuda-worker: guest RAM file not mapped: {e}"),
                }
            }
            keys.push(key);
        }
        let m = r.u32()? as usize;
        let mut windows = Vec::with_capacity(m);
        for _ in 0..m {
            let (gpa, len, file, offset) = (r.u64()?, r.u64()?, r.u32()? as usize, r.u64()?);
            let Some(f) = keys.get(file).and_then(|k| self.files.get(k)) else {
                continue;
            };
            if offset.checked_add(len).is_none_or(|e| e > f.len as u64) {
                continue;
            }
            windows.push(Window {
                gpa,
                len,
                dev: f.dev + offset,
            });
        }
        windows.sort_by_key(|w| w.gpa);
        self.windows = windows;
        // Files no window uses any more are unregistered and unmapped.
        self.files.retain(|k, f| {
            let keep = keys.contains(k);
            if !keep {
                // SAFETY: the mapping was registered and made by map_file;
                // no queued work names it (the daemon sends a new layout
                // only after the VMM unmapped the memory).
                unsafe {
                    sys::cuMemHostUnregister(f.host.cast());
                    libc::munmap(f.host.cast(), f.len);
                }
            }
            keep
        });
        Ok(())
    }

    /// The device address of `e`, checked against the framebuffer or the
    /// guest RAM windows.
    fn resolve(&self, e: &Extent) -> Result<u64, Status> {
        let end = e.addr.checked_add(e.len).ok_or(Status::Unmapped)?;
        match e.aperture {
            Aperture::Vram if end <= self.vram_len => Ok(self.vram + e.addr),
            Aperture::Vram => Err(Status::VramRange),
            Aperture::Sysmem => {
                let i = self.windows.partition_point(|w| w.gpa <= e.addr);
                let w = i
                    .checked_sub(1)
                    .map(|i| self.windows[i])
                    .ok_or(Status::Unmapped)?;
                if end <= w.gpa + w.len {
                    Ok(w.dev + (e.addr - w.gpa))
                } else {
                    Err(Status::Unmapped)
                }
            }
        }
    }

    /// One contiguous device buffer holding `ext` (`bytes` long): the
    /// extent itself, or scratch gathered from the pieces (and scattered
    /// back after the kernel when `written`).
    fn operand(
        &self,
        ext: &[Extent],
        bytes: u64,
        scratch: &mut Vec<sys::CUdeviceptr>,
        back: &mut Vec<(sys::CUdeviceptr, Vec<(u64, u64)>)>,
        written: bool,
    ) -> Result<u64, Status> {
        let total: u64 = ext.iter().map(|e| e.len).sum();
        if total < bytes {
            return Err(Status::Engine);
        }
        if let [one] = ext {
            return self.resolve(one);
        }
        let parts: Vec<(u64, u64)> = ext
            .iter()
            .map(|e| self.resolve(e).map(|p| (p, e.len)))
            .collect::<Result<_, _>>()?;
        let mut buf = 0;
        // SAFETY: a new stream-ordered allocation of `total` bytes; the
        // copies stay inside it and inside each resolved extent.
        unsafe {
            if sys::cuMemAlloc_v2(&mut buf, total.max(4) as usize) != sys::CUresult::CUDA_SUCCESS {
                return Err(Status::Engine);
            }
            let mut at = 0;
            for (p, l) in &parts {
                sys::cuMemcpyAsync(buf + at, *p, *l as usize, self.stream);
                at += l;
            }
        }
        scratch.push(buf);
        if written {
            back.push((buf, parts));
        }
        Ok(buf)
    }

    /// Queue `op` (tag `tag`) on the stream, then its end event, and hand
    /// it to the completion thread. Its start is the last item's end while
    /// that item is still queued (the GPU runs them back to back), else an
    /// event recorded now.
    fn submit(&mut self, tag: u64, op: &Op) -> Result<(), CuError> {
        let chained = !self.last_end.is_null() && self.queued.load(Ordering::Acquire) > 0;
        let start = if chained {
            self.last_end
        } else {
            let e = self.events.take()?;
            // SAFETY: records an event of this context on the worker's stream.
            unsafe { ck("cuEventRecord", sys::cuEventRecord(e, self.stream))? };
            e
        };
        let end = self.events.take()?;
        let mut item = InFlight {
            tag,
            start,
            owns_start: !chained,
            end,
            sum: None,
            scratch: Vec::new(),
            status: Status::Ok,
            error: 0,
        };
        let ops: Vec<&Op> = match op {
            Op::Batch(v) => v.iter().collect(),
            o => vec![o],
        };
        for o in ops {
            let r = match o {
                Op::ModuleLoad { slot, text, log } => self.module_load(*slot, text, log, &mut item),
                Op::Kernel(k) => self.kernel(k, &mut item),
                o => self.queue(o, &mut item),
            };
            if let Err(s) = r {
                item.status = s;
                break;
            }
        }
        // SAFETY: as above.
        unsafe { ck("cuEventRecord", sys::cuEventRecord(end, self.stream))? };
        self.last_end = end;
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.done.send(item);
        Ok(())
    }

    /// Load guest PTX into `slot` (JIT-compiled now, on this thread) and
    /// queue its log for the guest's buffer `log`. A module the slot held
    /// is unloaded once the work queued before has run.
    fn module_load(
        &mut self,
        slot: u32,
        text: &[u8],
        log: &[Extent],
        item: &mut InFlight,
    ) -> Result<(), Status> {
        const LOG: usize = 64 << 10;
        if self.ptx_base == 0 {
            item.error = CUDA_ERROR_NOT_SUPPORTED;
            return Err(Status::Refused);
        }
        if let Some(old) = self.modules.remove(&slot) {
            self.functions.retain(|(s, _), _| *s != slot);
            // SAFETY: the stream's work (which may run the old module's
            // kernels) completes before the module goes.
            unsafe {
                sys::cuStreamSynchronize(self.stream);
                sys::cuModuleUnload(old);
            }
        }
        let mut image = text.to_vec();
        image.push(0);
        let (mut info, mut error) = (vec![0u8; LOG], vec![0u8; LOG]);
        let mut opts = [
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut vals: [*mut c_void; 4] = [
            info.as_mut_ptr().cast(),
            LOG as *mut c_void,
            error.as_mut_ptr().cast(),
            LOG as *mut c_void,
        ];
        let mut module = std::ptr::null_mut();
        // SAFETY: `image` is NUL-terminated text; each log option points at
        // a live buffer of the size given beside it.
        let r = unsafe {
            sys::cuModuleLoadDataEx(
                &mut module,
                image.as_ptr().cast(),
                opts.len() as u32,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        };
        let ok = r == sys::CUresult::CUDA_SUCCESS;
        if ok {
            self.modules.insert(slot, module);
        }
        // The log up to its NUL, NUL-terminated, truncated to the buffer.
        let text = if ok { &info } else { &error };
        let len = text.iter().position(|&b| b == 0).unwrap_or(LOG - 1);
        let total: u64 = log.iter().map(|e| e.len).sum();
        if total > 0 {
            let mut bytes = text[..len.min(total as usize - 1)].to_vec();
            bytes.push(0);
            let mut at = 0usize;
            for e in log {
                if at >= bytes.len() {
                    break;
                }
                let n = (e.len as usize).min(bytes.len() - at);
                let dst = self.resolve(e)?;
                // SAFETY: `n` bytes inside the resolved extent; the source
                // is pageable, so the call returns once it has been staged.
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(dst, bytes[at..].as_ptr().cast(), n, self.stream)
                };
                at += n;
            }
        }
        if ok {
            Ok(())
        } else {
            item.error = r as u32;
            Err(Status::Module)
        }
    }

    /// Make `map` the address space guest kernels run in: the runs of the
    /// framebuffer the daemon sent for it, mapped at `PTX_VA_BASE + va`.
    fn apply_map(&mut self, map: &KernelMap) -> Result<(), Status> {
        if self.kernel_map.0 == map.id {
            return Ok(());
        }
        let Some(next) = self.next_map.take().filter(|m| m.id == map.id) else {
            eprintln!("vgpud-cuda-worker: kernel map {} was not sent", map.id);
            return Err(Status::Engine);
        };
        if next.runs == self.kernel_map.1 {
            self.kernel_map.0 = next.id;
            return Ok(());
        }
        let size = self.vram_chunks.len() as u64 * PAGE_2M;
        let fits = |r: &KernelRun| {
            r.va.checked_add(r.len).is_some_and(|e| e <= 1 << VA_BITS)
                && r.vram.checked_add(r.len).is_some_and(|e| e <= size)
                && (r.va | r.vram | r.len) % PAGE_2M == 0
        };
        // SAFETY: the work queued before (which may use the old mappings)
        // completes first; every range lies inside the reserved 2^39 bytes
        // and the framebuffer's allocation (checked by `fits`).
        unsafe {
            sys::cuStreamSynchronize(self.stream);
            for r in &self.kernel_map.1 {
                for k in 0..r.len / PAGE_2M {
                    sys::cuMemUnmap(self.ptx_base + r.va + k * PAGE_2M, PAGE_2M as usize);
                }
            }
            self.kernel_map = (0, Vec::new());
            for r in next.runs.iter().filter(|r| fits(r)) {
                let at = self.ptx_base + r.va;
                let access = access(self.device, !r.read_only);
                let first = (r.vram / PAGE_2M) as usize;
                for (k, h) in self.vram_chunks[first..][..(r.len / PAGE_2M) as usize]
                    .iter()
                    .enumerate()
                {
                    let e = sys::cuMemMap(at + k as u64 * PAGE_2M, PAGE_2M as usize, 0, *h, 0);
                    if e != sys::CUresult::CUDA_SUCCESS {
                        eprintln!("vgpud-cuda-worker: cuMemMap of a guest kernel chunk: {e:?}");
                        self.kernel_map.1.push(KernelRun {
                            len: k as u64 * PAGE_2M,
                            ..*r
                        });
                        return Err(Status::Engine);
                    }
                }
                self.kernel_map.1.push(*r);
                let e = sys::cuMemSetAccess(at, r.len as usize, &access, 1);
                if e != sys::CUresult::CUDA_SUCCESS {
                    eprintln!("vgpud-cuda-worker: cuMemSetAccess of a guest kernel run: {e:?}");
                    return Err(Status::Engine);
                }
            }
        }
        self.kernel_map.0 = next.id;
        Ok(())
    }

    /// Queue a guest kernel: its module's function, in its channel's
    /// address space, with the guest's grid, block and parameter buffer.
    fn kernel(&mut self, k: &KernelLaunch, item: &mut InFlight) -> Result<(), Status> {
        let refuse = |item: &mut InFlight, code: u32| {
            item.error = code;
            Err(Status::Refused)
        };
        if self.ptx_base == 0 {
            return refuse(item, CUDA_ERROR_NOT_SUPPORTED);
        }
        let Some(&module) = self.modules.get(&k.slot) else {
            return refuse(item, CUDA_ERROR_NOT_FOUND);
        };
        let key = (k.slot, k.func.clone());
        let f = match self.functions.get(&key) {
            Some(f) => *f,
            None => {
                let Ok(name) = std::ffi::CString::new(k.func.as_bytes()) else {
                    return refuse(item, CUDA_ERROR_NOT_FOUND);
                };
                let mut f = std::ptr::null_mut();
                // SAFETY: `module` is loaded; `name` is NUL-terminated.
                let r = unsafe { sys::cuModuleGetFunction(&mut f, module, name.as_ptr()) };
                if r != sys::CUresult::CUDA_SUCCESS {
                    return refuse(item, r as u32);
                }
                self.functions.insert(key, f);
                f
            }
        };
        self.apply_map(&k.map)?;
        let mut params = k.params.clone();
        let mut size = params.len();
        let mut extra: [*mut c_void; 5] = [
            sys::CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT as usize as *mut c_void,
            params.as_mut_ptr().cast(),
            sys::CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT as usize as *mut c_void,
            (&mut size as *mut usize).cast(),
            sys::CU_LAUNCH_PARAM_END_AS_INT as usize as *mut c_void,
        ];
        let extra_ptr = if params.is_empty() {
            std::ptr::null_mut()
        } else {
            extra.as_mut_ptr()
        };
        // SAFETY: the parameter buffer and its size live across the call
        // (CUDA copies them); the function belongs to this context.
        let r = unsafe {
            sys::cuLaunchKernel(
                f,
                k.grid[0],
                k.grid[1],
                k.grid[2],
                k.block[0],
                k.block[1],
                k.block[2],
                0,
                self.stream,
                std::ptr::null_mut(),
                extra_ptr,
            )
        };
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            refuse(item, r as u32)
        }
    }

    fn launch(
        &self,
        f: sys::CUfunction,
        grid: u32,
        block: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), Status> {
        // SAFETY: `args` points at live values of the types the kernel's
        // parameters have (checked by each caller against kernels.cu).
        let r = unsafe {
            sys::cuLaunchKernel(
                f,
                grid.max(1),
                1,
                1,
                block,
                1,
                1,
                0,
                self.stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(Status::Engine)
        }
    }

    fn grid(&self, elems: u64) -> u32 {
        (elems.div_ceil(256).min(self.sms as u64 * 16)) as u32
    }

    /// Queue one operation on the stream.
    fn queue(&mut self, op: &Op, item: &mut InFlight) -> Result<(), Status> {
        let mut back = Vec::new();
        match op {
            Op::Copy { src, dst } => {
                // Pairs of source and destination ranges, contiguous runs
                // merged (guest RAM and VRAM are mostly contiguous behind
                // page-sized extents): one copy per run.
                let (mut si, mut di, mut so, mut dof) = (0usize, 0usize, 0u64, 0u64);
                let mut run: Option<(u64, u64, u64)> = None;
                while si < src.len() && di < dst.len() {
                    let (s, d) = (&src[si], &dst[di]);
                    let n = (s.len - so).min(d.len - dof);
                    let sp = self.resolve(s)? + so;
                    let dp = self.resolve(d)? + dof;
                    run = match run {
                        Some((rs, rd, rn)) if rs + rn == sp && rd + rn == dp => {
                            Some((rs, rd, rn + n))
                        }
                        Some((rs, rd, rn)) => {
                            // SAFETY: both ranges lie inside resolved extents.
                            unsafe { sys::cuMemcpyAsync(rd, rs, rn as usize, self.stream) };
                            Some((sp, dp, n))
                        }
                        None => Some((sp, dp, n)),
                    };
                    so += n;
                    dof += n;
                    if so == s.len {
                        si += 1;
                        so = 0;
                    }
                    if dof == d.len {
                        di += 1;
                        dof = 0;
                    }
                }
                if let Some((rs, rd, rn)) = run {
                    // SAFETY: as above.
                    unsafe { sys::cuMemcpyAsync(rd, rs, rn as usize, self.stream) };
                }
            }
            Op::Memset { dst, pattern } => {
                let mut phase = 0u64;
                for e in dst {
                    let mut p = self.resolve(e)?;
                    let (mut n, mut pat, mut ph) = (e.len, *pattern, (phase % 4) as u32);
                    let g = self.grid(n / 4 + 1);
                    self.launch(
                        self.k.fill,
                        g,
                        256,
                        &mut [
                            (&mut p as *mut u64).cast(),
                            (&mut n as *mut u64).cast(),
                            (&mut pat as *mut u32).cast(),
                            (&mut ph as *mut u32).cast(),
                        ],
                    )?;
                    phase += e.len;
                }
            }
            Op::Saxpy { x, y, n, a } => {
                let bytes = *n as u64 * 4;
                let mut xp = self.operand(x, bytes, &mut item.scratch, &mut back, false)?;
                let mut yp = self.operand(y, bytes, &mut item.scratch, &mut back, true)?;
                let (mut n, mut a) = (*n, *a);
                let g = self.grid(n as u64);
                self.launch(
                    self.k.saxpy,
                    g,
                    256,
                    &mut [
                        (&mut xp as *mut u64).cast(),
                        (&mut yp as *mut u64).cast(),
                        (&mut n as *mut u32).cast(),
                        (&mut a as *mut f32).cast(),
                    ],
                )?;
            }
            Op::Gemm {
                a,
                b,
                c,
                m,
                n,
                k,
                alpha,
                beta,
                span,
            } => {
                let (m64, n64, k64) = (*m as u64, *n as u64, *k as u64);
                let mut ap = self.operand(a, m64 * k64 * 4, &mut item.scratch, &mut back, false)?;
                let mut bp = self.operand(b, k64 * n64 * 4, &mut item.scratch, &mut back, false)?;
                let mut cp = self.operand(c, m64 * n64 * 4, &mut item.scratch, &mut back, true)?;
                let (mut nn, mut kk, mut al, mut be) = (*n, *k, *alpha, *beta);
                let (mut first, mut last) = (span.start, span.end.min(m64 * n64));
                let g = self.grid(last.saturating_sub(first));
                self.launch(
                    self.k.gemm,
                    g,
                    256,
                    &mut [
                        (&mut ap as *mut u64).cast(),
                        (&mut bp as *mut u64).cast(),
                        (&mut cp as *mut u64).cast(),
                        (&mut nn as *mut u32).cast(),
                        (&mut kk as *mut u32).cast(),
                        (&mut al as *mut f32).cast(),
                        (&mut be as *mut f32).cast(),
                        (&mut first as *mut u64).cast(),
                        (&mut last as *mut u64).cast(),
                    ],
                )?;
            }
            Op::ReduceSum { src, dst, n, sum } => {
                let mut sp =
                    self.operand(src, *n as u64 * 4, &mut item.scratch, &mut back, false)?;
                let slot = self.next_sum;
                self.next_sum = (self.next_sum + 1) % SUM_SLOTS;
                // SAFETY: `slot` < SUM_SLOTS, inside the mapped host buffer.
                let host = unsafe { self.sums.add(slot) };
                // SAFETY: as above; the slot's previous item completed long
                // ago (a ring far deeper than the items in flight).
                unsafe { std::ptr::write_volatile(host, 0.0) };
                let mut acc = self.sum_dev + slot as u64 * 8;
                let mut nn = *n;
                let g = self.grid(nn as u64).min(1024);
                self.launch(
                    self.k.reduce,
                    g,
                    256,
                    &mut [
                        (&mut sp as *mut u64).cast(),
                        (&mut nn as *mut u32).cast(),
                        (&mut acc as *mut u64).cast(),
                    ],
                )?;
                let carry = sum.get();
                item.sum = Some((host, carry));
                if !dst.is_empty() {
                    let mut dp = self.operand(dst, 4, &mut item.scratch, &mut back, true)?;
                    let mut c = carry;
                    self.launch(
                        self.k.store_sum,
                        1,
                        1,
                        &mut [
                            (&mut acc as *mut u64).cast(),
                            (&mut c as *mut f64).cast(),
                            (&mut dp as *mut u64).cast(),
                        ],
                    )?;
                }
            }
            Op::Spin { ns, dst, report } => {
                let mut dp = match dst {
                    Some(d) => self.operand(d, 4, &mut item.scratch, &mut back, true)?,
                    None => 0,
                };
                let (mut ns, mut rep, mut sync) = (*ns, *report, self.spin_sync);
                self.launch(
                    self.k.spin,
                    self.sms,
                    32,
                    &mut [
                        (&mut ns as *mut u64).cast(),
                        (&mut dp as *mut u64).cast(),
                        (&mut rep as *mut u32).cast(),
                        (&mut sync as *mut u64).cast(),
                    ],
                )?;
            }
            Op::Batch(_) | Op::ModuleLoad { .. } | Op::Kernel(_) | Op::Module(_) => {
                return Err(Status::Engine)
            }
        }
        // Scatter written scratch operands back to their extents.
        for (buf, parts) in back {
            let mut at = 0;
            for (p, l) in parts {
                // SAFETY: inside the scratch buffer and the resolved extent.
                unsafe { sys::cuMemcpyAsync(p, buf + at, l as usize, self.stream) };
                at += l;
            }
        }
        Ok(())
    }
}

/// The framebuffer: `bytes` (rounded up to 2 MiB) of physical memory in
/// 2 MiB chunks, mapped in order at one address and zeroed. Returns that
/// address and the chunks (0 and none for an empty framebuffer). A GPU
/// without room fails with `CUDA_ERROR_OUT_OF_MEMORY`.
fn framebuffer(
    dev: sys::CUdevice,
    bytes: u64,
) -> Result<(sys::CUdeviceptr, Vec<sys::CUmemGenericAllocationHandle>), CuError> {
    if bytes == 0 {
        return Ok((0, Vec::new()));
    }
    let t = std::time::Instant::now();
    // SAFETY: plain driver calls with valid out-pointers; each chunk is
    // mapped inside the reservation just taken.
    unsafe {
        let prop = chunk_prop(dev)?;
        let n = bytes.div_ceil(PAGE_2M) as usize;
        let size = n * PAGE_2M as usize;
        let mut ptr = 0;
        ck(
            "cuMemAddressReserve",
            sys::cuMemAddressReserve(&mut ptr, size, PAGE_2M as usize, 0, 0),
        )?;
        let mut chunks = Vec::with_capacity(n);
        for i in 0..n {
            let mut h = 0;
            ck(
                "cuMemCreate (framebuffer)",
                sys::cuMemCreate(&mut h, PAGE_2M as usize, &prop, 0),
            )?;
            chunks.push(h);
            ck(
                "cuMemMap",
                sys::cuMemMap(ptr + (i as u64) * PAGE_2M, PAGE_2M as usize, 0, h, 0),
            )?;
        }
        ck(
            "cuMemSetAccess",
            sys::cuMemSetAccess(ptr, size, &access(dev, true), 1),
        )?;
        ck("cuMemsetD8", sys::cuMemsetD8_v2(ptr, 0, size))?;
        eprintln!(
            "vgpud-cuda-worker: framebuffer of {n} chunks of 2 MiB in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok((ptr, chunks))
    }
}

/// Device memory on `dev` in 2 MiB chunks, as the framebuffer is
/// allocated; an error where the GPU cannot map memory at 2 MiB.
fn chunk_prop(dev: sys::CUdevice) -> Result<sys::CUmemAllocationProp, CuError> {
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
    if gran == 0 || PAGE_2M as usize % gran != 0 {
        return Err(CuError {
            what: "the GPU's mapping granularity is not a divisor of 2 MiB",
            code: sys::CUresult::CUDA_ERROR_NOT_SUPPORTED,
        });
    }
    Ok(prop)
}

/// Access to mapped device memory for `dev`: read-write, or read-only.
fn access(dev: sys::CUdevice, writable: bool) -> sys::CUmemAccessDesc {
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

/// Reserve guest kernels' 2^39 bytes at [`PTX_VA_BASE`]; returns the base,
/// or 0 where the range (or 2 MiB mapping granularity) is not to be had.
fn reserve_kernel_space(dev: sys::CUdevice) -> u64 {
    if let Err(e) = chunk_prop(dev) {
        eprintln!("vgpud-cuda-worker: {e}: no guest PTX");
        return 0;
    }
    let mut at = 0;
    // SAFETY: plain driver calls with valid out-pointers; a reservation
    // that landed elsewhere is given back.
    unsafe {
        let size = 1usize << VA_BITS;
        let r = sys::cuMemAddressReserve(&mut at, size, PAGE_2M as usize, PTX_VA_BASE, 0);
        if r != sys::CUresult::CUDA_SUCCESS {
            eprintln!(
                "vgpud-cuda-worker: guest kernel address space not reserved ({r:?}): no guest PTX"
            );
            return 0;
        }
        if at != PTX_VA_BASE {
            sys::cuMemAddressFree(at, size);
            eprintln!(
                "vgpud-cuda-worker: guest kernel address space landed at {at:#x}, not {PTX_VA_BASE:#x}: no guest PTX"
            );
            return 0;
        }
    }
    at
}

/// Map a guest RAM file and register it with the GPU.
fn map_file(f: &File, len: u64, writable: bool) -> Result<MappedFile, String> {
    let len = usize::try_from(len).map_err(|_| "file too large".to_string())?;
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
        return Err(std::io::Error::last_os_error().to_string());
    }
    let flags = sys::CU_MEMHOSTREGISTER_DEVICEMAP
        | sys::CU_MEMHOSTREGISTER_PORTABLE
        | if writable {
            0
        } else {
            sys::CU_MEMHOSTREGISTER_READ_ONLY
        };
    let mut dev = 0;
    // SAFETY: `p..p+len` is the mapping just made; registration pins it for
    // the GPU until it is unregistered before the unmap.
    let r = unsafe {
        let r = sys::cuMemHostRegister_v2(p, len, flags);
        if r == sys::CUresult::CUDA_SUCCESS {
            sys::cuMemHostGetDevicePointer_v2(&mut dev, p, 0)
        } else {
            r
        }
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        // SAFETY: the mapping made above, not registered.
        unsafe { libc::munmap(p, len) };
        return Err(format!("cuMemHostRegister: {r:?}"));
    }
    Ok(MappedFile {
        host: p.cast(),
        len,
        dev,
    })
}

/// Compile `kernels.cu` with NVRTC and load it.
fn compile() -> Result<Kernels, String> {
    let ptx = cudarc::nvrtc::compile_ptx(include_str!("kernels.cu"))
        .map_err(|e| format!("compiling the kernels (NVRTC): {e:?}"))?;
    let src = std::ffi::CString::new(ptx.to_src()).map_err(|e| e.to_string())?;
    let mut module = std::ptr::null_mut();
    // SAFETY: `src` is NUL-terminated PTX text, alive for the call.
    let r = unsafe { sys::cuModuleLoadData(&mut module, src.as_ptr().cast()) };
    ck("cuModuleLoadData", r).map_err(|e| e.to_string())?;
    let get = |name: &std::ffi::CStr| -> Result<sys::CUfunction, String> {
        let mut f = std::ptr::null_mut();
        // SAFETY: `module` is loaded; `name` is NUL-terminated.
        let r = unsafe { sys::cuModuleGetFunction(&mut f, module, name.as_ptr()) };
        ck("cuModuleGetFunction", r).map_err(|e| e.to_string())?;
        Ok(f)
    };
    Ok(Kernels {
        fill: get(c"fill_pattern")?,
        saxpy: get(c"saxpy")?,
        gemm: get(c"gemm")?,
        reduce: get(c"reduce_sum")?,
        store_sum: get(c"store_sum")?,
        spin: get(c"spin")?,
    })
}

/// The CUDA ordinal of the GPU whose UUID is `hex` (32 hex digits).
pub fn ordinal_of(hex: &str) -> Result<i32, String> {
    // SAFETY: only tries to load the library by its candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this host".into());
    }
    let e = |x: CuError| x.to_string();
    // SAFETY: plain queries with valid out-pointers.
    unsafe {
        ck("cuInit", sys::cuInit(0)).map_err(e)?;
        let mut count = 0;
        ck("cuDeviceGetCount", sys::cuDeviceGetCount(&mut count)).map_err(e)?;
        for i in 0..count {
            let mut dev = 0;
            ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, i)).map_err(e)?;
            let mut uuid = std::mem::zeroed::<sys::CUuuid>();
            ck("cuDeviceGetUuid", sys::cuDeviceGetUuid_v2(&mut uuid, dev)).map_err(e)?;
            let h: String = uuid
                .bytes
                .iter()
                .map(|b| format!("{:02x}", *b as u8))
                .collect();
            if h.eq_ignore_ascii_case(hex) {
                return Ok(i);
            }
        }
    }
    Err(format!("no GPU with UUID {hex} on this host"))
}

/// What `--probe` prints: the GPU's name, memory and multiprocessors, as
/// JSON, for the daemon's type catalogue.
pub fn probe(device: i32) -> Result<String, String> {
    // SAFETY: only tries to load the library by its candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this host".into());
    }
    let e = |x: CuError| x.to_string();
    // SAFETY: plain queries with valid out-pointers and buffers.
    unsafe {
        ck("cuInit", sys::cuInit(0)).map_err(e)?;
        let mut dev = 0;
        ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, device)).map_err(e)?;
        let mut mem = 0usize;
        ck("cuDeviceTotalMem", sys::cuDeviceTotalMem_v2(&mut mem, dev)).map_err(e)?;
        let mut sms = 0;
        ck(
            "cuDeviceGetAttribute",
            sys::cuDeviceGetAttribute(
                &mut sms,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                dev,
            ),
        )
        .map_err(e)?;
        let mut name = [0 as std::ffi::c_char; 128];
        ck(
            "cuDeviceGetName",
            sys::cuDeviceGetName(name.as_mut_ptr(), 128, dev),
        )
        .map_err(e)?;
        let name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        Ok(
            serde_json::json!({"name": name, "memory_bytes": mem, "multiprocessors": sms})
                .to_string(),
        )
    }
}
