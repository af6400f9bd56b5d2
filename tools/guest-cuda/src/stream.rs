//! Streams on channels.
//!
//! The legacy default stream (and the per-thread default stream, which this driver treats as
//! the legacy one) is channel 0. Created streams take the other channels round robin, several
//! to a channel when they outnumber them: work of a channel runs in order, which only
//! serialises streams that share one, as CUDA allows. Legacy default-stream ordering is built
//! from semaphore acquires ([`crate::driver::Driver::submit`]).
//!
//! Host functions (`cuLaunchHostFunc`, `cuStreamAddCallback`) run on one thread of the
//! library: the stream's channel acquires a gate semaphore that the thread releases after the
//! function has run, and the thread starts the function once the work before it is done.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use vgpu_guest::{Buffer, Fence, Placement};

use crate::driver::{wait, with, Driver};
use crate::error::{err, CuError, Result};
use crate::types::*;

/// The channel of the legacy default stream.
pub const LEGACY_CHANNEL: u32 = 0;

/// A stream as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKey {
    /// The legacy (or per-thread) default stream.
    Legacy,
    Created(usize),
}

impl StreamKey {
    /// The stream a `CUstream` names (null, `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` are
    /// the default stream).
    pub fn of(h: Handle) -> StreamKey {
        match h as usize {
            0 | CU_STREAM_LEGACY | CU_STREAM_PER_THREAD => StreamKey::Legacy,
            h => StreamKey::Created(h),
        }
    }
}

/// How a stream orders itself against the legacy default stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Legacy,
    Blocking,
    NonBlocking,
}

/// A created stream.
#[derive(Clone, Debug)]
pub struct Stream {
    pub ctx: usize,
    pub channel: u32,
    pub flags: u32,
    pub priority: i32,
    pub last: Option<Fence>,
    pub id: u64,
}

/// The streams of the process.
#[derive(Debug, Default)]
pub struct Streams {
    pub map: HashMap<usize, Stream>,
    /// The legacy default stream's last work.
    pub legacy_last: Option<Fence>,
    next_channel: u32,
    next_id: u64,
}

impl Streams {
    /// The channel of stream `s` and how it orders itself.
    pub fn route(&self, s: StreamKey) -> Result<(u32, Kind)> {
        match s {
            StreamKey::Legacy => Ok((LEGACY_CHANNEL, Kind::Legacy)),
            StreamKey::Created(h) => {
                let st = self.map.get(&h).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
                let kind = if st.flags & CU_STREAM_NON_BLOCKING != 0 {
                    Kind::NonBlocking
                } else {
                    Kind::Blocking
                };
                Ok((st.channel, kind))
            }
        }
    }

    /// The channels of blocking streams (the legacy stream waits for them).
    pub fn blocking_channels(&self) -> Vec<u32> {
        let mut c: Vec<u32> = self
            .map
            .values()
            .filter(|s| s.flags & CU_STREAM_NON_BLOCKING == 0)
            .map(|s| s.channel)
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// Work `f` was submitted to `s`.
    pub fn submitted(&mut self, s: StreamKey, f: Fence) {
        match s {
            StreamKey::Legacy => self.legacy_last = Some(f),
            StreamKey::Created(h) => {
                if let Some(st) = self.map.get_mut(&h) {
                    st.last = Some(f);
                }
            }
        }
    }

    /// The last work of `s`.
    pub fn last(&self, s: StreamKey) -> Result<Option<Fence>> {
        match s {
            StreamKey::Legacy => Ok(self.legacy_last),
            StreamKey::Created(h) => Ok(self
                .map
                .get(&h)
                .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?
                .last),
        }
    }

    /// Forget the streams of context `ctx`.
    pub fn release(&mut self, ctx: usize) {
        self.map.retain(|_, s| s.ctx != ctx);
    }
}

impl Driver {
    /// `cuStreamCreateWithPriority`.
    pub fn stream_create(&mut self, flags: u32, priority: i32) -> Result<usize> {
        let ctx = self.current()?;
        if flags & !CU_STREAM_NON_BLOCKING != 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let n = self.chans.len() as u32;
        let control = self.control_channel();
        // Channels 1.. except the control channel; channel 0 when there is no other.
        let pool: Vec<u32> = (1..n).filter(|&c| c != control || n == 2).collect();
        let channel = if pool.is_empty() {
            LEGACY_CHANNEL
        } else {
            let c = pool[self.streams.next_channel as usize % pool.len()];
            self.streams.next_channel = self.streams.next_channel.wrapping_add(1);
            c
        };
        self.chan(channel)?;
        let h = self.handle();
        self.streams.next_id += 1;
        let id = self.streams.next_id;
        self.streams.map.insert(
            h,
            Stream {
                ctx,
                channel,
                flags,
                // Priorities are accepted and reported; the vGPU's channels have none.
                priority: priority.clamp(-5, 0),
                last: None,
                id,
            },
        );
        Ok(h)
    }

    /// The created stream `h`.
    pub fn stream(&self, h: usize) -> Result<&Stream> {
        self.streams
            .map
            .get(&h)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))
    }

    /// Whether stream `s`'s work is done (`cuStreamQuery`).
    pub fn stream_done(&mut self, s: StreamKey) -> Result<bool> {
        self.check_sticky()?;
        match self.streams.last(s)? {
            None => Ok(true),
            Some(f) => self.reached(f, true),
        }
    }
}

/// `cuStreamSynchronize`.
pub fn synchronize(s: StreamKey) -> Result<()> {
    let last = with(|d| {
        d.check_sticky()?;
        d.streams.last(s)
    })?;
    match last {
        Some(f) => wait(&[f]),
        None => with(|d| match d.pending_error.take() {
            Some(e) => err(e),
            None => Ok(()),
        }),
    }
}

/// `cuCtxSynchronize`: every channel's work so far.
pub fn synchronize_all() -> Result<()> {
    let fences = with(|d| {
        d.check_sticky()?;
        d.outstanding()
    })?;
    wait(&fences)
}

// ---- host functions ---------------------------------------------------------------

/// A host function with its argument, sent to the host-function thread.
struct HostCall {
    f: extern "C" fn(*mut c_void),
    data: usize,
    /// The work the function must follow.
    after: Option<Fence>,
    /// The gate semaphore's CPU address (a u32 the stream's channel acquires = 1).
    gate: usize,
}

/// Gate semaphores: one page of DMA memory mapped for the device, 1024 u32 slots, reused.
#[derive(Default)]
pub struct Gates {
    buf: Option<Buffer>,
    next: usize,
}

const GATES: usize = 1024;

fn host_thread() -> &'static Mutex<mpsc::Sender<HostCall>> {
    static TX: OnceLock<Mutex<mpsc::Sender<HostCall>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<HostCall>();
        std::thread::Builder::new()
            .name("cuda-host-fn".into())
            .spawn(move || {
                for call in rx {
                    if let Some(f) = call.after {
                        // A failed wait (a fault) still runs the function, as CUDA runs
                        // callbacks of a stream in error.
                        let _ = wait(&[f]);
                    }
                    (call.f)(call.data as *mut c_void);
                    // SAFETY: `gate` is the CPU address of a u32 slot of the gate page,
                    // which the driver keeps mapped for the life of the process; the device
                    // only reads it.
                    unsafe { std::ptr::write_volatile(call.gate as *mut u32, 1) };
                    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                }
            })
            .ok();
        Mutex::new(tx)
    })
}

impl Driver {
    /// `cuLaunchHostFunc`: `f(data)` after the work queued on `s` so far; the stream's later
    /// work waits for it.
    pub fn host_func(
        &mut self,
        s: StreamKey,
        f: extern "C" fn(*mut c_void),
        data: usize,
    ) -> Result<()> {
        self.check_sticky()?;
        if self.gates.buf.is_none() {
            self.gates.buf = Some(self.dev.alloc(Placement::Sysmem, (GATES * 4) as u64)?);
        }
        let buf = self.gates.buf.as_ref().ok_or(CuError(CUDA_ERROR_UNKNOWN))?;
        let slot = self.gates.next % GATES;
        self.gates.next += 1;
        let host = buf.host()?;
        host.write_u32(slot * 4, 0)?;
        let gate_va = buf.va() + slot as u64 * 4;
        let gate_cpu = host.as_ptr() as usize + slot * 4;
        let after = self.streams.last(s)?;
        self.submit(s, |seg| {
            seg.pb.sem_acquire(gate_va, 1, true, false);
            Ok(())
        })?;
        host_thread()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(HostCall {
                f,
                data,
                after,
                gate: gate_cpu,
            })
            .map_err(|_| CuError(CUDA_ERROR_UNKNOWN))
    }
}
