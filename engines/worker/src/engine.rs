//! The CUDA engine as the daemon sees it: a [`Backend`] whose contexts are
//! worker processes, one per vGPU (`vgpud-cuda-worker`). Items go to the
//! worker as they come (several in flight keep the GPU fed); each comes
//! back with the GPU time its CUDA events measured. A worker that dies, or
//! reports a sticky error, fails its items with `ENGINE_ERROR`; the vGPU's
//! next reset starts a new one.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use devmodel::backend::{
    Backend, BackendError, Completion, DoneFn, EngineContext, ExecError, WorkItem,
};
use devmodel::command::{Op, RunningSum};
use devmodel::gmmu::KernelMap;
use devmodel::memory::{GuestRam, MemError};
use devmodel::sync::lock;
use mdev_types::CudaDevice;

use super::wire::{self, to_daemon, to_worker, Reader, Status, Writer};

/// How long a worker may take to start (CUDA context, framebuffer,
/// kernels compiled by NVRTC).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The most bytes one piece moves on the GPU ([`EngineContext::piece_bytes`]).
const GPU_PIECE_BYTES: u64 = 32 << 20;
/// How long a HOST access to VRAM may take.
const ACCESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether workers emulate the GPU with the cpu engine
/// (`VGPUD_CUDA_EMULATE=1`; tests only: [`super::emulated`]).
fn emulated() -> bool {
    std::env::var_os("VGPUD_CUDA_EMULATE").is_some_and(|v| v == "1")
}

/// The worker's arguments besides its own.
fn worker_args(cmd: &mut Command) -> &mut Command {
    if emulated() {
        cmd.arg("--emulate");
    }
    cmd
}

/// The worker binary: beside the daemon's own.
pub fn worker_path() -> PathBuf {
    std::env::current_exe()
        .map(|p| p.with_file_name("vgpud-cuda-worker"))
        .unwrap_or_else(|_| PathBuf::from("vgpud-cuda-worker"))
}

/// What a GPU offers, as the worker's `--probe` reports it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub memory_bytes: u64,
    pub multiprocessors: u32,
}

/// Ask a worker what GPU `device` is.
pub fn probe(device: &CudaDevice) -> Result<GpuInfo, String> {
    let out = worker_args(&mut Command::new(worker_path()))
        .arg("--probe")
        .args(device.worker_args())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{}: {e}", worker_path().display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A parent's GPU.
pub struct CudaEngine {
    device: CudaDevice,
    /// How long an item may be at the GPU before its worker is stopped.
    kernel_timeout: Duration,
}

impl CudaEngine {
    pub fn new(device: CudaDevice, kernel_timeout: Duration) -> CudaEngine {
        CudaEngine {
            device,
            kernel_timeout,
        }
    }
}

impl Backend for CudaEngine {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// A GPU runs a kernel in microseconds and each item's completion
    /// comes back through the worker, a few hundred µs later: keep many
    /// queued (the slice still commits only what fits in it).
    fn queue_depth(&self) -> usize {
        64
    }

    /// The GPU runs an item while the front end audits the next ones.
    fn front_end_overlaps(&self) -> bool {
        true
    }

    fn create_context(&self, vram_bytes: u64) -> Result<Arc<dyn EngineContext>, BackendError> {
        let conn = Conn::start(self.device, vram_bytes, self.kernel_timeout)?;
        Ok(Arc::new(CudaContext {
            ptx_va_base: (conn.ptx_va_base != 0).then_some(conn.ptx_va_base),
            device: self.device,
            vram: vram_bytes,
            kernel_timeout: self.kernel_timeout,
            conn: Mutex::new(conn),
            restarts: Mutex::new(Vec::new()),
        }))
    }
}

/// What the daemon waits for from a worker.
enum Pending {
    /// An item, with its reduce sum to fill in and when it was handed over.
    Item(DoneFn, Option<RunningSum>, Instant),
    Access(mpsc::Sender<(Status, Vec<u8>)>),
}

/// One worker process and its socket.
struct Conn {
    child: Mutex<Child>,
    sock: UnixStream,
    send_lock: Mutex<()>,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    next_tag: AtomicU64,
    /// The guest RAM layout generation the worker has (u64::MAX: none).
    layout: Mutex<(usize, u64)>,
    /// The id of the kernel map the worker has (0: none); held while a
    /// launch and the map it needs are sent, so that they go in order.
    kernel_map: Mutex<u64>,
    /// Where the worker's guest kernels see VA 0 (0: it runs no PTX).
    ptx_va_base: u64,
    dead: Arc<AtomicBool>,
    /// The worker was stopped for running an item past the kernel limit.
    timed_out: Arc<AtomicBool>,
}

impl Conn {
    fn start(
        device: CudaDevice,
        vram: u64,
        kernel_timeout: Duration,
    ) -> Result<Arc<Conn>, BackendError> {
        let fail = |what: String| BackendError::Engine(what);
        let (ours, theirs) = UnixStream::pair().map_err(|e| fail(e.to_string()))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(worker_path());
        worker_args(&mut cmd).args(device.worker_args()).args([
            "--vram",
            &vram.to_string(),
            "--fd",
            "3",
        ]);
        // SAFETY: between fork and exec only async-signal-safe calls: dup2
        // puts the worker's end of the socket at descriptor 3 (dup2 clears
        // close-on-exec on the copy).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", worker_path().display())))?;
        drop(theirs);
        let (tx, rx) = mpsc::channel();
        let reader = ours.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut conn = Conn {
            child: Mutex::new(child),
            sock: ours,
            send_lock: Mutex::new(()),
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_tag: AtomicU64::new(1),
            layout: Mutex::new((usize::MAX, u64::MAX)),
            kernel_map: Mutex::new(0),
            ptx_va_base: 0,
            dead: Arc::new(AtomicBool::new(false)),
            timed_out: Arc::new(AtomicBool::new(false)),
        };
        let (pending, dead, timed_out) = (
            conn.pending.clone(),
            conn.dead.clone(),
            conn.timed_out.clone(),
        );
        // Completions run on a thread of their own: a callback may wait for
        // the vGPU's lock, whose holder may be waiting for a VRAM reply
        // that only the reader delivers.
        let (ctx, crx) = mpsc::channel::<(DoneFn, Completion)>();
        devmodel::thread::spawn_data_path("cuda-completions", move || {
            while let Ok((done, c)) = crx.recv() {
                done(c);
            }
        })
        .map_err(BackendError::Thread)?;
        devmodel::thread::spawn_data_path("cuda-worker-reader", move || {
            read_loop(&reader, &pending, &dead, &timed_out, tx, ctx)
        })
        .map_err(BackendError::Thread)?;
        let ready = rx.recv_timeout(START_TIMEOUT);
        if let Ok(Ok(base)) = ready {
            conn.ptx_va_base = base;
        }
        let conn = Arc::new(conn);
        let watched = conn.clone();
        devmodel::thread::spawn("cuda-watchdog", move || watchdog(&watched, kernel_timeout))
            .map_err(BackendError::Thread)?;
        match ready {
            Ok(Ok(_)) => Ok(conn),
            Ok(Err(why)) => {
                conn.kill();
                Err(if why.contains("CUDA_ERROR_OUT_OF_MEMORY") {
                    BackendError::VramTooLarge { bytes: vram }
                } else {
                    fail(why)
                })
            }
            Err(_) => {
                conn.kill();
                Err(fail("the CUDA worker did not start in time".into()))
            }
        }
    }

    fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        let mut c = lock(&self.child);
        let _ = c.kill();
        let _ = c.wait();
    }

    /// End the worker as a vGPU's removal does: close its socket, so that
    /// it drains its GPU work, reports and exits; kill it if it has not
    /// within `grace`.
    fn stop(&self, grace: Duration) {
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

    fn send(&self, body: &[u8], fds: &[i32]) -> std::io::Result<()> {
        let _g = lock(&self.send_lock);
        wire::send(&self.sock, body, fds)
    }

    /// Send the guest RAM layout if the worker's is older.
    fn sync_layout(&self, mem: &Arc<GuestRam>) -> std::io::Result<()> {
        let key = Arc::as_ptr(mem) as usize;
        let mut have = lock(&self.layout);
        if *have == (key, mem.generation()) {
            return Ok(());
        }
        let l = mem.layout()?;
        let mut w = Writer::new(to_worker::LAYOUT);
        w.u32(l.files.len() as u32);
        for f in &l.files {
            w.u64(f.len).u8(f.writable as u8);
        }
        w.u32(l.regions.len() as u32);
        for r in &l.regions {
            w.u64(r.gpa).u64(r.len).u32(r.file as u32).u64(r.offset);
        }
        let fds: Vec<i32> = l.files.iter().map(|f| f.file.as_raw_fd()).collect();
        self.send(&w.0, &fds)?;
        *have = (key, l.generation);
        Ok(())
    }

    /// Send an item (`body`), preceded by the kernel map it runs in when
    /// the worker does not have that map yet.
    fn send_item(&self, body: &[u8], map: Option<&KernelMap>) -> std::io::Result<()> {
        let mut have = lock(&self.kernel_map);
        if let Some(m) = map.filter(|m| m.id != *have) {
            let mut w = Writer::new(to_worker::KERNEL_MAP);
            w.kernel_map(m);
            self.send(&w.0, &[])?;
            *have = m.id;
        }
        self.send(body, &[])
    }

    /// A request that waits for the worker's DATA reply.
    fn access(&self, body: Writer, tag: u64) -> Result<Vec<u8>, ExecError> {
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(tag, Pending::Access(tx));
        if self.dead.load(Ordering::Acquire) || self.send(&body.0, &[]).is_err() {
            lock(&self.pending).remove(&tag);
            return Err(ExecError::EngineFailed("the CUDA worker is gone".into()));
        }
        match rx.recv_timeout(ACCESS_TIMEOUT) {
            Ok((Status::Ok, data)) => Ok(data),
            Ok((Status::VramRange, _)) => Err(ExecError::VramRange {
                offset: 0,
                len: 0,
                size: 0,
            }),
            Ok((s, _)) => Err(ExecError::EngineFailed(format!("VRAM access: {s:?}"))),
            Err(_) => {
                lock(&self.pending).remove(&tag);
                Err(ExecError::EngineFailed(
                    "the CUDA worker did not answer".into(),
                ))
            }
        }
    }
}

/// The runaway-kernel limit: a kernel cannot be preempted, so an item at
/// the GPU far longer than any piece runs (the parent's `kernel_timeout`)
/// gets its worker stopped; its items fail with `ENGINE_TIMEOUT`, and the
/// vGPU's next reset starts a new worker. Other vGPUs' workers go on.
fn watchdog(conn: &Conn, limit: Duration) {
    let tick = (limit / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
    while !conn.dead.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let oldest = lock(&conn.pending)
            .values()
            .filter_map(|p| match p {
                Pending::Item(_, _, at) => Some(*at),
                Pending::Access(_) => None,
            })
            .min();
        if oldest.is_some_and(|at| at.elapsed() > limit) {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "a GPU item ran past the kernel limit: its vGPU's worker is stopped"
            );
            conn.timed_out.store(true, Ordering::Release);
            conn.kill();
            return;
        }
    }
}

/// The worker's messages: completions, replies, its end.
fn read_loop(
    s: &UnixStream,
    pending: &Mutex<HashMap<u64, Pending>>,
    dead: &AtomicBool,
    timed_out: &AtomicBool,
    ready: mpsc::Sender<Result<u64, String>>,
    completions: mpsc::Sender<(DoneFn, Completion)>,
) {
    let mut why = String::from("the CUDA worker exited");
    loop {
        let Ok((body, _)) = wire::recv(s) else {
            break;
        };
        let mut r = Reader::new(&body);
        match r.u8() {
            Ok(to_daemon::READY) => {
                let (Ok(_vram), Ok(_sms), Ok(ptx_va_base)) = (r.u64(), r.u32(), r.u64()) else {
                    break;
                };
                let _ = ready.send(Ok(ptx_va_base));
            }
            Ok(to_daemon::DONE) => {
                let (Ok(tag), Ok(ns), Ok(st), Ok(value)) = (r.u64(), r.u64(), r.u8(), r.f64())
                else {
                    break;
                };
                // Taken out before the callback runs: it takes the parent's
                // lock, under which submissions take this map's.
                let entry = lock(pending).remove(&tag);
                if let Some(Pending::Item(done, sum, _)) = entry {
                    if let Some(sum) = sum {
                        sum.set(value);
                    }
                    let c = Completion {
                        gpu_time: Duration::from_nanos(ns),
                        result: status_result(Status::from_u8(st), value),
                    };
                    let _ = completions.send((done, c));
                }
            }
            Ok(to_daemon::DATA) => {
                let (Ok(tag), Ok(st), Ok(data)) = (r.u64(), r.u8(), r.bytes()) else {
                    break;
                };
                let entry = lock(pending).remove(&tag);
                if let Some(Pending::Access(tx)) = entry {
                    let _ = tx.send((Status::from_u8(st), data.to_vec()));
                }
            }
            Ok(to_daemon::FATAL) => {
                why = String::from_utf8_lossy(r.rest()).into_owned();
                tracing::warn!(error = %why, "CUDA worker failed");
                let _ = ready.send(Err(why.clone()));
            }
            _ => break,
        }
    }
    dead.store(true, Ordering::Release);
    let _ = ready.send(Err(why.clone()));
    // Everything still waiting fails: its channel stops with ENGINE_ERROR.
    let left: Vec<Pending> = lock(pending).drain().map(|(_, p)| p).collect();
    for p in left {
        match p {
            Pending::Item(done, _, _) => {
                let c = Completion {
                    gpu_time: Duration::ZERO,
                    result: Err(if timed_out.load(Ordering::Acquire) {
                        ExecError::Timeout
                    } else {
                        ExecError::EngineFailed(why.clone())
                    }),
                };
                let _ = completions.send((done, c));
            }
            Pending::Access(tx) => {
                let _ = tx.send((Status::Engine, Vec::new()));
            }
        }
    }
}

/// An item's outcome; `value` carries the CUDA error number of a module
/// or launch the GPU refused.
fn status_result(s: Status, value: f64) -> Result<(), ExecError> {
    match s {
        Status::Module => Err(ExecError::ModuleInvalid(value as u32)),
        Status::Refused => Err(ExecError::LaunchRefused(value as u32)),
        Status::Fault => Err(ExecError::KernelFault(
            "the GPU faulted running a guest kernel".into(),
        )),
        Status::Ok => Ok(()),
        Status::Unmapped => Err(ExecError::Memory(MemError::Unmapped { gpa: 0, len: 0 })),
        Status::VramRange => Err(ExecError::VramRange {
            offset: 0,
            len: 0,
            size: 0,
        }),
        Status::Engine => Err(ExecError::EngineFailed(
            "the GPU failed the operation".into(),
        )),
    }
}

/// Restarts of one vGPU's worker are counted over this window.
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The wait before the second restart in the window; it doubles with each
/// one after, up to [`RESTART_MAX_DELAY`].
const RESTART_DELAY: Duration = Duration::from_secs(1);
const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);

/// How long, from `now`, a new worker must still wait, given the recent
/// restarts (oldest first): none for the first, then 1 s after the last,
/// 2 s, 4 s … A tenant whose kernels fault over and over (each fault
/// stalling the GPU for its neighbours, and a new context costing the GPU
/// too) gets a new worker ever more rarely; one fault now and then costs
/// nothing.
fn restart_delay(restarts: &[Instant], now: Instant) -> Option<Duration> {
    let last = restarts.last()?;
    let doublings = (restarts.len() - 1).min(16) as u32;
    let delay = (RESTART_DELAY * 2u32.pow(doublings)).min(RESTART_MAX_DELAY);
    let since = now.duration_since(*last);
    (since < delay).then(|| delay - since)
}

/// One vGPU's worker, replaced by a new one at a reset after it died.
struct CudaContext {
    device: CudaDevice,
    /// Where guest kernels see VA 0, as the first worker reported it.
    ptx_va_base: Option<u64>,
    vram: u64,
    kernel_timeout: Duration,
    conn: Mutex<Arc<Conn>>,
    /// When workers were restarted, within [`RESTART_WINDOW`].
    restarts: Mutex<Vec<Instant>>,
}

impl CudaContext {
    fn conn(&self) -> Arc<Conn> {
        lock(&self.conn).clone()
    }
}

impl EngineContext for CudaContext {
    fn submit(&self, item: WorkItem, done: DoneFn) {
        let conn = self.conn();
        let tag = conn.next_tag.fetch_add(1, Ordering::Relaxed);
        let sum = match &item.op {
            Op::ReduceSum { sum, .. } => Some(sum.clone()),
            _ => None,
        };
        lock(&conn.pending).insert(tag, Pending::Item(done, sum, Instant::now()));
        let mut w = Writer::new(to_worker::SUBMIT);
        w.u64(tag).op(&item.op);
        let map = match &item.op {
            Op::Kernel(k) => Some(&*k.map),
            _ => None,
        };
        let sent = !conn.dead.load(Ordering::Acquire)
            && conn.sync_layout(&item.mem).is_ok()
            && conn.send_item(&w.0, map).is_ok();
        if !sent {
            // Never complete inside submit: fail it from another thread.
            let entry = lock(&conn.pending).remove(&tag);
            if let Some(Pending::Item(done, _, _)) = entry {
                let _ = devmodel::thread::spawn("cuda-failed-item", move || {
                    done(Completion {
                        gpu_time: Duration::ZERO,
                        result: Err(ExecError::EngineFailed("the CUDA worker is gone".into())),
                    })
                });
            }
        }
    }

    fn read_vram(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExecError> {
        let conn = self.conn();
        let tag = conn.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut w = Writer::new(to_worker::READ_VRAM);
        w.u64(tag).u64(offset).u64(buf.len() as u64);
        let data = conn.access(w, tag)?;
        if data.len() != buf.len() {
            return Err(ExecError::ShortExtents("VRAM read"));
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write_vram(&self, offset: u64, buf: &[u8]) -> Result<(), ExecError> {
        let conn = self.conn();
        let tag = conn.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut w = Writer::new(to_worker::WRITE_VRAM);
        w.u64(tag).u64(offset).bytes(buf);
        conn.access(w, tag).map(|_| ())
    }

    fn ptx_va_base(&self) -> Option<u64> {
        self.ptx_va_base
    }

    /// 32 MiB: about 0.6 ms of a GPU's copy engine from pinned guest RAM,
    /// as long as a cpu engine's 4 MiB piece or a `spin` piece.
    /// (Emulated workers move bytes at the cpu engine's pace: its pieces.)
    fn piece_bytes(&self) -> u64 {
        if emulated() {
            devmodel::command::PIECE_BYTES
        } else {
            GPU_PIECE_BYTES
        }
    }

    fn release_vram(&self) {
        let conn = self.conn();
        let tag = conn.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut w = Writer::new(to_worker::CLEAR_VRAM);
        w.u64(tag);
        if let Err(e) = conn.access(w, tag) {
            tracing::warn!(error = %e, "framebuffer not cleared");
        }
    }

    /// Work already queued on the GPU runs out (each item is at most a
    /// piece); a worker that died is replaced, with a zeroed framebuffer,
    /// unless it is restarting too often ([`restart_delay`]): until then
    /// the vGPU's work fails with `ENGINE_ERROR` and a later reset tries
    /// again.
    fn cancel(&self) {
        let mut conn = lock(&self.conn);
        if !conn.dead.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut restarts = lock(&self.restarts);
        restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if let Some(wait) = restart_delay(&restarts, now) {
            tracing::warn!(
                restarts = restarts.len(),
                wait_ms = wait.as_millis() as u64,
                "CUDA worker restarting too often: held back"
            );
            return;
        }
        conn.kill();
        match Conn::start(self.device, self.vram, self.kernel_timeout) {
            Ok(c) => {
                *conn = c;
                restarts.push(now);
            }
            Err(e) => tracing::warn!(error = %e, "CUDA worker not restarted"),
        }
    }
}

impl Drop for CudaContext {
    fn drop(&mut self) {
        lock(&self.conn).stop(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_when_they_come_often() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // The first restart waits for nothing.
        assert_eq!(restart_delay(&[], t0), None);
        // The second in the window: 1 s after the first.
        assert_eq!(
            restart_delay(&[t0], t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(restart_delay(&[t0], t0 + s(1)), None);
        // Then 2 s, 4 s … after the last, up to 30 s.
        assert_eq!(restart_delay(&[t0, t0 + s(1)], t0 + s(2)), Some(s(1)));
        assert_eq!(
            restart_delay(&[t0, t0 + s(1), t0 + s(3)], t0 + s(3)),
            Some(s(4))
        );
        let many: Vec<Instant> = (0..20).map(|i| t0 + Duration::from_millis(i)).collect();
        assert_eq!(
            restart_delay(&many, t0 + s(1)),
            Some(RESTART_MAX_DELAY - s(1) + Duration::from_millis(19))
        );
    }
}
