//! `vgpuctl top`: one frame of the live view, from the last two samples.

use std::fmt::Write as _;

use super::Sample;

/// A fraction as a percentage, `-` when unknown.
fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.1}%", x * 100.0))
}

/// A rate, `-` when there is no previous sample yet.
fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

/// The frame for `cur` (`prev`: the sample before it, for rates; without
/// it the share is the daemon's averaging window and rates are `-`).
pub fn frame(prev: Option<&Sample>, cur: &Sample) -> String {
    let mut out = String::new();
    for p in &cur.parents {
        let _ = writeln!(
            out,
            "parent {}  engine {}  policy {}  timeslice {} us  engine busy {}  vGPUs {}",
            p.parent,
            p.engine,
            p.policy,
            p.timeslice_us,
            pct(Some(p.engine_busy_ratio)),
            p.vgpus
        );
    }
    let _ = writeln!(
        out,
        "\n{:<8} {:<10} {:<6} {:>3} {:>8} {:>8} {:>5} {:>6} {:>8} {:>9} {:>9}",
        "VGPU",
        "TYPE",
        "PARENT",
        "VM",
        "CONFIG",
        "SHARE",
        "QUEUE",
        "FAULTS",
        "CMD/S",
        "DB-POLL/S",
        "DB-TRAP/S"
    );
    for v in &cur.vgpus {
        let d = prev.and_then(|p| cur.delta(p, &v.uuid));
        let share = match &d {
            Some(d) => Some(d.share),
            None => v.achieved_share,
        };
        let _ = writeln!(
            out,
            "{:<8} {:<10} {:<6} {:>3} {:>8} {:>8} {:>5} {:>6} {:>8} {:>9} {:>9}",
            v.uuid.get(..8).unwrap_or(&v.uuid),
            v.type_id,
            v.parent,
            if v.attached { "yes" } else { "no" },
            pct(v.configured_share),
            pct(share),
            v.queue_depth.map_or("-".into(), |q| q.to_string()),
            v.faults,
            rate(d.as_ref().map(|d| d.commands_per_s)),
            rate(d.as_ref().map(|d| d.doorbells_polled_per_s)),
            rate(d.as_ref().map(|d| d.doorbells_trapped_per_s)),
        );
    }
    if cur.vgpus.is_empty() {
        out.push_str("(no vGPUs)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::ParentStatus;
    use crate::views::tests::status;
    use std::time::{Duration, Instant};

    #[test]
    fn a_frame_shows_the_parent_and_each_vgpu_with_rates() {
        let parent = ParentStatus {
            parent: "cpu0".into(),
            engine: "cpu".into(),
            gpu: None,
            policy: "fixed_share".into(),
            timeslice_us: 2000,
            window_us: 66000,
            vgpus: 1,
            framebuffer_bytes: 8 << 30,
            max_vgpus: 8,
            busy_ns: 0,
            engine_busy_ratio: 0.75,
            idle_empty_ns: 0,
            idle_held_ns: 0,
            idle_late_ns: 0,
            engine_stalled_ns: 0,
        };
        let t = Instant::now();
        let a = Sample {
            at: t,
            parents: vec![parent.clone()],
            vgpus: vec![status("aa618089-x", "vgpud-4c", 0, 0)],
        };
        let b = Sample {
            at: t + Duration::from_secs(1),
            parents: vec![parent],
            vgpus: vec![status("aa618089-x", "vgpud-4c", 500_000_000, 480)],
        };
        let first = frame(None, &a);
        assert!(
            first.contains("parent cpu0  engine cpu  policy fixed_share"),
            "{first}"
        );
        assert!(first.contains("engine busy 75.0%"), "{first}");
        // No rates without a previous sample; the share is the daemon's window.
        let row = first.lines().find(|l| l.starts_with("aa618089")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols[1..],
            ["vgpud-4c", "cpu0", "yes", "50.0%", "49.0%", "3", "1", "-", "-", "-"]
        );
        let second = frame(Some(&a), &b);
        let row = second.lines().find(|l| l.starts_with("aa618089")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[5..], ["50.0%", "3", "1", "480", "480", "0"]);
    }
}
