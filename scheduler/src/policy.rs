//! Host scheduling policies and their parameters.
//!
//! The physical GPU runs one vGPU's work at a time. The parent's [`PolicyKind`] decides
//! which vGPU runs next and for how long:
//!
//! * [`PolicyKind::BestEffort`]: round robin over the vGPUs that have work, one slice
//!   each; work-conserving; no share is guaranteed (NVIDIA's default scheduler).
//! * [`PolicyKind::EqualShare`]: each running vGPU (one with a VM attached) gets `1/N` of GPU time,
//!   `N` = vGPUs attached now; strict (a share not used is lost, the GPU idles).
//! * [`PolicyKind::FixedShare`]: each vGPU gets `1/max_instances` of its type, whatever
//!   else runs; strict.
//! * [`PolicyKind::Weighted`]: work-conserving proportional share by weight, with
//!   optional per-vGPU caps (maximum share) and reservations (minimum share).
//!
//! Any vGPU may be in the [`LatencyClass::Latency`] class: its commands run at the next command
//! boundary, ahead of the current slice, as long as its limit (cap, or its strict share)
//! allows.
//!
//! Shares are enforced with per-vGPU credit buckets (`Bucket`) in measured GPU time.

use crate::{Error, Nanos, Result, MS};

/// Smallest parent timeslice NVIDIA accepts (RmPVMRL `TT` = 0x01).
pub const MIN_TIMESLICE: Nanos = MS;
/// Largest parent timeslice NVIDIA accepts (RmPVMRL `TT` = 0x1E, 30 ms).
pub const MAX_TIMESLICE: Nanos = 30 * MS;
/// NVIDIA's default timeslice when the densest vGPU type allows at most 8 per GPU.
pub const DEFAULT_TIMESLICE_LOW_DENSITY: Nanos = 2 * MS;
/// NVIDIA's default timeslice when a vGPU type allows more than 8 per GPU.
pub const DEFAULT_TIMESLICE_HIGH_DENSITY: Nanos = MS;
/// A stretched slice is its vGPU's share of a round of this many default
/// timeslices ([`ParentPolicy::stretched_slice`]): 16 ms with the 2 ms
/// default, the round that eight vGPUs of 2 ms slices take.
pub const ROUND_SLICES: u32 = 8;
/// A stretched slice is at most this many default timeslices (8 ms with the
/// 2 ms default).
pub const MAX_STRETCH: u32 = 4;
/// NVIDIA's default averaging factor (RmPVMRL `AA` = 0x00 means 33).
pub const DEFAULT_AVERAGING_FACTOR: u32 = 33;
/// Largest averaging factor NVIDIA accepts (RmPVMRL `AA` = 0x3C).
pub const MAX_AVERAGING_FACTOR: u32 = 60;
/// Largest per-vGPU weight accepted.
pub const MAX_WEIGHT: u32 = 10_000;

/// How the parent divides GPU time between its vGPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Round robin over vGPUs with work; work-conserving; no guarantee.
    BestEffort,
    /// `1/N` each, `N` = vGPUs attached; strict.
    EqualShare,
    /// `1/max_instances` each; strict.
    FixedShare,
    /// Proportional to weight, work-conserving; caps and reservations apply.
    Weighted,
}

impl PolicyKind {
    /// Strict policies hold the GPU idle rather than give a vGPU more than its share.
    pub fn is_strict(self) -> bool {
        matches!(self, PolicyKind::EqualShare | PolicyKind::FixedShare)
    }

    /// Policies that order vGPUs by virtual time (GPU time / weight): the vGPU
    /// that has had the least runs next. `best_effort` is this with every weight 1,
    /// so it is round robin in GPU time, not in slices: a vGPU whose slice ended
    /// early (it ran out of work for a moment) is not behind for it.
    pub fn orders_by_virtual_time(self) -> bool {
        matches!(self, PolicyKind::BestEffort | PolicyKind::Weighted)
    }

    /// The weight a vGPU's GPU time is divided by in virtual time.
    pub fn weight(self, params: &VgpuParams) -> u32 {
        match self {
            PolicyKind::Weighted => params.weight.max(1),
            _ => 1,
        }
    }

    /// Whether per-vGPU caps and reservations apply (`weighted` only).
    pub fn has_limits(self) -> bool {
        self == PolicyKind::Weighted
    }

    /// The name used in config files and stats.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::BestEffort => "best_effort",
            PolicyKind::EqualShare => "equal_share",
            PolicyKind::FixedShare => "fixed_share",
            PolicyKind::Weighted => "weighted",
        }
    }

    /// Parses a config-file name.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "best_effort" => PolicyKind::BestEffort,
            "equal_share" => PolicyKind::EqualShare,
            "fixed_share" => PolicyKind::FixedShare,
            "weighted" => PolicyKind::Weighted,
            _ => return None,
        })
    }
}

/// One parent's policy: kind, timeslice and averaging window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParentPolicy {
    /// Which policy divides the GPU.
    pub kind: PolicyKind,
    /// Length of one vGPU's turn on the GPU. `None`: NVIDIA's default, 2 ms when every
    /// attached type allows at most 8 vGPUs per GPU, 1 ms when one allows more.
    pub timeslice: Option<Nanos>,
    /// NVIDIA's averaging factor (1..=60, default 33). Here it sets the default
    /// averaging window (`averaging_factor × timeslice`); see `docs/scheduling.md`.
    pub averaging_factor: u32,
    /// Averaging window: the span over which `share_window` is reported. `None`:
    /// `averaging_factor × timeslice`.
    pub window: Option<Nanos>,
}

impl Default for ParentPolicy {
    fn default() -> Self {
        ParentPolicy::new(PolicyKind::BestEffort)
    }
}

impl ParentPolicy {
    /// `kind` with NVIDIA's defaults for timeslice and averaging factor.
    pub fn new(kind: PolicyKind) -> Self {
        ParentPolicy {
            kind,
            timeslice: None,
            averaging_factor: DEFAULT_AVERAGING_FACTOR,
            window: None,
        }
    }

    /// Same policy with an explicit timeslice.
    pub fn with_timeslice(mut self, ts: Nanos) -> Self {
        self.timeslice = Some(ts);
        self
    }

    /// Same policy with an explicit averaging window.
    pub fn with_window(mut self, w: Nanos) -> Self {
        self.window = Some(w);
        self
    }

    /// Checks the ranges NVIDIA documents (timeslice 1–30 ms, averaging factor 1–60)
    /// and that the window is at least one timeslice.
    pub fn validate(&self) -> Result<()> {
        if let Some(ts) = self.timeslice {
            if !(MIN_TIMESLICE..=MAX_TIMESLICE).contains(&ts) {
                return Err(Error::Invalid {
                    what: "timeslice",
                    message: format!("{ts} ns is outside 1 ms ..= 30 ms"),
                });
            }
        }
        if !(1..=MAX_AVERAGING_FACTOR).contains(&self.averaging_factor) {
            return Err(Error::Invalid {
                what: "averaging_factor",
                message: format!("{} is outside 1 ..= 60", self.averaging_factor),
            });
        }
        if let Some(w) = self.window {
            if w < self.timeslice.unwrap_or(MIN_TIMESLICE) || w > 3_600 * crate::SEC {
                return Err(Error::Invalid {
                    what: "window",
                    message: format!("{w} ns must be between one timeslice and one hour"),
                });
            }
        }
        Ok(())
    }

    /// The timeslice in force given the densest attached type (`min_fixed_share` is the
    /// smallest `1/max_instances` among attached vGPUs; `None` when none is attached).
    pub fn effective_timeslice(&self, min_fixed_share: Option<f64>) -> Nanos {
        match self.timeslice {
            Some(ts) => ts.clamp(MIN_TIMESLICE, MAX_TIMESLICE),
            // more than 8 per GPU  <=>  1/max_instances < 1/8
            None => match min_fixed_share {
                Some(s) if s < 1.0 / 8.0 - 1e-12 => DEFAULT_TIMESLICE_HIGH_DENSITY,
                _ => DEFAULT_TIMESLICE_LOW_DENSITY,
            },
        }
    }

    /// The slice of a vGPU granted `share` of a GPU on which each switch
    /// from one vGPU's work to another's costs time no vGPU is charged for (a
    /// context switch: 139 µs on an H100, 7 % of a 2 ms slice), where
    /// `ts` is the timeslice in force. A timeslice the operator set is kept.
    /// The default one stretches to the vGPU's share of a round of
    /// [`ROUND_SLICES`] timeslices, at least one and at most [`MAX_STRETCH`]:
    /// two vGPUs of a half each get 8 ms, a half and a quarter 8 and 4 ms,
    /// eight of an eighth 2 ms. Each then waits for its turn no longer than
    /// under eight vGPUs of the default slice, and a share measured over a
    /// span is off by at most the span's part of a round, for every vGPU alike.
    pub fn stretched_slice(&self, ts: Nanos, share: f64) -> Nanos {
        if self.timeslice.is_some() || share.is_nan() || share <= 0.0 {
            return ts;
        }
        let round = ts as f64 * f64::from(ROUND_SLICES);
        ((round * share.min(1.0)) as Nanos).clamp(ts, ts * Nanos::from(MAX_STRETCH))
    }

    /// The averaging window in force for a given effective timeslice.
    pub fn effective_window(&self, timeslice: Nanos) -> Nanos {
        self.window
            .unwrap_or(timeslice * self.averaging_factor.clamp(1, MAX_AVERAGING_FACTOR) as Nanos)
            .max(timeslice)
    }
}

/// Scheduling class of a vGPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum LatencyClass {
    /// Runs in slices chosen by the parent's policy.
    #[default]
    Normal,
    /// Each command runs at the next command boundary (ahead of the current slice),
    /// while the vGPU's limit allows: its cap, or its share under a strict policy.
    Latency,
}

impl LatencyClass {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            LatencyClass::Normal => "normal",
            LatencyClass::Latency => "latency",
        }
    }
}

/// Per-vGPU scheduling parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VgpuParams {
    /// The share its type grants under `fixed_share`: `1 / max_instances`.
    pub fixed_share: f64,
    /// Weight under `weighted` (1..=10000).
    pub weight: u32,
    /// Maximum share of GPU time under `weighted` (0, 1].
    pub cap: Option<f64>,
    /// Minimum share of GPU time under `weighted` (0, 1], at most `cap`.
    pub reservation: Option<f64>,
    /// Scheduling class.
    pub class: LatencyClass,
}

impl VgpuParams {
    /// A normal-class vGPU of a type allowing `max_instances` per GPU, weight 1.
    pub fn for_type(max_instances: u32) -> Self {
        VgpuParams {
            fixed_share: 1.0 / max_instances.max(1) as f64,
            weight: 1,
            cap: None,
            reservation: None,
            class: LatencyClass::Normal,
        }
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, message: String| Err(Error::Invalid { what, message });
        if !(self.fixed_share > 0.0 && self.fixed_share <= 1.0) {
            return bad(
                "fixed_share",
                format!("{} is outside (0, 1]", self.fixed_share),
            );
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return bad(
                "weight",
                format!("{} is outside 1 ..= {MAX_WEIGHT}", self.weight),
            );
        }
        for (what, v) in [("cap", self.cap), ("reservation", self.reservation)] {
            if let Some(v) = v {
                if !(v > 0.0 && v <= 1.0) {
                    return bad(what, format!("{v} is outside (0, 1]"));
                }
            }
        }
        if let (Some(c), Some(r)) = (self.cap, self.reservation) {
            if r > c {
                return bad("reservation", format!("{r} is above the cap {c}"));
            }
        }
        Ok(())
    }
}

/// A credit bucket in GPU time: credit accrues at `rate` ns of GPU time per ns of
/// wall time and is spent by measured execution time. Credit may go negative without
/// bound: a command longer than the vGPU's slice leaves it in debt, and the debt is
/// paid back by waiting (skipped turns), never forgiven.
///
/// Banking: while the vGPU has no work, credit is capped at `max` (a share not used is
/// lost: the strict policies' "the GPU idles"). A guarantee bucket (`banks_while_waiting`)
/// keeps accruing past `max` while the vGPU *has* work but waits, e.g. behind another
/// vGPU's long non-preemptible command, so that time is given back afterwards.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    pub rate: f64,
    credit: f64,
    at: Nanos,
    max: f64,
    banks_while_waiting: bool,
    waiting: bool,
}

impl Bucket {
    pub fn new(rate: f64, max: Nanos, now: Nanos, banks_while_waiting: bool) -> Self {
        Bucket {
            rate,
            credit: 0.0,
            at: now,
            max: max as f64,
            banks_while_waiting,
            waiting: false,
        }
    }

    fn clipped(&self) -> bool {
        !(self.banks_while_waiting && self.waiting)
    }

    /// Credit at `now`, assuming the vGPU did not run since the last settle.
    pub fn credit_at(&self, now: Nanos) -> f64 {
        let c = self.credit + self.rate * now.saturating_sub(self.at) as f64;
        if self.clipped() {
            c.min(self.max)
        } else {
            c
        }
    }

    /// Folds accrual up to `now` into the stored credit (call before the vGPU runs).
    pub fn settle(&mut self, now: Nanos) {
        self.credit = self.credit_at(now);
        self.at = self.at.max(now);
    }

    /// The vGPU ran `used` ns of GPU time since the last settle, ending at `now`.
    /// Accrual during the run is not clipped (the bucket was draining).
    pub fn charge(&mut self, now: Nanos, used: Nanos) {
        let accrued = self.rate * now.saturating_sub(self.at) as f64;
        self.credit += accrued - used as f64;
        if self.clipped() {
            self.credit = self.credit.min(self.max);
        }
        self.at = self.at.max(now);
    }

    /// The vGPU gained work (`true`) or ran out of it (`false`) at `now`.
    pub fn set_waiting(&mut self, waiting: bool, now: Nanos) {
        if self.waiting != waiting {
            self.settle(now);
            self.waiting = waiting;
            if self.clipped() {
                self.credit = self.credit.min(self.max);
            }
        }
    }

    /// Whether the credit is (numerically) non-negative at `now`.
    pub fn eligible(&self, now: Nanos) -> bool {
        self.credit_at(now) > -1.0
    }

    /// Earliest time at or after `now` when the credit is non-negative.
    pub fn eligible_at(&self, now: Nanos) -> Nanos {
        let c = self.credit_at(now);
        if c > -1.0 {
            now
        } else if self.rate <= 0.0 {
            Nanos::MAX
        } else {
            now.saturating_add((-c / self.rate).ceil() as Nanos)
        }
    }

    /// Changes rate and banking limit from `now` on.
    pub fn retune(&mut self, rate: f64, max: Nanos, now: Nanos) {
        self.settle(now);
        self.rate = rate;
        self.max = max as f64;
        if self.clipped() {
            self.credit = self.credit.min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timeslice_follows_density() {
        let p = ParentPolicy::new(PolicyKind::EqualShare);
        assert_eq!(p.effective_timeslice(None), 2 * MS);
        assert_eq!(p.effective_timeslice(Some(1.0 / 8.0)), 2 * MS);
        assert_eq!(p.effective_timeslice(Some(1.0 / 16.0)), MS);
        assert_eq!(p.effective_window(2 * MS), 66 * MS);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(ParentPolicy::new(PolicyKind::FixedShare)
            .with_timeslice(31 * MS)
            .validate()
            .is_err());
        assert!(ParentPolicy::new(PolicyKind::FixedShare)
            .with_timeslice(999_999)
            .validate()
            .is_err());
        assert!(ParentPolicy::new(PolicyKind::FixedShare)
            .with_timeslice(30 * MS)
            .validate()
            .is_ok());
        let mut p = VgpuParams::for_type(4);
        p.cap = Some(0.2);
        p.reservation = Some(0.3);
        assert!(p.validate().is_err());
    }

    #[test]
    fn bucket_pays_back_debt() {
        let mut b = Bucket::new(0.25, 2 * MS, 0, true);
        b.settle(0);
        b.charge(10 * MS, 10 * MS); // ran 10 ms, accrued 2.5 ms
        assert!(!b.eligible(10 * MS));
        assert_eq!(b.eligible_at(10 * MS), 40 * MS);
        assert!(b.eligible(40 * MS));
        // idle credit is not banked beyond max
        assert!((b.credit_at(1_000 * MS) - 2e6).abs() < 1e-6);
    }
}
