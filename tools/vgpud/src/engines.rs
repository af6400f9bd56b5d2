//! The engines a parent runs on, opened by name in one place
//! ([`open_engine`]): the cpu engine (in this process, the reference
//! engine of `devmodel`) and the CUDA engine (the process engine of
//! `engine-worker`, one `vgpud-cuda-worker` per vGPU). A new engine is one
//! more arm here (docs/architecture.md).
//!
//! Before any is opened, [`plan_parents`] asks the CUDA worker which GPUs
//! the host shows (`--gpus`, once) and gives each `cuda` parent its GPU:
//! the one its `device` names, or, for `device = "all"`, one parent per
//! GPU, named by the GPU's PCI address. A GPU's workers run on its NUMA
//! node ([`engine_worker::numa`]).
//!
//! Workers are confined as `[workers]` says ([`WorkerSettings`]); the
//! directory they take as their root is made here.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use devmodel::backend::BackendError;
use devmodel::{Backend, CpuEngine};
use engine_worker::emulated::EMULATE_ENV;
use engine_worker::{
    GpuInfo, NumaPlacement, PciAddress, ProcessEngine, SandboxPolicy, WorkerProgram,
};
use mdev_types::sockets::Principal;
use mdev_types::workers::{DEFAULT_USER, FALLBACK_ID};
use mdev_types::{Catalog, CudaDevice, Engine, ParentCapacity, ParentDef, VgpuType, WorkerConfig};

use crate::daemon::sockets::{lookup, resolve, Db, OwnershipError};

/// The CUDA worker binary, installed beside vgpud.
pub const CUDA_WORKER: &str = "vgpud-cuda-worker";

/// Test-only: where vgpud reads the host's NUMA nodes and PCI devices
/// instead of `/sys` (tools/vgpud/tests/multi_gpu.rs gives emulated GPUs a
/// node that way).
pub const SYSFS_ENV: &str = "VGPUD_TEST_SYSFS";

/// A parent's engine, and the capacity and types it offers (a GPU's come
/// from the GPU itself when the catalogue gives none).
pub struct OpenedEngine {
    pub backend: Box<dyn Backend>,
    pub capacity: ParentCapacity,
    pub types: Vec<Arc<VgpuType>>,
}

/// A parent to open: its definition, where the catalogue declared it, and
/// for a GPU parent its GPU.
#[derive(Clone, Debug)]
pub struct ParentPlan {
    /// The parent; a GPU parent's `device` is its GPU's UUID.
    pub def: ParentDef,
    /// The `[catalog.parent."<id>"]` it came from: its own id, but for the
    /// parents of `device = "all"`.
    pub section: String,
    pub gpu: Option<Gpu>,
}

/// A GPU parent's GPU, as the worker listed it.
#[derive(Clone, Debug)]
pub struct Gpu {
    pub info: GpuInfo,
    pub pci: PciAddress,
    /// The node the kernel puts the GPU on (`None`: none, or unknown).
    pub numa_node: Option<usize>,
    /// Where its workers run; `None` on a host with one node.
    pub placement: Option<NumaPlacement>,
}

/// GPU parents that could not be given their GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The worker could not list the GPUs (no driver, no GPU, no binary).
    #[error("parent {parent}: GPU {device}")]
    List {
        parent: String,
        device: CudaDevice,
        #[source]
        source: engine_worker::Error,
    },
    #[error("the worker listed a GPU with {what} {value:?}")]
    Listing { what: &'static str, value: String },
    #[error("parent {parent}: no GPU {device} on this host (it shows {shown})")]
    NoSuchGpu {
        parent: String,
        device: CudaDevice,
        shown: String,
    },
    #[error("parent {parent}: device = \"all\", and the host shows no GPU")]
    NoGpu { parent: String },
    #[error("parents {first} and {second} are the same GPU {gpu}: a GPU has one scheduler")]
    SameGpu {
        first: String,
        second: String,
        gpu: String,
    },
    #[error(
        "two parents are named {0} (a parent of device = \"all\" takes its GPU's PCI address)"
    )]
    SameName(String),
}

/// Whether workers emulate the GPU with the cpu engine
/// (`VGPUD_CUDA_EMULATE` set and not `0`; tests only:
/// `engine_worker::emulated`, whose `gpus` says which GPUs it shows).
fn emulated() -> Option<String> {
    std::env::var(EMULATE_ENV)
        .ok()
        .filter(|v| !v.is_empty() && v != "0")
}

/// The CUDA worker as the daemon starts it, for `device_args`' GPU.
fn cuda_program(device_args: Vec<String>, sandbox: Option<SandboxPolicy>) -> WorkerProgram {
    let emulate = emulated();
    let mut env = vec![
        // No JIT cache: a confined worker writes no file, and a cache
        // shared by tenants' workers would be a channel between them.
        ("CUDA_CACHE_DISABLE".to_string(), "1".to_string()),
    ];
    if let Some(spec) = &emulate {
        env.push((EMULATE_ENV.to_string(), spec.clone()));
    }
    WorkerProgram {
        path: WorkerProgram::beside_current_exe(CUDA_WORKER),
        device_args,
        emulate: emulate.is_some(),
        sandbox,
        env,
        placement: None,
    }
}

/// The sysfs tree NUMA nodes are read from.
fn sysfs_root() -> PathBuf {
    std::env::var_os(SYSFS_ENV).map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// A listed GPU, checked: its UUID, its PCI address and NUMA node.
fn gpu_of(info: &GpuInfo, sys: &Path) -> Result<([u8; 16], Gpu), GpuError> {
    let bad = |what, value: &str| GpuError::Listing {
        what,
        value: value.to_string(),
    };
    let Some(CudaDevice::Uuid(uuid)) = CudaDevice::parse_uuid(&info.uuid) else {
        return Err(bad("UUID", &info.uuid));
    };
    let pci =
        PciAddress::parse(&info.pci_bus_id).ok_or_else(|| bad("PCI address", &info.pci_bus_id))?;
    Ok((
        uuid,
        Gpu {
            info: info.clone(),
            pci,
            numa_node: engine_worker::numa::device_node(sys, &pci),
            placement: NumaPlacement::for_device(sys, &pci),
        },
    ))
}

/// The parents of `catalog` with their GPUs: each `cuda` parent's device
/// found among the GPUs the worker lists (asked once), and a parent per GPU
/// for `device = "all"`, named by its PCI address (`0000:65:00.0`, as the
/// kernel names a PCI parent). Two parents on one GPU, or of one name, are
/// refused.
pub fn plan_parents(catalog: &Catalog) -> Result<Vec<ParentPlan>, GpuError> {
    let first_gpu = catalog.parents.iter().find_map(|p| match p.engine {
        Engine::Cuda { device, .. } => Some((p, device)),
        Engine::Cpu => None,
    });
    let listed = match first_gpu {
        None => Vec::new(),
        Some((p, device)) => {
            let gpus = cuda_program(Vec::new(), None)
                .gpus()
                .map_err(|source| GpuError::List {
                    parent: p.id.clone(),
                    device,
                    source,
                })?;
            let sys = sysfs_root();
            gpus.iter()
                .map(|g| gpu_of(g, &sys))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let mut plans: Vec<ParentPlan> = Vec::new();
    let mut on_gpu: BTreeMap<[u8; 16], String> = BTreeMap::new();
    for p in &catalog.parents {
        let Engine::Cuda {
            device,
            kernel_timeout_ms,
        } = p.engine
        else {
            plans.push(ParentPlan {
                def: p.clone(),
                section: p.id.clone(),
                gpu: None,
            });
            continue;
        };
        let chosen: Vec<&([u8; 16], Gpu)> = match device {
            CudaDevice::All => listed.iter().collect(),
            CudaDevice::Ordinal(n) => listed.iter().filter(|(_, g)| g.info.ordinal == n).collect(),
            CudaDevice::Uuid(u) => listed.iter().filter(|(id, _)| *id == u).collect(),
        };
        if chosen.is_empty() {
            return Err(match device {
                CudaDevice::All => GpuError::NoGpu {
                    parent: p.id.clone(),
                },
                _ => GpuError::NoSuchGpu {
                    parent: p.id.clone(),
                    device,
                    shown: shown(&listed),
                },
            });
        }
        for (uuid, gpu) in chosen {
            let id = match device {
                CudaDevice::All => gpu.pci.to_string(),
                _ => p.id.clone(),
            };
            if let Some(first) = on_gpu.insert(*uuid, id.clone()) {
                return Err(GpuError::SameGpu {
                    first,
                    second: id,
                    gpu: gpu.info.uuid.clone(),
                });
            }
            plans.push(ParentPlan {
                def: ParentDef {
                    id,
                    engine: Engine::Cuda {
                        device: CudaDevice::Uuid(*uuid),
                        kernel_timeout_ms,
                    },
                    ..p.clone()
                },
                section: p.id.clone(),
                gpu: Some(gpu.clone()),
            });
        }
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(dup) = plans.iter().find(|p| !names.insert(p.def.id.as_str())) {
        return Err(GpuError::SameName(dup.def.id.clone()));
    }
    Ok(plans)
}

/// The GPUs listed, for an error: `2 GPUs: 0 GPU-…, 1 GPU-…`.
fn shown(listed: &[([u8; 16], Gpu)]) -> String {
    let each: Vec<String> = listed
        .iter()
        .map(|(_, g)| format!("{} {} at {}", g.info.ordinal, g.info.uuid, g.pci))
        .collect();
    match each.len() {
        0 => "no GPU".into(),
        n => format!(
            "{n} GPU{}: {}",
            if n == 1 { "" } else { "s" },
            each.join(", ")
        ),
    }
}

/// Open the engine of the parent `plan`, its workers confined by `workers`.
pub fn open_engine(
    plan: &ParentPlan,
    workers: &WorkerSettings,
) -> Result<OpenedEngine, BackendError> {
    let p = &plan.def;
    let (capacity, types) = (p.capacity, p.types.clone());
    match (p.engine, &plan.gpu) {
        // One worker thread: the engine runs one item at a time, as a
        // time-sliced GPU does; the parent keeps it fed.
        (Engine::Cpu, _) => Ok(OpenedEngine {
            backend: Box::new(CpuEngine::new(1)?),
            capacity,
            types,
        }),
        (
            Engine::Cuda {
                device,
                kernel_timeout_ms,
            },
            Some(gpu),
        ) => {
            let mut program = cuda_program(
                device.worker_args().map(Vec::from).unwrap_or_default(),
                workers.sandbox.clone(),
            );
            program.placement = gpu.placement.clone();
            let mut opened = OpenedEngine {
                backend: Box::new(ProcessEngine::new(
                    "cuda",
                    program,
                    Duration::from_millis(kernel_timeout_ms as u64),
                )),
                capacity,
                types,
            };
            if opened.types.is_empty() {
                // Types and capacity from the GPU's own memory.
                let (cap, derived) = mdev_types::gpu_types(&gpu.info.name, gpu.info.memory_bytes);
                opened.capacity = ParentCapacity {
                    max_vgpus: p.capacity.max_vgpus,
                    ..cap
                };
                opened.types = derived.into_iter().map(Arc::new).collect();
            }
            let (node, cpus) = match &gpu.placement {
                Some(n) => (n.node().to_string(), n.cpu_list()),
                None => ("-".into(), "any".into()),
            };
            tracing::info!(parent = %p.id, gpu = %gpu.info.name, uuid = %gpu.info.uuid, pci = %gpu.pci, memory_mib = gpu.info.memory_bytes >> 20, types = opened.types.len(), numa_node = %node, worker_cpus = %cpus, "GPU parent");
            Ok(opened)
        }
        (Engine::Cuda { .. }, None) => Err(BackendError::Engine {
            engine: "cuda",
            source: format!("parent {}: no GPU was found for it", p.id).into(),
        }),
    }
}

/// `[workers]`, resolved: the sandbox workers enter (`None`: none).
#[derive(Clone, Debug, Default)]
pub struct WorkerSettings {
    pub sandbox: Option<SandboxPolicy>,
}

/// `[workers]` that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum WorkerSettingsError {
    #[error(transparent)]
    Name(#[from] OwnershipError),
    #[error("the workers' root {}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WorkerSettings {
    /// Resolve `cfg`'s user and group, and make the workers' root, an
    /// empty directory `worker-root` in `run_dir` (mode 0555).
    pub fn resolve(cfg: &WorkerConfig, run_dir: &Path) -> Result<Self, WorkerSettingsError> {
        if !cfg.sandbox {
            tracing::warn!("[workers] sandbox = false: GPU workers run with vgpud's privileges");
            return Ok(WorkerSettings { sandbox: None });
        }
        let (uid, primary) = match &cfg.user {
            Some(u) => {
                let uid = resolve(u, Db::User)?;
                let primary = match &u.value {
                    Principal::Name(n) => lookup(n, Db::User).ok().flatten().map(|(_, g)| g),
                    Principal::Id(_) => None,
                };
                (uid, primary.unwrap_or(uid))
            }
            None => match lookup(DEFAULT_USER, Db::User).ok().flatten() {
                Some(ids) => ids,
                None => {
                    tracing::warn!(
                        "no user {DEFAULT_USER} (dist/vgpud.sysusers creates it): GPU workers run as {FALLBACK_ID}:{FALLBACK_ID}"
                    );
                    (FALLBACK_ID, FALLBACK_ID)
                }
            },
        };
        let gid = match &cfg.group {
            Some(g) => resolve(g, Db::Group)?,
            None => primary,
        };
        let root = run_dir.join("worker-root");
        make_root(&root).map_err(|source| WorkerSettingsError::Root {
            path: root.clone(),
            source,
        })?;
        Ok(WorkerSettings {
            sandbox: Some(SandboxPolicy { uid, gid, root }),
        })
    }
}

/// The workers' root: an empty directory nobody but its owner may change.
fn make_root(root: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_dir(root)?.next().is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::DirectoryNotEmpty,
                    "must be empty",
                ));
            }
        }
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o555))
}
