//! `vgpuctl record`: the achieved shares between consecutive samples, as
//! points of a time series, and their CSV.

use std::io::Write;
use std::time::Instant;

use super::Sample;

/// One vGPU's share over one sampling interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Seconds from the start of the recording to the end of the interval.
    pub time_s: f64,
    pub uuid: String,
    pub type_id: String,
    /// The share the policy promised at the end of the interval.
    pub configured: Option<f64>,
    /// Engine time the vGPU used over the interval's wall time.
    pub achieved: f64,
}

/// The points between `prev` and `cur`: one per vGPU present in both.
pub fn points(start: Instant, prev: &Sample, cur: &Sample) -> Vec<Point> {
    let time_s = cur.at.saturating_duration_since(start).as_secs_f64();
    cur.vgpus
        .iter()
        .filter_map(|v| {
            let d = cur.delta(prev, &v.uuid)?;
            Some(Point {
                time_s,
                uuid: v.uuid.clone(),
                type_id: v.type_id.clone(),
                configured: v.configured_share,
                achieved: d.share,
            })
        })
        .collect()
}

/// The CSV header.
pub const CSV_HEADER: &str = "time_s,vgpu,type,configured,achieved";

/// The points as CSV: [`CSV_HEADER`], then one line per point; a share the
/// policy does not promise is an empty field.
pub fn write_csv(mut w: impl Write, points: &[Point]) -> std::io::Result<()> {
    writeln!(w, "{CSV_HEADER}")?;
    for p in points {
        let conf = p.configured.map_or(String::new(), |c| format!("{c:.4}"));
        writeln!(
            w,
            "{:.3},{},{},{conf},{:.4}",
            p.time_s, p.uuid, p.type_id, p.achieved
        )?;
    }
    w.flush()
}

/// One vGPU over a whole recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub uuid: String,
    pub type_id: String,
    /// The configured share at its last point.
    pub configured: Option<f64>,
    /// The mean of its achieved shares.
    pub mean_achieved: f64,
    pub points: usize,
}

/// Per vGPU, in order of first appearance, its [`Summary`].
pub fn summary(points: &[Point]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for p in points {
        match out.iter_mut().find(|s| s.uuid == p.uuid) {
            Some(s) => {
                s.configured = p.configured;
                s.mean_achieved += p.achieved;
                s.points += 1;
            }
            None => out.push(Summary {
                uuid: p.uuid.clone(),
                type_id: p.type_id.clone(),
                configured: p.configured,
                mean_achieved: p.achieved,
                points: 1,
            }),
        }
    }
    for s in &mut out {
        s.mean_achieved /= s.points as f64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::status;
    use std::time::Duration;

    #[test]
    fn points_and_csv_carry_configured_and_achieved_shares() {
        let t = Instant::now();
        let mut best_effort = status("u2", "vgpud-2c", 0, 0);
        best_effort.configured_share = None;
        let a = Sample {
            at: t,
            parents: vec![],
            vgpus: vec![status("u1", "vgpud-4c", 0, 0), best_effort.clone()],
        };
        best_effort.gpu_time_ns = Some(50_000_000);
        let b = Sample {
            at: t + Duration::from_millis(200),
            parents: vec![],
            vgpus: vec![status("u1", "vgpud-4c", 100_000_000, 90), best_effort],
        };
        let p = points(t, &a, &b);
        assert_eq!(p.len(), 2);
        let mut out = Vec::new();
        write_csv(&mut out, &p).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "time_s,vgpu,type,configured,achieved\n\
             0.200,u1,vgpud-4c,0.5000,0.5000\n\
             0.200,u2,vgpud-2c,,0.2500\n"
        );
        let s = summary(&p);
        assert_eq!(s[0].uuid, "u1");
        assert_eq!(s[1].configured, None);
        assert_eq!(s[1].points, 1);
        assert!((s[1].mean_achieved - 0.25).abs() < 1e-9);
    }
}
