//! Time accounting in measured GPU time.
//!
//! Every completed work item is charged with the execution time the backend measured
//! for it (not the wall time between `pick` and `complete`). A [`Meter`] keeps, per vGPU
//! and per channel: total GPU time, commands completed, the time items waited between
//! submission and dispatch, and a sliding window of recent execution intervals from
//! which the share over the last averaging window is computed.

use std::collections::VecDeque;

use crate::policy::{LatencyClass, PolicyKind};
use crate::Nanos;

/// Accumulated GPU time of one vGPU or channel.
#[derive(Clone, Debug, Default)]
pub struct Meter {
    /// Total measured GPU time.
    pub total: Nanos,
    /// Items completed.
    pub commands: u64,
    /// Sum over dispatched items of (dispatch time − submission time).
    pub wait: Nanos,
    /// Execution intervals `[start, end)` that may still overlap the window.
    recent: VecDeque<(Nanos, Nanos)>,
}

impl Meter {
    /// Records one completed item that ran `gpu_time` ending at `end`; keeps only what
    /// can overlap the last `window`.
    pub fn record(&mut self, end: Nanos, gpu_time: Nanos, window: Nanos) {
        self.total += gpu_time;
        self.commands += 1;
        self.recent.push_back((end.saturating_sub(gpu_time), end));
        let horizon = end.saturating_sub(window);
        while let Some(&(_, e)) = self.recent.front() {
            if e <= horizon {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records that an item waited `wait` ns before it was dispatched.
    pub fn record_wait(&mut self, wait: Nanos) {
        self.wait += wait;
    }

    /// GPU time executed inside `(now - window, now]`.
    pub fn in_window(&self, now: Nanos, window: Nanos) -> Nanos {
        let lo = now.saturating_sub(window);
        self.recent
            .iter()
            .map(|&(s, e)| e.min(now).saturating_sub(s.max(lo)))
            .sum()
    }

    /// Share of wall time over the last `window` ending at `now`.
    pub fn share_in_window(&self, now: Nanos, window: Nanos) -> f64 {
        let span = window.min(now).max(1);
        self.in_window(now, window) as f64 / span as f64
    }
}

/// Accounting for one channel of a vGPU.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats {
    pub channel: u32,
    /// Whether the channel is on the vGPU's current runlist.
    pub on_runlist: bool,
    /// Whether the caller marked it blocked (e.g. on a semaphore acquire).
    pub blocked: bool,
    /// Total measured GPU time.
    pub total: Nanos,
    /// Share of the parent's wall time over the last window.
    pub share_window: f64,
    /// Items completed.
    pub commands: u64,
    /// Items queued, not yet dispatched.
    pub queue_depth: usize,
    /// Total time items waited between submission and dispatch.
    pub wait: Nanos,
}

/// Accounting for one vGPU.
#[derive(Clone, Debug, PartialEq)]
pub struct VgpuShareStats {
    pub vgpu: u64,
    pub class: LatencyClass,
    /// The share the policy promises now (strict policies), or the reservation
    /// (weighted); `None` for best effort.
    pub configured_share: Option<f64>,
    /// Cap in force (weighted), if any.
    pub cap: Option<f64>,
    /// Total measured GPU time.
    pub total: Nanos,
    /// Share of the parent's wall time over the last window.
    pub share_window: f64,
    /// Items completed.
    pub commands: u64,
    /// Items queued on all channels, not yet dispatched.
    pub queue_depth: usize,
    /// Total time items waited between submission and dispatch.
    pub wait: Nanos,
    /// The length of its slices now: the timeslice, or stretched by its
    /// share where the engine's switches cost time.
    pub slice: Nanos,
    /// Slices the vGPU was given.
    pub slices: u64,
    /// Of those, slices that ended before the timeslice because the vGPU had no
    /// runnable item left: its driver had not submitted more in time.
    pub slices_dry: u64,
    /// Per channel, by channel id.
    pub channels: Vec<ChannelStats>,
}

/// Accounting for one parent (physical GPU).
#[derive(Clone, Debug, PartialEq)]
pub struct ParentStats {
    pub now: Nanos,
    pub policy: PolicyKind,
    /// Timeslice in force.
    pub timeslice: Nanos,
    /// Averaging window in force.
    pub window: Nanos,
    /// GPU time executed by all vGPUs.
    pub busy: Nanos,
    /// Calls to `pick` that returned work.
    pub decisions: u64,
    /// Time the engine had nothing of the parent's, by why.
    pub idle: Idle,
    /// Per vGPU, by key.
    pub vgpus: Vec<VgpuShareStats>,
}

/// Time a parent's engine had no item (none picked and not completed), by why.
/// Where the engine keeps several items queued, the time between an item's end
/// and the report of its completion is not seen here: these are lower bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Idle {
    /// No vGPU had work queued: the guests submitted nothing.
    pub empty: Nanos,
    /// Work was queued, and a strict share or a cap held the engine idle.
    pub held: Nanos,
    /// Work was queued and could run, but was not picked yet: the daemon was late
    /// (its threads waited for a CPU, or for each other).
    pub late: Nanos,
}

impl ParentStats {
    /// Stats of one vGPU.
    pub fn vgpu(&self, vgpu: u64) -> Option<&VgpuShareStats> {
        self.vgpus.iter().find(|v| v.vgpu == vgpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_share_clips_intervals() {
        let mut m = Meter::default();
        m.record(10, 10, 100);
        m.record(200, 50, 100);
        // window (150, 250]: [150,200) fully inside = 50
        assert_eq!(m.in_window(250, 100), 50);
        // window (175, 275]: 25
        assert_eq!(m.in_window(275, 100), 25);
        assert_eq!(m.total, 60);
        assert_eq!(m.commands, 2);
        // first interval dropped once out of the window
        assert_eq!(m.recent.len(), 1);
    }
}
