//! The engines a parent runs on, opened by name in one place
//! ([`open_engine`]): the cpu engine (in this process, the reference
//! engine of `devmodel`) and the CUDA engine (the process engine of
//! `engine-worker`, one `vgpud-cuda-worker` per vGPU). A new engine is one
//! more arm here (docs/architecture.md).
//!
//! Workers are confined as `[workers]` says ([`WorkerSettings`]); the
//! directory they take as their root is made here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use devmodel::backend::BackendError;
use devmodel::{Backend, CpuEngine};
use engine_worker::{ProcessEngine, SandboxPolicy, WorkerProgram};
use mdev_types::sockets::Principal;
use mdev_types::workers::{DEFAULT_USER, FALLBACK_ID};
use mdev_types::{Engine, ParentCapacity, ParentDef, VgpuType, WorkerConfig};

use crate::daemon::sockets::{lookup, resolve, Db, OwnershipError};

/// The CUDA worker binary, installed beside vgpud.
pub const CUDA_WORKER: &str = "vgpud-cuda-worker";

/// A parent's engine, and the capacity and types it offers (a GPU's come
/// from the GPU itself when the catalogue gives none).
pub struct OpenedEngine {
    pub backend: Box<dyn Backend>,
    pub capacity: ParentCapacity,
    pub types: Vec<Arc<VgpuType>>,
}

/// A GPU whose probe failed: which parent and which GPU.
#[derive(Debug, thiserror::Error)]
#[error("parent {parent}: GPU {device}")]
pub struct ProbeError {
    parent: String,
    device: String,
    #[source]
    source: engine_worker::Error,
}

/// Whether workers emulate the GPU with the cpu engine
/// (`VGPUD_CUDA_EMULATE=1`; tests only: `engine_worker::emulated`).
fn emulated() -> bool {
    std::env::var_os("VGPUD_CUDA_EMULATE").is_some_and(|v| v == "1")
}

/// Open the engine of parent `p`, its workers confined by `workers`.
pub fn open_engine(p: &ParentDef, workers: &WorkerSettings) -> Result<OpenedEngine, BackendError> {
    let (capacity, types) = (p.capacity, p.types.clone());
    match p.engine {
        // One worker thread: the engine runs one item at a time, as a
        // time-sliced GPU does; the parent keeps it fed.
        Engine::Cpu => Ok(OpenedEngine {
            backend: Box::new(CpuEngine::new(1)?),
            capacity,
            types,
        }),
        Engine::Cuda {
            device,
            kernel_timeout_ms,
        } => {
            let program = WorkerProgram {
                path: WorkerProgram::beside_current_exe(CUDA_WORKER),
                device_args: device.worker_args().to_vec(),
                emulate: emulated(),
                sandbox: workers.sandbox.clone(),
                // No JIT cache: a confined worker writes no file, and a
                // cache shared by tenants' workers would be a channel
                // between them.
                env: vec![("CUDA_CACHE_DISABLE".into(), "1".into())],
            };
            let mut opened = OpenedEngine {
                backend: Box::new(ProcessEngine::new(
                    "cuda",
                    program.clone(),
                    Duration::from_millis(kernel_timeout_ms as u64),
                )),
                capacity,
                types,
            };
            if opened.types.is_empty() {
                // Types and capacity from the GPU's own memory.
                let gpu = program.probe().map_err(|source| BackendError::Engine {
                    engine: "cuda",
                    source: Box::new(ProbeError {
                        parent: p.id.clone(),
                        device: device.to_string(),
                        source,
                    }),
                })?;
                let (cap, derived) = mdev_types::gpu_types(&gpu.name, gpu.memory_bytes);
                tracing::info!(parent = %p.id, gpu = %gpu.name, memory_mib = gpu.memory_bytes >> 20, types = derived.len(), "GPU parent");
                opened.capacity = ParentCapacity {
                    max_vgpus: p.capacity.max_vgpus,
                    ..cap
                };
                opened.types = derived.into_iter().map(Arc::new).collect();
            }
            Ok(opened)
        }
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
