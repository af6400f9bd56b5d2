//! The process engine: a [`devmodel::Backend`] whose vGPU contexts are
//! worker processes, one per vGPU, whatever the device behind them. An
//! engine that runs its work in a process of its own (CUDA today:
//! `engines/cuda`) brings a worker binary; everything else is here.
//!
//! Daemon side:
//! * [`engine`]: the backend a parent uses ([`ProcessEngine`]), one
//!   worker per vGPU, restarts with back-off.
//! * [`conn`]: one worker as the daemon holds it: its messages, its log,
//!   the runaway-item watchdog.
//! * [`program`]: a worker binary, how it is started and probed.
//! * [`numa`]: the NUMA node of a device, where its workers run.
//!
//! Both sides:
//! * [`wire`]: the typed messages each way and their one encoding.
//! * [`ring`]: the shared-memory rings that carry the frames each way
//!   without a system call per item.
//! * [`socket`]: frames over the Unix socket, descriptors beside them (and
//!   frames too long for a ring record).
//!
//! Worker side:
//! * [`endpoint`]: the worker's end of the socket.
//! * [`sandbox`]: the confinement a worker enters before its first message.
//! * [`emulated`]: a worker that runs every operation on the cpu engine
//!   (`--emulate`): the process side tested where there is no device.

pub mod conn;
pub mod emulated;
pub mod endpoint;
pub mod engine;
pub mod numa;
pub mod program;
pub mod ring;
pub mod sandbox;
pub mod socket;
pub mod wire;

pub use engine::ProcessEngine;
pub use numa::{NumaPlacement, PciAddress};
pub use program::{DeviceInfo, GpuInfo, WorkerProgram};
pub use sandbox::SandboxPolicy;

use std::path::PathBuf;
use std::time::Duration;

/// What goes wrong between the daemon and a worker, on either side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame that does not decode (short, long, of an unknown kind or out
    /// of range), or a message of the wrong kind at that point.
    #[error("malformed worker message: {0}")]
    Malformed(&'static str),
    #[error("a {len}-byte message does not fit in a frame ({max} bytes)")]
    FrameTooLarge { len: usize, max: usize },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the worker {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The worker's `--probe` failed; what it said on stderr.
    #[error("the worker's probe failed: {0}")]
    Probe(String),
    #[error("the worker's probe answered something else than a device")]
    ProbeReply(#[source] serde_json::Error),
    #[error("the worker did not start within {0:?}")]
    StartTimeout(Duration),
    /// The worker gave up: why, the engine's error number (CUDA's), and its
    /// detail line (the worker's words, quoted).
    #[error("{reason} (error {code}): {detail:?}")]
    Failed {
        reason: wire::FatalReason,
        code: u32,
        detail: String,
    },
    #[error("the worker exited")]
    Exited,
    #[error("the worker did not answer a VRAM access in time")]
    NoAnswer,
    #[error("the worker failed a VRAM access ({0:?})")]
    Access(wire::Status),
    #[error("the worker's engine failed the operation")]
    ItemFailed,
    #[error(transparent)]
    Ring(#[from] ring::RingError),
    #[error(transparent)]
    Thread(#[from] devmodel::thread::SpawnError),
    /// A step of the worker's confinement failed.
    #[error("sandbox: {what}")]
    Sandbox {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox: the seccomp filter")]
    Seccomp(#[source] seccompiler::Error),
}

#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    //! Entry points for the fuzz targets (fuzz/fuzz_targets/worker_*.rs).

    /// Bytes as frames (each a `u16` length, then that many bytes).
    pub fn frames(mut data: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while data.len() >= 2 {
            let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
            out.push(&data[2..2 + n]);
            data = &data[2 + n..];
        }
        out
    }

    /// What a (hostile) worker sends, through the daemon's handling of it
    /// with items and an access waiting: nothing may panic.
    pub fn worker_to_daemon(data: &[u8]) {
        crate::conn::fuzz_deliver(&frames(data));
    }

    /// What the daemon sends, through the worker's decoding and the
    /// emulated worker's handling: nothing may panic, and what decodes
    /// encodes back to the same frame.
    pub fn daemon_to_worker(data: &[u8]) {
        crate::emulated::fuzz_serve(&frames(data));
    }
}
