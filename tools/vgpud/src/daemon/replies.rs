//! What the daemon's operations return: the `result` of a control-socket
//! reply (docs/control.md), field for field.
//!
//! The JSON field names here are the wire format: `vgpuctl` (and anything
//! else on the socket) reads them, and `vgpuctl status --json` prints them.
//! The metrics endpoint reads [`VgpuStatus`]'s fields, so a field that goes
//! away breaks its build rather than silently dropping a series.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One type a parent offers (`types`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TypeInfo {
    pub parent: String,
    /// The mdev type id, `vgpud-4c`.
    pub id: String,
    pub name: String,
    pub description: String,
    /// Always `vfio-pci`.
    pub device_api: String,
    pub framebuffer_bytes: u64,
    pub max_instances: u32,
    pub available_instances: u32,
    /// `1 / max_instances`.
    pub fixed_share: f64,
    pub channels: u32,
    /// `0x7667`.
    pub vendor_id: String,
    pub device_id: String,
}

/// A vGPU just created (`create`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub uuid: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub parent: String,
    /// Its vfio-user socket.
    pub socket: PathBuf,
}

/// A vGPU just removed (`remove`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub uuid: String,
    /// A VMM was connected (and was disconnected).
    pub was_attached: bool,
}

/// One line of `list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VgpuSummary {
    pub uuid: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub parent: String,
    pub socket: PathBuf,
    pub attached: bool,
}

/// Whether a vGPU can do its work now (`status`'s `health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// It can.
    Ok,
    /// Its engine process (a CUDA worker) exited or was killed and is not
    /// replaced yet: its work fails with `ENGINE_ERROR` until the next
    /// reset, or until the daemon replaces it (at once while no VM is
    /// attached, after the restart back-off).
    WorkerDown,
    /// Its engine process was stopped for a sticky GPU error or an item
    /// past the kernel limit; replaced as for `worker_down`.
    Faulted,
}

impl From<devmodel::backend::EngineHealth> for Health {
    fn from(h: devmodel::backend::EngineHealth) -> Health {
        use devmodel::backend::EngineHealth as E;
        match h {
            E::Ok => Health::Ok,
            E::WorkerDown => Health::WorkerDown,
            E::Faulted => Health::Faulted,
        }
    }
}

/// The status of one vGPU (`status`), in the spirit of `nvidia-smi vgpu -q`.
/// The scheduler's figures are `null` while the parent does not know the vGPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VgpuStatus {
    pub uuid: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub type_name: String,
    pub parent: String,
    pub socket: PathBuf,
    /// A VMM is connected now.
    pub attached: bool,
    /// Whether its engine can run its work now.
    pub health: Health,
    /// vfio-user connections accepted since the vGPU was created.
    pub connections: u64,
    /// vfio-user messages answered with an error, or that ended a connection.
    pub protocol_errors: u64,
    /// The parent's policy.
    pub policy: String,
    /// The share the policy promises (strict policies), or the reservation (weighted).
    pub configured_share: Option<f64>,
    /// The cap in force (weighted).
    pub cap: Option<f64>,
    /// Share of the parent's time over the averaging window.
    pub achieved_share: Option<f64>,
    /// Engine time the vGPU's work used.
    pub gpu_time_ns: Option<u64>,
    /// Engine commands completed.
    pub commands: Option<u64>,
    /// Engine commands queued in the scheduler.
    pub queue_depth: Option<usize>,
    /// Time commands waited for the engine.
    pub wait_ns: Option<u64>,
    /// The length of the vGPU's slices now, in µs: the parent's timeslice,
    /// or longer on a GPU while no timeslice is configured
    /// (`docs/scheduling.md`, "Slices stretched on a GPU").
    pub slice_us: Option<u64>,
    /// Slices of the parent's time the vGPU was given.
    pub slices: Option<u64>,
    /// Slices that ended early because the vGPU had nothing more queued: its
    /// guest driver was late with the next command. Many of them mean that
    /// the guest, not the policy, limits what the vGPU gets.
    pub slices_dry: Option<u64>,
    /// Channel faults (MMU faults and channel errors).
    pub faults: u64,
    /// MSIs delivered.
    pub interrupts: u64,
    /// Doorbells the device saw by polling the doorbell page (no trap).
    pub doorbells_polled: u64,
    /// Doorbells that trapped: `DOORBELL` register writes, and doorbell
    /// page writes by a VMM that did not map the page.
    pub doorbells_trapped: u64,
    /// Guest memory mapped and pinned for the vGPU.
    pub pinned_bytes: u64,
    pub framebuffer_bytes: u64,
}

/// A parent's policy (`policy_show`, `policy_set`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub parent: String,
    pub policy: String,
    pub timeslice_us: u64,
    pub averaging_factor: u32,
    pub window_us: u64,
}

/// What `reload` did: `{"reloaded":true,"file":…}`, or
/// `{"reloaded":false,"reason":…}` when there is no file to reload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    pub reloaded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A GPU parent's GPU (`parents`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentGpu {
    /// As the driver names it: `NVIDIA H200`.
    pub name: String,
    /// `GPU-6f6e1c2a-…`, as `nvidia-smi -L` prints it.
    pub uuid: String,
    /// `0000:65:00.0`.
    pub pci_bus_id: String,
    pub memory_bytes: u64,
    /// The NUMA node the kernel puts the GPU on (`null`: none).
    pub numa_node: Option<usize>,
    /// The CPUs its workers run on (`8-15`), on a host with more than one
    /// node; `null`: any (the worker's memory policy is then left alone too).
    pub worker_cpus: Option<String>,
}

/// A parent's engine and policy, as the scheduler sees them now (`parents`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentStatus {
    pub parent: String,
    /// The engine behind it: `cpu`, `cuda`.
    pub engine: String,
    /// Its GPU (`null` for a cpu-engine parent).
    #[serde(default)]
    pub gpu: Option<ParentGpu>,
    pub policy: String,
    pub timeslice_us: u64,
    pub window_us: u64,
    /// vGPUs created on it.
    pub vgpus: usize,
    /// The framebuffer it divides between its vGPUs.
    pub framebuffer_bytes: u64,
    /// The most vGPUs of any type it runs at once.
    pub max_vgpus: u32,
    /// Engine time its vGPUs' work used since it started.
    pub busy_ns: u64,
    /// Share of wall time the engine was busy with vGPU work over the
    /// averaging window (the sum of its vGPUs' achieved shares, at most 1).
    pub engine_busy_ratio: f64,
    /// Time the engine had no item since the parent started, by why: no vGPU
    /// had work queued; a strict share or a cap held it; work was queued but
    /// the daemon had not handed it over yet (its threads were late, e.g. on
    /// a host whose CPUs are busy). Lower bounds (see `docs/scheduling.md`).
    pub idle_empty_ns: u64,
    pub idle_held_ns: u64,
    pub idle_late_ns: u64,
    /// Time the engine held items past their length while its threads
    /// waited for a host CPU (the cpu engine's spins on a busy host): in no
    /// vGPU's engine time.
    pub engine_stalled_ns: u64,
}
