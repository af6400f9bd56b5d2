//! The reference cpu engine: executes copy and compute work on host threads.
//!
//! Each vGPU context owns an anonymous, lazily committed mapping as its
//! VRAM. A pool of worker threads takes items in submission order; several
//! items (from different channels or vGPUs) run at once, one per worker.
//! Execution time is the wall time an item spent on its worker.
//!
//! A worker never waits for whoever submitted the work: when an item ends
//! it hands the completion to the engine's completion thread, which runs
//! the callbacks in batches, releases the channel's next item and takes the
//! next job at once.

use crate::sync::{lock, wait};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{MmapRegion, VolatileMemory};

use crate::backend::{
    Backend, BackendError, Completion, DoneFn, EngineContext, ExecError, WorkItem,
};
use crate::command::Op;
use crate::gmmu::{Aperture, Extent};
use crate::memory::{for_each_slice, Snapshot};

/// Bytes moved per step of a copy or memset.
const CHUNK: usize = 256 * 1024;

/// Per channel of a context: whether an item of it is on the pool, and
/// those waiting behind it (each with the cancel epoch of its submission).
type Order = Arc<Mutex<HashMap<u32, ChannelOrder>>>;

struct Job {
    ctx: Arc<ContextState>,
    order: Order,
    item: WorkItem,
    done: DoneFn,
    epoch: u64,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job (a push wakes one only if there is one).
    idle: usize,
    stopping: bool,
}

/// Finished items whose callbacks the completion thread has yet to run.
#[derive(Default)]
struct Finished {
    items: Vec<(DoneFn, Completion)>,
    /// The completion thread waits for items.
    idle: bool,
    stopping: bool,
}

struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    finished: Mutex<Finished>,
    finished_ready: Condvar,
    /// `finished` holds items: what the completion thread polls for while
    /// it spins, so that a worker's hand-off costs no wake-up.
    has_finished: AtomicBool,
    /// Time spins held the engine past their length, in ns: their worker
    /// woke late, waiting for a host CPU (part of no item's engine time).
    stalled_ns: AtomicU64,
}

/// How long the completion thread polls for the next finished item before
/// it sleeps: while the engine runs items of up to this length back to
/// back, a worker never pays for waking it (a wake-up costs the engine ~2 µs
/// per item). Only on hosts with a core to spare for it
/// ([`MIN_CPUS_TO_SPIN`]); on smaller ones polling would take the core the
/// engine itself needs.
const COMPLETION_SPIN: Duration = Duration::from_micros(250);
/// Hosts with fewer CPUs than this never spin for completions.
const MIN_CPUS_TO_SPIN: usize = 4;

impl Pool {
    fn push(&self, job: Job) {
        let mut q = lock(&self.queue);
        q.jobs.push_back(job);
        if q.idle > 0 {
            self.ready.notify_one();
        }
    }

    fn finish(&self, done: DoneFn, c: Completion) {
        let mut f = lock(&self.finished);
        f.items.push((done, c));
        self.has_finished.store(true, Ordering::Release);
        if f.idle {
            self.finished_ready.notify_one();
        }
    }
}

/// The cpu engine, with its worker threads and its completion thread.
pub struct CpuEngine {
    pool: Arc<Pool>,
    workers: Vec<JoinHandle<()>>,
    completer: Option<JoinHandle<()>>,
}

impl CpuEngine {
    /// An engine with `workers` threads (at least one).
    pub fn new(workers: usize) -> Result<Self, BackendError> {
        let pool = Arc::new(Pool {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            finished: Mutex::new(Finished::default()),
            finished_ready: Condvar::new(),
            has_finished: AtomicBool::new(false),
            stalled_ns: AtomicU64::new(0),
        });
        // Dropping the engine built so far stops the threads already running.
        let mut engine = CpuEngine {
            pool,
            workers: Vec::new(),
            completer: None,
        };
        let pool = engine.pool.clone();
        // Asked here, on the creating thread: the engine's threads read no
        // file once running (a GPU worker confines itself right after).
        let spin =
            if std::thread::available_parallelism().map_or(1, |n| n.get()) >= MIN_CPUS_TO_SPIN {
                COMPLETION_SPIN
            } else {
                Duration::ZERO
            };
        engine.completer = Some(crate::thread::spawn_data_path(
            "cpu-engine-done",
            move || complete(pool, spin),
        )?);
        for i in 0..workers.max(1) {
            let pool = engine.pool.clone();
            let w =
                crate::thread::spawn_data_path(format!("cpu-engine-{i}"), move || worker(pool))?;
            engine.workers.push(w);
        }
        Ok(engine)
    }
}

impl Drop for CpuEngine {
    fn drop(&mut self) {
        // Workers run what is queued, then stop; then the completion thread
        // runs every callback still due, then stops.
        lock(&self.pool.queue).stopping = true;
        self.pool.ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        lock(&self.pool.finished).stopping = true;
        self.pool.finished_ready.notify_all();
        if let Some(c) = self.completer.take() {
            let _ = c.join();
        }
    }
}

impl Backend for CpuEngine {
    fn name(&self) -> &'static str {
        "cpu"
    }

    /// Framebuffers are host memory, allocated lazily.
    fn framebuffer_in_host_memory(&self) -> bool {
        true
    }
    fn host_stall(&self) -> Duration {
        Duration::from_nanos(self.pool.stalled_ns.load(Ordering::Relaxed))
    }
    fn create_context(&self, vram_bytes: u64) -> Result<Arc<dyn EngineContext>, BackendError> {
        let size = usize::try_from(vram_bytes)
            .map_err(|_| BackendError::VramTooLarge { bytes: vram_bytes })?;
        let vram = if size == 0 {
            None
        } else {
            Some(
                MmapRegion::new(size).map_err(|source| BackendError::VramAlloc {
                    bytes: vram_bytes,
                    source,
                })?,
            )
        };
        Ok(Arc::new(CpuContext {
            pool: self.pool.clone(),
            workers: self.workers.len(),
            state: Arc::new(ContextState {
                vram,
                size: vram_bytes,
                epoch: AtomicU64::new(0),
                running: AtomicU32::new(0),
            }),
            order: Arc::new(Mutex::new(HashMap::new())),
        }))
    }
}

/// The last stretch of a `spin` that is spun rather than slept, so that it
/// ends within its nominal time however late a sleep wakes (workers set
/// their timer slack to 1 ns; a wake-up still takes tens of µs on a busy
/// host).
const SPIN_TAIL: Duration = Duration::from_micros(200);

fn worker(pool: Arc<Pool>) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer, touches no memory
    // and only changes how precisely this thread's sleeps end.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    loop {
        let job = {
            let mut q = lock(&pool.queue);
            loop {
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                if q.stopping {
                    return;
                }
                q.idle += 1;
                q = wait(&pool.ready, q);
                q.idle -= 1;
            }
        };
        let start = Instant::now();
        job.ctx.running.fetch_add(1, Ordering::AcqRel);
        let result = if job.ctx.cancelled(job.epoch) {
            Err(ExecError::Cancelled)
        } else {
            job.ctx.execute(&job.item, job.epoch)
        };
        job.ctx.running.fetch_sub(1, Ordering::AcqRel);
        let elapsed = start.elapsed();
        // An item's engine time is how long it held the engine: the wall
        // time of its work (on a busy host a compute item's work competes
        // for the CPUs like any program's). A spin stands for a kernel of a
        // given length: it is that long, and what it held the engine past
        // it (its worker woke late from the sleep inside it, waiting for a
        // CPU) is the host's, charged to no vGPU.
        let gpu_time = match &job.item.op {
            Op::Spin { ns, .. } => elapsed.min(Duration::from_nanos(*ns)),
            _ => elapsed,
        };
        pool.stalled_ns
            .fetch_add((elapsed - gpu_time).as_nanos() as u64, Ordering::Relaxed);
        let Job {
            ctx,
            order,
            item,
            done,
            ..
        } = job;
        let channel = item.channel;
        drop(item);
        pool.finish(done, Completion { gpu_time, result });
        // The channel's next item may start now.
        let next = {
            let mut g = lock(&order);
            let ch = g.entry(channel).or_default();
            let next = ch.waiting.pop_front();
            ch.busy = next.is_some();
            next
        };
        if let Some((item, done, epoch)) = next {
            pool.push(Job {
                ctx,
                order,
                item,
                done,
                epoch,
            });
        }
    }
}

/// The completion thread: runs finished items' callbacks, in the order
/// they finished, a batch at a time; polls for the next for
/// `spin` ([`COMPLETION_SPIN`] on hosts with cores to spare) before it
/// sleeps.
fn complete(pool: Arc<Pool>, spin: Duration) {
    loop {
        let spin_until = Instant::now() + spin;
        let mut turns = 0u32;
        while !pool.has_finished.load(Ordering::Acquire) {
            turns = turns.wrapping_add(1);
            if turns.is_multiple_of(64) && Instant::now() >= spin_until {
                break;
            }
            std::hint::spin_loop();
        }
        let batch = {
            let mut f = lock(&pool.finished);
            loop {
                if !f.items.is_empty() {
                    pool.has_finished.store(false, Ordering::Relaxed);
                    break std::mem::take(&mut f.items);
                }
                if f.stopping {
                    return;
                }
                f.idle = true;
                f = wait(&pool.finished_ready, f);
                f.idle = false;
            }
        };
        for (done, c) in batch {
            done(c);
        }
    }
}

/// One vGPU's context on the cpu engine.
///
/// Items of one channel run one after another, in the order they were
/// submitted (a channel is an in-order queue, as on a GPU); items of
/// different channels run in parallel on the worker pool.
pub struct CpuContext {
    pool: Arc<Pool>,
    workers: usize,
    state: Arc<ContextState>,
    order: Order,
}

#[derive(Default)]
struct ChannelOrder {
    busy: bool,
    waiting: VecDeque<(WorkItem, DoneFn, u64)>,
}

/// What a running job needs of its context: the VRAM and the cancel epoch.
struct ContextState {
    vram: Option<MmapRegion>,
    size: u64,
    epoch: AtomicU64,
    /// Items of this context a worker is carrying out now.
    running: AtomicU32,
}

impl EngineContext for CpuContext {
    fn submit(&self, item: WorkItem, done: DoneFn) {
        let epoch = self.state.epoch.load(Ordering::Acquire);
        {
            let mut g = lock(&self.order);
            let ch = g.entry(item.channel).or_default();
            if ch.busy {
                ch.waiting.push_back((item, done, epoch));
                return;
            }
            ch.busy = true;
        }
        self.pool.push(Job {
            ctx: self.state.clone(),
            order: self.order.clone(),
            item,
            done,
            epoch,
        });
    }
    fn read_vram(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExecError> {
        self.state
            .vram_slice(offset, buf.len() as u64)?
            .copy_to(buf);
        Ok(())
    }
    fn write_vram(&self, offset: u64, buf: &[u8]) -> Result<(), ExecError> {
        self.state
            .vram_slice(offset, buf.len() as u64)?
            .copy_from(buf);
        Ok(())
    }
    fn device_info(&self) -> Option<mmio::devinfo::DeviceInfo> {
        Some(crate::identity::cpu_engine(self.workers))
    }
    fn cancel(&self) {
        self.state.epoch.fetch_add(1, Ordering::AcqRel);
    }
    fn release_vram(&self) {
        // An item still running would touch pages again after they are
        // dropped: cancel, and wait for the running one to notice (within a
        // chunk of a piece; ample bound below).
        self.cancel();
        let t = Instant::now();
        while self.state.running.load(Ordering::Acquire) > 0 && t.elapsed() < RELEASE_WAIT {
            std::thread::sleep(Duration::from_micros(100));
        }
        if let Some(v) = &self.state.vram {
            // SAFETY: the range is exactly this context's own anonymous
            // private mapping, which stays mapped; MADV_DONTNEED drops its
            // pages, and later reads see zero pages, as after creation.
            let r = unsafe { libc::madvise(v.as_ptr().cast(), v.size(), libc::MADV_DONTNEED) };
            if r != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "could not release VRAM pages");
            }
        }
    }
}

impl ContextState {
    /// Occupy the engine for `ns`, then write `report` to `dst` if given.
    fn spin(
        &self,
        item: &WorkItem,
        ns: u64,
        dst: Option<&[Extent]>,
        report: u32,
        epoch: u64,
    ) -> Result<(), ExecError> {
        let total = Duration::from_nanos(ns);
        let start = Instant::now();
        loop {
            if self.cancelled(epoch) {
                return Err(ExecError::Cancelled);
            }
            let left = total.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            // Sleep while the end is far (in steps, to notice a
            // cancel), then spin the last stretch: a sleep may wake
            // late, a spin ends on time.
            if left > SPIN_TAIL * 2 {
                std::thread::sleep((left - SPIN_TAIL).min(Duration::from_millis(1)));
            } else {
                std::hint::spin_loop();
            }
        }
        if let Some(d) = dst {
            let io = Io {
                ctx: self,
                snap: &item.mem.snapshot(),
            };
            io.write(&mut Cursor::new(d), &report.to_le_bytes())?;
        }
        Ok(())
    }

    fn cancelled(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::Acquire) != epoch
    }

    fn vram_slice(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<vm_memory::VolatileSlice<'_, ()>, ExecError> {
        let bad = || ExecError::VramRange {
            offset,
            len,
            size: self.size,
        };
        match (&self.vram, offset.checked_add(len)) {
            (Some(v), Some(end)) if end <= self.size => v
                .get_slice(offset as usize, len as usize)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// The elements `span` (row-major) of `C = alpha·A·B + beta·C`, each
    /// summed over k in order, so that any division of C into spans gives
    /// the same bits as the whole.
    fn gemm(&self, io: &Io, op: &Op, epoch: u64) -> Result<(), ExecError> {
        let Op::Gemm {
            a,
            b,
            c,
            n,
            k,
            alpha,
            beta,
            span,
            ..
        } = op
        else {
            return Ok(());
        };
        let (n, k, alpha, beta) = (*n as u64, *k as u64, *alpha, *beta);
        if span.is_empty() || n == 0 {
            return Ok(());
        }
        let (a, b, c) = (Indexed::new(a), Indexed::new(b), Indexed::new(c));
        let (first, last) = (span.start / n, (span.end - 1) / n);
        let cols = |i: u64| {
            let j0 = if i == first { span.start % n } else { 0 };
            let j1 = if i == last { (span.end - 1) % n + 1 } else { n };
            j0..j1
        };
        // The columns of B the span needs, k rows of them.
        let bcols = if first == last { cols(first) } else { 0..n };
        let w = (bcols.end - bcols.start) as usize;
        let bv = if w as u64 == n {
            io.read_f32(&mut b.at(0), (k * n) as usize)?
        } else {
            let mut v = Vec::with_capacity(k as usize * w);
            for p in 0..k {
                v.extend(io.read_f32(&mut b.at((p * n + bcols.start) * 4), w)?);
            }
            v
        };
        for i in first..=last {
            if self.cancelled(epoch) {
                return Err(ExecError::Cancelled);
            }
            let js = cols(i);
            let arow = io.read_f32(&mut a.at(i * k * 4), k as usize)?;
            let off = (js.start - bcols.start) as usize;
            let mut acc = vec![0f32; (js.end - js.start) as usize];
            for (p, aip) in arow.iter().enumerate() {
                let brow = &bv[p * w + off..p * w + off + acc.len()];
                for (accj, bpj) in acc.iter_mut().zip(brow) {
                    *accj = aip.mul_add(*bpj, *accj);
                }
            }
            let at = (i * n + js.start) * 4;
            let old = if beta == 0.0 {
                vec![0f32; acc.len()]
            } else {
                io.read_f32(&mut c.at(at), acc.len())?
            };
            let out: Vec<f32> = acc
                .iter()
                .zip(&old)
                .map(|(s, cij)| alpha * s + if beta == 0.0 { 0.0 } else { beta * cij })
                .collect();
            io.write(&mut c.at(at), &f32_bytes(&out))?;
        }
        Ok(())
    }

    fn execute(&self, item: &WorkItem, epoch: u64) -> Result<(), ExecError> {
        // A spin touches memory only at its end (if at all): no snapshot of
        // guest memory is held while it occupies the engine.
        if let Op::Spin { ns, dst, report } = &item.op {
            return self.spin(item, *ns, dst.as_deref(), *report, epoch);
        }
        let snap = item.mem.snapshot();
        let io = Io {
            ctx: self,
            snap: &snap,
        };
        match &item.op {
            Op::Batch(ops) => ops.iter().try_for_each(|op| {
                if self.cancelled(epoch) {
                    return Err(ExecError::Cancelled);
                }
                self.run(&io, op, epoch)
            }),
            op => self.run(&io, op, epoch),
        }
    }

    /// Carry out one operation other than a spin.
    fn run(&self, io: &Io, op: &Op, epoch: u64) -> Result<(), ExecError> {
        match op {
            Op::Copy { src, dst } => {
                let mut buf = vec![0u8; CHUNK];
                let (mut rs, mut ws) = (Cursor::new(src), Cursor::new(dst));
                let mut remaining = src.iter().map(|e| e.len).sum::<u64>();
                while remaining > 0 {
                    if self.cancelled(epoch) {
                        return Err(ExecError::Cancelled);
                    }
                    let n = (remaining as usize).min(CHUNK);
                    io.read(&mut rs, &mut buf[..n])?;
                    io.write(&mut ws, &buf[..n])?;
                    remaining -= n as u64;
                }
            }
            Op::Memset { dst, pattern } => {
                let total = dst.iter().map(|e| e.len).sum::<u64>();
                let chunk: Vec<u8> = pattern
                    .to_le_bytes()
                    .iter()
                    .copied()
                    .cycle()
                    .take(CHUNK.min(total as usize))
                    .collect();
                let mut ws = Cursor::new(dst);
                let mut remaining = total;
                while remaining > 0 {
                    if self.cancelled(epoch) {
                        return Err(ExecError::Cancelled);
                    }
                    let n = (remaining as usize).min(chunk.len());
                    io.write(&mut ws, &chunk[..n])?;
                    remaining -= n as u64;
                }
            }
            Op::Saxpy { x, y, n, a } => {
                let xs = io.read_f32(&mut Cursor::new(x), *n as usize)?;
                let mut ys = io.read_f32(&mut Cursor::new(y), *n as usize)?;
                for (yv, xv) in ys.iter_mut().zip(&xs) {
                    *yv = a.mul_add(*xv, *yv);
                }
                io.write_f32(y, &ys)?;
            }
            Op::Gemm { .. } => self.gemm(io, op, epoch)?,
            Op::ReduceSum { src, dst, n, sum } => {
                let v = io.read_f32(&mut Cursor::new(src), *n as usize)?;
                let s = v.iter().fold(sum.get(), |s, &x| s + x as f64);
                sum.set(s);
                if !dst.is_empty() {
                    io.write_f32(dst, &[s as f32])?;
                }
            }
            // Never batched; carried out before any snapshot is taken.
            Op::Spin { .. } | Op::Batch(_) => {}
            // The cpu engine runs no guest PTX (CAPS.PTX = 0): the audit
            // refuses these before they reach an engine.
            Op::ModuleLoad { .. } | Op::Kernel(_) | Op::Module(_) => return Err(ExecError::NoPtx),
        }
        Ok(())
    }
}

/// Host memory the cpu engine may commit to framebuffers, all parents
/// together: physical memory less a reserve for the host and vgpud itself
/// (an eighth, at least 1 GiB). A framebuffer is allocated lazily, but a
/// guest may touch all of it, so vgpud does not overcommit: a vGPU is
/// created only while the framebuffers of all cpu-engine vGPUs fit here.
pub fn host_framebuffer_limit() -> u64 {
    // SAFETY: sysconf reads system configuration values and touches no
    // memory of this process.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let total = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
    total.saturating_sub((total / 8).max(1 << 30))
}

/// The longest a framebuffer release waits for its context's running item
/// to stop.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// A position inside a list of extents.
struct Cursor<'a> {
    ext: &'a [Extent],
    idx: usize,
    off: u64,
}

impl<'a> Cursor<'a> {
    fn new(ext: &'a [Extent]) -> Self {
        Cursor {
            ext,
            idx: 0,
            off: 0,
        }
    }
    /// The next piece of at most `max` bytes.
    fn next(&mut self, max: u64) -> Option<Extent> {
        while let Some(e) = self.ext.get(self.idx) {
            if self.off < e.len {
                let n = (e.len - self.off).min(max);
                let piece = Extent {
                    aperture: e.aperture,
                    addr: e.addr + self.off,
                    len: n,
                };
                self.off += n;
                return Some(piece);
            }
            self.idx += 1;
            self.off = 0;
        }
        None
    }
}

/// Extents with the offset each starts at, for access in the middle.
struct Indexed<'a> {
    ext: &'a [Extent],
    starts: Vec<u64>,
}

impl<'a> Indexed<'a> {
    fn new(ext: &'a [Extent]) -> Self {
        let starts = ext
            .iter()
            .scan(0u64, |at, e| {
                let s = *at;
                *at += e.len;
                Some(s)
            })
            .collect();
        Indexed { ext, starts }
    }

    /// A cursor `offset` bytes in (past the end: one that yields nothing).
    fn at(&self, offset: u64) -> Cursor<'a> {
        let idx = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let off = offset - self.starts.get(idx).copied().unwrap_or(0);
        Cursor {
            ext: self.ext,
            idx,
            off,
        }
    }
}

/// Byte access to VRAM and guest memory for one item.
struct Io<'a> {
    ctx: &'a ContextState,
    snap: &'a Snapshot,
}

impl Io<'_> {
    fn read(&self, cur: &mut Cursor, mut out: &mut [u8]) -> Result<(), ExecError> {
        while !out.is_empty() {
            let p = cur
                .next(out.len() as u64)
                .ok_or(ExecError::ShortExtents("source"))?;
            let (head, tail) = out.split_at_mut(p.len as usize);
            match p.aperture {
                Aperture::Vram => {
                    self.ctx.vram_slice(p.addr, p.len)?.copy_to(head);
                }
                Aperture::Sysmem => {
                    let mut at = 0;
                    for_each_slice(self.snap, p.addr, p.len, false, |s| {
                        at += s.copy_to(&mut head[at..]);
                    })?;
                }
            }
            out = tail;
        }
        Ok(())
    }

    fn write(&self, cur: &mut Cursor, mut data: &[u8]) -> Result<(), ExecError> {
        while !data.is_empty() {
            let p = cur
                .next(data.len() as u64)
                .ok_or(ExecError::ShortExtents("destination"))?;
            let (head, tail) = data.split_at(p.len as usize);
            match p.aperture {
                Aperture::Vram => self.ctx.vram_slice(p.addr, p.len)?.copy_from(head),
                Aperture::Sysmem => {
                    let mut at = 0;
                    for_each_slice(self.snap, p.addr, p.len, true, |s| {
                        let n = s.len();
                        s.copy_from(&head[at..at + n]);
                        at += n;
                    })?;
                }
            }
            data = tail;
        }
        Ok(())
    }

    fn read_f32(&self, cur: &mut Cursor, n: usize) -> Result<Vec<f32>, ExecError> {
        let mut bytes = vec![0u8; n * 4];
        self.read(cur, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn write_f32(&self, ext: &[Extent], v: &[f32]) -> Result<(), ExecError> {
        self.write(&mut Cursor::new(ext), &f32_bytes(v))
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
