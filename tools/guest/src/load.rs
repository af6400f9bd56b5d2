//! Load generators: one keeps a vGPU saturated with `spin` work of a
//! fixed size per command and measures what it gets; the other runs
//! checked `saxpy` items and records their progress over time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::channel::{Channel, ChannelConfig, Fence};
use crate::device::{Buffer, Device, Placement};
use crate::error::{Error, ErrorCode, Result};
use crate::programs::{Program, SPIN_MAX_NS};

/// GPFIFO entries per channel: room for [`depth`] commands.
const GPFIFO_ENTRIES: u32 = 64;

/// Commands kept in flight per channel: about 8 ms of work (four 2 ms
/// timeslices), at least four, so that the host scheduler sees the tenant
/// backlogged across its neighbours' slices even when this thread waits
/// milliseconds for a CPU (a busy host), and short commands never leave the
/// engine waiting for the driver. New ones go in batches, one doorbell each.
fn depth(unit_us: u32) -> usize {
    (8000 / unit_us.max(1) as usize).clamp(4, GPFIFO_ENTRIES as usize - 1)
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

/// A checked saxpy load: what a tenant sees of its own correctness and
/// progress while others misbehave.
#[derive(Clone, Copy, Debug)]
pub struct SaxpyConfig {
    /// Elements per item.
    pub n: u32,
    /// How long to keep submitting.
    pub duration: Duration,
    /// Channels submitting concurrently (0..channels).
    pub channels: u32,
}

/// Elements per saxpy item by default: 64 Ki floats (256 KiB per buffer),
/// some tens of µs per item with its two copies.
pub const SAXPY_N: u32 = 1 << 16;

/// Items kept in flight per channel (each in its own pair of buffers).
const SAXPY_DEPTH: usize = 4;

/// The `a` of consecutive items of one buffer pair alternate, so that a
/// stale result (an item that did not run) never passes the check.
const SAXPY_A: [f32; 2] = [0.75, -1.25];

/// Width of a [`SaxpyReport::timeline`] bucket.
const BUCKET_MS: u64 = 100;

/// What a checked saxpy run saw.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SaxpyReport {
    pub n: u32,
    pub channels: u32,
    pub depth: usize,
    /// Items completed and checked.
    pub items: u64,
    /// Completed items whose result differed from `a·x + y` (f32 FMA).
    pub wrong: u64,
    /// Channel stops (and other driver errors) the run recovered from;
    /// the items in flight then are lost, not counted.
    pub errors: u64,
    /// Those errors by code.
    pub error_codes: std::collections::BTreeMap<String, u64>,
    /// The first few errors, as text.
    pub first_errors: Vec<String>,
    /// Wall time of the run, in µs.
    pub wall_us: u64,
    pub items_per_s: f64,
    /// Longest and median time between consecutive completions (any
    /// channel), in µs; the longest includes the run's start and end.
    pub max_gap_us: f64,
    pub p50_gap_us: f64,
    /// Wall clock at the start, ms since the Unix epoch.
    pub start_unix_ms: u64,
    pub bucket_ms: u64,
    /// Completions per [`bucket_ms`](Self::bucket_ms) from the start.
    pub timeline: Vec<u64>,
}

/// One item's buffers: `y` (VRAM) gets a copy of `y0`, the saxpy, and is
/// copied to `out` (system memory) for the check.
struct SaxpySlot {
    y: Buffer,
    out: Buffer,
    uses: u64,
}

struct Lane {
    ch: Channel,
    slots: Vec<SaxpySlot>,
    /// (fence, slot, which `a`), oldest first.
    inflight: VecDeque<(Fence, usize, usize)>,
    next: usize,
}

/// The inputs, in VRAM, and the expected results in bytes.
struct SaxpyData {
    x: Buffer,
    y0: Buffer,
    xs: Vec<u8>,
    ys: Vec<u8>,
    want: [Vec<u8>; 2],
}

fn saxpy_inputs(n: u32) -> (Vec<f32>, Vec<f32>) {
    let mut seed = 0x5A5A_1234_u64;
    let mut f = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let x = (0..n).map(|_| f()).collect();
    let y = (0..n).map(|_| f()).collect();
    (x, y)
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Run checked saxpy items on `dev` for `cfg.duration`: each item copies
/// `y0` into its `y`, runs the built-in `saxpy` (`y = a·x + y`, fused
/// multiply-add) and copies `y` to system memory, where every element is
/// compared bit for bit with `f32::mul_add`. Wrong results are counted;
/// channel stops are counted and recovered from (after a lost engine
/// context, `ENGINE_ERROR` or `KERNEL_FAULT`, with an engine reset and
/// the inputs uploaded again), and the run goes on.
pub fn saxpy(dev: &mut Device, cfg: &SaxpyConfig) -> Result<SaxpyReport> {
    if cfg.n == 0 || cfg.n > 1 << 24 {
        return Err(Error::InvalidArgument(format!(
            "saxpy of {} elements",
            cfg.n
        )));
    }
    if cfg.channels == 0 || cfg.channels > dev.identity().channels {
        return Err(Error::InvalidArgument(format!(
            "{} channels of {}",
            cfg.channels,
            dev.identity().channels
        )));
    }
    let bytes = cfg.n as u64 * 4;
    let (x, y) = saxpy_inputs(cfg.n);
    let want = SAXPY_A.map(|a| {
        le_bytes(
            &x.iter()
                .zip(&y)
                .map(|(&x, &y)| a.mul_add(x, y))
                .collect::<Vec<_>>(),
        )
    });
    let data = SaxpyData {
        x: dev.alloc(Placement::Vram, bytes)?,
        y0: dev.alloc(Placement::Vram, bytes)?,
        xs: le_bytes(&x),
        ys: le_bytes(&y),
        want,
    };
    let ccfg = ChannelConfig {
        gpfifo_entries: 16,
        segment_bytes: 1024,
        interrupt_fences: false,
    };
    let mut lanes = Vec::new();
    for id in 0..cfg.channels {
        let mut slots = Vec::new();
        for _ in 0..SAXPY_DEPTH {
            slots.push(SaxpySlot {
                y: dev.alloc(Placement::Vram, bytes)?,
                out: dev.alloc(Placement::Sysmem, bytes)?,
                uses: 0,
            });
        }
        lanes.push(Lane {
            ch: Channel::new(dev, id, ccfg)?,
            slots,
            inflight: VecDeque::new(),
            next: 0,
        });
    }
    let mut r = SaxpyReport {
        n: cfg.n,
        channels: cfg.channels,
        depth: SAXPY_DEPTH,
        items: 0,
        wrong: 0,
        errors: 0,
        error_codes: Default::default(),
        first_errors: Vec::new(),
        wall_us: 0,
        items_per_s: 0.0,
        max_gap_us: 0.0,
        p50_gap_us: 0.0,
        start_unix_ms: crate::ptx::unix_ms(),
        bucket_ms: BUCKET_MS,
        timeline: Vec::new(),
    };
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut done: Vec<Duration> = Vec::new();
    // Inputs uploaded (again after a lost context).
    let mut ready = false;
    let mut last_check = start;
    let mut last_progress = start;
    while Instant::now() < deadline || lanes.iter().any(|l| !l.inflight.is_empty()) {
        let res = (|| -> Result<bool> {
            if !ready {
                let ch = &mut lanes[0].ch;
                ch.upload(dev, &data.x, 0, &data.xs)?;
                ch.upload(dev, &data.y0, 0, &data.ys)?;
                ready = true;
            }
            let mut progressed = false;
            let submitting = Instant::now() < deadline;
            for lane in lanes.iter_mut() {
                while let Some(&(f, slot, a)) = lane.inflight.front() {
                    if !lane.ch.reached(f)? {
                        break;
                    }
                    lane.inflight.pop_front();
                    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                    let now = start.elapsed();
                    let got = lane.slots[slot].out.host()?;
                    let mut buf = vec![0u8; bytes as usize];
                    got.read(0, &mut buf)?;
                    r.items += 1;
                    if buf != data.want[a] {
                        r.wrong += 1;
                    }
                    done.push(now);
                    progressed = true;
                }
                if submitting && lane.inflight.len() < SAXPY_DEPTH {
                    while lane.inflight.len() < SAXPY_DEPTH {
                        let slot = lane.next;
                        lane.next = (lane.next + 1) % SAXPY_DEPTH;
                        let s = &mut lane.slots[slot];
                        let a = (s.uses % 2) as usize;
                        s.uses += 1;
                        let (y, out) = (s.y.va(), s.out.va());
                        let mut seg = lane.ch.segment(dev, Duration::from_secs(10))?;
                        seg.pb.copy_1d(data.y0.va(), y, bytes as u32);
                        seg.launch(&Program::Saxpy {
                            x: data.x.va(),
                            y,
                            n: cfg.n,
                            a: SAXPY_A[a],
                        })?;
                        seg.pb.copy_1d(y, out, bytes as u32);
                        let f = seg.queue()?;
                        lane.inflight.push_back((f, slot, a));
                    }
                    lane.ch.ring(dev)?;
                }
            }
            let now = Instant::now();
            if progressed {
                last_progress = now;
            } else if now.duration_since(last_progress) > Duration::from_secs(10) {
                return Err(Error::Timeout {
                    what: "saxpy completions".into(),
                    after: Duration::from_secs(10),
                });
            }
            if now.duration_since(last_check) > Duration::from_millis(20) {
                last_check = now;
                for lane in &lanes {
                    lane.ch.check(dev)?;
                }
            }
            Ok(progressed)
        })();
        match res {
            Ok(true) => {}
            Ok(false) => std::thread::sleep(Duration::from_micros(20)),
            Err(e) => {
                r.errors += 1;
                let code = e.channel_code();
                let key = code.map_or_else(
                    || "driver_error".to_string(),
                    |c| {
                        c.name()
                            .map_or_else(|| format!("{:#04x}", c.raw()), str::to_string)
                    },
                );
                *r.error_codes.entry(key).or_default() += 1;
                if r.first_errors.len() < 8 {
                    r.first_errors
                        .push(format!("{:.3} s: {e}", start.elapsed().as_secs_f64()));
                }
                // Work in flight is lost; start every channel afresh.
                let lost_context = matches!(
                    code,
                    Some(ErrorCode::EngineError | ErrorCode::KernelFault) | None
                );
                let _ = recover_lanes(dev, &mut lanes, lost_context);
                if lost_context {
                    ready = false;
                }
                last_progress = Instant::now();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let wall = start.elapsed();
    for lane in lanes {
        let _ = lane.ch.destroy(dev);
        for s in lane.slots {
            let _ = dev.free(s.y);
            let _ = dev.free(s.out);
        }
    }
    let _ = dev.free(data.x);
    let _ = dev.free(data.y0);
    r.wall_us = wall.as_micros() as u64;
    r.items_per_s = r.items as f64 / wall.as_secs_f64().max(1e-9);
    let mut gaps: Vec<f64> = Vec::with_capacity(done.len() + 1);
    let mut prev = Duration::ZERO;
    for &t in &done {
        gaps.push(t.saturating_sub(prev).as_secs_f64() * 1e6);
        prev = t;
    }
    gaps.push(wall.saturating_sub(prev).as_secs_f64() * 1e6);
    r.max_gap_us = gaps.iter().copied().fold(0.0, f64::max);
    gaps.sort_by(|a, b| a.total_cmp(b));
    r.p50_gap_us = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
    let buckets = (wall.as_millis() as u64).div_ceil(BUCKET_MS).max(1) as usize;
    r.timeline = vec![0; buckets];
    for t in done {
        let b = (t.as_millis() as u64 / BUCKET_MS) as usize;
        if let Some(c) = r.timeline.get_mut(b.min(buckets - 1)) {
            *c += 1;
        }
    }
    Ok(r)
}

/// Recover every lane's channel (dropping its work in flight), after an
/// engine reset when the engine context was lost.
fn recover_lanes(dev: &mut Device, lanes: &mut [Lane], reset: bool) -> Result<()> {
    if reset {
        dev.engine_reset()?;
    }
    for lane in lanes.iter_mut() {
        lane.inflight.clear();
        lane.ch.recover(dev)?;
    }
    Ok(())
}
