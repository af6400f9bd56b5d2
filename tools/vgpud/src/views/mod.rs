//! What `vgpuctl top` and `vgpuctl record` make of the daemon's replies:
//! samples of `status` (and `parents`) taken over time, the rates and
//! shares between two samples, the live table, the CSV and the chart.
//!
//! Nothing here talks to the daemon; `vgpuctl` takes the samples.

pub mod chart;
pub mod record;
pub mod top;

use std::time::Instant;

use crate::daemon::{ParentStatus, VgpuStatus};

/// What the daemon reported at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When the reply came (the client's clock).
    pub at: Instant,
    pub parents: Vec<ParentStatus>,
    pub vgpus: Vec<VgpuStatus>,
}

/// One vGPU between two samples: rates over the wall time between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    /// Seconds between the samples.
    pub seconds: f64,
    /// Engine time used over wall time: the share achieved between them.
    pub share: f64,
    pub commands_per_s: f64,
    pub doorbells_polled_per_s: f64,
    pub doorbells_trapped_per_s: f64,
    pub interrupts_per_s: f64,
}

impl Sample {
    /// A vGPU's figures between `prev` and this sample, if it was in both
    /// and the scheduler knew it in both.
    pub fn delta(&self, prev: &Sample, uuid: &str) -> Option<Delta> {
        let now = self.vgpus.iter().find(|v| v.uuid == uuid)?;
        let then = prev.vgpus.iter().find(|v| v.uuid == uuid)?;
        let seconds = self.at.checked_duration_since(prev.at)?.as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
        Some(Delta {
            seconds,
            share: rate(now.gpu_time_ns?, then.gpu_time_ns?) / 1e9,
            commands_per_s: rate(now.commands?, then.commands?),
            doorbells_polled_per_s: rate(now.doorbells_polled, then.doorbells_polled),
            doorbells_trapped_per_s: rate(now.doorbells_trapped, then.doorbells_trapped),
            interrupts_per_s: rate(now.interrupts, then.interrupts),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A vGPU's status with the figures the views read.
    pub fn status(uuid: &str, type_id: &str, gpu_ns: u64, commands: u64) -> VgpuStatus {
        VgpuStatus {
            uuid: uuid.into(),
            type_id: type_id.into(),
            type_name: type_id.to_uppercase(),
            parent: "cpu0".into(),
            socket: PathBuf::from("/run/vgpud/x.sock"),
            attached: true,
            health: crate::daemon::Health::Ok,
            connections: 1,
            protocol_errors: 0,
            policy: "fixed_share".into(),
            configured_share: Some(0.5),
            cap: None,
            achieved_share: Some(0.49),
            gpu_time_ns: Some(gpu_ns),
            commands: Some(commands),
            queue_depth: Some(3),
            wait_ns: Some(0),
            slice_us: Some(2000),
            slices: Some(commands / 2),
            slices_dry: Some(0),
            faults: 1,
            interrupts: commands,
            doorbells_polled: commands,
            doorbells_trapped: 2,
            pinned_bytes: 0,
            framebuffer_bytes: 4 << 30,
        }
    }

    #[test]
    fn delta_is_engine_time_and_counts_over_wall_time() {
        let t = Instant::now();
        let a = Sample {
            at: t,
            parents: vec![],
            vgpus: vec![status("u1", "vgpud-4c", 1_000_000_000, 100)],
        };
        let b = Sample {
            at: t + Duration::from_secs(2),
            parents: vec![],
            vgpus: vec![status("u1", "vgpud-4c", 2_000_000_000, 700)],
        };
        let d = b.delta(&a, "u1").unwrap();
        assert!((d.share - 0.5).abs() < 1e-9, "{d:?}");
        assert!((d.commands_per_s - 300.0).abs() < 1e-9, "{d:?}");
        assert_eq!(d.doorbells_trapped_per_s, 0.0);
        assert!(b.delta(&a, "u2").is_none());
        assert!(a.delta(&b, "u1").is_none(), "samples out of order");
    }
}
