//! A load generator: keeps a vGPU saturated with `spin` work of a fixed
//! size per command and measures what it gets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::channel::{Channel, ChannelConfig, Fence};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::programs::{Program, SPIN_MAX_NS};

/// GPFIFO entries per channel: room for [`depth`] commands.
const GPFIFO_ENTRIES: u32 = 64;

/// Commands kept in flight per channel: about 2 ms of work, at least four
/// (one running, three queued), so that the host scheduler always sees the
/// tenant backlogged and short commands never leave the engine waiting for
/// the driver. New ones go in batches, one doorbell each.
fn depth(unit_us: u32) -> usize {
    (2000 / unit_us.max(1) as usize).clamp(4, GPFIFO_ENTRIES as usize - 1)
}

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct LoadConfig {
    /// GPU time each command asks for, in µs.
    pub unit_us: u32,
    /// How long to keep submitting.
    pub duration: Duration,
    /// Channels submitting concurrently (0..channels).
    pub channels: u32,
}

/// What the run achieved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadReport {
    pub unit_us: u32,
    pub channels: u32,
    /// Commands that completed.
    pub completed: u64,
    /// GPU time those commands asked for (completed × unit), in µs.
    pub busy_us: u64,
    /// Wall time from the first submit to the last completion, in µs.
    pub wall_us: u64,
    /// busy / wall: the share of the wall time the vGPU spent on this work.
    pub utilization: f64,
    /// Completed commands per second.
    pub rate_per_s: f64,
    /// Submit-to-completion latency percentiles, in µs.
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    /// Commands kept in flight per channel.
    pub depth: usize,
    /// How the doorbells reached the device during the run.
    pub doorbells: crate::device::Doorbells,
}

/// Run `cfg` on `dev` (channels 0..cfg.channels are rebuilt and destroyed).
///
/// ```no_run
/// # fn demo(dev: &mut vgpu_guest::Device) -> vgpu_guest::Result<()> {
/// use vgpu_guest::load::{run, LoadConfig};
/// let r = run(dev, &LoadConfig { unit_us: 500, duration: std::time::Duration::from_secs(2), channels: 2 })?;
/// println!("{} commands, p99 {} us", r.completed, r.latency_p99_us);
/// # Ok(()) }
/// ```
pub fn run(dev: &mut Device, cfg: &LoadConfig) -> Result<LoadReport> {
    if cfg.unit_us == 0 || cfg.unit_us as u64 * 1000 > SPIN_MAX_NS {
        return Err(Error::InvalidArgument(format!(
            "unit of {} us",
            cfg.unit_us
        )));
    }
    if cfg.channels == 0 || cfg.channels > dev.identity().channels {
        return Err(Error::InvalidArgument(format!(
            "{} channels of {}",
            cfg.channels,
            dev.identity().channels
        )));
    }
    let ccfg = ChannelConfig {
        gpfifo_entries: GPFIFO_ENTRIES,
        segment_bytes: 1024,
        interrupt_fences: false,
    };
    let mut chans = (0..cfg.channels)
        .map(|id| Channel::new(dev, id, ccfg))
        .collect::<Result<Vec<_>>>()?;
    let spin = Program::Spin {
        dst: 0,
        units: cfg.unit_us,
        unit_ns: 1000,
    };
    let mut inflight: Vec<VecDeque<(Fence, Instant)>> = vec![VecDeque::new(); chans.len()];
    let mut latencies: Vec<f64> = Vec::new();
    let depth = depth(cfg.unit_us);
    let rung_before = dev.doorbells();
    let timeout =
        Duration::from_micros(cfg.unit_us as u64 * (depth as u64 * cfg.channels as u64 + 2))
            + Duration::from_secs(10);
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut last_check = start;
    let mut last_progress = start;
    let mut last_done = start;
    loop {
        let submitting = Instant::now() < deadline;
        let mut progressed = false;
        for (ch, q) in chans.iter_mut().zip(inflight.iter_mut()) {
            while let Some(&(f, t)) = q.front() {
                if !ch.reached(f)? {
                    break;
                }
                let now = Instant::now();
                latencies.push(now.duration_since(t).as_secs_f64() * 1e6);
                last_done = now;
                q.pop_front();
                progressed = true;
            }
            if submitting && q.len() < depth {
                while q.len() < depth {
                    let t = Instant::now();
                    q.push_back((ch.queue_launch(dev, &spin)?, t));
                }
                ch.ring(dev)?;
            }
        }
        if !submitting && inflight.iter().all(|q| q.is_empty()) {
            break;
        }
        let now = Instant::now();
        if progressed {
            last_progress = now;
        } else if now.duration_since(last_progress) > timeout {
            return Err(Error::Timeout {
                what: "spin completions".into(),
                after: timeout,
            });
        }
        if now.duration_since(last_check) > Duration::from_millis(100) {
            for ch in &chans {
                ch.check(dev)?;
            }
            last_check = now;
        }
        if !progressed {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    for ch in chans.drain(..) {
        ch.destroy(dev)?;
    }
    Ok(report(
        cfg.unit_us,
        cfg.channels,
        depth,
        latencies,
        last_done.duration_since(start),
        rung_since(dev, rung_before),
    ))
}

/// The doorbells rung since `before`, by how they reached the device.
fn rung_since(dev: &Device, before: crate::device::Doorbells) -> crate::device::Doorbells {
    let now = dev.doorbells();
    crate::device::Doorbells {
        untrapped: now.untrapped - before.untrapped,
        trapped: now.trapped - before.trapped,
    }
}

/// A run's report from its latencies (µs, any order) and wall time.
fn report(
    unit_us: u32,
    channels: u32,
    depth: usize,
    mut latencies: Vec<f64>,
    wall: Duration,
    doorbells: crate::device::Doorbells,
) -> LoadReport {
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(i).copied().unwrap_or(0.0)
    };
    let completed = latencies.len() as u64;
    let wall_us = wall.as_micros().max(1) as u64;
    let busy_us = completed * unit_us as u64;
    LoadReport {
        unit_us,
        channels,
        completed,
        busy_us,
        wall_us,
        utilization: busy_us as f64 / wall_us as f64,
        rate_per_s: completed as f64 / (wall_us as f64 / 1e6),
        latency_p50_us: pct(0.50),
        latency_p99_us: pct(0.99),
        latency_max_us: latencies.last().copied().unwrap_or(0.0),
        depth,
        doorbells,
    }
}

/// A latency probe: one `spin` of `unit_us` at a time on channel 0, each
/// waited for (polling), then `gap` of nothing, for `duration`: what a
/// latency-sensitive tenant sees beside busy neighbours (its latency
/// percentiles; utilization is its own small load).
pub fn probe(
    dev: &mut Device,
    unit_us: u32,
    duration: Duration,
    gap: Duration,
) -> Result<LoadReport> {
    if unit_us == 0 || unit_us as u64 * 1000 > SPIN_MAX_NS {
        return Err(Error::InvalidArgument(format!("unit of {unit_us} us")));
    }
    let ccfg = ChannelConfig {
        gpfifo_entries: GPFIFO_ENTRIES,
        segment_bytes: 1024,
        interrupt_fences: false,
    };
    let mut ch = Channel::new(dev, 0, ccfg)?;
    let spin = Program::Spin {
        dst: 0,
        units: unit_us,
        unit_ns: 1000,
    };
    let rung_before = dev.doorbells();
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut last_done = start;
    while start.elapsed() < duration {
        let t = Instant::now();
        let f = ch.launch(dev, &spin)?;
        ch.wait(
            dev,
            f,
            crate::channel::WaitMode::Poll,
            Duration::from_secs(10),
        )?;
        last_done = Instant::now();
        latencies.push(last_done.duration_since(t).as_secs_f64() * 1e6);
        std::thread::sleep(gap);
    }
    ch.destroy(dev)?;
    Ok(report(
        unit_us,
        1,
        1,
        latencies,
        last_done.duration_since(start),
        rung_since(dev, rung_before),
    ))
}
