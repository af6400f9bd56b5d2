//! Guest PTX (ABI §5.4): the `ptx` check (a module loaded with its JIT
//! log, a kernel run on VRAM that kernels can reach, a module the JIT
//! rejects) and the `ptx-fault` scenarios (an illegal address, a runaway
//! kernel, repeated faults) with which a tenant tests how the host
//! contains a faulting vGPU.
//!
//! The kernels come from `tests/gpu/ptx/kernels.cu` (compiled with
//! `nvcc -ptx`): `vec_add(const float* x, const float* y, float* out,
//! unsigned n)`, `poke(unsigned* p, unsigned v)` and
//! `spin_forever(unsigned* flag)`.
//!
//! A kernel reaches VRAM only through `PTX_VA_BASE + va` and only in whole
//! 2 MiB chunks ([`Device::alloc_for_kernels`]); anything else faults
//! with `KERNEL_FAULT`, which loses the vGPU's engine context: modules
//! are unloaded, VRAM contents are lost and an engine reset brings a new
//! context (held back by the host after repeated faults, while the
//! vGPU's work fails at once with `ENGINE_ERROR`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::channel::{Channel, ChannelConfig, WaitMode};
use crate::check::Check;
use crate::device::{Buffer, Device};
use crate::error::{Error, ErrorCode, Result};
use crate::gmmu::{PAGE_2M, VA_BITS};
use crate::programs::KernelParams;
use crate::pushbuf::Pushbuf;

/// PTX text the JIT must reject (a syntax error in a function body).
pub const BROKEN_PTX: &str = ".version 7.0\n.target sm_70\n.address_size 64\n\
.visible .entry broken(.param .u64 p)\n{\n\tthis is not an instruction;\n\tret;\n}\n";

/// Elements of the `vec_add` check: 4 MiB per buffer.
const VEC_N: u32 = 1 << 20;
/// Threads per block of every launch.
const BLOCK: u32 = 256;
/// How long a launch may take before the check gives up waiting.
const WAIT: Duration = Duration::from_secs(30);
/// How long to retry a fresh context while the host holds restarts back
/// (at most 30 s after the last fault).
const CONTEXT_WAIT: Duration = Duration::from_secs(40);

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The outcome of the `ptx` check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PtxReport {
    pub passed: bool,
    /// `PTX_VA_BASE`.
    pub ptx_va_base: u64,
    /// Bytes of the JIT's info log for the module.
    pub info_log_bytes: usize,
    /// Bytes of the JIT's error log for the broken module.
    pub error_log_bytes: usize,
    pub checks: Vec<Check>,
}

/// One step's result: a detail, or why it failed.
type Step = std::result::Result<String, String>;

fn err(e: Error) -> String {
    e.to_string()
}

/// The `ptx` check: load `text` into slot 0, run `vec_add` over
/// 2^20 floats in VRAM reachable by kernels and check every element
/// exactly; load [`BROKEN_PTX`] into slot 1 and check it fails with
/// `MODULE_INVALID` and a non-empty log; run slot 0 again. Uses channel 0.
pub fn check(dev: &mut Device, text: &str, on_check: &mut dyn FnMut(&Check)) -> PtxReport {
    let mut r = PtxReport {
        ptx_va_base: dev.ptx_va_base(),
        ..PtxReport::default()
    };
    let mut push = |r: &mut PtxReport, name: &str, start: Instant, s: Step| -> bool {
        let c = Check::finished(name, start, s);
        let passed = c.passed;
        on_check(&c);
        r.checks.push(c);
        passed
    };
    let start = Instant::now();
    let caps: Step = if dev.identity().ptx() {
        Ok(format!(
            "CAPS.PTX = 1, PTX_VA_BASE = {:#x}",
            dev.ptx_va_base()
        ))
    } else {
        Err("CAPS.PTX = 0: this vGPU does not run guest PTX".into())
    };
    if !push(&mut r, "CAPS.PTX", start, caps) {
        return r;
    }
    let start = Instant::now();
    let mut ch = match dev
        .engine_reset()
        .and_then(|_| Channel::new(dev, 0, ChannelConfig::default()))
    {
        Ok(c) => c,
        Err(e) => {
            push(&mut r, "channel setup", start, Err(err(e)));
            return r;
        }
    };
    let start = Instant::now();
    let loaded = match ch.load_ptx(dev, 0, text) {
        Ok(log) => {
            r.info_log_bytes = log.len();
            Ok(format!("slot 0: info log of {} bytes", log.len()))
        }
        Err(e) => Err(err(e)),
    };
    if push(&mut r, "load module", start, loaded) {
        let bufs = (|| {
            let len = VEC_N as u64 * 4;
            Ok::<_, Error>([
                dev.alloc_for_kernels(len)?,
                dev.alloc_for_kernels(len)?,
                dev.alloc_for_kernels(len)?,
            ])
        })();
        match bufs {
            Ok(bufs) => {
                let start = Instant::now();
                let s = fill_inputs(dev, &mut ch, &bufs)
                    .map_err(err)
                    .and_then(|_| vec_add(dev, &mut ch, &bufs));
                push(&mut r, "vec_add n=2^20 (VRAM, exact)", start, s);

                let start = Instant::now();
                let s = match ch.load_ptx(dev, 1, BROKEN_PTX) {
                    Err(Error::ModuleInvalid { info, log, .. }) if !log.trim().is_empty() => {
                        r.error_log_bytes = log.len();
                        let first = log.lines().next().unwrap_or("");
                        Ok(format!(
                            "MODULE_INVALID, CUDA error {info}, log of {} bytes: {}",
                            log.len(),
                            first.chars().take(160).collect::<String>()
                        ))
                    }
                    Err(Error::ModuleInvalid { info, .. }) => Err(format!(
                        "MODULE_INVALID (CUDA error {info}) with an empty log"
                    )),
                    Ok(log) => Err(format!("broken PTX loaded (log: {log:?})")),
                    Err(e) => Err(format!("expected MODULE_INVALID, got: {e}")),
                };
                push(&mut r, "broken module rejected", start, s);

                let start = Instant::now();
                let s = vec_add(dev, &mut ch, &bufs)
                    .map(|d| format!("{d}; channel {} recovered", ch.id()));
                push(&mut r, "slot 0 after the rejection", start, s);
                for b in bufs {
                    let _ = dev.free(b);
                }
            }
            Err(e) => {
                push(
                    &mut r,
                    "allocate kernel buffers",
                    Instant::now(),
                    Err(err(e)),
                );
            }
        }
    }
    let _ = ch.destroy(dev);
    r.passed = !r.checks.is_empty() && r.checks.iter().all(|c| c.passed);
    r
}

fn f32_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// x[i] = i, y[i] = 2i + 0.5: exact in f32 for i < 2^21.
fn inputs(i: u32) -> (f32, f32) {
    (i as f32, 2.0 * i as f32 + 0.5)
}

fn fill_inputs(dev: &mut Device, ch: &mut Channel, b: &[Buffer; 3]) -> Result<()> {
    ch.upload(dev, &b[0], 0, &f32_bytes((0..VEC_N).map(|i| inputs(i).0)))?;
    ch.upload(dev, &b[1], 0, &f32_bytes((0..VEC_N).map(|i| inputs(i).1)))
}

/// Poison `out`, run `vec_add(x, y, out, n)` from slot 0 and check every
/// element against the f32 sum.
fn vec_add(dev: &mut Device, ch: &mut Channel, b: &[Buffer; 3]) -> Step {
    let n = VEC_N;
    let run = |dev: &mut Device, ch: &mut Channel| -> Result<(Vec<u8>, Duration)> {
        let mut pb = Pushbuf::new();
        pb.memset_1d(b[2].va(), 0xFFFF_FFFF, n * 4);
        let f = ch.submit(dev, &pb)?;
        ch.wait(dev, f, WaitMode::Poll, WAIT)?;
        let p = KernelParams::new()
            .ptr(dev.kernel_ptr(&b[0]))
            .ptr(dev.kernel_ptr(&b[1]))
            .ptr(dev.kernel_ptr(&b[2]))
            .u32(n);
        let t = Instant::now();
        let f = ch.launch_ptx(
            dev,
            0,
            "vec_add",
            [n.div_ceil(BLOCK), 1, 1],
            [BLOCK, 1, 1],
            p.bytes(),
        )?;
        ch.wait(dev, f, WaitMode::Interrupt, WAIT)?;
        let took = t.elapsed();
        Ok((ch.download(dev, &b[2], 0, n as u64 * 4)?, took))
    };
    let (got, took) = run(dev, ch).map_err(err)?;
    let mut wrong = 0u32;
    let mut first = None;
    for (i, c) in got.chunks_exact(4).enumerate() {
        let g = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let (x, y) = inputs(i as u32);
        let want = x + y;
        if g.to_bits() != want.to_bits() {
            wrong += 1;
            first.get_or_insert((i, g, want));
        }
    }
    match first {
        None => Ok(format!(
            "{n} sums exact, launch to fence {} us",
            took.as_micros()
        )),
        Some((i, g, w)) => Err(format!("{wrong} of {n} wrong; out[{i}] = {g}, want {w}")),
    }
}

/// Which fault `ptx-fault` provokes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `poke` through a pointer to an unmapped VA: `KERNEL_FAULT`.
    Illegal,
    /// `spin_forever`: the host's kernel limit stops it, `ENGINE_TIMEOUT`.
    Runaway,
    /// Reset, load, illegal `poke`, again and again for a while.
    Repeat,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Illegal => "illegal",
            FaultKind::Runaway => "runaway",
            FaultKind::Repeat => "repeat",
        }
    }
}

/// One outcome of a repeat iteration, at `t_ms` from the start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultEvent {
    pub t_ms: f64,
    /// An error code's name, `no_fault`, or `driver_error`.
    pub outcome: String,
}

/// What a `ptx-fault` run saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FaultReport {
    pub kind: &'static str,
    pub passed: bool,
    pub detail: String,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    /// Engine resets until a fresh context accepted the module, and how
    /// long that took (the host may hold restarts back after faults).
    pub context_attempts: u32,
    pub context_wait_ms: f64,
    /// The pointer `poke` was given (illegal, repeat).
    pub bad_ptr: Option<u64>,
    /// The code the channel stopped with (illegal, runaway).
    pub code: Option<String>,
    pub code_raw: Option<u8>,
    /// `CH_ERROR_INFO` with it.
    pub info: Option<u32>,
    /// From the launch to the channel's stop, in ms (illegal, runaway).
    pub elapsed_ms: Option<f64>,
    /// Repeat: iterations and their outcomes by code.
    pub iterations: u64,
    pub kernel_fault: u64,
    pub engine_error: u64,
    /// Other error codes.
    pub other: u64,
    /// Launches that completed although their pointer was bad.
    pub no_fault: u64,
    /// Errors not from the device's channel (timeouts, transport).
    pub driver_errors: u64,
    pub codes: BTreeMap<String, u64>,
    pub events: Vec<FaultEvent>,
    /// The first few driver errors.
    pub errors: Vec<String>,
}

fn code_name(c: ErrorCode) -> String {
    c.name()
        .map_or_else(|| format!("{:#04x}", c.raw()), str::to_string)
}

/// The VA `poke` writes through in the illegal and repeat kinds: the top
/// 2 MiB of the GPU address space, which this driver never maps.
pub fn unmapped_va() -> u64 {
    (1u64 << VA_BITS) - PAGE_2M
}

/// Reset the engine and load `text` into slot 0 on `ch`, retrying while
/// the host holds restarts back (work fails with `ENGINE_ERROR`). Returns
/// the attempts made.
fn fresh_context(dev: &mut Device, ch: &mut Channel, text: &str) -> Result<u32> {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        dev.engine_reset()?;
        ch.recover(dev)?;
        match ch.load_ptx(dev, 0, text) {
            Ok(_) => return Ok(attempts),
            Err(e)
                if e.channel_code() == Some(ErrorCode::EngineError)
                    && start.elapsed() < CONTEXT_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Launch `poke(p, v)` (one thread) and wait for it: the launch's result
/// and the time from the launch to the channel's stop (or the fence).
fn poke(dev: &mut Device, ch: &mut Channel, p: u64, v: u32) -> (Result<()>, Duration) {
    let t = Instant::now();
    let params = KernelParams::new().ptr(p).u32(v);
    let r = ch
        .launch_ptx(dev, 0, "poke", [1, 1, 1], [1, 1, 1], params.bytes())
        .and_then(|f| ch.wait(dev, f, WaitMode::Interrupt, WAIT));
    (r, t.elapsed())
}

/// Provoke `kind` on channel 0 of `dev` with the kernels of `text`
/// (repeat: for `duration`). Errors of the driver are reported, not
/// returned, once the channel exists.
pub fn fault(dev: &mut Device, text: &str, kind: FaultKind, duration: Duration) -> FaultReport {
    let mut r = FaultReport {
        kind: kind.name(),
        start_unix_ms: unix_ms(),
        ..FaultReport::default()
    };
    if !dev.identity().ptx() {
        r.detail = "CAPS.PTX = 0: this vGPU does not run guest PTX".into();
        r.end_unix_ms = unix_ms();
        return r;
    }
    let mut ch = match dev
        .engine_reset()
        .and_then(|_| Channel::new(dev, 0, ChannelConfig::default()))
    {
        Ok(c) => c,
        Err(e) => {
            r.detail = format!("channel setup: {e}");
            r.end_unix_ms = unix_ms();
            return r;
        }
    };
    match kind {
        FaultKind::Illegal | FaultKind::Runaway => {
            let t = Instant::now();
            match fresh_context(dev, &mut ch, text) {
                Ok(n) => {
                    r.context_attempts = n;
                    r.context_wait_ms = t.elapsed().as_secs_f64() * 1e3;
                    single(dev, &mut ch, kind, &mut r);
                }
                Err(e) => r.detail = format!("no fresh context: {e}"),
            }
        }
        FaultKind::Repeat => repeat(dev, &mut ch, text, duration, &mut r),
    }
    let _ = ch.recover(dev);
    let _ = ch.destroy(dev);
    r.end_unix_ms = unix_ms();
    r
}

/// The illegal and runaway kinds, after a fresh context.
fn single(dev: &mut Device, ch: &mut Channel, kind: FaultKind, r: &mut FaultReport) {
    let (want, res, took, flag) = match kind {
        FaultKind::Illegal => {
            let p = dev.kernel_addr(unmapped_va());
            r.bad_ptr = Some(p);
            let (res, took) = poke(dev, ch, p, 0xDEAD);
            (ErrorCode::KernelFault, res, took, None)
        }
        _ => {
            // A zeroed word the kernel spins on; the host never sets it.
            let flag = match dev.alloc_for_kernels(4) {
                Ok(b) => b,
                Err(e) => {
                    r.detail = format!("flag buffer: {e}");
                    return;
                }
            };
            let t = Instant::now();
            let res = (|| {
                let mut pb = Pushbuf::new();
                pb.memset_1d(flag.va(), 0, 4096);
                let f = ch.submit(dev, &pb)?;
                ch.wait(dev, f, WaitMode::Poll, WAIT)?;
                let params = KernelParams::new().ptr(dev.kernel_ptr(&flag));
                let f =
                    ch.launch_ptx(dev, 0, "spin_forever", [1, 1, 1], [1, 1, 1], params.bytes())?;
                // Measured from the launch: the kernel limit runs from there.
                Ok::<_, Error>((f, Instant::now()))
            })();
            match res {
                Ok((f, launched)) => {
                    let res = ch.wait(dev, f, WaitMode::Interrupt, Duration::from_secs(120));
                    (
                        ErrorCode::EngineTimeout,
                        res,
                        launched.elapsed(),
                        Some(flag),
                    )
                }
                Err(e) => (ErrorCode::EngineTimeout, Err(e), t.elapsed(), Some(flag)),
            }
        }
    };
    r.elapsed_ms = Some(took.as_secs_f64() * 1e3);
    match res {
        Err(Error::ChannelFault { code, info, .. }) => {
            r.code = Some(code_name(code));
            r.code_raw = Some(code.raw());
            r.info = Some(info);
            let accepted =
                code == want || (kind == FaultKind::Illegal && code == ErrorCode::EngineError);
            r.passed = accepted;
            r.detail = format!(
                "channel stopped with {code} (info {info:#x}) {:.1} ms after the launch{}",
                took.as_secs_f64() * 1e3,
                if code == want {
                    String::new()
                } else if accepted {
                    format!(", not {want}")
                } else {
                    format!("; expected {want}")
                }
            );
        }
        Ok(()) => r.detail = format!("the kernel completed; expected {want}"),
        Err(e) => r.detail = format!("expected {want}, got: {e}"),
    }
    if let Some(flag) = flag {
        let _ = ch.recover(dev);
        let _ = dev.free(flag);
    }
}

/// The repeat kind: for `duration`, reset, load, illegal `poke`, count.
fn repeat(dev: &mut Device, ch: &mut Channel, text: &str, duration: Duration, r: &mut FaultReport) {
    let p = dev.kernel_addr(unmapped_va());
    r.bad_ptr = Some(p);
    let start = Instant::now();
    while start.elapsed() < duration {
        r.iterations += 1;
        let res = dev
            .engine_reset()
            .and_then(|_| ch.recover(dev))
            .and_then(|_| ch.load_ptx(dev, 0, text).map(|_| ()))
            .and_then(|_| {
                let (res, _) = poke(dev, ch, p, 0xDEAD);
                res
            });
        let outcome = match &res {
            Ok(()) => {
                r.no_fault += 1;
                "no_fault".to_string()
            }
            Err(e) => match e.channel_code() {
                Some(c) => {
                    match c {
                        ErrorCode::KernelFault => r.kernel_fault += 1,
                        ErrorCode::EngineError => r.engine_error += 1,
                        _ => r.other += 1,
                    }
                    code_name(c)
                }
                None => {
                    r.driver_errors += 1;
                    if r.errors.len() < 8 {
                        r.errors.push(e.to_string());
                    }
                    "driver_error".to_string()
                }
            },
        };
        *r.codes.entry(outcome.clone()).or_default() += 1;
        r.events.push(FaultEvent {
            t_ms: start.elapsed().as_secs_f64() * 1e3,
            outcome: outcome.clone(),
        });
        if outcome != "KERNEL_FAULT" {
            // Work failing at once (restarts held back): don't busy-spin.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    r.passed = r.kernel_fault >= 1 && r.no_fault == 0 && r.driver_errors == 0;
    r.detail = format!(
        "{} iterations in {:.1} s: {} KERNEL_FAULT, {} ENGINE_ERROR, {} other, {} no fault, {} driver errors",
        r.iterations,
        start.elapsed().as_secs_f64(),
        r.kernel_fault,
        r.engine_error,
        r.other,
        r.no_fault,
        r.driver_errors
    );
}
