//! A deterministic simulator: drives the real [`Scheduler`] on a virtual clock with
//! synthetic vGPUs.
//!
//! The simulated GPU runs one item at a time: it calls `pick`, advances the clock by
//! the item's length (its "measured GPU time"), delivers the events that happened
//! meanwhile (arrivals, vGPUs starting or stopping, policy reloads) with their own
//! timestamps, then calls `complete`. When the scheduler holds the GPU idle
//! (`IdleUntil`) or has nothing (`Empty`), the clock jumps to the next event.
//!
//! Workloads: saturating (a constant queue depth per channel, refilled on completion),
//! bursty (saturating during `on`, silent during `off`), periodic (one item every
//! `period`, open loop) and idle. Command lengths are fixed or drawn from a seeded
//! generator (uniform or log-uniform), so a run is a pure function of its inputs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::{Nanos, ParentPolicy, Pick, Scheduler, VgpuParams};

/// A simulated work item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimItem {
    pub vgpu: u64,
    pub channel: u32,
    /// Per-channel sequence number, to check FIFO order.
    pub seq: u64,
    /// Execution time the simulated GPU will take (and report).
    pub len: Nanos,
    /// When it was submitted.
    pub submitted: Nanos,
}

/// Command length distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CmdLen {
    Fixed(Nanos),
    /// Uniform in `[lo, hi]`.
    Uniform(Nanos, Nanos),
    /// Log-uniform in `[lo, hi]` (as many 10–100 µs commands as 1–10 ms ones).
    LogUniform(Nanos, Nanos),
}

/// What a synthetic vGPU submits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
    /// Always `depth` items queued per channel.
    Saturating { depth: usize },
    /// Saturating for `on`, then nothing for `off`, repeating.
    Bursty { on: Nanos, off: Nanos, depth: usize },
    /// One item every `period`, first at `phase` after start, round robin on channels.
    Periodic { period: Nanos, phase: Nanos },
    /// Attached, submits nothing.
    Idle,
}

/// A synthetic vGPU.
#[derive(Clone, Debug, PartialEq)]
pub struct SimVgpu {
    pub key: u64,
    pub params: VgpuParams,
    pub workload: Workload,
    pub cmd: CmdLen,
    /// Guest runlist: channels and their timeslices.
    pub runlist: Vec<(u32, Nanos)>,
    /// Attach time.
    pub start: Nanos,
    /// Detach time.
    pub stop: Option<Nanos>,
}

impl SimVgpu {
    /// A saturating vGPU with one channel (timeslice 1 ms), attached at 0.
    pub fn saturating(key: u64, params: VgpuParams, cmd: CmdLen) -> Self {
        SimVgpu {
            key,
            params,
            workload: Workload::Saturating { depth: 2 },
            cmd,
            runlist: vec![(0, crate::MS)],
            start: 0,
            stop: None,
        }
    }
    /// Same vGPU with another workload.
    pub fn with_workload(mut self, w: Workload) -> Self {
        self.workload = w;
        self
    }
    /// Same vGPU attached during `[start, stop)`.
    pub fn during(mut self, start: Nanos, stop: Option<Nanos>) -> Self {
        self.start = start;
        self.stop = stop;
        self
    }
    /// Same vGPU with another runlist.
    pub fn with_runlist(mut self, rl: Vec<(u32, Nanos)>) -> Self {
        self.runlist = rl;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Start(usize),
    Stop(usize),
    Arrival(usize),
    BurstOn(usize),
    BurstOff(usize),
    Policy(usize),
}

/// Per-vGPU results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimResult {
    /// GPU time executed.
    pub busy: Nanos,
    /// Items completed.
    pub completed: u64,
    /// Largest (dispatch − submit) of any item.
    pub max_wait: Nanos,
    /// Items executed out of per-channel submission order (must stay 0).
    pub fifo_violations: u64,
    /// Items returned by remove_vgpu / drop_channel.
    pub dropped: u64,
    /// Items submitted.
    pub submitted: u64,
}

struct SimVgpuState {
    spec: SimVgpu,
    attached: bool,
    burst_on: bool,
    next_seq: BTreeMap<u32, u64>,
    last_done: BTreeMap<u32, u64>,
    rr: usize,
    res: SimResult,
}

/// A point in a run, to measure shares between two points.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub now: Nanos,
    pub busy: BTreeMap<u64, Nanos>,
    /// Time the GPU was held idle while work was queued (strict policies, caps).
    pub idle_held: Nanos,
    /// Time the GPU had no runnable work.
    pub idle_empty: Nanos,
}

impl Snapshot {
    /// Share of wall time each vGPU got between `earlier` and `self`.
    pub fn shares_since(&self, earlier: &Snapshot) -> BTreeMap<u64, f64> {
        let span = self.now.saturating_sub(earlier.now).max(1) as f64;
        self.busy
            .iter()
            .map(|(&k, &b)| {
                (
                    k,
                    b.saturating_sub(*earlier.busy.get(&k).unwrap_or(&0)) as f64 / span,
                )
            })
            .collect()
    }
    /// Fraction of wall time held idle with work queued, since `earlier`.
    pub fn held_idle_since(&self, earlier: &Snapshot) -> f64 {
        (self.idle_held - earlier.idle_held) as f64
            / self.now.saturating_sub(earlier.now).max(1) as f64
    }
}

/// The simulator.
pub struct Sim {
    /// The scheduler under test (real code).
    pub sched: Scheduler<SimItem>,
    now: Nanos,
    rng: u64,
    vgpus: Vec<SimVgpuState>,
    index: BTreeMap<u64, usize>,
    events: BinaryHeap<Reverse<(Nanos, u64, Event)>>,
    ev_seq: u64,
    policies: Vec<ParentPolicy>,
    idle_held: Nanos,
    idle_empty: Nanos,
    /// Measure the wall-clock cost of each `pick` (for the bench).
    pub timed: bool,
    /// Wall time the GPU stays idle after every item before its completion
    /// (the host's lateness: a CPU-starved daemon, front end or engine
    /// thread): the item is charged its length only, and the GPU delivers
    /// less than the policy grants.
    pub host_gap: Nanos,
    /// GPU time lost each time the engine goes from one vGPU's item to
    /// another's (a context switch): the incoming item ends that much later
    /// and is charged its length only. Nonzero tells the scheduler that its
    /// engine's switches cost time ([`Scheduler::set_engine_switch_cost`]).
    pub switch_cost: Nanos,
    /// Switches from one vGPU's item to another's.
    pub switches: u64,
    last_vgpu: Option<u64>,
    /// Wall-clock ns spent in `pick` + `complete` when `timed`.
    pub decision_ns: u128,
    /// Calls to `pick` that returned `Run`.
    pub decisions: u64,
}

impl Sim {
    /// A simulator for one parent with `policy`; `seed` drives command lengths.
    pub fn new(policy: ParentPolicy, seed: u64) -> Self {
        Sim {
            sched: Scheduler::new(policy),
            now: 0,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            vgpus: Vec::new(),
            index: BTreeMap::new(),
            events: BinaryHeap::new(),
            ev_seq: 0,
            policies: Vec::new(),
            idle_held: 0,
            idle_empty: 0,
            timed: false,
            host_gap: 0,
            switch_cost: 0,
            switches: 0,
            last_vgpu: None,
            decision_ns: 0,
            decisions: 0,
        }
    }

    /// Adds a synthetic vGPU (attached at its `start`).
    pub fn add(&mut self, v: SimVgpu) {
        let i = self.vgpus.len();
        self.index.insert(v.key, i);
        self.push(v.start.max(self.now), Event::Start(i));
        if let Some(t) = v.stop {
            self.push(t, Event::Stop(i));
        }
        self.vgpus.push(SimVgpuState {
            spec: v,
            attached: false,
            burst_on: false,
            next_seq: BTreeMap::new(),
            last_done: BTreeMap::new(),
            rr: 0,
            res: SimResult::default(),
        });
    }

    /// Schedules a live policy reload at `at`.
    pub fn reload_at(&mut self, at: Nanos, p: ParentPolicy) {
        self.policies.push(p);
        self.push(at, Event::Policy(self.policies.len() - 1));
    }

    /// Virtual time now.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// Results of one vGPU.
    pub fn result(&self, key: u64) -> &SimResult {
        &self.vgpus[self.index[&key]].res
    }

    /// A snapshot of cumulative busy time per vGPU.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            now: self.now,
            busy: self
                .vgpus
                .iter()
                .map(|s| (s.spec.key, s.res.busy))
                .collect(),
            idle_held: self.idle_held,
            idle_empty: self.idle_empty,
        }
    }

    /// Runs until the clock reaches `end` (it may pass it by the last item's length).
    pub fn run_until(&mut self, end: Nanos) {
        self.sched.set_engine_switch_cost(self.switch_cost > 0);
        while self.now < end {
            self.deliver(self.now);
            let t0 = self.timed.then(std::time::Instant::now);
            let pick = self.sched.pick(self.now);
            if let Some(t0) = t0 {
                self.decision_ns += t0.elapsed().as_nanos();
            }
            match pick {
                Pick::Run {
                    vgpu,
                    channel,
                    item,
                } => {
                    self.decisions += 1;
                    let i = self.index[&vgpu];
                    let st = &mut self.vgpus[i];
                    st.res.max_wait = st.res.max_wait.max(self.now - item.submitted);
                    let last = st.last_done.entry(channel).or_insert(0);
                    if item.seq <= *last && *last != 0 {
                        st.res.fifo_violations += 1;
                    }
                    *last = item.seq;
                    let switch = match self.last_vgpu.replace(vgpu) {
                        Some(l) if l != vgpu => {
                            self.switches += 1;
                            self.switch_cost
                        }
                        _ => 0,
                    };
                    let done = self.now + switch + item.len + self.host_gap;
                    self.deliver(done);
                    self.now = done;
                    let t0 = self.timed.then(std::time::Instant::now);
                    let r = self.sched.complete(vgpu, channel, item.len, done);
                    if let Some(t0) = t0 {
                        self.decision_ns += t0.elapsed().as_nanos();
                    }
                    let st = &mut self.vgpus[i];
                    st.res.busy += item.len;
                    st.res.completed += 1;
                    if r.is_ok() && st.attached {
                        self.refill(i, channel);
                    }
                }
                Pick::IdleUntil(t) => {
                    let next = t.min(self.next_event()).min(end).max(self.now + 1);
                    self.idle_held += next - self.now;
                    self.now = next;
                }
                Pick::Empty => {
                    let next = self.next_event().min(end).max(self.now + 1);
                    self.idle_empty += next - self.now;
                    self.now = next;
                }
                Pick::Busy => unreachable!("the simulator completes every item"),
                Pick::Fault { vgpu, items, .. } => {
                    // A scheduler bug: the vGPU is detached, as the daemon would have it.
                    let i = self.index[&vgpu];
                    self.vgpus[i].attached = false;
                    self.vgpus[i].res.dropped += items.len() as u64;
                }
            }
        }
        self.deliver(self.now);
    }

    fn push(&mut self, t: Nanos, e: Event) {
        self.ev_seq += 1;
        self.events.push(Reverse((t, self.ev_seq, e)));
    }

    fn next_event(&self) -> Nanos {
        self.events
            .peek()
            .map_or(Nanos::MAX, |Reverse((t, _, _))| *t)
    }

    fn rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn len(&mut self, c: CmdLen) -> Nanos {
        let u = (self.rand() >> 11) as f64 / (1u64 << 53) as f64;
        match c {
            CmdLen::Fixed(n) => n,
            CmdLen::Uniform(lo, hi) => lo + ((hi - lo) as f64 * u) as Nanos,
            CmdLen::LogUniform(lo, hi) => {
                let (a, b) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
                (a + (b - a) * u).exp().round() as Nanos
            }
        }
        .max(1)
    }

    fn submit(&mut self, i: usize, channel: u32, at: Nanos) {
        let len = self.len(self.vgpus[i].spec.cmd);
        let st = &mut self.vgpus[i];
        let seq = st.next_seq.entry(channel).or_insert(0);
        *seq += 1;
        let item = SimItem {
            vgpu: st.spec.key,
            channel,
            seq: *seq,
            len,
            submitted: at,
        };
        st.res.submitted += 1;
        let key = st.spec.key;
        if self.sched.enqueue(key, channel, item, at).is_err() {
            self.vgpus[i].res.dropped += 1;
        }
    }

    fn refill(&mut self, i: usize, channel: u32) {
        let st = &self.vgpus[i];
        let refill = match st.spec.workload {
            Workload::Saturating { .. } => true,
            Workload::Bursty { .. } => st.burst_on,
            _ => false,
        };
        if refill {
            self.submit(i, channel, self.now);
        }
    }

    fn fill(&mut self, i: usize, depth: usize, at: Nanos) {
        let chans: Vec<u32> = self.vgpus[i].spec.runlist.iter().map(|e| e.0).collect();
        for &c in &chans {
            let have = self
                .sched
                .stats(at)
                .vgpu(self.vgpus[i].spec.key)
                .and_then(|v| {
                    v.channels
                        .iter()
                        .find(|s| s.channel == c)
                        .map(|s| s.queue_depth)
                });
            for _ in have.unwrap_or(0)..depth {
                self.submit(i, c, at);
            }
        }
    }

    /// Delivers every event at or before `until`, each at its own time.
    fn deliver(&mut self, until: Nanos) {
        while let Some(Reverse((t, _, _))) = self.events.peek() {
            let t = *t;
            if t > until {
                break;
            }
            let Reverse((t, _, e)) = self.events.pop().expect("peeked");
            match e {
                Event::Start(i) => {
                    let spec = self.vgpus[i].spec.clone();
                    if self.sched.add_vgpu(spec.key, spec.params, t).is_err() {
                        continue;
                    }
                    let _ = self.sched.set_runlist(spec.key, &spec.runlist);
                    self.vgpus[i].attached = true;
                    match spec.workload {
                        Workload::Saturating { depth } => self.fill(i, depth, t),
                        Workload::Bursty { .. } => self.push(t, Event::BurstOn(i)),
                        Workload::Periodic { phase, .. } => self.push(t + phase, Event::Arrival(i)),
                        Workload::Idle => {}
                    }
                }
                Event::Stop(i) => {
                    let key = self.vgpus[i].spec.key;
                    self.vgpus[i].attached = false;
                    let dropped = self.sched.remove_vgpu(key, t).len() as u64;
                    self.vgpus[i].res.dropped += dropped;
                }
                Event::Arrival(i) => {
                    if !self.vgpus[i].attached {
                        continue;
                    }
                    if let Workload::Periodic { period, .. } = self.vgpus[i].spec.workload {
                        let rl = &self.vgpus[i].spec.runlist;
                        let ch = rl[self.vgpus[i].rr % rl.len()].0;
                        self.vgpus[i].rr += 1;
                        self.submit(i, ch, t);
                        self.push(t + period.max(1), Event::Arrival(i));
                    }
                }
                Event::BurstOn(i) => {
                    if !self.vgpus[i].attached {
                        continue;
                    }
                    if let Workload::Bursty { on, depth, .. } = self.vgpus[i].spec.workload {
                        self.vgpus[i].burst_on = true;
                        self.fill(i, depth, t);
                        self.push(t + on, Event::BurstOff(i));
                    }
                }
                Event::BurstOff(i) => {
                    if let Workload::Bursty { off, .. } = self.vgpus[i].spec.workload {
                        self.vgpus[i].burst_on = false;
                        self.push(t + off, Event::BurstOn(i));
                    }
                }
                Event::Policy(k) => {
                    let p = self.policies[k];
                    let _ = self.sched.set_policy(p, t);
                }
            }
        }
    }
}
