//! The process engine as the daemon sees it: a [`Backend`] whose contexts
//! are worker processes, one per vGPU ([`crate::conn`]). Items go to the
//! worker as they come (several in flight keep the device fed); each comes
//! back with the engine time the worker measured. A worker that dies,
//! reports a sticky error or breaks the protocol fails its items with
//! `ENGINE_ERROR`; the vGPU's next reset starts a new one, or, while no VM
//! is attached, the context itself does (so that an idle vGPU is ready, and
//! healthy, for its next VM); either waits while the worker is restarting
//! too often (`restart_delay`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use devmodel::backend::{
    Backend, BackendError, Completion, DoneFn, EngineContext, EngineHealth, ExecError, WorkItem,
};
use devmodel::command::{Op, PIECE_BYTES};
use devmodel::sync::lock;
use mmio::devinfo::DeviceInfo;

use crate::conn::{out_of_memory, Conn, Pending};
use crate::program::WorkerProgram;
use crate::wire::ToWorker;
use crate::Error;

/// The most bytes one piece may move on a worker's engine, whatever the
/// worker asks for (a piece is the scheduler's unit of time).
const MAX_PIECE_BYTES: u64 = 64 << 20;

/// An engine whose vGPU contexts are worker processes of `program`.
pub struct ProcessEngine {
    name: &'static str,
    program: WorkerProgram,
    /// How long an item may be at a worker before the worker is stopped.
    kernel_timeout: Duration,
}

impl ProcessEngine {
    pub fn new(name: &'static str, program: WorkerProgram, kernel_timeout: Duration) -> Self {
        ProcessEngine {
            name,
            program,
            kernel_timeout,
        }
    }
}

impl Backend for ProcessEngine {
    fn name(&self) -> &'static str {
        self.name
    }

    /// A GPU runs a kernel in microseconds and each item's completion
    /// comes back through the worker, a few hundred µs later: keep many
    /// queued (the slice still commits only what fits in it).
    fn queue_depth(&self) -> usize {
        64
    }

    /// Each worker is a context of its own on the device: the GPU switches
    /// contexts between vGPUs.
    fn switches_cost(&self) -> bool {
        true
    }

    /// The device runs an item while the front end audits the next ones.
    fn front_end_overlaps(&self) -> bool {
        true
    }

    /// A device's framebuffers are its own memory; an emulating worker's
    /// are host memory (its cpu engine's).
    fn framebuffer_in_host_memory(&self) -> bool {
        self.program.emulate
    }

    fn create_context(&self, vram_bytes: u64) -> Result<Arc<dyn EngineContext>, BackendError> {
        let conn = Conn::start(&self.program, vram_bytes, self.kernel_timeout).map_err(|e| {
            if out_of_memory(&e) {
                BackendError::VramTooLarge { bytes: vram_bytes }
            } else {
                BackendError::Engine {
                    engine: self.name,
                    source: Box::new(e),
                }
            }
        })?;
        let ready = conn.ready.get();
        let ctx = Arc::new_cyclic(|me: &Weak<ProcessContext>| ProcessContext {
            ptx_va_base: ready.and_then(|r| (r.ptx_va_base != 0).then_some(r.ptx_va_base)),
            piece_bytes: ready.map_or(PIECE_BYTES, |r| {
                r.piece_bytes.clamp(PIECE_BYTES, MAX_PIECE_BYTES)
            }),
            device: ready.map(|r| r.device.clone()),
            program: self.program.clone(),
            vram: vram_bytes,
            kernel_timeout: self.kernel_timeout,
            conn: Mutex::new(conn.clone()),
            restarts: Mutex::new(Vec::new()),
            attached: AtomicBool::new(false),
            me: me.clone(),
        });
        conn.on_exit(recovery(&ctx.me));
        Ok(ctx)
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

/// The hook a context's worker runs when it is gone: the context recovers
/// its worker if no VM is attached (on a thread of its own: the hook runs on
/// the worker's reader, and the recovery may wait out a back-off).
fn recovery(me: &Weak<ProcessContext>) -> Box<dyn FnOnce() + Send> {
    let me = me.clone();
    Box::new(move || {
        if me
            .upgrade()
            .is_some_and(|c| !c.attached.load(Ordering::Acquire))
        {
            recover_idle_later(me);
        }
    })
}

/// Start [`recover_idle`] on a thread of its own.
fn recover_idle_later(me: Weak<ProcessContext>) {
    if let Err(e) = devmodel::thread::spawn("worker-recover", move || recover_idle(&me)) {
        tracing::warn!(error = %devmodel::Chain(&e), "worker not recovered");
    }
}

/// Start a new worker for a vGPU whose worker is gone while no VM is
/// attached, once its restart back-off allows: an idle vGPU is then ready
/// for the next VM (and healthy again) without waiting for that VM's
/// reset. A VM attached meanwhile leaves it to the VM's reset.
fn recover_idle(me: &Weak<ProcessContext>) {
    loop {
        let Some(ctx) = me.upgrade() else {
            return;
        };
        if ctx.attached.load(Ordering::Acquire) {
            return;
        }
        match ctx.restart_if_dead() {
            Restart::Waiting(wait) => {
                drop(ctx);
                std::thread::sleep(wait);
            }
            Restart::Done | Restart::Failed => return,
        }
    }
}

/// What [`ProcessContext::restart_if_dead`] did.
enum Restart {
    /// A new worker runs, or the old one was alive.
    Done,
    /// Restarting so soon is held back: try again after this long.
    Waiting(Duration),
    /// The new worker did not start.
    Failed,
}

/// One vGPU's worker, replaced by a new one at a reset after it died, or
/// by the context itself while no VM is attached.
struct ProcessContext {
    program: WorkerProgram,
    /// Where guest kernels see VA 0, as the first worker reported it.
    ptx_va_base: Option<u64>,
    /// The first worker's piece size, clamped.
    piece_bytes: u64,
    /// What the device is, as the first worker reported it (a restarted
    /// worker runs on the same device).
    device: Option<DeviceInfo>,
    vram: u64,
    kernel_timeout: Duration,
    conn: Mutex<Arc<Conn>>,
    /// When workers were restarted, within [`RESTART_WINDOW`].
    restarts: Mutex<Vec<Instant>>,
    /// A VM is attached to the vGPU.
    attached: AtomicBool,
    /// Itself, for the exit hooks of the workers it starts.
    me: Weak<ProcessContext>,
}

impl ProcessContext {
    fn conn(&self) -> Arc<Conn> {
        lock(&self.conn).clone()
    }

    /// Replace a worker that is gone, with a zeroed framebuffer, unless it
    /// is restarting too often ([`restart_delay`]).
    fn restart_if_dead(&self) -> Restart {
        let mut conn = lock(&self.conn);
        if !conn.dead.load(Ordering::Acquire) {
            return Restart::Done;
        }
        let now = Instant::now();
        let mut restarts = lock(&self.restarts);
        restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if let Some(wait) = restart_delay(&restarts, now) {
            tracing::warn!(
                restarts = restarts.len(),
                wait_ms = wait.as_millis() as u64,
                "worker restarting too often: held back"
            );
            return Restart::Waiting(wait);
        }
        conn.kill();
        match Conn::start(&self.program, self.vram, self.kernel_timeout) {
            Ok(c) => {
                c.on_exit(recovery(&self.me));
                *conn = c;
                restarts.push(now);
                Restart::Done
            }
            Err(e) => {
                tracing::warn!(error = %devmodel::Chain(&*e), "worker not restarted");
                Restart::Failed
            }
        }
    }
}

/// An item that could not be handed to the worker fails from another
/// thread (never inside submit).
fn fail_later(done: DoneFn, why: Error) {
    let _ = devmodel::thread::spawn("worker-failed-item", move || {
        done(Completion {
            gpu_time: Duration::ZERO,
            result: Err(ExecError::EngineFailed(Arc::new(why))),
        })
    });
}

impl EngineContext for ProcessContext {
    fn submit(&self, item: WorkItem, done: DoneFn) {
        let conn = self.conn();
        let tag = conn.tag();
        let (sum, map) = match &item.op {
            Op::ReduceSum { sum, .. } => (Some(sum.clone()), None),
            Op::Kernel(k) => (None, Some(&*k.map)),
            _ => (None, None),
        };
        let first = conn
            .inbox
            .insert(tag, Pending::Item(done, sum, Instant::now()));
        let msg = ToWorker::Submit {
            tag,
            op: Cow::Borrowed(&item.op),
        };
        let sent = if conn.dead.load(Ordering::Acquire) {
            Err(Error::Exited)
        } else {
            conn.sync_layout(&item.mem)
                .and_then(|()| conn.send_item(&msg, map))
        };
        match sent {
            Ok(()) if first => conn.first_item_handed(),
            Ok(()) => {}
            Err(why) => {
                if let Some(Pending::Item(done, _, _)) = conn.inbox.remove(tag) {
                    fail_later(done, why);
                }
            }
        }
    }

    fn read_vram(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExecError> {
        let conn = self.conn();
        let tag = conn.tag();
        let data = conn.access(
            &ToWorker::ReadVram {
                tag,
                offset,
                len: buf.len() as u64,
            },
            tag,
        )?;
        if data.len() != buf.len() {
            return Err(ExecError::ShortExtents("VRAM read"));
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write_vram(&self, offset: u64, buf: &[u8]) -> Result<(), ExecError> {
        let conn = self.conn();
        let tag = conn.tag();
        conn.access(
            &ToWorker::WriteVram {
                tag,
                offset,
                data: buf,
            },
            tag,
        )
        .map(|_| ())
    }

    fn ptx_va_base(&self) -> Option<u64> {
        self.ptx_va_base
    }

    /// The device-info block's contents, from the worker's `Ready`: on a
    /// GPU the physical device's name, UUID, driver version and every
    /// `cuDeviceGetAttribute` value; on an emulating worker its cpu
    /// engine's synthetic identity.
    fn device_info(&self) -> Option<DeviceInfo> {
        self.device.clone()
    }

    /// What the worker asked for: 32 MiB on a GPU (about 0.6 ms of its
    /// copy engine from pinned guest RAM, as long as a cpu engine's 4 MiB
    /// piece); an emulating worker moves bytes at the cpu engine's pace.
    fn piece_bytes(&self) -> u64 {
        self.piece_bytes
    }

    fn release_vram(&self) {
        let conn = self.conn();
        let tag = conn.tag();
        if let Err(e) = conn.access(&ToWorker::ClearVram { tag }, tag) {
            tracing::warn!(error = %e, "framebuffer not cleared");
        }
    }

    /// Work already queued on the device runs out (each item is at most a
    /// piece); a worker that died is replaced, with a zeroed framebuffer,
    /// unless it is restarting too often ([`restart_delay`]): until then
    /// the vGPU's work fails with `ENGINE_ERROR` and a later reset tries
    /// again.
    fn cancel(&self) {
        let _ = self.restart_if_dead();
    }

    /// A VM that leaves a vGPU whose worker is gone (and was not replaced
    /// at the VM's last reset, being held back) leaves the recovery to the
    /// context.
    fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Release);
        if !attached && self.conn().dead.load(Ordering::Acquire) {
            recover_idle_later(self.me.clone());
        }
    }

    fn health(&self) -> EngineHealth {
        self.conn().health()
    }
}

impl Drop for ProcessContext {
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
