//! The GPU's own timeline of a worker's `spin` kernels: where the GPU's
//! time goes at a switch between vGPUs, measured by the GPU.
//!
//! Each vGPU's worker is a process with a CUDA context of its own, so two
//! busy vGPUs hand the GPU to each other at every switch of the scheduler:
//! one context's last kernel of a slice ends, the other's first one starts.
//! The host sees neither moment, only the completions after them. Every
//! context on a GPU reads one global timer (`%globaltimer`, ns), so the
//! kernels' own readings of it put two workers' kernels on one time line.
//!
//! Where the worker's environment names [`ENV`] (a worker inherits
//! vgpud's): each `spin` writes its start and end by that timer into a
//! slot of mapped host memory; the completion thread folds the kernels
//! into runs (kernels at most [`RUN_GAP_NS`] apart: a slice's, on the GPU)
//! and prints them on the worker's stderr, vgpud's log, when the daemon
//! closes the socket:
//!
//! ```text
//! spin timeline: clock offset GPU - realtime OFFSET ns (+- ERR)
//! spin run START END KERNELS BUSY QUEUED
//! ```
//!
//! START and END are the run's first kernel's start and last kernel's end,
//! BUSY the sum of its kernels' lengths (END - START - BUSY is what the
//! GPU idled inside the run), QUEUED when the first item was handed to the
//! worker (host `CLOCK_REALTIME`, ns; the offset line puts it on the GPU's
//! timer). `tests/gpu/switch_timeline.py` merges two workers' runs.
//! Off, a spin's slot pointer is null and nothing is written.

use cudarc::driver::sys;

use crate::driver::{ck, PinnedHost};
use crate::Error;

/// The environment variable that turns the timeline on.
pub const ENV: &str = "VGPUD_SPIN_TIMELINE";
/// Kernels at most this far apart on the GPU belong to one run.
pub const RUN_GAP_NS: u64 = 20_000;
/// Slots of 16 bytes, reused in turn: far more than the items a vGPU has
/// in flight (256).
const SLOTS: usize = 4096;
/// Runs kept for printing (about 4 MB of log at most).
const MAX_RUNS: usize = 1 << 16;

/// The submitting side: slots the spins write their times to.
pub struct Slots {
    mem: PinnedHost,
    next: usize,
}

impl Slots {
    /// The slots, where [`ENV`] is set.
    pub fn from_env() -> Result<Option<Slots>, Error> {
        if std::env::var_os(ENV).is_none() {
            return Ok(None);
        }
        let mem = PinnedHost::new(SLOTS * 16)?;
        Ok(Some(Slots { mem, next: 0 }))
    }

    /// The next slot: its device address (the kernel's `at`) and the slot
    /// (read once the kernel's item has completed).
    pub fn take(&mut self) -> (sys::CUdeviceptr, Slot) {
        let i = self.next;
        self.next = (self.next + 1) % SLOTS;
        // SAFETY: slot i lies inside the SLOTS * 16 bytes allocated.
        let host = unsafe { self.mem.host.cast::<u64>().add(2 * i) };
        (self.mem.dev + 16 * i as u64, Slot(host.cast_const()))
    }
}

/// One spin's 16 bytes of mapped host memory: its start and end by the
/// GPU's timer.
pub struct Slot(*const u64);

impl Slot {
    /// The start and end: to be read once the spin's item has completed
    /// (the kernel wrote the slot before it ended).
    pub fn read(&self) -> (u64, u64) {
        // SAFETY: the pointer came from [`Slots::take`]: 16 bytes of
        // mapped host memory that live as long as the worker (the slots
        // are dropped after the completion thread has ended); the kernel
        // that writes them has completed and no other writes them until
        // the ring comes round, 4096 spins later.
        unsafe {
            (
                std::ptr::read_volatile(self.0),
                std::ptr::read_volatile(self.0.add(1)),
            )
        }
    }
}

/// `CLOCK_REALTIME` now, in ns.
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One run of kernels back to back on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
    pub kernels: u64,
    pub busy: u64,
    pub queued: u64,
}

/// The completion side: kernels folded into runs.
#[derive(Default)]
pub struct Runs {
    done: Vec<Run>,
    open: Option<Run>,
    dropped: u64,
}

impl Runs {
    /// A completed kernel: from `start` to `end` on the GPU's timer, its
    /// item handed to the worker at `queued` (realtime ns).
    pub fn add(&mut self, start: u64, end: u64, queued: u64) {
        let busy = end.saturating_sub(start);
        match &mut self.open {
            Some(r) if start <= r.end.saturating_add(RUN_GAP_NS) => {
                r.end = r.end.max(end);
                r.kernels += 1;
                r.busy += busy;
            }
            open => {
                if let Some(r) = open.replace(Run {
                    start,
                    end,
                    kernels: 1,
                    busy,
                    queued,
                }) {
                    if self.done.len() < MAX_RUNS {
                        self.done.push(r);
                    } else {
                        self.dropped += 1;
                    }
                }
            }
        }
    }

    /// Every run, the open one last.
    pub fn all(&self) -> impl Iterator<Item = &Run> {
        self.done.iter().chain(&self.open)
    }

    /// The runs on stderr, in the format of the module's documentation.
    pub fn print(&self) {
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        for r in self.all() {
            let _ = writeln!(
                e,
                "spin run {} {} {} {} {}",
                r.start, r.end, r.kernels, r.busy, r.queued
            );
        }
        if self.dropped > 0 {
            let _ = writeln!(e, "spin timeline: {} runs not kept", self.dropped);
        }
    }
}

/// Where the GPU's timer stands against `CLOCK_REALTIME`: a spin of no
/// length on `stream`, bracketed by the host's clock (the offset is within
/// half the bracket). Printed once, for the runs' QUEUED.
pub(crate) fn print_offset(
    spin: sys::CUfunction,
    stream: sys::CUstream,
    sync: sys::CUdeviceptr,
    slots: &mut Slots,
) -> Result<(), Error> {
    let mut best: Option<(i128, u64)> = None;
    for _ in 0..8 {
        let (mut at, host) = slots.take();
        let (mut ns, mut dst, mut rep, mut sync) = (0u64, 0u64, 0u32, sync);
        let mut args: [*mut std::ffi::c_void; 5] = [
            (&mut ns as *mut u64).cast(),
            (&mut dst as *mut u64).cast(),
            (&mut rep as *mut u32).cast(),
            (&mut sync as *mut u64).cast(),
            (&mut at as *mut u64).cast(),
        ];
        let t0 = realtime_ns();
        // SAFETY: the arguments are live values of spin's parameter types
        // (kernels.cu); `sync` is the worker's 16 zeroed bytes, `at` a slot.
        ck("cuLaunchKernel (timeline clock)", unsafe {
            sys::cuLaunchKernel(
                spin,
                1,
                1,
                1,
                32,
                1,
                1,
                0,
                stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })?;
        // SAFETY: a stream of the current context.
        ck("cuStreamSynchronize (timeline clock)", unsafe {
            sys::cuStreamSynchronize(stream)
        })?;
        let t1 = realtime_ns();
        let (gpu, _) = host.read();
        let mid = (t0 as i128 + t1 as i128) / 2;
        let err = t1.saturating_sub(t0) / 2;
        if best.is_none_or(|(_, e)| err < e) {
            best = Some((gpu as i128 - mid, err));
        }
    }
    if let Some((offset, err)) = best {
        eprintln!("spin timeline: clock offset GPU - realtime {offset} ns (+- {err})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_within_the_gap_make_one_run_and_a_longer_gap_starts_the_next() {
        let mut r = Runs::default();
        r.add(1_000, 51_000, 900);
        r.add(52_000, 102_000, 950);
        r.add(102_000 + RUN_GAP_NS + 1, 200_000, 1_000);
        let runs: Vec<Run> = r.all().copied().collect();
        assert_eq!(
            runs,
            vec![
                Run {
                    start: 1_000,
                    end: 102_000,
                    kernels: 2,
                    busy: 100_000,
                    queued: 900,
                },
                Run {
                    start: 122_001,
                    end: 200_000,
                    kernels: 1,
                    busy: 77_999,
                    queued: 1_000,
                },
            ]
        );
    }
}
