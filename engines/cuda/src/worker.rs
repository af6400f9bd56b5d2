//! The CUDA worker: one process per vGPU, holding that vGPU's CUDA context,
//! its framebuffer (exactly the type's size, in 2 MiB chunks) and the guest
//! RAM it was handed (the VMM's files, mapped here and registered with the
//! GPU: the pinning and GPA translation of the design). A sticky CUDA error
//! (an illegal address, a trap) ends this process only: the daemon faults
//! this vGPU's channels and starts a new worker on reset.
//!
//! It reads operations from the daemon ([`engine_worker::wire`], over the
//! shared-memory ring) and queues them on one stream, each followed by an
//! untimed event (a timed record costs the submitting thread about ten
//! times as much); a second thread waits for each item's event, in order,
//! and reports the item with its GPU time. An item queued behind others is
//! timed from its completion and the previous item's (the GPU ran them back
//! to back): from the later of that completion and the item's hand-over,
//! to its own completion. An item queued to an idle stream gets a timed
//! event before and after it, and the GPU's timestamps time it: its wait
//! for the GPU (behind another vGPU's work at a switch) is not charged.
//!
//! Guest kernels run in the address space of [`crate::ptx`]; built-in
//! operations are queued by [`crate::ops`].

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cudarc::driver::sys;
use devmodel::command::Op;
use devmodel::gmmu::{Aperture, Extent};
use engine_worker::endpoint::{Endpoint, Sender};
use engine_worker::sandbox::{Confinement, Escape};
use engine_worker::wire::{Done, FatalReason, Layout, Ready, Status, ToDaemon, ToWorker};
use mmio::devinfo::DeviceInfo;

use crate::driver::{
    ck, DeviceBuffer, EventPool, Framebuffer, HostRegistration, PinnedHost, Stream,
};
use crate::ops::Kernels;
use crate::ptx::{GuestModule, KernelSpace};
use crate::{timeline, Error};

/// The most bytes one piece moves on a GPU: about 0.6 ms of its copy
/// engine from pinned guest RAM, as long as a cpu engine's 4 MiB piece.
pub const GPU_PIECE_BYTES: u64 = 32 << 20;
/// Mapped host slots for reduce accumulators, one per item in flight (a
/// ring far deeper than the items in flight).
pub(crate) const SUM_SLOTS: usize = 4096;

/// A window of guest RAM: `len` bytes at `gpa`, reachable at `dev`.
#[derive(Clone, Copy)]
struct Window {
    gpa: u64,
    len: u64,
    dev: u64,
}

/// An item queued on the GPU, for the completion thread.
pub(crate) struct InFlight {
    tag: u64,
    /// When the submitting thread began to queue it.
    queued_at: Instant,
    /// Completes once the item has run (timed when `start` is there).
    end: sys::CUevent,
    /// A timed event recorded before the item, when it was queued to an
    /// idle stream.
    start: Option<sys::CUevent>,
    /// A reduce's f64 accumulator (mapped host memory) and the sum carried
    /// in; the item's value is their sum.
    pub(crate) sum: Option<(*mut f64, f64)>,
    /// Gathered operands, freed once the item has run.
    pub(crate) scratch: Vec<DeviceBuffer>,
    /// Guest modules unloaded or replaced by the item: unloaded once it
    /// has run, and with it everything queued before (which may run their
    /// kernels), without holding up the submitting thread.
    pub(crate) retired: Vec<GuestModule>,
    /// Its spins' timeline slots, and when it was handed over (realtime
    /// ns), where the timeline is on.
    pub(crate) spins: Vec<timeline::Slot>,
    queued_rt: u64,
    status: Status,
    /// The CUDA error number of a refused module or launch.
    pub(crate) error: u32,
}

// SAFETY: the raw CUDA handles and host pointers in an InFlight are used by
// one thread at a time (handed from the submitting thread to the
// completion thread through a channel); CUDA handles are valid in every
// thread of the process that has the context current.
unsafe impl Send for InFlight {}

/// The worker's state. Field order is drop order: guest kernels' mappings
/// go before the framebuffer's chunks they map.
pub struct Worker {
    out: Sender,
    pub(crate) ctx: sys::CUcontext,
    pub(crate) device: sys::CUdevice,
    pub(crate) kspace: KernelSpace,
    pub(crate) fb: Framebuffer,
    pub(crate) stream: Stream,
    io: Stream,
    pub(crate) sms: u32,
    pub(crate) k: Kernels,
    /// `spin`'s common start and finished-block count (16 bytes, zero
    /// between launches).
    pub(crate) spin_sync: DeviceBuffer,
    files: HashMap<(u64, u64), HostRegistration>,
    windows: Vec<Window>,
    pub(crate) sums: PinnedHost,
    pub(crate) next_sum: usize,
    done: Option<mpsc::Sender<InFlight>>,
    /// How many items are queued and not yet reported (the completion
    /// thread counts them down).
    queued: Arc<AtomicUsize>,
    events: Arc<EventPool>,
    /// The daemon's pid (the sandbox tests' escape target).
    daemon: i32,
    /// What the GPU is (sent with `Ready`).
    identity: DeviceInfo,
    /// Where the submitting thread's time goes.
    times: SubmitTimes,
    /// The spins' timeline slots, where the environment asks for them.
    pub(crate) timeline: Option<crate::timeline::Slots>,
}

/// The submitting thread's time in [`Worker::submit`], by what it did:
/// reported with its busy time when the daemon closes the socket.
#[derive(Default)]
struct SubmitTimes {
    /// Recording the items' start and end events.
    events: Duration,
    /// Queueing the items' work (launches, copies, module loads).
    work: Duration,
    /// Handing items to the completion thread.
    handoff: Duration,
}

/// Run the worker on `ep`: GPU `device` (CUDA ordinal), `vram` bytes of
/// framebuffer, confined by `confinement` once started. Returns the
/// process's exit code.
pub fn run(mut ep: Endpoint, device: i32, vram: u64, confinement: Confinement) -> i32 {
    let out = ep.sender();
    let give_up = |e: &Error| {
        let (reason, code) = e.fatal();
        out.fatal(reason, code, &devmodel::Chain(e).to_string());
        2
    };
    let (tx, rx) = mpsc::channel();
    let daemon = confinement.daemon();
    let mut w = match Worker::start(out.clone(), device, vram, tx, daemon) {
        Ok(w) => w,
        Err(e) => return give_up(&e),
    };
    let (ctx, out2) = (w.ctx as usize, out.clone());
    let (events, queued) = (w.events.clone(), w.queued.clone());
    let timed = w.timeline.is_some();
    let reporter = match devmodel::thread::spawn("completions", move || {
        completions(ctx as sys::CUcontext, rx, &out2, &events, &queued, timed)
    }) {
        Ok(r) => r,
        Err(e) => return give_up(&Error::Worker(e.into())),
    };
    if let Err(e) = confinement.enter(
        crate::syscalls::CUDA_SYSCALLS,
        crate::syscalls::CUDA_PATH_SYSCALLS,
    ) {
        return give_up(&e.into());
    }
    let ready = Ready {
        vram: w.fb.len,
        multiprocessors: w.sms,
        ptx_va_base: w.kspace.base(),
        piece_bytes: GPU_PIECE_BYTES,
        device: std::mem::take(&mut w.identity),
    };
    if out.send(&ToDaemon::Ready(ready)).is_err() {
        return 1;
    }
    let code = match w.serve(&mut ep) {
        Ok(()) => 0,
        Err(e) => give_up(&e),
    };
    // The completion thread ends once the last item is reported; the
    // memory its items use goes only then.
    w.done = None;
    let _ = reporter.join();
    drop(w);
    code
}

/// How long the completion thread looks for the next item before it
/// sleeps: items handed over within it cost the submitting thread no wake-up.
const COMPLETION_SPIN: Duration = Duration::from_micros(50);

/// The next item for the completion thread: spin for [`COMPLETION_SPIN`],
/// then sleep; `None` once the submitting side is gone.
fn next_item(rx: &mpsc::Receiver<InFlight>) -> Option<InFlight> {
    let t = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(item) => return Some(item),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if t.elapsed() < COMPLETION_SPIN => {
                std::hint::spin_loop()
            }
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// The GPU time charged to an item that completed at `done`, queued at
/// `queued`, after the previous item's completion `prev`: the span from
/// the later of the two to `done`.
pub(crate) fn charged(prev: Option<Instant>, queued: Instant, done: Instant) -> Duration {
    let from = prev.map_or(queued, |p| p.max(queued));
    done.saturating_duration_since(from)
}

/// Report each item as its event completes, in submission order, with the
/// GPU time [`charged`] to it. An event goes back to the pool once its item
/// is reported. A failed wait is a sticky error: the process cannot go on.
/// With `timed`, the spins' times are folded into runs and printed at the
/// end ([`crate::timeline`]).
fn completions(
    ctx: sys::CUcontext,
    rx: mpsc::Receiver<InFlight>,
    out: &Sender,
    events: &EventPool,
    queued: &AtomicUsize,
    timed: bool,
) {
    // SAFETY: makes the worker's context current on this thread; `ctx` is
    // the live context the worker created.
    if unsafe { sys::cuCtxSetCurrent(ctx) } != sys::CUresult::CUDA_SUCCESS {
        std::process::exit(3);
    }
    let (mut waiting, mut busy, mut items) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut prev_done: Option<Instant> = None;
    let mut runs = timed.then(timeline::Runs::default);
    while let Some(item) = next_item(&rx) {
        let t = Instant::now();
        // SAFETY: `end` was taken from the pool and recorded on the work
        // stream by the submitting thread.
        let r = unsafe { sys::cuEventSynchronize(item.end) };
        let synced = Instant::now();
        waiting += synced - t;
        if r != sys::CUresult::CUDA_SUCCESS {
            // A sticky error: this item's channel faults with KERNEL_FAULT,
            // every other item of the vGPU with ENGINE_ERROR as the process
            // ends.
            let _ = out.send(&ToDaemon::Done(Done {
                tag: item.tag,
                gpu_ns: 0,
                status: Status::Fault,
                value: r as u32 as f64,
            }));
            out.fatal(
                FatalReason::DeviceLost,
                r as u32,
                &format!("GPU fault: {r:?}"),
            );
            std::process::exit(4);
        }
        let gpu = match item.start {
            Some(start) => {
                let mut ms = 0f32;
                // SAFETY: both events are timed and completed (end after
                // start on one stream); `ms` is a valid out-pointer.
                unsafe { sys::cuEventElapsedTime_v2(&mut ms, start, item.end) };
                events.give(start, true);
                Duration::from_nanos((ms.max(0.0) as f64 * 1e6) as u64)
            }
            None => charged(prev_done, item.queued_at, synced),
        };
        prev_done = Some(synced);
        if let Some(runs) = &mut runs {
            for slot in &item.spins {
                let (start, end) = slot.read();
                runs.add(start, end, item.queued_rt);
            }
        }
        events.give(item.end, item.start.is_some());
        let value = match item.sum {
            // SAFETY: the slot is mapped host memory the kernel wrote before
            // the end event; nothing else writes it until it is reused.
            Some((slot, carry)) => carry + unsafe { std::ptr::read_volatile(slot) },
            None => item.error as f64,
        };
        // The item's scratch buffers and retired modules go now: its work
        // is complete, and so is all work queued before it.
        drop(item.scratch);
        drop(item.retired);
        queued.fetch_sub(1, Ordering::AcqRel);
        let done = Done {
            tag: item.tag,
            gpu_ns: gpu.as_nanos() as u64,
            status: item.status,
            value,
        };
        if out.send(&ToDaemon::Done(done)).is_err() {
            std::process::exit(0);
        }
        busy += synced.elapsed();
        items += 1;
    }
    if items > 0 {
        eprintln!(
            "completion thread {:.1} us an item waiting for the GPU, {:.1} us an item busy",
            waiting.as_secs_f64() * 1e6 / items as f64,
            busy.as_secs_f64() * 1e6 / items as f64
        );
    }
    if let Some(runs) = runs {
        runs.print();
    }
}

impl Worker {
    /// The context, framebuffer, streams and kernels of GPU `device`.
    fn start(
        out: Sender,
        device: i32,
        vram: u64,
        done: mpsc::Sender<InFlight>,
        daemon: i32,
    ) -> Result<Worker, Error> {
        crate::probe::init()?;
        let mut dev = 0;
        // SAFETY: plain driver calls with valid out-pointers; the context
        // is the device's primary one, made current on this thread.
        let ctx = unsafe {
            ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, device))?;
            let mut ctx = std::ptr::null_mut();
            ck(
                "cuDevicePrimaryCtxRetain",
                sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
            )?;
            ck("cuCtxSetCurrent", sys::cuCtxSetCurrent(ctx))?;
            ctx
        };
        let sms = crate::probe::multiprocessors(dev)?;
        let identity = crate::probe::identity(dev)?;
        let fb = Framebuffer::new(dev, vram)?;
        let mut kspace = KernelSpace::reserve(dev);
        let (stream, io) = (Stream::new()?, Stream::new()?);
        let (k, ptx) = Kernels::compile()?;
        if kspace.base() != 0 {
            kspace.try_link(&ptx);
        }
        let spin_sync = DeviceBuffer::new(16)?;
        // SAFETY: the 16 bytes just allocated.
        ck("cuMemsetD8", unsafe {
            sys::cuMemsetD8_v2(spin_sync.0, 0, 16)
        })?;
        let sums = PinnedHost::new(SUM_SLOTS * 8)?;
        let mut timeline = timeline::Slots::from_env()?;
        if let Some(t) = &mut timeline {
            timeline::print_offset(k.spin, stream.0, spin_sync.0, t)?;
        }
        Ok(Worker {
            out,
            ctx,
            device: dev,
            kspace,
            fb,
            stream,
            io,
            sms: sms.max(1) as u32,
            k,
            spin_sync,
            files: HashMap::new(),
            windows: Vec::new(),
            sums,
            next_sum: 0,
            done: Some(done),
            queued: Arc::new(AtomicUsize::new(0)),
            events: Arc::new(EventPool::default()),
            times: SubmitTimes::default(),
            daemon,
            identity,
            timeline,
        })
    }

    /// Serve the daemon until it closes the socket.
    fn serve(&mut self, ep: &mut Endpoint) -> Result<(), Error> {
        // Where this thread's time goes, per item: reported on stderr when
        // the daemon closes the socket (vgpud's log).
        let (mut busy, mut items) = (Duration::ZERO, 0u64);
        while let Some((msg, files)) = ep.recv()? {
            let t = Instant::now();
            items += 1;
            self.handle(msg, files)?;
            busy += t.elapsed();
        }
        if items > 0 {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / items as f64;
            let t = &self.times;
            eprintln!(
                "{items} items, submitting thread busy {:.1} us an item: events {:.1}, work {:.1}, hand-off {:.1}",
                per(busy),
                per(t.events),
                per(t.work),
                per(t.handoff),
            );
        }
        Ok(())
    }

    fn handle(&mut self, msg: ToWorker<'_>, files: Vec<File>) -> Result<(), Error> {
        match msg {
            ToWorker::Layout(l) => self.layout(&l, files)?,
            ToWorker::Submit { tag, op } => self.submit(tag, &op)?,
            ToWorker::ReadVram { tag, offset, len } => {
                let mut data = vec![0u8; len.min(engine_worker::wire::MAX_VRAM_ACCESS) as usize];
                let status = self.vram_io(offset, &mut data, false);
                self.reply(tag, status, &data)?;
            }
            ToWorker::WriteVram { tag, offset, data } => {
                let mut data = data.to_vec();
                let status = self.vram_io(offset, &mut data, true);
                self.reply(tag, status, &[])?;
            }
            ToWorker::KernelMap(map) => self.kspace.next_map = Some(map.into_owned()),
            ToWorker::ClearVram { tag } => {
                self.clear_vram()?;
                self.reply(tag, Status::Ok, &[])?;
            }
        }
        Ok(())
    }

    /// Zero the framebuffer and unload the guest's modules: the VM went
    /// away (ordered after every queued item).
    fn clear_vram(&mut self) -> Result<(), Error> {
        if self.fb.len > 0 {
            // SAFETY: the framebuffer's mapping is `fb.len` bytes or more.
            ck("cuMemsetD8Async (clearing the framebuffer)", unsafe {
                sys::cuMemsetD8Async(self.fb.ptr(), 0, self.fb.len as usize, self.stream.0)
            })?;
        }
        self.stream.sync()?;
        // The stream is idle: nothing of the modules runs.
        self.kspace.unload_all();
        Ok(())
    }

    fn reply(&self, tag: u64, status: Status, data: &[u8]) -> Result<(), Error> {
        Ok(self.out.send(&ToDaemon::Data { tag, status, data })?)
    }

    /// Copy between VRAM at `off` and `data` (a write when `write`), in
    /// order after nothing: HOST accesses come after their work completed.
    fn vram_io(&self, off: u64, data: &mut [u8], write: bool) -> Status {
        if off
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.fb.len)
        {
            return Status::VramRange;
        }
        let at = self.fb.ptr() + off;
        // SAFETY: the range lies inside the framebuffer (checked above) and
        // `data` is a live buffer of that length; the io stream is synced
        // before `data` is used again.
        let r = unsafe {
            if write {
                sys::cuMemcpyHtoDAsync_v2(at, data.as_ptr().cast(), data.len(), self.io.0);
            } else {
                sys::cuMemcpyDtoHAsync_v2(data.as_mut_ptr().cast(), at, data.len(), self.io.0);
            }
            sys::cuStreamSynchronize(self.io.0)
        };
        if r == sys::CUresult::CUDA_SUCCESS {
            Status::Ok
        } else {
            engine_error("a VRAM access", format_args!("{r:?}"))
        }
    }

    /// A new guest RAM layout: files (descriptors in `files`, in order) and
    /// windows. Files already mapped stay mapped and registered; files no
    /// window uses any more are unregistered and unmapped (the daemon
    /// sends a new layout only after the VMM unmapped the memory).
    fn layout(&mut self, l: &Layout, files: Vec<File>) -> Result<(), Error> {
        if l.files.len() != files.len() {
            return Err(engine_worker::Error::Malformed("file count").into());
        }
        let mut keys = Vec::with_capacity(files.len());
        for (f, info) in files.iter().zip(&l.files) {
            let meta = f.metadata().map_err(|source| Error::GuestFile {
                what: "a guest RAM file's metadata",
                source,
            })?;
            let key = (meta.dev(), meta.ino());
            if let std::collections::hash_map::Entry::Vacant(slot) = self.files.entry(key) {
                match HostRegistration::new(f, info.len, info.writable) {
                    Ok(m) => {
                        slot.insert(m);
                    }
                    Err(e) => eprintln!("guest RAM file not mapped: {}", devmodel::Chain(&e)),
                }
            }
            keys.push(key);
        }
        let mut windows = Vec::with_capacity(l.windows.len());
        for w in &l.windows {
            let Some(f) = keys.get(w.file as usize).and_then(|k| self.files.get(k)) else {
                continue;
            };
            if w.offset.checked_add(w.len).is_none_or(|e| e > f.len as u64) {
                continue;
            }
            windows.push(Window {
                gpa: w.gpa,
                len: w.len,
                dev: f.dev + w.offset,
            });
        }
        windows.sort_by_key(|w| w.gpa);
        self.windows = windows;
        self.files.retain(|k, _| keys.contains(k));
        Ok(())
    }

    /// The device address of `e`, checked against the framebuffer or the
    /// guest RAM windows.
    pub(crate) fn resolve(&self, e: &Extent) -> Result<u64, Status> {
        let end = e.addr.checked_add(e.len).ok_or(Status::Unmapped)?;
        match e.aperture {
            Aperture::Vram if end <= self.fb.len => Ok(self.fb.ptr() + e.addr),
            Aperture::Vram => Err(Status::VramRange),
            Aperture::Sysmem => {
                let i = self.windows.partition_point(|w| w.gpa <= e.addr);
                let w = i
                    .checked_sub(1)
                    .and_then(|i| self.windows.get(i))
                    .ok_or(Status::Unmapped)?;
                if end <= w.gpa + w.len {
                    Ok(w.dev + (e.addr - w.gpa))
                } else {
                    Err(Status::Unmapped)
                }
            }
        }
    }

    /// Queue `op` (tag `tag`) on the stream, then its (untimed) end event,
    /// and hand it to the completion thread.
    fn submit(&mut self, tag: u64, op: &Op) -> Result<(), Error> {
        let queued_at = Instant::now();
        if let Some(e) = Escape::requested(op) {
            e.attempt(self.daemon);
        }
        if let Some(g) = Escape::garbage(op) {
            self.out.scribble(g);
            return Ok(());
        }
        // Nothing of this worker's queued: the GPU's timestamps time it.
        let t0 = Instant::now();
        let start = if self.queued.load(Ordering::Acquire) == 0 {
            let e = self.events.take(true)?;
            // SAFETY: records an event of this context on the worker's stream.
            ck("cuEventRecord", unsafe {
                sys::cuEventRecord(e, self.stream.0)
            })?;
            Some(e)
        } else {
            None
        };
        let end = self.events.take(start.is_some())?;
        let t1 = Instant::now();
        let mut item = InFlight {
            tag,
            queued_at,
            end,
            start,
            sum: None,
            scratch: Vec::new(),
            retired: Vec::new(),
            spins: Vec::new(),
            queued_rt: if self.timeline.is_some() {
                timeline::realtime_ns()
            } else {
                0
            },
            status: Status::Ok,
            error: 0,
        };
        match op {
            Op::Batch(v) => {
                for o in v {
                    if let Err(s) = self.queue_one(o, &mut item) {
                        item.status = s;
                        break;
                    }
                }
            }
            o => {
                if let Err(s) = self.queue_one(o, &mut item) {
                    item.status = s;
                }
            }
        }
        let t2 = Instant::now();
        // SAFETY: records an event of this context on the worker's stream.
        ck("cuEventRecord", unsafe {
            sys::cuEventRecord(end, self.stream.0)
        })?;
        let t3 = Instant::now();
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Some(d) = &self.done {
            let _ = d.send(item);
        }
        self.times.events += (t1 - t0) + (t3 - t2);
        self.times.work += t2 - t1;
        self.times.handoff += t3.elapsed();
        Ok(())
    }

    fn queue_one(&mut self, o: &Op, item: &mut InFlight) -> Result<(), Status> {
        match o {
            Op::ModuleLoad { slot, text, log } => self.module_load(*slot, text, log, item),
            Op::Kernel(k) => self.kernel(k, item),
            Op::Module(m) => self.module_op(m, item),
            o => self.queue(o, item),
        }
    }
}

/// An item the GPU or the worker could not run (`Status::Engine`: its
/// channel stops with ENGINE_ERROR): why, on the worker's stderr (vgpud's
/// log), for the first few of a worker's life only, so that a guest that
/// fails items on purpose cannot flood the log.
pub(crate) fn engine_error(what: &str, why: impl std::fmt::Display) -> Status {
    static SAID: AtomicUsize = AtomicUsize::new(0);
    if SAID.fetch_add(1, Ordering::Relaxed) < 32 {
        eprintln!("item failed: {what}: {why}");
    }
    Status::Engine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_charged_from_the_later_of_their_queueing_and_the_last_completion() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        // Alone, on an idle GPU: from its hand-over to its completion.
        assert_eq!(charged(None, t0, t0 + us(130)), us(130));
        // Queued behind the previous item: from that item's completion.
        assert_eq!(charged(Some(t0 + us(50)), t0, t0 + us(60)), us(10));
        // Queued after the GPU went idle: from its hand-over.
        assert_eq!(charged(Some(t0), t0 + us(40), t0 + us(60)), us(20));
        // Clocks never make a charge negative.
        assert_eq!(charged(Some(t0 + us(70)), t0, t0 + us(60)), Duration::ZERO);
    }
}
