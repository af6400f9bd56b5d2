//! The scheduler of one parent (physical GPU): the first scheduling level.
//!
//! One [`Scheduler`] runs per physical GPU. The GPU executes one item at a time (like
//! GRID time-slicing: one vGPU's timeslice at a time); the caller loops
//! `pick` → run the item → `complete` with the measured GPU time. So that the GPU never
//! waits for the caller between items, up to [`Scheduler::set_engine_depth`] picked
//! items may be in flight (queued at the engine) at once; a slice commits items only
//! while the time they are expected to take (the channel's measured average) fits in
//! what is left of it, and the next slice is chosen while the last item (or up to
//! 100 µs of expected work) of the previous one still runs, so that the switch
//! overlaps it. A vGPU that is the only candidate is not drained at its slice's
//! end: its next slice starts at once, its queue full (alone, it runs as if native).
//!
//! A vGPU that wins the GPU holds it for one *slice*: items from its runlist run back to
//! back until the slice's measured GPU time reaches the parent's timeslice (the item in
//! progress is never cut), its runlist has no runnable channel, or (weighted) its cap
//! is used up. Then the policy chooses again. A latency-class vGPU's item is run at the
//! next command boundary, in the middle of another vGPU's slice, without ending it.
//!
//! Data structures: ordered sets keyed by eligibility time (strict shares and caps
//! until their credit allows, reservations, latency class) or virtual time (GPU time
//! over the weight, or over the share under the strict policies: among the vGPUs with
//! credit, the least served for its share runs next, so that a GPU that delivers less
//! than the shares grant divides what it delivers in their proportion).
//! `pick` and `complete` cost O(log n) in the number of vGPUs (plus the chosen vGPU's
//! runlist walk); `add_vgpu`, `remove_vgpu`, `set_params` and a policy change rebuild
//! the sets in O(n log n).

use std::collections::{BTreeMap, BTreeSet};

use crate::accounting::{ChannelStats, Idle, Meter, ParentStats, VgpuShareStats};
use crate::policy::{Bucket, LatencyClass, ParentPolicy, PolicyKind, VgpuParams};
use crate::runlist::Runlist;
use crate::{Error, Nanos, Result};

/// What the GPU should do next.
#[derive(Debug, PartialEq)]
pub enum Pick<T> {
    /// Run `item` from `channel` of `vgpu`, then call [`Scheduler::complete`].
    Run { vgpu: u64, channel: u32, item: T },
    /// Work exists but a strict policy (or a cap) holds the GPU idle until this time,
    /// unless new work arrives first.
    IdleUntil(Nanos),
    /// No vGPU has runnable work.
    Empty,
    /// An item is still in flight: call `complete` first.
    Busy,
    /// The scheduler found its own state for `vgpu` inconsistent (a bug: `what` says
    /// which invariant broke) and detached that vGPU, so that the others run on. Its
    /// queued `items` come back (in channel order, FIFO within a channel) for the caller
    /// to fail; its later work is refused with [`Error::UnknownVgpu`]. The caller logs it.
    Fault {
        vgpu: u64,
        what: &'static str,
        items: Vec<T>,
    },
}

/// An item `enqueue` refused, handed back with the reason.
#[derive(Debug)]
pub struct Rejected<T> {
    pub item: T,
    pub error: Error,
}

/// A new slice is chosen while at most this much expected work (or one item)
/// is still in flight, so that the engine does not drain at a switch.
const SWITCH_OVERLAP: Nanos = 100 * crate::US;

/// Scale of virtual time: one ns of GPU time at weight 1 is `VSCALE` units.
const VSCALE: u128 = 1 << 20;

/// An entry in one of the ordered sets: (key, arrival sequence, vGPU).
type Entry = (u128, u64, u64);

#[derive(Debug)]
struct Vgpu<T> {
    params: VgpuParams,
    runlist: Runlist<T>,
    meter: Meter,
    /// Strict policies: the share the policy grants.
    share: Option<Bucket>,
    /// Weighted: the cap.
    cap: Option<Bucket>,
    /// Weighted: the reservation.
    resv: Option<Bucket>,
    /// Virtual time: GPU time over the weight (`best_effort`, `weighted`)
    /// or over the share (`equal_share`, `fixed_share`).
    vtime: u128,
    main: Option<Entry>,
    throttle: Option<Entry>,
    reserve: Option<Entry>,
    latency: Option<Entry>,
    /// The length of its slices: the timeslice, or longer where switches
    /// cost the engine time ([`Scheduler::set_engine_switch_cost`]).
    slice: Nanos,
    /// Holds the current slice, or has a latency-class item in flight.
    busy: bool,
    /// Items of this vGPU picked and not yet completed.
    in_flight: u32,
    /// A VM is attached: `equal_share` divides among running vGPUs only.
    running: bool,
    /// Slices this vGPU was given.
    slices: u64,
    /// Of those, the slices that ended before the timeslice because the vGPU had
    /// no runnable item left (its driver had not submitted more yet).
    slices_dry: u64,
}

impl<T> Vgpu<T> {
    fn queued(&self) -> bool {
        self.main.is_some()
            || self.throttle.is_some()
            || self.reserve.is_some()
            || self.latency.is_some()
    }
    fn settle(&mut self, now: Nanos) {
        for b in [&mut self.share, &mut self.cap, &mut self.resv]
            .into_iter()
            .flatten()
        {
            b.settle(now);
        }
    }
    /// Tells the buckets whether the vGPU has work (banking rule, see `Bucket`).
    fn sync_waiting(&mut self, now: Nanos) {
        // Items in flight count as work: the vGPU is not idle while its
        // queue is momentarily empty because the engine holds its items.
        let w = self.busy || self.in_flight > 0 || self.runlist.has_work();
        for b in [&mut self.share, &mut self.cap, &mut self.resv]
            .into_iter()
            .flatten()
        {
            b.set_waiting(w, now);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Slice {
    vgpu: u64,
    used: Nanos,
}

/// A stretch of time the engine has had no item, from `since`.
#[derive(Clone, Copy, Debug)]
struct IdleSpan {
    since: Nanos,
    /// When runnable work was first queued in it.
    work_at: Option<Nanos>,
    /// Until when the policy held the engine idle (strict share, cap).
    held_until: Nanos,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    vgpu: u64,
    channel: u32,
    /// The GPU time it is expected to take (what the slice committed).
    estimate: Nanos,
}

/// Scheduler of one parent (physical GPU), generic over the work item type.
#[derive(Debug)]
pub struct Scheduler<T> {
    policy: ParentPolicy,
    pending: Option<ParentPolicy>,
    timeslice: Nanos,
    window: Nanos,
    vgpus: BTreeMap<u64, Vgpu<T>>,
    main: BTreeSet<Entry>,
    throttle: BTreeSet<Entry>,
    reserve: BTreeSet<Entry>,
    latency: BTreeSet<Entry>,
    current: Option<Slice>,
    /// Items picked and not completed, oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
    /// How many items may be in flight at once.
    depth: usize,
    /// A switch from one vGPU's work to another's costs the engine time.
    switch_cost: bool,
    seq: u64,
    vclock: u128,
    clock: Nanos,
    busy_total: Nanos,
    decisions: u64,
    /// The engine's current idle stretch, if it has no item.
    idle_span: Option<IdleSpan>,
    idle: Idle,
}

impl<T> Scheduler<T> {
    /// A scheduler with no vGPUs. An out-of-range policy is clamped to NVIDIA's ranges;
    /// use [`ParentPolicy::validate`] (or the config loader) to reject it instead.
    pub fn new(policy: ParentPolicy) -> Self {
        let mut s = Scheduler {
            policy: sanitize(policy),
            pending: None,
            timeslice: 0,
            window: 0,
            vgpus: BTreeMap::new(),
            main: BTreeSet::new(),
            throttle: BTreeSet::new(),
            reserve: BTreeSet::new(),
            latency: BTreeSet::new(),
            current: None,
            in_flight: std::collections::VecDeque::new(),
            depth: 1,
            switch_cost: false,
            seq: 0,
            vclock: 0,
            clock: 0,
            busy_total: 0,
            decisions: 0,
            idle_span: Some(IdleSpan {
                since: 0,
                work_at: None,
                held_until: 0,
            }),
            idle: Idle::default(),
        };
        s.retime();
        s
    }

    /// The policy in force (a pending reload is not in force yet).
    pub fn policy(&self) -> ParentPolicy {
        self.policy
    }

    /// A policy waiting for the next slice boundary.
    pub fn pending_policy(&self) -> Option<ParentPolicy> {
        self.pending
    }

    /// Timeslice in force.
    pub fn timeslice(&self) -> Nanos {
        self.timeslice
    }

    /// Averaging window in force.
    pub fn window(&self) -> Nanos {
        self.window
    }

    /// Number of attached vGPUs.
    pub fn len(&self) -> usize {
        self.vgpus.len()
    }

    /// Whether no vGPU is attached.
    pub fn is_empty(&self) -> bool {
        self.vgpus.is_empty()
    }

    /// The oldest item in flight (picked, not completed), if any.
    pub fn in_flight(&self) -> Option<(u64, u32)> {
        self.in_flight.front().map(|f| (f.vgpu, f.channel))
    }

    /// How many items are in flight.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// Let up to `depth` (at least 1) picked items be in flight at once: the engine
    /// keeps that many queued, so it never waits for the caller between items. With
    /// 1 (the default) `pick` answers [`Pick::Busy`] until the item completes.
    pub fn set_engine_depth(&mut self, depth: usize) {
        self.depth = depth.max(1);
    }

    /// Whether going from one vGPU's work to another's costs the engine time
    /// that no item is charged for (a GPU's context switch). Where it does,
    /// no timeslice is configured and no latency-class vGPU is running, each
    /// running vGPU's slice is stretched by its share
    /// ([`ParentPolicy::stretched_slice`]), so that fewer switches divide the
    /// same shares.
    pub fn set_engine_switch_cost(&mut self, costs: bool) {
        if self.switch_cost != costs {
            self.switch_cost = costs;
            self.retime();
            self.rebuild(self.clock);
        }
    }

    /// The length of `vgpu`'s slices now.
    pub fn slice_of(&self, vgpu: u64) -> Option<Nanos> {
        self.vgpus.get(&vgpu).map(|v| v.slice)
    }

    /// The share of GPU time the policy grants `vgpu` now: strict policies' share, the
    /// reservation under `weighted`, `None` otherwise.
    pub fn configured_share(&self, vgpu: u64) -> Option<f64> {
        let v = self.vgpus.get(&vgpu)?;
        match self.policy.kind {
            PolicyKind::EqualShare | PolicyKind::FixedShare => Some(self.share_of(v)),
            PolicyKind::Weighted => v.params.reservation,
            PolicyKind::BestEffort => None,
        }
    }

    /// Attaches a vGPU (it starts with an empty runlist). Under `equal_share` every
    /// vGPU's share changes to `1/N` at once.
    pub fn add_vgpu(&mut self, vgpu: u64, p: VgpuParams, now: Nanos) -> Result<()> {
        p.validate()?;
        if self.vgpus.contains_key(&vgpu) {
            return Err(Error::DuplicateVgpu(vgpu));
        }
        let now = self.tick(now);
        self.vgpus.insert(
            vgpu,
            Vgpu {
                params: p,
                runlist: Runlist::default(),
                meter: Meter::default(),
                share: None,
                cap: None,
                resv: None,
                vtime: self.vclock,
                main: None,
                throttle: None,
                reserve: None,
                latency: None,
                slice: self.timeslice,
                busy: false,
                in_flight: 0,
                running: true,
                slices: 0,
                slices_dry: 0,
            },
        );
        self.retime();
        self.rebuild(now);
        Ok(())
    }

    /// Detaches a vGPU and returns its queued items (in channel order, FIFO within a
    /// channel). An item of it still in flight stays with the caller; its `complete`
    /// then reports [`Error::UnknownVgpu`].
    pub fn remove_vgpu(&mut self, vgpu: u64, now: Nanos) -> Vec<T> {
        let now = self.tick(now);
        if !self.vgpus.contains_key(&vgpu) {
            return Vec::new();
        }
        self.dequeue(vgpu);
        if self.current.is_some_and(|c| c.vgpu == vgpu) {
            self.current = None;
        }
        let Some(mut v) = self.vgpus.remove(&vgpu) else {
            return Vec::new();
        };
        self.retime();
        self.rebuild(now);
        v.runlist.drain_all()
    }

    /// Whether a VM is attached to `vgpu` (a vGPU starts as running).
    /// `equal_share` divides the GPU among running vGPUs, as NVIDIA's does;
    /// the shares change at once.
    pub fn set_running(&mut self, vgpu: u64, running: bool, now: Nanos) -> Result<()> {
        let now = self.tick(now);
        let v = self.vgpus.get_mut(&vgpu).ok_or(Error::UnknownVgpu(vgpu))?;
        if v.running != running {
            v.running = running;
            self.retime();
            self.rebuild(now);
        }
        Ok(())
    }

    /// Changes a vGPU's parameters (config reload); takes effect at once.
    pub fn set_params(&mut self, vgpu: u64, p: VgpuParams, now: Nanos) -> Result<()> {
        p.validate()?;
        let now = self.tick(now);
        let v = self.vgpus.get_mut(&vgpu).ok_or(Error::UnknownVgpu(vgpu))?;
        v.params = p;
        self.retime();
        self.rebuild(now);
        Ok(())
    }

    /// Guest runlist submit: the channels of `vgpu` that may run, in order, each with
    /// its timeslice. Channels not on the runlist keep their items but do not run.
    pub fn set_runlist(&mut self, vgpu: u64, entries: &[(u32, Nanos)]) -> Result<()> {
        let v = self.vgpus.get_mut(&vgpu).ok_or(Error::UnknownVgpu(vgpu))?;
        v.runlist.set(entries);
        let now = self.clock;
        self.refresh(vgpu, now);
        Ok(())
    }

    /// Appends a work item to a channel's FIFO. Items of one channel always run in the
    /// order they were enqueued.
    pub fn enqueue(
        &mut self,
        vgpu: u64,
        channel: u32,
        item: T,
        now: Nanos,
    ) -> Result<(), Rejected<T>> {
        let now = self.tick(now);
        let Some(v) = self.vgpus.get_mut(&vgpu) else {
            return Err(Rejected {
                item,
                error: Error::UnknownVgpu(vgpu),
            });
        };
        v.runlist.push(channel, item, now);
        self.refresh(vgpu, now);
        Ok(())
    }

    /// Marks a channel blocked (e.g. waiting on a semaphore acquire) or runnable again.
    /// A blocked channel keeps its items and is skipped; the rest of its vGPU runs.
    pub fn set_channel_blocked(
        &mut self,
        vgpu: u64,
        channel: u32,
        blocked: bool,
        now: Nanos,
    ) -> Result<()> {
        let now = self.tick(now);
        let v = self.vgpus.get_mut(&vgpu).ok_or(Error::UnknownVgpu(vgpu))?;
        v.runlist.set_blocked(channel, blocked);
        self.refresh(vgpu, now);
        Ok(())
    }

    /// Fault or channel reset: empties the channel and returns its items in order.
    pub fn drop_channel(&mut self, vgpu: u64, channel: u32) -> Vec<T> {
        let Some(v) = self.vgpus.get_mut(&vgpu) else {
            return Vec::new();
        };
        let items = v.runlist.drain(channel);
        let now = self.clock;
        self.refresh(vgpu, now);
        items
    }

    /// Live reload: the new policy takes effect at the next slice boundary (at once if
    /// the GPU is between slices). Queued items are kept, in order.
    pub fn set_policy(&mut self, policy: ParentPolicy, now: Nanos) -> Result<()> {
        policy.validate()?;
        let now = self.tick(now);
        self.pending = Some(policy);
        if self.current.is_none() && self.in_flight.is_empty() {
            self.apply_pending(now);
        }
        Ok(())
    }

    /// Chooses the next item for the GPU. See [`Pick`].
    pub fn pick(&mut self, now: Nanos) -> Pick<T> {
        if self.in_flight.len() >= self.depth {
            return Pick::Busy;
        }
        let now = self.tick(now);
        if self.current.is_none() {
            self.apply_pending(now);
        }
        // 1. latency class: at every command boundary.
        if let Some(id) = self.latency_ready(now) {
            self.dequeue(id);
            return self.dispatch(id, now);
        }
        // While a latency-class vGPU runs, the others have one item at the
        // engine at a time: its next item then waits for at most one piece
        // of theirs, not for a queue of them (a GPU runs a context's queued
        // kernels to the end of its timeslice before it switches).
        if self.latency_guard() && self.in_flight.iter().any(|f| !self.is_latency(f.vgpu)) {
            return Pick::Busy;
        }
        // 2. the slice in progress continues to its end: its used time plus what
        // its items in flight are expected to take.
        if let Some(cur) = self.current {
            let committed = cur.used + self.committed(cur.vgpu);
            if let Some(v) = self.vgpus.get_mut(&cur.vgpu) {
                let ts = v.slice;
                let limit_ok = !matches!(&v.cap, Some(b) if !b.eligible(now));
                let has_work = v.runlist.has_work();
                if has_work && committed < ts && limit_ok {
                    return self.dispatch(cur.vgpu, now);
                }
                if !has_work && committed < ts {
                    v.slices_dry += 1;
                }
            }
            self.end_slice(now);
            if self.apply_pending(now) {
                if let Some(id) = self.latency_ready(now) {
                    self.dequeue(id);
                    return self.dispatch(id, now);
                }
            }
        }
        // 3. a new slice, chosen once what is still in flight is one item or
        // at most SWITCH_OVERLAP of expected work: the switch overlaps it, and
        // the choice sees all but that much time charged.
        // A vGPU that is the only one that could be chosen is not drained
        // for a switch to itself: alone, it keeps its queue as if native, up
        // to a slice of expected work (not the engine's whole depth), so that
        // a vGPU that becomes runnable waits about a slice for its turn.
        let queued: Nanos = self.in_flight.iter().map(|f| f.estimate).sum();
        if self.in_flight.len() > 1
            && queued > SWITCH_OVERLAP
            && (queued >= self.timeslice || !self.sole_candidate())
        {
            return Pick::Busy;
        }
        let selected = match self.select(now) {
            Ok(id) => id,
            Err(Breach { vgpu, what }) => return self.fault(vgpu, what),
        };
        if let Some(id) = selected {
            self.dequeue(id);
            self.current = Some(Slice { vgpu: id, used: 0 });
            if let Some(v) = self.vgpus.get_mut(&id) {
                v.slices += 1;
            }
            return self.dispatch(id, now);
        }
        // 4. nothing may run now.
        let mut next = Nanos::MAX;
        for set in [&self.main, &self.throttle, &self.latency] {
            if let Some(e) = set.first() {
                next = next.min(e.0.min(Nanos::MAX as u128) as Nanos);
            }
        }
        if next == Nanos::MAX {
            Pick::Empty
        } else {
            let until = next.max(now);
            if let Some(span) = &mut self.idle_span {
                span.held_until = span.held_until.max(until);
            }
            Pick::IdleUntil(until)
        }
    }

    /// Reports that the item picked last (from `vgpu`/`channel`) finished after
    /// `gpu_time` ns of measured execution, at `now`. The time is charged to the vGPU,
    /// the channel and the current slice.
    pub fn complete(&mut self, vgpu: u64, channel: u32, gpu_time: Nanos, now: Nanos) -> Result<()> {
        let Some(at) = self
            .in_flight
            .iter()
            .position(|f| f.vgpu == vgpu && f.channel == channel)
        else {
            return Err(Error::NotInFlight { vgpu, channel });
        };
        self.in_flight.remove(at);
        let now = self.tick(now);
        if self.in_flight.is_empty() {
            let runnable = !(self.main.is_empty()
                && self.throttle.is_empty()
                && self.reserve.is_empty()
                && self.latency.is_empty())
                || self
                    .current
                    .and_then(|c| self.vgpus.get(&c.vgpu))
                    .is_some_and(|v| v.runlist.has_work());
            self.idle_span = Some(IdleSpan {
                since: now,
                work_at: runnable.then_some(now),
                held_until: now,
            });
        }
        let window = self.window;
        let kind = self.policy.kind;
        let Some(v) = self.vgpus.get_mut(&vgpu) else {
            return Err(Error::UnknownVgpu(vgpu));
        };
        v.meter.record(now, gpu_time, window);
        if let Some(m) = v.runlist.meter_mut(channel) {
            m.record(now, gpu_time, window);
        }
        for b in [&mut v.share, &mut v.cap, &mut v.resv]
            .into_iter()
            .flatten()
        {
            b.charge(now, gpu_time);
        }
        if kind.orders_by_virtual_time() {
            v.vtime += gpu_time as u128 * VSCALE / kind.weight(&v.params) as u128;
        } else if let Some(b) = &v.share {
            v.vtime += (gpu_time as f64 * VSCALE as f64 / b.rate.max(1e-9)) as u128;
        }
        v.runlist.charge(channel, gpu_time);
        v.in_flight = v.in_flight.saturating_sub(1);
        let idle = v.in_flight == 0;
        self.busy_total += gpu_time;
        match &mut self.current {
            Some(c) if c.vgpu == vgpu => c.used += gpu_time,
            _ if idle => {
                v.busy = false;
                self.refresh(vgpu, now);
            }
            _ => {}
        }
        Ok(())
    }

    /// Accounting snapshot at `now`.
    pub fn stats(&self, now: Nanos) -> ParentStats {
        let w = self.window;
        let vgpus = self
            .vgpus
            .iter()
            .map(|(&id, v)| VgpuShareStats {
                vgpu: id,
                class: v.params.class,
                configured_share: self.configured_share(id),
                cap: v.params.cap.filter(|_| self.policy.kind.has_limits()),
                total: v.meter.total,
                share_window: v.meter.share_in_window(now, w),
                commands: v.meter.commands,
                queue_depth: v.runlist.queued(),
                wait: v.meter.wait,
                slice: v.slice,
                slices: v.slices,
                slices_dry: v.slices_dry,
                channels: v
                    .runlist
                    .channels()
                    .map(|(c, ch)| ChannelStats {
                        channel: c,
                        on_runlist: ch.on_runlist(),
                        blocked: ch.blocked(),
                        total: ch.meter.total,
                        share_window: ch.meter.share_in_window(now, w),
                        commands: ch.meter.commands,
                        queue_depth: ch.depth(),
                        wait: ch.meter.wait,
                    })
                    .collect(),
            })
            .collect();
        ParentStats {
            now,
            policy: self.policy.kind,
            timeslice: self.timeslice,
            window: w,
            busy: self.busy_total,
            decisions: self.decisions,
            idle: self.idle,
            vgpus,
        }
    }

    // ---- internals ----

    fn tick(&mut self, now: Nanos) -> Nanos {
        self.clock = self.clock.max(now);
        self.clock
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn share_of(&self, v: &Vgpu<T>) -> f64 {
        match self.policy.kind {
            PolicyKind::EqualShare => {
                let running = self.vgpus.values().filter(|v| v.running).count();
                1.0 / running.max(1) as f64
            }
            _ => v.params.fixed_share,
        }
    }

    /// Recomputes timeslice and window from the policy and the attached
    /// types, and each vGPU's slice: the timeslice, or stretched by the
    /// vGPU's share (its weight over the running vGPUs' under the
    /// non-strict policies) where the engine's switches cost it time, no
    /// timeslice is configured and no latency-class vGPU is running
    /// ([`ParentPolicy::stretched_slice`]).
    fn retime(&mut self) {
        let min_share = self
            .vgpus
            .values()
            .map(|v| v.params.fixed_share)
            .reduce(f64::min);
        let ts = self.policy.effective_timeslice(min_share);
        self.timeslice = ts;
        self.window = self.policy.effective_window(ts);
        let stretch = self.switch_cost && !self.latency_guard();
        let kind = self.policy.kind;
        let weights: f64 = self
            .vgpus
            .values()
            .filter(|v| v.running)
            .map(|v| f64::from(kind.weight(&v.params)))
            .sum();
        let slices: Vec<(u64, Nanos)> = self
            .vgpus
            .iter()
            .map(|(&id, v)| {
                let share = if kind.is_strict() {
                    self.share_of(v)
                } else {
                    f64::from(kind.weight(&v.params)) / weights.max(1.0)
                };
                let slice = if stretch && v.running {
                    self.policy.stretched_slice(ts, share)
                } else {
                    ts
                };
                (id, slice)
            })
            .collect();
        for (id, slice) in slices {
            if let Some(v) = self.vgpus.get_mut(&id) {
                v.slice = slice;
            }
        }
    }

    fn apply_pending(&mut self, now: Nanos) -> bool {
        let Some(p) = self.pending.take() else {
            return false;
        };
        if p.kind != self.policy.kind {
            // Virtual time earned under another policy (or none) is not
            // carried over: every vGPU starts level with the clock.
            let vclock = self.vclock;
            self.vgpus.values_mut().for_each(|v| v.vtime = vclock);
        }
        self.policy = sanitize(p);
        self.retime();
        self.rebuild(now);
        true
    }

    /// Re-derives every vGPU's buckets and set entries from the policy in force.
    fn rebuild(&mut self, now: Nanos) {
        let order: Vec<u64> = {
            // keep the relative order of queued vGPUs
            let mut q: Vec<Entry> = self
                .main
                .iter()
                .chain(self.throttle.iter())
                .chain(self.latency.iter())
                .copied()
                .collect();
            q.sort_by_key(|e| (e.1, e.2));
            let mut ids: Vec<u64> = q.into_iter().map(|e| e.2).collect();
            ids.dedup();
            let rest: Vec<u64> = self
                .vgpus
                .keys()
                .copied()
                .filter(|k| !ids.contains(k))
                .collect();
            ids.extend(rest);
            ids
        };
        self.main.clear();
        self.throttle.clear();
        self.reserve.clear();
        self.latency.clear();
        let kind = self.policy.kind;
        let shares: BTreeMap<u64, f64> = self
            .vgpus
            .iter()
            .map(|(&k, v)| (k, self.share_of(v)))
            .collect();
        for (id, v) in self.vgpus.iter_mut() {
            let ts = v.slice;
            v.main = None;
            v.throttle = None;
            v.reserve = None;
            v.latency = None;
            let retune =
                |b: &mut Option<Bucket>, rate: Option<f64>, banks: bool| match (b.as_mut(), rate) {
                    (Some(b), Some(r)) => b.retune(r, ts, now),
                    (None, Some(r)) => *b = Some(Bucket::new(r, ts, now, banks)),
                    (_, None) => *b = None,
                };
            let strict = kind.is_strict();
            let limits = kind.has_limits();
            retune(&mut v.share, strict.then(|| shares[id]), true);
            retune(&mut v.cap, v.params.cap.filter(|_| limits), false);
            retune(&mut v.resv, v.params.reservation.filter(|_| limits), true);
            v.sync_waiting(now);
        }
        for id in order {
            self.refresh(id, now);
        }
    }

    /// Puts a vGPU into / takes it out of the sets after its work or state changed.
    fn refresh(&mut self, id: u64, now: Nanos) {
        let Some(v) = self.vgpus.get_mut(&id) else {
            return;
        };
        v.sync_waiting(now);
        if let Some(span) = &mut self.idle_span {
            if span.work_at.is_none() && v.runlist.has_work() {
                span.work_at = Some(now);
            }
        }
        if v.busy {
            return;
        }
        match (v.runlist.has_work(), v.queued()) {
            (true, false) => self.enqueue_sets(id, now),
            (false, true) => self.dequeue(id),
            _ => {}
        }
    }

    fn enqueue_sets(&mut self, id: u64, now: Nanos) {
        let seq = self.next_seq();
        let kind = self.policy.kind;
        let vclock = self.vclock;
        // `refresh`, the only caller, has found the vGPU.
        let Some(v) = self.vgpus.get_mut(&id) else {
            return;
        };
        let t = |b: &Option<Bucket>| b.as_ref().map_or(now, |b| b.eligible_at(now)) as u128;
        if v.params.class == LatencyClass::Latency {
            let key = if kind.is_strict() {
                t(&v.share)
            } else {
                t(&v.cap)
            };
            let e = (key, seq, id);
            v.latency = Some(e);
            self.latency.insert(e);
            return;
        }
        // Held back until its credit allows (a strict share, a cap), then
        // ordered by virtual time.
        let limit = t(if kind.is_strict() { &v.share } else { &v.cap });
        if limit > now as u128 {
            let e = (limit, seq, id);
            v.throttle = Some(e);
            self.throttle.insert(e);
        } else {
            // Only a vGPU that was idle (nothing queued, nothing in
            // flight) starts again from the virtual clock.
            if v.in_flight == 0 {
                v.vtime = v.vtime.max(vclock);
            }
            let e = (v.vtime, seq, id);
            v.main = Some(e);
            self.main.insert(e);
        }
        if v.resv.is_some() {
            let e = (t(&v.resv), seq, id);
            v.reserve = Some(e);
            self.reserve.insert(e);
        }
    }

    fn dequeue(&mut self, id: u64) {
        let Some(v) = self.vgpus.get_mut(&id) else {
            return;
        };
        if let Some(e) = v.main.take() {
            self.main.remove(&e);
        }
        if let Some(e) = v.throttle.take() {
            self.throttle.remove(&e);
        }
        if let Some(e) = v.reserve.take() {
            self.reserve.remove(&e);
        }
        if let Some(e) = v.latency.take() {
            self.latency.remove(&e);
        }
    }

    /// A latency-class vGPU is running (a VM attached to it).
    fn latency_guard(&self) -> bool {
        self.vgpus
            .values()
            .any(|v| v.running && v.params.class == LatencyClass::Latency)
    }

    fn is_latency(&self, vgpu: u64) -> bool {
        self.vgpus
            .get(&vgpu)
            .is_some_and(|v| v.params.class == LatencyClass::Latency)
    }

    fn latency_ready(&self, now: Nanos) -> Option<u64> {
        self.latency
            .first()
            .filter(|e| e.0 <= now as u128)
            .map(|e| e.2)
    }

    /// The slice ends. Its vGPU may be chosen again at once, even while its
    /// last items still run: their time is charged when they complete.
    fn end_slice(&mut self, now: Nanos) {
        if let Some(cur) = self.current.take() {
            if let Some(v) = self.vgpus.get_mut(&cur.vgpu) {
                v.busy = false;
            }
            self.refresh(cur.vgpu, now);
        }
    }

    /// The vGPU whose items are in flight is the only one any set holds,
    /// eligible now: choosing the next slice cannot switch the engine.
    fn sole_candidate(&self) -> bool {
        let Some(v) = self.in_flight.front().map(|f| f.vgpu) else {
            return false;
        };
        self.in_flight.iter().all(|f| f.vgpu == v)
            && self.throttle.is_empty()
            && [&self.main, &self.reserve, &self.latency]
                .iter()
                .all(|set| set.iter().all(|e| e.2 == v))
            && !self.main.is_empty()
    }

    /// GPU time the items of `vgpu` in flight are expected to take.
    fn committed(&self, vgpu: u64) -> Nanos {
        self.in_flight
            .iter()
            .filter(|f| f.vgpu == vgpu)
            .map(|f| f.estimate)
            .sum()
    }

    /// The vGPU to start a new slice, per policy; O(log n) (amortized for releases).
    /// A set entry of a vGPU that is not attached is a [`Breach`].
    fn select(&mut self, now: Nanos) -> Result<Option<u64>, Breach> {
        let now_k = now as u128;
        // Virtual time. Shares and caps whose credit came back: into the
        // virtual-time order.
        while let Some(&e) = self.throttle.first() {
            if e.0 > now_k {
                break;
            }
            self.throttle.remove(&e);
            let Some(v) = self.vgpus.get_mut(&e.2) else {
                return Err(Breach {
                    vgpu: e.2,
                    what: "a detached vGPU is in the throttled set",
                });
            };
            v.throttle = None;
            v.vtime = v.vtime.max(self.vclock);
            let m = (v.vtime, e.1, e.2);
            v.main = Some(m);
            self.main.insert(m);
        }
        if let Some(e) = self.reserve.first().filter(|e| e.0 <= now_k) {
            return Ok(Some(e.2));
        }
        let Some(e) = self.main.first() else {
            return Ok(None);
        };
        self.vclock = self.vclock.max(e.0);
        Ok(Some(e.2))
    }

    /// Hands the GPU the next item of `id`, which the policy chose because it has work.
    fn dispatch(&mut self, id: u64, now: Nanos) -> Pick<T> {
        let Some(v) = self.vgpus.get_mut(&id) else {
            return self.fault(id, "the vGPU chosen to run is not attached");
        };
        let Some((channel, item, at)) = v.runlist.take_next() else {
            return self.fault(id, "the vGPU chosen to run has no runnable item");
        };
        if let Some(span) = self.idle_span.take() {
            // The engine's idle stretch ends: nothing queued until the work
            // came, then held by the policy, then waiting for the dispatcher.
            let work = span.work_at.unwrap_or(now).clamp(span.since, now);
            let held = span.held_until.clamp(work, now);
            self.idle.empty += work - span.since;
            self.idle.held += held - work;
            self.idle.late += now - held;
        }
        let wait = now.saturating_sub(at);
        v.meter.record_wait(wait);
        if let Some(m) = v.runlist.meter_mut(channel) {
            m.record_wait(wait);
        }
        v.settle(now);
        v.busy = true;
        v.in_flight += 1;
        // What the item will take: its channel's average so far, else its
        // vGPU's, else a whole slice (so an unmeasured vGPU commits one item).
        let estimate = v
            .runlist
            .meter_mut(channel)
            .and_then(|m| m.total.checked_div(m.commands))
            .or(v.meter.total.checked_div(v.meter.commands))
            .unwrap_or(self.timeslice);
        self.in_flight.push_back(InFlight {
            vgpu: id,
            channel,
            estimate,
        });
        self.decisions += 1;
        Pick::Run {
            vgpu: id,
            channel,
            item,
        }
    }
}

/// A broken invariant found for one vGPU.
struct Breach {
    vgpu: u64,
    what: &'static str,
}

impl<T> Scheduler<T> {
    /// A broken invariant concerning `vgpu`: every trace of it leaves the scheduler
    /// (set entries, the slice it held, the vGPU itself), so that the other vGPUs run
    /// on, and its queued items go back to the caller with [`Pick::Fault`].
    fn fault(&mut self, vgpu: u64, what: &'static str) -> Pick<T> {
        for set in [
            &mut self.main,
            &mut self.throttle,
            &mut self.reserve,
            &mut self.latency,
        ] {
            set.retain(|e| e.2 != vgpu);
        }
        if let Some(v) = self.vgpus.get_mut(&vgpu) {
            v.main = None;
            v.throttle = None;
            v.reserve = None;
            v.latency = None;
        }
        if self.current.is_some_and(|c| c.vgpu == vgpu) {
            self.current = None;
        }
        let now = self.clock;
        let items = self.remove_vgpu(vgpu, now);
        Pick::Fault { vgpu, what, items }
    }
}

fn sanitize(mut p: ParentPolicy) -> ParentPolicy {
    p.averaging_factor = p
        .averaging_factor
        .clamp(1, crate::policy::MAX_AVERAGING_FACTOR);
    p.timeslice = p
        .timeslice
        .map(|t| t.clamp(crate::policy::MIN_TIMESLICE, crate::policy::MAX_TIMESLICE));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_vgpus(kind: PolicyKind) -> Scheduler<u32> {
        let mut s = Scheduler::new(ParentPolicy {
            kind,
            ..ParentPolicy::default()
        });
        for id in [1, 2] {
            s.add_vgpu(id, VgpuParams::for_type(2), 0).unwrap();
            s.set_runlist(id, &[(0, 1_000_000)]).unwrap();
        }
        s
    }

    /// How many items `pick` hands out before it says `Busy`, none completing.
    fn picked_until_busy(s: &mut Scheduler<u32>, now: Nanos) -> Vec<u64> {
        let mut got = Vec::new();
        while let Pick::Run { vgpu, .. } = s.pick(now) {
            got.push(vgpu);
        }
        got
    }

    #[test]
    fn a_running_latency_class_vgpu_leaves_the_others_one_item_at_the_engine() {
        let mut s = two_vgpus(PolicyKind::BestEffort);
        s.set_engine_depth(64);
        for i in 0..10 {
            s.enqueue(1, 0, i, 0).unwrap();
        }
        // No latency class: vGPU 1 fills its slice (1 ms timeslices of 10 µs
        // estimates: more than one item at once).
        let before = picked_until_busy(&mut s, 0);
        assert!(before.len() > 1, "{before:?}");
        for _ in &before {
            s.complete(1, 0, 10_000, 100_000).unwrap();
        }
        let lat = VgpuParams {
            class: LatencyClass::Latency,
            ..VgpuParams::for_type(2)
        };
        s.set_params(2, lat, 100_000).unwrap();
        for i in 0..10 {
            s.enqueue(1, 0, 100 + i, 100_000).unwrap();
        }
        // vGPU 2 is latency-class and running: vGPU 1 gets one item at a time.
        assert_eq!(picked_until_busy(&mut s, 100_000), [1]);
        // The latency-class item still goes at once, beside it.
        s.enqueue(2, 0, 7, 100_000).unwrap();
        assert_eq!(picked_until_busy(&mut s, 100_000), [2]);
        // Once vGPU 2 has no VM, vGPU 1 fills the engine again.
        s.complete(1, 0, 10_000, 120_000).unwrap();
        s.complete(2, 0, 10_000, 120_000).unwrap();
        s.set_running(2, false, 120_000).unwrap();
        assert!(picked_until_busy(&mut s, 120_000).len() > 1);
    }

    /// A vGPU alone on its parent, fed 100 µs items: after each completion
    /// and refill, the expected work queued at the engine never falls to
    /// the switch threshold at its slices' ends (it is not drained for a
    /// switch to itself), nor grows past a slice and an item once its
    /// items' time is known (the engine takes 64), under a work-conserving
    /// and a strict policy.
    #[test]
    fn a_vgpu_alone_keeps_its_queue_full_across_slice_ends() {
        for kind in [PolicyKind::BestEffort, PolicyKind::EqualShare] {
            let mut s = Scheduler::new(ParentPolicy {
                kind,
                ..ParentPolicy::default()
            });
            s.set_engine_depth(64);
            s.add_vgpu(1, VgpuParams::for_type(2), 0).unwrap();
            s.set_runlist(1, &[(0, 0)]).unwrap();
            let ts = s.timeslice();
            let unit = 100 * crate::US;
            for i in 0..400 {
                s.enqueue(1, 0, i, 0).unwrap();
            }
            let (mut now, mut lowest, mut highest, mut slices) = (0, Nanos::MAX, 0, 0);
            for step in 0..300 {
                while let Pick::Run { .. } = s.pick(now) {}
                let queued: Nanos = s.in_flight.iter().map(|f| f.estimate).sum();
                // Once its items' time is known (before, each is reckoned a
                // whole slice, and two may be queued).
                if step > 2 {
                    lowest = lowest.min(queued);
                    highest = highest.max(queued);
                }
                now += unit;
                s.complete(1, 0, unit, now).unwrap();
                slices = s.vgpus[&1].slices;
            }
            assert!(
                slices > 5,
                "{kind:?}: the run spans several slices ({slices})"
            );
            assert!(
                lowest >= ts - 2 * unit,
                "{kind:?}: queued fell to {lowest} ns at a slice end (timeslice {ts})"
            );
            assert!(
                highest <= ts + unit,
                "{kind:?}: {highest} ns queued at the engine, more than a slice (timeslice {ts})"
            );
        }
    }

    #[test]
    fn engine_idle_time_is_split_into_no_work_held_and_late() {
        let mut s = two_vgpus(PolicyKind::FixedShare);
        // Nothing until 100; the item is picked at 150: 100 empty, 50 late.
        assert_eq!(s.pick(10), Pick::Empty);
        s.enqueue(1, 0, 1, 100).unwrap();
        assert!(matches!(s.pick(150), Pick::Run { vgpu: 1, .. }));
        let i = s.stats(150).idle;
        assert_eq!((i.empty, i.held, i.late), (100, 0, 50));
        // It runs 4 ms: vGPU 1 (share 1/2) owes 2 ms and may run again at
        // 4.15 + 4 ms = 8.15 ms. Work queued at once is held by the policy
        // until then, and picked 20 µs late.
        s.complete(1, 0, 4_000_000, 4_000_150).unwrap();
        s.enqueue(1, 0, 2, 4_000_150).unwrap();
        let Pick::IdleUntil(t) = s.pick(4_000_150) else {
            panic!("vGPU 1 is in debt")
        };
        assert!(matches!(s.pick(t + 20_000), Pick::Run { vgpu: 1, .. }));
        let i = s.stats(t + 20_000).idle;
        assert_eq!((i.empty, i.held, i.late), (100, t - 4_000_150, 50 + 20_000));
        // No idle time while an item is in flight.
        s.enqueue(1, 0, 3, t + 30_000).unwrap();
        assert_eq!(s.stats(t + 30_000).idle, i);
    }

    #[test]
    fn a_chosen_vgpu_without_work_is_faulted_alone() {
        let mut s = two_vgpus(PolicyKind::BestEffort);
        s.enqueue(1, 0, 10, 0).unwrap();
        // Break the invariant: vGPU 2 (no work) first in the ready set.
        s.main.insert((0, 0, 2));
        match s.pick(1) {
            Pick::Fault { vgpu: 2, items, .. } => assert!(items.is_empty()),
            p => panic!("{p:?}"),
        }
        assert!(!s.vgpus.contains_key(&2), "vGPU 2 left the scheduler");
        assert!(s.enqueue(2, 0, 20, 2).is_err(), "its later work is refused");
        let Pick::Run {
            vgpu: 1, item: 10, ..
        } = s.pick(2)
        else {
            panic!("vGPU 1 runs on")
        };
        s.complete(1, 0, 5, 3).unwrap();
        assert_eq!(s.pick(4), Pick::Empty);
    }

    #[test]
    fn a_stale_entry_of_a_detached_vgpu_faults_it_not_the_others() {
        let mut s = two_vgpus(PolicyKind::Weighted);
        s.enqueue(1, 0, 10, 0).unwrap();
        s.enqueue(1, 0, 11, 0).unwrap();
        s.throttle.insert((0, 0, 99));
        match s.pick(1) {
            Pick::Fault { vgpu: 99, .. } => {}
            p => panic!("{p:?}"),
        }
        let Pick::Run {
            vgpu: 1, item: 10, ..
        } = s.pick(2)
        else {
            panic!("vGPU 1 runs on")
        };
        // Faulting the vGPU that holds the slice ends the slice; its items come back.
        s.complete(1, 0, 5, 3).unwrap();
        let dropped = s.fault(1, "test");
        assert_eq!(
            dropped,
            Pick::Fault {
                vgpu: 1,
                what: "test",
                items: vec![11]
            }
        );
        assert_eq!(s.pick(4), Pick::Empty);
    }
}
