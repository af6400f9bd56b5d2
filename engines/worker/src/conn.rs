//! One worker process as the daemon holds it: its socket, what the daemon
//! waits for from it, and the threads that read its messages, relay its
//! log and stop it when an item runs too long.
//!
//! A worker runs guest-supplied code inside its device driver, so the
//! daemon takes nothing from it on trust: a frame that does not decode, a
//! second `Ready`, or an answer of the wrong kind ends the worker, and its
//! vGPU's items fail with `ENGINE_ERROR` as if it had died. What it can
//! still say wrongly is a completion's value (its own vGPU's result) and
//! its time: a time is taken as at most `MAX_REPORTED_GPU_TIME` (an hour), so no
//! sum overflows, but a worker taken over by its guest that reports less
//! than its work took is charged less, and gets more of the engine than
//! its share at its neighbours' expense (the GPU's own timestamps are the
//! only clock of a kernel's time the daemon has; docs/reliability.md).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use devmodel::backend::{Completion, DoneFn, EngineHealth, ExecError};
use devmodel::command::RunningSum;
use devmodel::gmmu::KernelMap;
use devmodel::memory::{GuestRam, MemError};
use devmodel::sync::lock;

use crate::program::WorkerProgram;
use crate::ring::{self, Consumer, Doorbell, Producer, Record, RingError, Shared, Woken};
use crate::socket::{self, FrameReader};
use crate::wire::{
    Done, FatalReason, Layout, LayoutFile, LayoutWindow, Ready, Status, ToDaemon, ToWorker,
};
use crate::Error;

/// How long a worker may take to start (device context, framebuffer,
/// kernels compiled at start-up).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a HOST access to VRAM may take.
const ACCESS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line of a worker's stderr the daemon logs as one.
const MAX_LOG_LINE: u64 = 4096;
/// How long a send waits for room in the worker's ring: a worker that has
/// not read 1 MiB of records in that time is hung (it reads them as they
/// come; its device work queues behind them on its streams).
const RING_FULL_WAIT: Duration = Duration::from_secs(2);

/// The most GPU time one completion may claim: longer than any kernel limit.
const MAX_REPORTED_GPU_TIME: Duration = Duration::from_secs(3600);

/// What the daemon waits for from a worker.
pub(crate) enum Pending {
    /// An item, with its reduce sum to fill in and when it was handed over.
    Item(DoneFn, Option<RunningSum>, Instant),
    /// A HOST access, waiting for its bytes.
    Access(mpsc::Sender<Result<Vec<u8>, Status>>),
}

/// What the daemon waits for, by tag, and what each message does to it.
#[derive(Default)]
pub(crate) struct Inbox {
    pending: Mutex<HashMap<u64, Pending>>,
    /// How many of them are items.
    items: AtomicUsize,
}

/// What a message from the worker asks of its connection.
pub(crate) enum Delivered {
    Nothing,
    Ready(Ready),
    Completed(DoneFn, Completion),
    Fatal(Error),
}

impl Inbox {
    /// Wait for `p` under `tag`. Returns whether it is an item and none
    /// was at the worker before it.
    pub(crate) fn insert(&self, tag: u64, p: Pending) -> bool {
        let item = matches!(p, Pending::Item(..));
        let mut pending = lock(&self.pending);
        let first = item && self.items.fetch_add(1, Ordering::AcqRel) == 0;
        pending.insert(tag, p);
        first
    }

    pub(crate) fn remove(&self, tag: u64) -> Option<Pending> {
        let p = lock(&self.pending).remove(&tag);
        if matches!(p, Some(Pending::Item(..))) {
            self.items.fetch_sub(1, Ordering::AcqRel);
        }
        p
    }

    /// When the oldest item still at the worker was handed over.
    fn oldest_item(&self) -> Option<Instant> {
        lock(&self.pending)
            .values()
            .filter_map(|p| match p {
                Pending::Item(_, _, at) => Some(*at),
                Pending::Access(_) => None,
            })
            .min()
    }

    /// Take one message. A completion or reply for a tag nobody waits for
    /// (a HOST access that timed out) is dropped; one of the wrong kind is
    /// a protocol error.
    pub(crate) fn deliver(&self, m: ToDaemon<'_>) -> Result<Delivered, Error> {
        match m {
            ToDaemon::Ready(r) => Ok(Delivered::Ready(r)),
            ToDaemon::Done(d) => {
                // Taken out before the callback runs: it takes the parent's
                // lock, under which submissions take this map's.
                match self.remove(d.tag) {
                    Some(Pending::Item(done, sum, _)) => {
                        if let Some(sum) = sum {
                            sum.set(d.value);
                        }
                        Ok(Delivered::Completed(done, completion(&d)))
                    }
                    Some(p @ Pending::Access(_)) => {
                        self.insert(d.tag, p);
                        Err(Error::Malformed("a completion answering a VRAM access"))
                    }
                    None => Ok(Delivered::Nothing),
                }
            }
            ToDaemon::Data { tag, status, data } => match self.remove(tag) {
                Some(Pending::Access(tx)) => {
                    let _ = tx.send(match status {
                        Status::Ok => Ok(data.to_vec()),
                        s => Err(s),
                    });
                    Ok(Delivered::Nothing)
                }
                Some(p @ Pending::Item(..)) => {
                    self.insert(tag, p);
                    Err(Error::Malformed("VRAM data answering an item"))
                }
                None => Ok(Delivered::Nothing),
            },
            ToDaemon::Fatal(f) => Ok(Delivered::Fatal(Error::Failed {
                reason: f.reason,
                code: f.code,
                detail: f.detail.to_string(),
            })),
        }
    }

    /// Everything still waiting fails: items with `ENGINE_TIMEOUT` after
    /// the kernel limit, else with the worker's end as their cause.
    pub(crate) fn fail_all(&self, why: &Arc<Error>, timed_out: bool) -> Vec<(DoneFn, Completion)> {
        let left: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            self.items.store(0, Ordering::Release);
            pending.drain().map(|(_, p)| p).collect()
        };
        let mut out = Vec::new();
        for p in left {
            match p {
                Pending::Item(done, _, _) => {
                    let result = Err(if timed_out {
                        ExecError::Timeout
                    } else {
                        ExecError::EngineFailed(why.clone())
                    });
                    out.push((
                        done,
                        Completion {
                            gpu_time: Duration::ZERO,
                            result,
                        },
                    ));
                }
                Pending::Access(tx) => {
                    let _ = tx.send(Err(Status::Engine));
                }
            }
        }
        out
    }
}

/// An item's completion as the worker reported it; `value` carries the
/// CUDA error number of a module or launch the GPU refused, or of a fault.
fn completion(d: &Done) -> Completion {
    let result = match d.status {
        Status::Ok => Ok(()),
        Status::Module => Err(ExecError::ModuleInvalid(d.value as u32)),
        Status::Refused => Err(ExecError::LaunchRefused(d.value as u32)),
        Status::Fault => Err(ExecError::KernelFault(d.value as u32)),
        Status::Unmapped => Err(ExecError::Memory(MemError::Unmapped { gpa: 0, len: 0 })),
        Status::VramRange => Err(ExecError::VramRange {
            offset: 0,
            len: 0,
            size: 0,
        }),
        Status::Engine => Err(ExecError::EngineFailed(Arc::new(Error::ItemFailed))),
    };
    Completion {
        gpu_time: Duration::from_nanos(d.gpu_ns).min(MAX_REPORTED_GPU_TIME),
        result,
    }
}

/// One worker process and its socket.
pub(crate) struct Conn {
    child: Mutex<Child>,
    pid: u32,
    sock: UnixStream,
    /// The ring to the worker, held while a frame is encoded and sent (its
    /// buffer kept).
    tx: Mutex<(Producer, Vec<u8>)>,
    pub(crate) inbox: Inbox,
    next_tag: AtomicU64,
    /// The guest RAM layout (its `GuestRam`, generation) the worker has.
    layout: Mutex<(usize, u64)>,
    /// The id of the kernel map the worker has (0: none); held while a
    /// launch and the map it needs are sent, so that they go in order.
    kernel_map: Mutex<u64>,
    /// What the worker said when it started.
    pub(crate) ready: OnceLock<Ready>,
    pub(crate) dead: AtomicBool,
    /// The worker was stopped for running an item past the kernel limit.
    timed_out: AtomicBool,
    /// The worker reported a sticky error (its device context is lost).
    fatal: AtomicBool,
    /// What runs once the worker is gone.
    exit: Mutex<ExitHook>,
    /// Rung when an item goes to a worker that had none: the daemon's
    /// reader, asleep since the last completion, wakes and spins for this
    /// one ([`ring::DAEMON_DUE_SPIN`]) while the worker runs it.
    nudge: Doorbell,
    /// The completion thread's queue, told the same (until the reader ends).
    completing: Mutex<Option<mpsc::Sender<Completing>>>,
    /// How long the reader and the completion thread keep looking while
    /// items are due (none on a host without CPUs to spare).
    due_spin: Duration,
}

/// What the completion thread is handed.
enum Completing {
    /// An item's completion, for its callback.
    Done(DoneFn, Completion),
    /// An item went to a worker that had none: look for its completion.
    Due,
}

/// What the daemon does once a worker is gone (its reader has failed its
/// items and reaped it): the context's hook, or that it is gone already
/// (a hook set then runs at once).
enum ExitHook {
    Waiting(Option<Box<dyn FnOnce() + Send>>),
    Exited,
}

impl Conn {
    /// Start a worker of `program` with a `vram`-byte framebuffer; returns
    /// once it is ready (confined, its framebuffer allocated).
    pub(crate) fn start(
        program: &WorkerProgram,
        vram: u64,
        kernel_timeout: Duration,
    ) -> Result<Arc<Conn>, Arc<Error>> {
        let (ours, theirs) = UnixStream::pair().map_err(|source| Error::Io {
            what: "creating the worker's socket",
            source,
        })?;
        // Sends (under the parent's lock, at times) wait for a worker that
        // does not read no longer than for room in its ring.
        ours.set_write_timeout(Some(RING_FULL_WAIT))
            .map_err(|source| Error::Io {
                what: "setting the worker socket's send timeout",
                source,
            })?;
        let shm = Arc::new(Shared::create().map_err(Error::from)?);
        let (to_worker, worker_to_worker) = Doorbell::pair().map_err(Error::from)?;
        let (to_daemon, worker_to_daemon) = Doorbell::pair().map_err(Error::from)?;
        let (nudged, nudge) = Doorbell::pair().map_err(Error::from)?;
        // The daemon's ends read their starting indices now, from the new
        // file, before the worker can write to it.
        let ends = ring::daemon_ends(shm.clone(), Arc::new(to_worker), Arc::new(to_daemon));
        let mut child = program.spawn(
            vram,
            OwnedFd::from(theirs),
            [
                shm.file().as_raw_fd(),
                worker_to_worker.fd(),
                worker_to_daemon.fd(),
            ],
        )?;
        // The worker has its own copies of its ends.
        drop((worker_to_worker, worker_to_daemon));
        let stderr = child.stderr.take();
        let reader = ours.try_clone().map_err(|source| Error::Io {
            what: "duplicating the worker's socket",
            source,
        })?;
        let conn = Arc::new(Conn {
            pid: child.id(),
            child: Mutex::new(child),
            sock: ours,
            tx: Mutex::new((ends.tx, Vec::with_capacity(256))),
            inbox: Inbox::default(),
            next_tag: AtomicU64::new(1),
            layout: Mutex::new((usize::MAX, u64::MAX)),
            kernel_map: Mutex::new(0),
            ready: OnceLock::new(),
            dead: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
            exit: Mutex::new(ExitHook::Waiting(None)),
            nudge,
            completing: Mutex::new(None),
            due_spin: ring::spin_here(ring::DAEMON_DUE_SPIN),
        });
        let started = conn
            .clone()
            .run_threads(reader, ends.rx, nudged, stderr, kernel_timeout);
        match started {
            Ok(rx) => match rx.recv_timeout(START_TIMEOUT) {
                Ok(Ok(r)) => {
                    let _ = conn.ready.set(r);
                    Ok(conn)
                }
                Ok(Err(why)) => {
                    conn.kill();
                    Err(why)
                }
                Err(_) => {
                    conn.kill();
                    Err(Arc::new(Error::StartTimeout(START_TIMEOUT)))
                }
            },
            Err(e) => {
                conn.kill();
                Err(Arc::new(e))
            }
        }
    }

    /// The worker's threads in the daemon: completions, the reader, its
    /// log, the watchdog. Returns where the reader says whether it started.
    fn run_threads(
        self: Arc<Self>,
        reader: UnixStream,
        ring_rx: Consumer,
        nudged: Doorbell,
        stderr: Option<ChildStderr>,
        kernel_timeout: Duration,
    ) -> Result<mpsc::Receiver<Result<Ready, Arc<Error>>>, Error> {
        let (tx, rx) = mpsc::channel();
        // Completions run on a thread of their own: a callback may wait for
        // the vGPU's lock, whose holder may be waiting for a VRAM reply
        // that only the reader delivers.
        let (ctx, crx) = mpsc::channel::<Completing>();
        *lock(&self.completing) = Some(ctx.clone());
        let spin = self.due_spin;
        devmodel::thread::spawn_data_path("worker-completions", move || {
            run_completions(&crx, spin)
        })?;
        if let Some(e) = stderr {
            let pid = self.pid;
            devmodel::thread::spawn("worker-log", move || relay_log(e, pid))?;
        }
        let conn = self.clone();
        devmodel::thread::spawn_data_path("worker-reader", move || {
            conn.read_loop(&reader, ring_rx, &nudged, tx, ctx)
        })?;
        devmodel::thread::spawn("worker-watchdog", move || self.watchdog(kernel_timeout))?;
        Ok(rx)
    }

    /// Run `hook` once the worker is gone (at once if it is gone already),
    /// on its reader's thread: the hook must not wait.
    pub(crate) fn on_exit(&self, hook: Box<dyn FnOnce() + Send>) {
        let mut e = lock(&self.exit);
        match &mut *e {
            ExitHook::Waiting(h) => *h = Some(hook),
            ExitHook::Exited => {
                drop(e);
                hook();
            }
        }
    }

    /// The health of the vGPU this worker serves: a worker the daemon
    /// stopped (past the kernel limit) or that reported a sticky error is
    /// `Faulted`; one that is gone otherwise (it exited, was killed, broke
    /// the protocol) is `WorkerDown`.
    pub(crate) fn health(&self) -> EngineHealth {
        if !self.dead.load(Ordering::Acquire) {
            EngineHealth::Ok
        } else if self.timed_out.load(Ordering::Acquire) || self.fatal.load(Ordering::Acquire) {
            EngineHealth::Faulted
        } else {
            EngineHealth::WorkerDown
        }
    }

    pub(crate) fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        let mut c = lock(&self.child);
        let _ = c.kill();
        let _ = c.wait();
    }

    /// End the worker as a vGPU's removal does: close its socket, so that
    /// it drains its device work, reports and exits; kill it if it has
    /// not within `grace`.
    pub(crate) fn stop(&self, grace: Duration) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let t = Instant::now();
        while t.elapsed() < grace {
            if matches!(lock(&self.child).try_wait(), Ok(Some(_))) {
                self.dead.store(true, Ordering::Release);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
    }

    /// An item went to the worker when it had none: the reader and the
    /// completion thread, asleep since the last completion, wake now and
    /// look for this one's while the worker runs it (not after it).
    pub(crate) fn first_item_handed(&self) {
        if self.due_spin.is_zero() {
            return;
        }
        self.nudge.ring();
        if let Some(c) = &*lock(&self.completing) {
            let _ = c.send(Completing::Due);
        }
    }

    pub(crate) fn tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// Send `m` (with `fds`): in the ring when it fits and has no
    /// descriptors, else on the socket behind a ring marker that keeps it
    /// in order. The worker is woken only if it sleeps.
    pub(crate) fn send(&self, m: &ToWorker<'_>, fds: &[i32]) -> Result<(), Error> {
        let mut g = lock(&self.tx);
        let (tx, buf) = &mut *g;
        m.encode(buf)?;
        let inline = fds.is_empty() && buf.len() <= ring::MAX_INLINE;
        let pushed = tx.push(inline.then_some(&buf[..]), RING_FULL_WAIT);
        if let Err(e) = pushed {
            if matches!(e, RingError::Full | RingError::Corrupt(_)) {
                // SIGKILL without waiting for the exit (the caller may hold
                // the parent's lock): the reader sees the end and reaps it.
                tracing::warn!(worker = self.pid, error = %e, "the worker's ring: stopped");
                self.dead.store(true, Ordering::Release);
                let _ = lock(&self.child).kill();
            }
            return Err(e.into());
        }
        if !inline {
            if let Err(source) = socket::send(&self.sock, buf, fds) {
                // A worker that does not read its socket for RING_FULL_WAIT
                // (the socket's send timeout) is hung, as one whose ring
                // stays full: it goes the same way.
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    tracing::warn!(
                        worker = self.pid,
                        "the worker's socket stayed full: stopped"
                    );
                    self.dead.store(true, Ordering::Release);
                    let _ = lock(&self.child).kill();
                }
                return Err(Error::Io {
                    what: "sending to the worker",
                    source,
                });
            }
        }
        tx.notify();
        Ok(())
    }

    /// Send the guest RAM layout if the worker's is older.
    pub(crate) fn sync_layout(&self, mem: &Arc<GuestRam>) -> Result<(), Error> {
        let key = Arc::as_ptr(mem) as usize;
        let mut have = lock(&self.layout);
        if *have == (key, mem.generation()) {
            return Ok(());
        }
        let l = mem.layout().map_err(|source| Error::Io {
            what: "reading the guest RAM layout",
            source,
        })?;
        let msg = ToWorker::Layout(Layout {
            files: l
                .files
                .iter()
                .map(|f| LayoutFile {
                    len: f.len,
                    writable: f.writable,
                })
                .collect(),
            windows: l
                .regions
                .iter()
                .map(|r| LayoutWindow {
                    gpa: r.gpa,
                    len: r.len,
                    file: r.file as u32,
                    offset: r.offset,
                })
                .collect(),
        });
        let fds: Vec<i32> = l.files.iter().map(|f| f.file.as_raw_fd()).collect();
        self.send(&msg, &fds)?;
        *have = (key, l.generation);
        Ok(())
    }

    /// Send an item, preceded by the kernel map it runs in when the worker
    /// does not have that map yet.
    pub(crate) fn send_item(&self, m: &ToWorker<'_>, map: Option<&KernelMap>) -> Result<(), Error> {
        let mut have = lock(&self.kernel_map);
        if let Some(map) = map.filter(|m| m.id != *have) {
            self.send(&ToWorker::KernelMap(Cow::Borrowed(map)), &[])?;
            *have = map.id;
        }
        self.send(m, &[])
    }

    /// A request answered by the worker's `Data`: its bytes.
    pub(crate) fn access(&self, m: &ToWorker<'_>, tag: u64) -> Result<Vec<u8>, ExecError> {
        let (tx, rx) = mpsc::channel();
        self.inbox.insert(tag, Pending::Access(tx));
        if self.dead.load(Ordering::Acquire) || self.send(m, &[]).is_err() {
            self.inbox.remove(tag);
            return Err(ExecError::EngineFailed(Arc::new(Error::Exited)));
        }
        match rx.recv_timeout(ACCESS_TIMEOUT) {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(Status::VramRange)) => Err(ExecError::VramRange {
                offset: 0,
                len: 0,
                size: 0,
            }),
            Ok(Err(s)) => Err(ExecError::EngineFailed(Arc::new(Error::Access(s)))),
            Err(_) => {
                self.inbox.remove(tag);
                Err(ExecError::EngineFailed(Arc::new(Error::NoAnswer)))
            }
        }
    }

    /// The worker's messages until its end; then every waiting item fails,
    /// the worker is reaped and the exit hook runs. They come in the ring;
    /// a frame too long for it (VRAM data) comes on the socket where the
    /// ring says so. A frame on the socket the ring did not announce, or a
    /// ring the worker corrupted, is a protocol error; the socket's end of
    /// file is the worker's end.
    fn read_loop(
        &self,
        s: &UnixStream,
        rx: Consumer,
        nudged: &Doorbell,
        ready: mpsc::Sender<Result<Ready, Arc<Error>>>,
        completions: mpsc::Sender<Completing>,
    ) {
        let mut incoming = Incoming::new(rx, self.due_spin);
        let mut started = false;
        let why: Error = loop {
            let deep = self.inbox.items.load(Ordering::Acquire) >= ring::GATHER_DEPTH;
            let delivered = match incoming.next(s, Some(nudged), deep) {
                Ok(frame) => ToDaemon::decode(frame).and_then(|m| self.inbox.deliver(m)),
                Err(e) => break e,
            };
            match delivered {
                Ok(Delivered::Nothing) => {}
                Ok(Delivered::Ready(r)) if !started => {
                    started = true;
                    let _ = ready.send(Ok(r));
                }
                Ok(Delivered::Ready(_)) => break Error::Malformed("a second Ready"),
                Ok(Delivered::Completed(done, c)) => {
                    let _ = completions.send(Completing::Done(done, c));
                }
                Ok(Delivered::Fatal(e)) => {
                    tracing::warn!(worker = self.pid, error = %e, "worker failed");
                    self.fatal.store(true, Ordering::Release);
                    break e;
                }
                Err(e) => break e,
            }
        };
        if matches!(why, Error::Malformed(_)) {
            tracing::warn!(worker = self.pid, error = %why, "worker broke the protocol: stopped");
        }
        self.dead.store(true, Ordering::Release);
        // The completion thread ends once the reader's queue end goes.
        lock(&self.completing).take();
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let why = Arc::new(why);
        let _ = ready.send(Err(why.clone()));
        for c in self
            .inbox
            .fail_all(&why, self.timed_out.load(Ordering::Acquire))
        {
            let _ = completions.send(Completing::Done(c.0, c.1));
        }
        self.reap();
        let hook = match std::mem::replace(&mut *lock(&self.exit), ExitHook::Exited) {
            ExitHook::Waiting(h) => h,
            ExitHook::Exited => None,
        };
        if let Some(h) = hook {
            h();
        }
    }

    /// Wait (a second at most) for the worker to exit and log how it did.
    fn reap(&self) {
        for _ in 0..100 {
            if let Ok(Some(st)) = lock(&self.child).try_wait() {
                tracing::info!(worker = self.pid, "worker ended: {}", describe(st));
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        tracing::info!(worker = self.pid, "worker killed: it did not exit");
    }

    /// The runaway-item limit: an item cannot be preempted, so one at the
    /// worker far longer than any piece runs (the parent's
    /// `kernel_timeout`) gets the worker stopped; its items fail with
    /// `ENGINE_TIMEOUT`, and the vGPU's next reset starts a new worker.
    fn watchdog(&self, limit: Duration) {
        let tick = (limit / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        while !self.dead.load(Ordering::Acquire) {
            std::thread::sleep(tick);
            if self
                .inbox
                .oldest_item()
                .is_some_and(|at| at.elapsed() > limit)
            {
                tracing::warn!(
                    worker = self.pid,
                    limit_ms = limit.as_millis() as u64,
                    "an item ran past the kernel limit: its vGPU's worker is stopped"
                );
                self.timed_out.store(true, Ordering::Release);
                self.kill();
                return;
            }
        }
    }
}

/// The worker's frames as the daemon reads them: from its ring, and from
/// the socket where the ring says so.
pub(crate) struct Incoming {
    rx: Consumer,
    frames: FrameReader,
    spin: Duration,
    /// How long to look once nudged (an item went to an idle worker).
    due_spin: Duration,
}

impl Incoming {
    pub(crate) fn new(rx: Consumer, due_spin: Duration) -> Incoming {
        Incoming {
            rx,
            frames: FrameReader::new(),
            spin: ring::spin_here(ring::DAEMON_SPIN),
            due_spin,
        }
    }

    /// The next frame, waiting for it: spinning first for
    /// [`ring::DAEMON_SPIN`], or for the due spin once `nudge` woke it (an
    /// item went to an idle worker: its completion is what comes next);
    /// while the worker holds a `deep` queue, napping
    /// [`ring::DAEMON_GATHER`] first instead ([`Consumer::nap`]). A
    /// corrupt ring, or a frame on the socket that the ring did not
    /// announce, is a protocol error; the socket's end of file is the
    /// worker's end.
    pub(crate) fn next(
        &mut self,
        s: &UnixStream,
        nudge: Option<&Doorbell>,
        deep: bool,
    ) -> Result<&[u8], Error> {
        // Whether the last wait found the socket readable (with the ring
        // looked at once more since): only then is a frame there unannounced.
        let mut socket_readable = false;
        let mut spin = self.spin;
        let mut napped = false;
        loop {
            match self.rx.pop() {
                Err(RingError::Corrupt(what)) => return Err(Error::Malformed(what)),
                Err(e) => return Err(e.into()),
                Ok(Some(Record::Inline)) => return Ok(self.rx.frame()),
                // A worker sends no descriptors: any it does are closed by
                // the kernel, never open in the daemon (where a worker
                // spawned meanwhile would inherit them).
                Ok(Some(Record::OnSocket)) => return self.frames.recv_frame(s).map_err(socket_end),
                Ok(None) if socket_readable => {
                    return Err(match self.frames.recv_frame(s) {
                        Ok(_) => Error::Malformed("a frame on the socket without its ring record"),
                        Err(e) => socket_end(e),
                    })
                }
                // One nap; a ring still empty after it (the worker's items
                // are long) is waited for as usual.
                Ok(None) if deep && !napped => {
                    napped = true;
                    if self.rx.nap(ring::DAEMON_GATHER, Some(s.as_raw_fd()), nudge) == Woken::Other
                    {
                        socket_readable = true;
                    }
                }
                Ok(None) => match self.rx.wait(spin, Some(s.as_raw_fd()), nudge, None) {
                    Woken::Other => socket_readable = true,
                    Woken::Nudged => spin = self.due_spin.max(self.spin),
                    Woken::Ring | Woken::Timeout => spin = self.spin,
                },
            }
        }
    }
}

/// The completion thread: each completion's callback, in order. Told that
/// an item went to an idle worker, it keeps looking for that item's
/// completion for `spin` before it sleeps again, so that the completion
/// costs no wake-up of this thread either.
fn run_completions(rx: &mpsc::Receiver<Completing>, spin: Duration) {
    // Since when it looks for a due completion.
    let mut looking: Option<Instant> = None;
    loop {
        let next = match looking {
            Some(since) if since.elapsed() < spin => match rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => {
                    std::hint::spin_loop();
                    continue;
                }
            },
            _ => match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
        };
        looking = match next {
            Completing::Done(done, c) => {
                done(c);
                None
            }
            Completing::Due => Some(Instant::now()),
        };
    }
}

/// What a failed socket read says about the worker.
fn socket_end(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Exited
    } else {
        Error::Io {
            what: "reading from the worker",
            source: e,
        }
    }
}

/// How a worker ended, for the log.
pub(crate) fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(libc::SIGSYS)) => {
            "killed by SIGSYS: a system call outside its seccomp allowlist".into()
        }
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

/// The worker's stderr, line by line into the daemon's log: each line
/// bounded and with control characters replaced (the worker is not
/// trusted to write the daemon's log).
fn relay_log(e: ChildStderr, pid: u32) {
    let mut r = BufReader::new(e);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_LOG_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text: String = String::from_utf8_lossy(&line)
            .trim_end_matches('\n')
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        tracing::info!(worker = pid, "{text}");
    }
}

/// Why a worker that started could not: a framebuffer that does not fit is
/// its own error (the vGPU is not created: `ENOMEM`).
pub(crate) fn out_of_memory(e: &Error) -> bool {
    matches!(
        e,
        Error::Failed {
            reason: FatalReason::OutOfMemory,
            ..
        }
    )
}

#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_deliver(frames: &[&[u8]]) {
    let inbox = Inbox::default();
    let (tx, _rx) = mpsc::channel();
    for tag in 1..=3 {
        inbox.insert(tag, Pending::Item(Box::new(|_| {}), None, Instant::now()));
    }
    inbox.insert(
        4,
        Pending::Item(
            Box::new(|_| {}),
            Some(RunningSum::default()),
            Instant::now(),
        ),
    );
    inbox.insert(5, Pending::Access(tx));
    for f in frames {
        if let Ok(Delivered::Completed(done, c)) =
            ToDaemon::decode(f).and_then(|m| inbox.deliver(m))
        {
            done(c);
        }
    }
    for (done, c) in inbox.fail_all(&Arc::new(Error::Exited), false) {
        done(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_item_at_an_idle_worker_is_told_apart() {
        let inbox = Inbox::default();
        let item = || Pending::Item(Box::new(|_| {}), None, Instant::now());
        let (tx, _rx) = mpsc::channel();
        // A VRAM access is no item.
        assert!(!inbox.insert(1, Pending::Access(tx)));
        assert!(inbox.insert(2, item()), "first item");
        assert!(!inbox.insert(3, item()), "one is at the worker");
        assert!(inbox.remove(2).is_some());
        assert!(!inbox.insert(4, item()), "one is still there");
        assert!(inbox.remove(3).is_some() && inbox.remove(4).is_some());
        assert!(inbox.remove(1).is_some());
        assert!(inbox.insert(5, item()), "idle again");
        let failed = inbox.fail_all(&Arc::new(Error::Exited), false);
        assert_eq!(failed.len(), 1);
        assert!(inbox.insert(6, item()), "idle after the worker's end");
    }

    #[test]
    fn a_completion_thread_told_of_a_due_item_runs_its_callback() {
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || run_completions(&rx, Duration::from_millis(50)));
        let (dtx, drx) = mpsc::channel();
        tx.send(Completing::Due).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        let done: DoneFn = Box::new(move |c: Completion| dtx.send(c.result.is_ok()).unwrap());
        tx.send(Completing::Done(
            done,
            Completion {
                gpu_time: Duration::ZERO,
                result: Ok(()),
            },
        ))
        .unwrap();
        assert_eq!(drx.recv_timeout(Duration::from_secs(10)), Ok(true));
        drop(tx);
        t.join().unwrap();
    }

    #[test]
    fn a_worker_s_messages_of_the_wrong_kind_are_protocol_errors() {
        let inbox = Inbox::default();
        let (tx, rx) = mpsc::channel();
        let finished = Arc::new(Mutex::new(Vec::new()));
        let f = finished.clone();
        inbox.insert(
            1,
            Pending::Item(
                Box::new(move |c: Completion| lock(&f).push(c.result.is_ok())),
                None,
                Instant::now(),
            ),
        );
        inbox.insert(2, Pending::Access(tx));
        // Data for an item, a completion for an access: refused, kept.
        let data = ToDaemon::Data {
            tag: 1,
            status: Status::Ok,
            data: &[1],
        };
        assert!(inbox.deliver(data).is_err());
        let done = |tag, status| {
            ToDaemon::Done(Done {
                tag,
                gpu_ns: 5,
                status,
                value: 700.0,
            })
        };
        assert!(inbox.deliver(done(2, Status::Ok)).is_err());
        // Unknown tags are dropped.
        assert!(matches!(
            inbox.deliver(done(99, Status::Ok)),
            Ok(Delivered::Nothing)
        ));
        // The right answers are delivered once.
        let Ok(Delivered::Completed(d, c)) = inbox.deliver(done(1, Status::Fault)) else {
            panic!("no completion");
        };
        assert!(matches!(c.result, Err(ExecError::KernelFault(700))));
        d(c);
        assert!(matches!(
            inbox.deliver(done(1, Status::Ok)),
            Ok(Delivered::Nothing)
        ));
        let data = ToDaemon::Data {
            tag: 2,
            status: Status::VramRange,
            data: &[],
        };
        assert!(matches!(inbox.deliver(data), Ok(Delivered::Nothing)));
        assert_eq!(rx.recv().unwrap(), Err(Status::VramRange));
        assert_eq!(*lock(&finished), [false]);
    }

    #[test]
    fn frames_come_from_the_ring_and_the_socket_in_order_and_unannounced_ones_are_refused() {
        use crate::ring::{Direction, Doorbell, Producer, Shared};
        let shm = Arc::new(Shared::create().unwrap());
        let (to_worker, _worker_to_worker) = Doorbell::pair().unwrap();
        let (to_daemon, worker_to_daemon) = Doorbell::pair().unwrap();
        let ends = ring::daemon_ends(shm.clone(), Arc::new(to_worker), Arc::new(to_daemon));
        let mut worker = Producer::new(shm, Direction::ToDaemon, Arc::new(worker_to_daemon));
        let (daemon_sock, worker_sock) = UnixStream::pair().unwrap();
        let mut incoming = Incoming::new(ends.rx, Duration::ZERO);
        let t = std::thread::spawn(move || {
            // The daemon sleeps by now: a long frame (marker, then the
            // socket), later a short one in the ring, then a frame on the
            // socket that no record announces.
            std::thread::sleep(Duration::from_millis(50));
            assert!(worker.try_push(None).unwrap());
            socket::send(&worker_sock, b"long", &[]).unwrap();
            worker.notify();
            std::thread::sleep(Duration::from_millis(50));
            assert!(worker.try_push(Some(b"short")).unwrap());
            worker.notify();
            std::thread::sleep(Duration::from_millis(50));
            socket::send(&worker_sock, b"sneaky", &[]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            worker_sock
        });
        assert_eq!(incoming.next(&daemon_sock, None, false).unwrap(), b"long");
        // The socket was readable when the daemon woke: that must not make
        // it read the socket again once the ring is empty.
        assert_eq!(incoming.next(&daemon_sock, None, false).unwrap(), b"short");
        assert!(matches!(
            incoming.next(&daemon_sock, None, false),
            Err(Error::Malformed(_))
        ));
        drop(t.join().unwrap());
        assert!(matches!(
            incoming.next(&daemon_sock, None, false),
            Err(Error::Exited)
        ));
    }

    #[test]
    fn exits_are_described_by_how_they_ended() {
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSYS)),
            "killed by SIGSYS: a system call outside its seccomp allowlist"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
