//! # vgpud scheduler
//!
//! Time-slices one physical GPU (a *parent*) between many vGPUs, the way NVIDIA GRID
//! vGPU and Intel GVT-g do: the GPU runs one vGPU's work at a time, and a host policy
//! decides whose work runs next and for how long.
//!
//! Scheduling has two levels:
//!
//! 1. **Parent level** ([`Scheduler`]): the policy ([`PolicyKind`]) picks which vGPU's
//!    runlist runs next and for how long (one *slice*, at most the parent's timeslice,
//!    ended at the first command boundary past it).
//! 2. **vGPU level** ([`runlist::Runlist`]): inside the chosen vGPU, the guest-submitted
//!    runlist picks the channel, round-robin with the guest's per-channel timeslices.
//!
//! All time is accounted in *measured GPU time*: the execution time the backend reports
//! for each work item ([`Scheduler::complete`]). Long commands are therefore paid back
//! (the vGPU's credit goes negative and it skips turns) instead of being forgiven.
//!
//! The crate is generic over the work item type `T`, performs no I/O and knows nothing
//! about guest memory or PCI. [`config`] parses vgpud's configuration file and takes the
//! policy from it; [`sim`] drives the real scheduler on a virtual clock with synthetic vGPUs.
//!
//! Semantics, sources and deliberate differences from NVIDIA: `docs/scheduling.md`.

pub mod accounting;
pub mod config;
mod parent_scheduler;
pub mod policy;
pub mod runlist;
pub mod sim;

pub use accounting::{ChannelStats, ParentStats, VgpuShareStats};
pub use config::{Config, ParentConfig, VgpuOverride};
pub use parent_scheduler::{Pick, Rejected, Scheduler};
pub use policy::{LatencyClass, ParentPolicy, PolicyKind, VgpuParams};

/// Nanoseconds: both points on the caller's clock and durations of GPU time.
pub type Nanos = u64;

/// One microsecond in [`Nanos`].
pub const US: Nanos = 1_000;
/// One millisecond in [`Nanos`].
pub const MS: Nanos = 1_000_000;
/// One second in [`Nanos`].
pub const SEC: Nanos = 1_000_000_000;

/// Every error this crate returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file (its policy part, or its type catalogue as
    /// `mdev_types` reads it from the same [`config::Document`]) is malformed or holds
    /// a value out of range.
    /// `line`/`column` are 1-based; `key` is the dotted TOML path (`-` when the
    /// document itself does not parse).
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Config {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// The config file could not be read.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A policy or per-vGPU parameter is out of range (API use, not a file).
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// The vGPU key is not attached to this parent.
    #[error("vGPU {0:#x} is not attached to this parent")]
    UnknownVgpu(u64),
    /// `add_vgpu` for a key that is already attached.
    #[error("vGPU {0:#x} is already attached to this parent")]
    DuplicateVgpu(u64),
    /// `complete` does not match the item handed out by the last `pick`.
    #[error("complete({vgpu:#x}, channel {channel}) does not match the item in flight")]
    NotInFlight { vgpu: u64, channel: u32 },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
