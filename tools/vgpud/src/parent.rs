//! A parent: one physical engine time-sliced between vGPUs by the host
//! scheduler.
//!
//! Every vGPU gets an [`EngineContext`] from [`Parent::attach`]. Work the
//! vGPU submits is queued on its channel's runlist inside the
//! [`scheduler::Scheduler`]; a dispatcher thread asks the policy which
//! vGPU runs next, hands its items to the real backend, keeping up to
//! its [`devmodel::Backend::queue_depth`] (the cpu engine's:
//! [`ENGINE_QUEUE_DEPTH`]) queued there, and charges the measured execution
//! time of finished items to their vGPU and channel, a batch at a time.
//! One item runs on the engine at a time, as on a time-sliced GPU.

use devmodel::sync::{lock, wait, wait_timeout};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devmodel::backend::{
    BackendError, Completion, DoneFn, EngineContext, EngineHealth, ExecError, WorkItem,
};
use devmodel::thread::SpawnError;
use devmodel::Backend;
use scheduler::{Nanos, ParentPolicy, ParentStats, Pick, Scheduler, VgpuParams};

/// A queued item and whom to tell when it is done.
struct Job {
    item: WorkItem,
    done: DoneFn,
}

/// What the dispatcher and the vGPUs' contexts share, under one lock.
struct DispatchState {
    sched: Scheduler<Job>,
    contexts: HashMap<u64, Arc<dyn EngineContext>>,
    channels: HashMap<u64, BTreeSet<u32>>,
    /// Items dropped by a cancel or detach, to be completed by the dispatcher.
    cancelled: Vec<Job>,
    /// Items the engine finished, `(vgpu, channel, measured ns)`, for the
    /// dispatcher to charge in one batch before its next decision.
    completed: Vec<(u64, u32, Nanos)>,
    /// The policy holds queued work until this time (the last pick said so).
    idle_until: Option<Nanos>,
    stopping: bool,
}

/// Items the dispatcher keeps queued at the engine, so that the engine
/// starts the next one the moment the last ends instead of waiting for the
/// dispatcher; the policy still decides who runs at slice granularity (a
/// slice commits items only while their expected time fits in it).
pub const ENGINE_QUEUE_DEPTH: usize = 4;

/// The least an item is charged: what handing it to the engine and taking
/// its completion back costs, measured on no item. On top of its engine
/// time an item is charged the front end's measured work on it (fetch,
/// decode, audit): a tenant flooding tiny commands pays for them out of its
/// own share, not its neighbour's. On an engine whose work overlaps the
/// front end's ([`Backend::front_end_overlaps`]: a GPU) it is charged the
/// larger of the two instead.
pub const MIN_CHARGE: Nanos = 2_000;

/// What an item is charged: its engine time and its front-end time, added,
/// or the larger of the two where they overlap; at least [`MIN_CHARGE`].
fn charge(engine: Nanos, front_end: Nanos, overlaps: bool) -> Nanos {
    if overlaps {
        engine.max(front_end)
    } else {
        engine + front_end
    }
    .max(MIN_CHARGE)
}

/// A parent's half that its dispatcher thread and its vGPUs' contexts hold.
struct ParentShared {
    name: String,
    backend: Box<dyn Backend>,
    state: Mutex<DispatchState>,
    wake: Condvar,
    born: Instant,
}

impl ParentShared {
    fn lock(&self) -> MutexGuard<'_, DispatchState> {
        lock(&self.state)
    }
    fn now(&self) -> Nanos {
        self.born.elapsed().as_nanos() as Nanos
    }
}

/// One physical GPU with its scheduler.
pub struct Parent {
    name: String,
    shared: Arc<ParentShared>,
    next_key: Mutex<u64>,
    dispatcher: Option<JoinHandle<()>>,
}

/// Errors of the parent.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Scheduler(#[from] scheduler::Error),
}

impl Parent {
    /// A parent running `backend` under `policy`, with its dispatcher thread
    /// started.
    pub fn new(
        name: &str,
        backend: Box<dyn Backend>,
        policy: ParentPolicy,
    ) -> Result<Parent, SpawnError> {
        let mut sched = Scheduler::new(policy);
        sched.set_engine_depth(backend.queue_depth().max(1));
        sched.set_engine_switch_cost(backend.switches_cost());
        let shared = Arc::new(ParentShared {
            name: name.to_string(),
            backend,
            state: Mutex::new(DispatchState {
                sched,
                contexts: HashMap::new(),
                channels: HashMap::new(),
                cancelled: Vec::new(),
                completed: Vec::new(),
                idle_until: None,
                stopping: false,
            }),
            wake: Condvar::new(),
            born: Instant::now(),
        });
        let s = shared.clone();
        let dispatcher =
            devmodel::thread::spawn_data_path(format!("sched-{name}"), move || dispatch(s))?;
        Ok(Parent {
            name: name.to_string(),
            shared,
            next_key: Mutex::new(1),
            dispatcher: Some(dispatcher),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attach a new vGPU with `channels` channels and `vram_bytes` of
    /// framebuffer; returns its scheduler key and its engine context.
    pub fn attach(
        &self,
        vram_bytes: u64,
        channels: u32,
        params: VgpuParams,
    ) -> Result<(u64, Arc<dyn EngineContext>), ParentError> {
        let inner = self.shared.backend.create_context(vram_bytes)?;
        let key = {
            let mut k = lock(&self.next_key);
            *k += 1;
            *k - 1
        };
        let mut st = self.shared.lock();
        let now = self.shared.now();
        st.sched.add_vgpu(key, params, now)?;
        let ts = st.sched.timeslice();
        let every: Vec<(u32, Nanos)> = (0..channels).map(|c| (c, ts)).collect();
        st.sched.set_runlist(key, &every)?;
        st.contexts.insert(key, inner);
        st.channels.insert(key, (0..channels).collect());
        Ok((
            key,
            Arc::new(ScheduledContext {
                key,
                shared: self.shared.clone(),
            }),
        ))
    }

    /// Change the policy while vGPUs run (takes effect at the next slice).
    pub fn set_policy(&self, policy: ParentPolicy) -> Result<(), ParentError> {
        let now = self.shared.now();
        self.shared.lock().sched.set_policy(policy, now)?;
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Change one vGPU's weight, cap, reservation or class (at once).
    pub fn set_params(&self, key: u64, params: VgpuParams) -> Result<(), ParentError> {
        let now = self.shared.now();
        self.shared.lock().sched.set_params(key, params, now)?;
        self.shared.wake.notify_all();
        Ok(())
    }

    /// The timeslice in force.
    pub fn timeslice(&self) -> Nanos {
        self.shared.lock().sched.timeslice()
    }

    /// The policy in force.
    pub fn policy(&self) -> ParentPolicy {
        self.shared.lock().sched.policy()
    }

    /// Time the engine held items past their length while its threads
    /// waited for a host CPU ([`Backend::host_stall`]): charged to no vGPU.
    pub fn host_stall(&self) -> Duration {
        self.shared.backend.host_stall()
    }

    /// Per-vGPU and per-channel accounting.
    pub fn stats(&self) -> ParentStats {
        let now = self.shared.now();
        self.shared.lock().sched.stats(now)
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(d) = self.dispatcher.take() {
            let _ = d.join();
        }
    }
}

/// The engine context a vGPU on a parent sees.
struct ScheduledContext {
    key: u64,
    shared: Arc<ParentShared>,
}

impl ScheduledContext {
    fn inner(&self) -> Option<Arc<dyn EngineContext>> {
        self.shared.lock().contexts.get(&self.key).cloned()
    }
}

impl EngineContext for ScheduledContext {
    fn submit(&self, item: WorkItem, done: DoneFn) {
        let mut st = self.shared.lock();
        let now = self.shared.now();
        let channel = item.channel;
        st.channels.entry(self.key).or_default().insert(channel);
        if let Err(r) = st.sched.enqueue(self.key, channel, Job { item, done }, now) {
            tracing::warn!(vgpu = self.key, error = %r.error, "work refused by the scheduler");
            st.cancelled.push(r.item);
        }
        // Hand what may run now to the engine from this thread: the item
        // does not wait for the dispatcher to wake.
        let wake = pump(&self.shared, &mut st);
        drop(st);
        if wake {
            self.shared.wake.notify_all();
        }
    }

    fn read_vram(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExecError> {
        self.inner()
            .ok_or(ExecError::Cancelled)?
            .read_vram(offset, buf)
    }

    fn write_vram(&self, offset: u64, buf: &[u8]) -> Result<(), ExecError> {
        self.inner()
            .ok_or(ExecError::Cancelled)?
            .write_vram(offset, buf)
    }

    fn set_runlist(&self, entries: &[(u32, u32)]) {
        let mut st = self.shared.lock();
        let ts = st.sched.timeslice();
        let rl: Vec<(u32, Nanos)> = entries
            .iter()
            .map(|&(c, us)| (c, if us == 0 { ts } else { us as Nanos * 1000 }))
            .collect();
        if let Err(e) = st.sched.set_runlist(self.key, &rl) {
            tracing::warn!(vgpu = self.key, error = %e, "runlist not applied");
        }
        drop(st);
        self.shared.wake.notify_all();
    }

    fn release_vram(&self) {
        if let Some(inner) = self.inner() {
            inner.release_vram();
        }
    }

    fn ptx_va_base(&self) -> Option<u64> {
        self.inner()?.ptx_va_base()
    }

    fn device_info(&self) -> Option<mmio::devinfo::DeviceInfo> {
        self.inner()?.device_info()
    }

    fn piece_bytes(&self) -> u64 {
        self.inner()
            .map_or(devmodel::command::PIECE_BYTES, |i| i.piece_bytes())
    }

    fn set_attached(&self, attached: bool) {
        let mut st = self.shared.lock();
        let now = self.shared.now();
        if let Err(e) = st.sched.set_running(self.key, attached, now) {
            tracing::warn!(vgpu = self.key, error = %e, "attachment not applied");
        }
        let inner = st.contexts.get(&self.key).cloned();
        drop(st);
        self.shared.wake.notify_all();
        if let Some(i) = inner {
            i.set_attached(attached);
        }
    }

    fn health(&self) -> EngineHealth {
        self.inner().map_or(EngineHealth::Ok, |i| i.health())
    }

    fn cancel_channel(&self, channel: u32) {
        let mut st = self.shared.lock();
        let dropped = st.sched.drop_channel(self.key, channel);
        if dropped.is_empty() {
            return;
        }
        st.cancelled.extend(dropped);
        drop(st);
        self.shared.wake.notify_all();
    }

    fn cancel(&self) {
        let mut st = self.shared.lock();
        let chans: Vec<u32> = st
            .channels
            .get(&self.key)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        for c in chans {
            let dropped = st.sched.drop_channel(self.key, c);
            st.cancelled.extend(dropped);
        }
        let inner = st.contexts.get(&self.key).cloned();
        drop(st);
        if let Some(i) = inner {
            i.cancel();
        }
        self.shared.wake.notify_all();
    }
}

impl Drop for ScheduledContext {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let now = self.shared.now();
        let dropped = st.sched.remove_vgpu(self.key, now);
        st.cancelled.extend(dropped);
        st.contexts.remove(&self.key);
        st.channels.remove(&self.key);
        drop(st);
        self.shared.wake.notify_all();
    }
}

/// Charge what completed, then hand the engine what the policy lets run
/// now, under the parent's lock. Returns whether the dispatcher must act:
/// items to fail, or the policy holding work until a time.
///
/// Run by the dispatcher, and also inline where work arrives (a vGPU's
/// submission) and where an item completes (its completion thread), so
/// that neither waits for the dispatcher to wake. The backend never
/// completes inside submit, so submitting under the lock is safe and keeps
/// the order of decisions.
fn pump(shared: &Arc<ParentShared>, st: &mut DispatchState) -> bool {
    let now = shared.now();
    for (vgpu, channel, used) in std::mem::take(&mut st.completed) {
        if let Err(e) = st.sched.complete(vgpu, channel, used, now) {
            tracing::debug!(vgpu, channel, error = %e, "completion for a detached vGPU");
        }
    }
    loop {
        match st.sched.pick(now) {
            Pick::Run {
                vgpu,
                channel,
                item,
            } => {
                let Some(ctx) = st.contexts.get(&vgpu).cloned() else {
                    st.cancelled.push(item);
                    continue;
                };
                let s = shared.clone();
                let Job { item, done } = item;
                let front_end = item.front_end.as_nanos() as Nanos;
                let overlaps = shared.backend.front_end_overlaps();
                ctx.submit(
                    item,
                    Box::new(move |c: Completion| {
                        let used = charge(c.gpu_time.as_nanos() as Nanos, front_end, overlaps);
                        let mut st = s.lock();
                        st.completed.push((vgpu, channel, used));
                        let wake = !st.stopping && pump(&s, &mut st);
                        drop(st);
                        if wake {
                            s.wake.notify_all();
                        }
                        done(c);
                    }),
                );
            }
            Pick::Fault { vgpu, what, items } => {
                // A scheduler bug: that vGPU alone left the scheduler; its work fails
                // as cancelled and its later submissions are refused.
                tracing::error!(
                    parent = %shared.name,
                    vgpu,
                    cancelled = items.len(),
                    "scheduler invariant broken ({what}); the vGPU's work is cancelled, the others run on"
                );
                st.cancelled.extend(items);
            }
            Pick::IdleUntil(t) => {
                // The dispatcher must wake by then: tell it if it would not.
                let sooner = st.idle_until.is_none_or(|old| t < old);
                st.idle_until = Some(t);
                return sooner;
            }
            Pick::Empty | Pick::Busy => {
                st.idle_until = None;
                return !st.cancelled.is_empty();
            }
        }
    }
}

/// The dispatcher: fails cancelled items, and feeds the engine (with
/// [`pump`]) when woken, or when the policy's hold on work ends.
fn dispatch(shared: Arc<ParentShared>) {
    let mut st = shared.lock();
    loop {
        if st.stopping {
            return;
        }
        if !st.cancelled.is_empty() {
            let jobs = std::mem::take(&mut st.cancelled);
            drop(st);
            for j in jobs {
                (j.done)(Completion {
                    gpu_time: Duration::ZERO,
                    result: Err(ExecError::Cancelled),
                });
            }
            st = shared.lock();
            continue;
        }
        pump(&shared, &mut st);
        if !st.cancelled.is_empty() {
            continue;
        }
        st = match st.idle_until {
            Some(t) => {
                let now = shared.now();
                let wait = Duration::from_nanos(t.saturating_sub(now).max(1_000));
                wait_timeout(&shared.wake, st, wait)
            }
            None => wait(&shared.wake, st),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devmodel::command::Op;
    use devmodel::memory::GuestRam;

    /// An engine that records on which thread each item was handed to it
    /// and keeps the items' completions for the test to call.
    #[derive(Default)]
    struct Recorder {
        submitted: Arc<Mutex<Vec<(std::thread::ThreadId, DoneFn)>>>,
    }

    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn create_context(&self, _: u64) -> Result<Arc<dyn EngineContext>, BackendError> {
            Ok(Arc::new(RecorderContext(self.submitted.clone())))
        }
        fn queue_depth(&self) -> usize {
            1
        }
    }

    struct RecorderContext(Arc<Mutex<Vec<(std::thread::ThreadId, DoneFn)>>>);

    impl EngineContext for RecorderContext {
        fn submit(&self, _: WorkItem, done: DoneFn) {
            lock(&self.0).push((std::thread::current().id(), done));
        }
        fn read_vram(&self, _: u64, _: &mut [u8]) -> Result<(), ExecError> {
            Ok(())
        }
        fn write_vram(&self, _: u64, _: &[u8]) -> Result<(), ExecError> {
            Ok(())
        }
        fn cancel(&self) {}
    }

    fn item() -> WorkItem {
        WorkItem {
            op: Op::Memset {
                dst: Vec::new(),
                pattern: 0,
            },
            channel: 0,
            mem: Arc::new(GuestRam::new()),
            front_end: Duration::ZERO,
        }
    }

    #[test]
    fn work_reaches_the_engine_from_where_it_arrives_and_where_the_last_item_completes() {
        let rec = Recorder::default();
        let submitted = rec.submitted.clone();
        let parent = Parent::new("p", Box::new(rec), ParentPolicy::default()).unwrap();
        let (_, ctx) = parent.attach(1 << 20, 1, VgpuParams::for_type(1)).unwrap();
        // The engine takes one item at a time: the first goes from the
        // submitting thread itself, the second waits in the scheduler.
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..2 {
            let tx = tx.clone();
            ctx.submit(
                item(),
                Box::new(move |c| tx.send((i, c.result.is_ok())).unwrap()),
            );
        }
        let me = std::thread::current().id();
        let first = {
            let mut g = lock(&submitted);
            assert_eq!(g.len(), 1, "one item at the engine");
            assert_eq!(g[0].0, me, "handed over on the submitting thread");
            g.remove(0).1
        };
        // Its completion, on an engine thread, hands over the next item
        // there, before the first's own completion goes on.
        let engine = std::thread::spawn(move || {
            first(Completion {
                gpu_time: Duration::from_micros(10),
                result: Ok(()),
            });
            std::thread::current().id()
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (0, true));
        let second = {
            let mut g = lock(&submitted);
            assert_eq!(g.len(), 1, "the second item at the engine");
            assert_eq!(g[0].0, engine, "handed over on the completing thread");
            g.remove(0).1
        };
        second(Completion {
            gpu_time: Duration::from_micros(10),
            result: Ok(()),
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (1, true));
        drop(ctx);
        drop(parent);
    }

    #[test]
    fn items_pay_engine_and_front_end_time_added_or_overlapped() {
        // cpu engine: the front end and the engine share the host's cores.
        assert_eq!(charge(500_000, 20_000, false), 520_000);
        // GPU: the front end audits the next items while the GPU runs.
        assert_eq!(charge(500_000, 20_000, true), 500_000);
        // A flood of tiny commands pays its front end's work either way.
        assert_eq!(charge(1_000, 30_000, true), 30_000);
        assert_eq!(charge(1_000, 30_000, false), 31_000);
        // Nothing is free.
        assert_eq!(charge(0, 0, true), MIN_CHARGE);
        assert_eq!(charge(0, 500, false), MIN_CHARGE);
    }
}
