//! The daemon's state: parents (physical GPUs), the vGPUs created on them,
//! and the operations the control socket offers on both.
//!
//! Every vGPU is a device model ([`devmodel::Vgpu`]) on a parent's
//! scheduled engine, served over vfio-user at `<run-dir>/<uuid>.sock`.
//! Operations fail with the errno the kernel's mdev core would give for
//! the same mistake (see docs/control.md), so the sysfs tree and
//! `vgpuctl` can pass them on unchanged.

pub mod autostart;
pub mod control;
pub mod metrics;
pub mod placement;
pub mod replies;
pub mod sockets;
pub mod sysfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use devmodel::{Vgpu, VgpuConfig};
use mdev_types::{
    Catalog, ConfigFile, Engine, ParentCapacity, Placement, SocketConfig, VgpuType, WorkerConfig,
};
use mmio::pci::PciIdentity;
use scheduler::{Config, PolicyKind};
use uuid::Uuid;

pub use replies::{
    Created, Health, ParentGpu, ParentStatus, PolicyInfo, Reloaded, Removed, TypeInfo, VgpuStatus,
    VgpuSummary,
};

use crate::engines::{open_engine, plan_parents, GpuError, WorkerSettings, WorkerSettingsError};
use crate::errno::Errno;
use crate::parent::Parent;
use crate::vfio_user::{self, ServerHandle};
use devmodel::backend::BackendError;
use devmodel::thread::SpawnError;
use sockets::{OwnershipError, SocketOwnership};

pub use mdev_types::DEFAULT_PARENT;
/// Where sockets go unless `--run-dir` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/vgpud";

/// A failed operation: the errno for the caller and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// The errno a kernel mdev driver returns for this (`EINVAL`, `EEXIST`,
    /// `EUSERS`, `ENOENT`, `EIO`).
    pub errno: Errno,
    pub message: String,
}

/// The daemon, or one of its servers (control socket, metrics endpoint),
/// that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its socket could not be set up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Its thread could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A parent's engine could not start.
    #[error(transparent)]
    Engine(#[from] BackendError),
    /// `[workers]` could not be applied.
    #[error(transparent)]
    Workers(#[from] WorkerSettingsError),
    /// A GPU parent could not be given its GPU.
    #[error(transparent)]
    Gpus(#[from] GpuError),
}

fn op_err(errno: Errno, message: impl Into<String>) -> OpError {
    OpError {
        errno,
        message: message.into(),
    }
}

struct VgpuSlot {
    // Field order is drop order: the server (holding a reference to the
    // vGPU) stops first, then the vGPU detaches from its parent.
    server: ServerHandle,
    vgpu: Arc<Vgpu>,
    vtype: Arc<VgpuType>,
    parent: String,
    key: u64,
}

struct ParentSlot {
    parent: Parent,
    /// Its engine's name (`cpu`, `cuda`).
    engine: &'static str,
    /// Its vGPUs' framebuffers are host memory (the cpu engine's).
    host_framebuffer: bool,
    capacity: ParentCapacity,
    types: Vec<Arc<VgpuType>>,
    /// The `[catalog.parent."<id>"]` it came from (its policy's fallback
    /// before `[default]`).
    section: String,
    /// Its GPU (a GPU parent).
    gpu: Option<ParentGpu>,
}

/// Everything the daemon runs.
pub struct Daemon {
    run_dir: PathBuf,
    config_path: Option<PathBuf>,
    config: Config,
    /// The parent an operation names when it names none.
    default_parent: String,
    /// Where `create` puts a vGPU when it names no parent.
    placement: Placement,
    // vGPUs drop before the parents they run on.
    vgpus: BTreeMap<Uuid, VgpuSlot>,
    parents: BTreeMap<String, ParentSlot>,
    /// Host memory cpu-engine framebuffers may take, all parents together
    /// ([`devmodel::cpu_engine::host_framebuffer_limit`]).
    host_framebuffer: u64,
    /// The vGPU sockets' owner, group and mode, resolved.
    sockets: SocketOwnership,
    /// What the command line set (it wins over the file, also on reload).
    sockets_cli: SocketConfig,
}

impl Daemon {
    /// The daemon with the parents of `catalog` (each with its engine,
    /// capacity and types) under the policies `config` gives them, GPU
    /// workers confined as `[workers]` says by default; fails when an
    /// engine's or a parent's threads cannot start.
    pub fn new(
        run_dir: &Path,
        config_path: Option<PathBuf>,
        config: Config,
        catalog: &Catalog,
    ) -> Result<Daemon, StartError> {
        Daemon::with_workers(
            run_dir,
            config_path,
            config,
            catalog,
            &WorkerConfig::default(),
        )
    }

    /// As [`Daemon::new`], with the file's `[workers]`.
    pub fn with_workers(
        run_dir: &Path,
        config_path: Option<PathBuf>,
        config: Config,
        catalog: &Catalog,
        workers: &WorkerConfig,
    ) -> Result<Daemon, StartError> {
        let has_workers = catalog
            .parents
            .iter()
            .any(|p| !matches!(p.engine, Engine::Cpu));
        let workers = if has_workers {
            WorkerSettings::resolve(workers, run_dir)?
        } else {
            WorkerSettings::default()
        };
        let plans = plan_parents(catalog)?;
        let mut parents = BTreeMap::new();
        let mut declared = 0;
        for plan in &plans {
            let opened = open_engine(plan, &workers)?;
            let host_framebuffer = opened.backend.framebuffer_in_host_memory();
            if host_framebuffer {
                declared += opened.capacity.framebuffer_bytes;
            }
            let engine = opened.backend.name();
            let id = &plan.def.id;
            let policy = parent_policy(&config, id, &plan.section);
            let parent = Parent::new(id, opened.backend, policy).map_err(BackendError::from)?;
            parents.insert(
                id.clone(),
                ParentSlot {
                    parent,
                    engine,
                    host_framebuffer,
                    capacity: opened.capacity,
                    types: opened.types,
                    section: plan.section.clone(),
                    gpu: plan.gpu.as_ref().map(|g| ParentGpu {
                        name: g.info.name.clone(),
                        uuid: g.info.uuid.clone(),
                        pci_bus_id: g.pci.to_string(),
                        memory_bytes: g.info.memory_bytes,
                        numa_node: g.numa_node,
                        worker_cpus: g
                            .placement
                            .as_ref()
                            .map(|n| n.cpu_list())
                            .filter(|c| !c.is_empty()),
                    }),
                },
            );
        }
        let default_parent = plans
            .first()
            .map_or(DEFAULT_PARENT.to_string(), |p| p.def.id.clone());
        let host_framebuffer = devmodel::cpu_engine::host_framebuffer_limit();
        if declared > host_framebuffer {
            tracing::warn!(
                declared_mib = declared >> 20,
                host_mib = host_framebuffer >> 20,
                "the cpu-engine parents declare more framebuffer than this host can back: \
                 vGPUs are created only while their framebuffers fit (no overcommit)"
            );
        }
        Ok(Daemon {
            run_dir: run_dir.to_path_buf(),
            config_path,
            config,
            default_parent,
            placement: catalog.placement,
            vgpus: BTreeMap::new(),
            parents,
            host_framebuffer,
            sockets: SocketOwnership::default(),
            sockets_cli: SocketConfig::default(),
        })
    }

    /// Set the vGPU sockets' owner, group and mode: `cli` (the command
    /// line, kept for reloads) over `file` (the configuration file's
    /// `[sockets]`). Fails, changing nothing, when a name does not resolve;
    /// otherwise applies them to every socket that exists, and to every
    /// socket created from now on.
    pub fn set_socket_ownership(
        &mut self,
        cli: SocketConfig,
        file: &SocketConfig,
    ) -> Result<SocketOwnership, OwnershipError> {
        let o = SocketOwnership::resolve(&file.overridden_by(&cli))?;
        self.sockets_cli = cli;
        self.sockets = o;
        self.apply_socket_ownership();
        Ok(o)
    }

    /// Give every existing socket the ownership in effect.
    fn apply_socket_ownership(&self) {
        for (u, v) in &self.vgpus {
            if let Err(e) = self.sockets.apply(v.server.path()) {
                tracing::warn!(uuid = %u, "socket ownership: {e}");
            }
        }
    }

    /// The vGPU sockets' owner, group and mode in effect.
    pub fn socket_ownership(&self) -> SocketOwnership {
        self.sockets
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The parents' ids.
    pub fn parent_ids(&self) -> Vec<String> {
        self.parents.keys().cloned().collect()
    }

    /// The types a parent offers.
    pub fn parent_types(&self, parent: &str) -> Vec<Arc<VgpuType>> {
        self.parents
            .get(parent)
            .map_or(Vec::new(), |p| p.types.clone())
    }

    /// Every vGPU as (uuid, parent, type id).
    pub fn vgpu_ids(&self) -> Vec<(String, String, String)> {
        self.vgpus
            .iter()
            .map(|(u, v)| (u.to_string(), v.parent.clone(), v.vtype.id.to_string()))
            .collect()
    }

    fn parent(&self, id: Option<&str>) -> Result<(&String, &ParentSlot), OpError> {
        let id = id.unwrap_or(&self.default_parent);
        self.parents
            .get_key_value(id)
            .ok_or_else(|| op_err(Errno::ENOENT, format!("no parent {id:?}")))
    }

    fn existing_on(&self, parent: &str) -> Vec<&VgpuType> {
        self.vgpus
            .values()
            .filter(|v| v.parent == parent)
            .map(|v| &*v.vtype)
            .collect()
    }

    /// `available_instances` of a type on a parent: what the parent's
    /// capacity leaves ([`ParentCapacity::available_instances`]), and for a
    /// cpu-engine parent no more than the host can back beside every
    /// cpu-engine vGPU (no overcommit of host memory).
    pub fn available(&self, parent: &str, t: &VgpuType) -> u32 {
        let Some(p) = self.parents.get(parent) else {
            return 0;
        };
        let by_parent = p.capacity.available_instances(t, &self.existing_on(parent));
        let committed: u64 = self
            .vgpus
            .values()
            .filter(|v| {
                self.parents
                    .get(&v.parent)
                    .is_some_and(|p| p.host_framebuffer)
            })
            .map(|v| v.vtype.framebuffer_bytes)
            .sum();
        let by_host = self.host_framebuffer.saturating_sub(committed) / t.framebuffer_bytes.max(1);
        if p.host_framebuffer {
            by_parent.min(by_host.min(u32::MAX as u64) as u32)
        } else {
            // A device's framebuffers are its memory, counted by the parent.
            by_parent
        }
    }

    /// The types every parent offers, with what is still available.
    pub fn types(&self, parent: Option<&str>) -> Result<Vec<TypeInfo>, OpError> {
        let ids: Vec<&String> = match parent {
            Some(p) => vec![self.parent(Some(p))?.0],
            None => self.parents.keys().collect(),
        };
        let mut out = Vec::new();
        for id in ids {
            let slot = &self.parents[id];
            for t in &slot.types {
                out.push(TypeInfo {
                    parent: id.clone(),
                    id: t.id.clone(),
                    name: t.name.clone(),
                    description: description(t),
                    device_api: "vfio-pci".into(),
                    framebuffer_bytes: t.framebuffer_bytes,
                    max_instances: t.max_instances,
                    available_instances: self.available(id, t),
                    fixed_share: t.fixed_share(),
                    channels: t.channels,
                    vendor_id: format!("{:#06x}", t.vendor_id),
                    device_id: format!("{:#06x}", t.device_id),
                });
            }
        }
        Ok(out)
    }

    /// Where the placement rule puts a new vGPU of `type_id`: among the
    /// parents that offer it, those with an instance of it left
    /// ([`placement::choose`]). `ENOENT` when no parent offers it, `EUSERS`
    /// (the mdev core's answer for a type with none available) when none
    /// has room.
    fn place(&self, type_id: &str) -> Result<String, OpError> {
        let mut offering = Vec::new();
        let mut candidates = Vec::new();
        for (id, slot) in &self.parents {
            let Some(t) = slot.types.iter().find(|t| t.id == type_id) else {
                continue;
            };
            offering.push(id.as_str());
            if self.available(id, t) > 0 {
                let existing = self.existing_on(id);
                candidates.push(placement::Candidate {
                    parent: id,
                    vgpus: existing.len(),
                    free_framebuffer: slot.capacity.free_framebuffer(&existing),
                });
            }
        }
        if offering.is_empty() {
            return Err(op_err(
                Errno::ENOENT,
                format!("no parent offers type {type_id:?}"),
            ));
        }
        placement::choose(self.placement, &candidates)
            .map(str::to_string)
            .ok_or_else(|| {
                op_err(
                    Errno::EUSERS,
                    format!(
                        "no {type_id} instance left on any parent ({})",
                        offering.join(", ")
                    ),
                )
            })
    }

    /// Create a vGPU of `type_id` on `parent` (default: where the
    /// placement rule puts it, `Daemon::place`) with `uuid` (default: a
    /// random one). Its vfio-user socket exists when this returns.
    pub fn create(
        &mut self,
        type_id: &str,
        parent: Option<&str>,
        uuid: Option<&str>,
    ) -> Result<Created, OpError> {
        let uuid = match uuid {
            Some(u) => parse_uuid(u)?,
            None => Uuid::new_v4(),
        };
        if self.vgpus.contains_key(&uuid) {
            return Err(op_err(Errno::EEXIST, format!("vGPU {uuid} exists")));
        }
        let parent_id = match parent {
            Some(p) => self.parent(Some(p))?.0.clone(),
            None => self.place(type_id)?,
        };
        let slot = &self.parents[&parent_id];
        let vtype = slot
            .types
            .iter()
            .find(|t| t.id == type_id)
            .cloned()
            .ok_or_else(|| {
                op_err(
                    Errno::ENOENT,
                    format!("parent {parent_id} has no type {type_id:?}"),
                )
            })?;
        if self.available(&parent_id, &vtype) == 0 {
            return Err(op_err(
                Errno::EUSERS,
                format!("no {type_id} instance left on {parent_id}"),
            ));
        }
        let name = uuid.to_string();
        let params = self
            .config
            .vgpu_params(&name, &vtype.id, vtype.max_instances)
            .map_err(|e| op_err(Errno::EINVAL, e.to_string()))?;
        let (key, ctx) = slot
            .parent
            .attach(vtype.framebuffer_bytes, vtype.channels, params)
            .map_err(|e| {
                // A framebuffer the GPU (or host) has no room for: ENOMEM,
                // as the kernel's create gives when a vendor driver cannot
                // allocate.
                let errno = match &e {
                    crate::parent::ParentError::Backend(
                        BackendError::VramTooLarge { .. } | BackendError::VramAlloc { .. },
                    ) => Errno::ENOMEM,
                    _ => Errno::EIO,
                };
                op_err(errno, devmodel::Chain(&e).to_string())
            })?;
        let cfg = VgpuConfig {
            name: name.clone(),
            identity: identity(&vtype),
            vram_bytes: vtype.framebuffer_bytes,
            channels: vtype.channels,
        };
        let vgpu =
            Arc::new(Vgpu::with_context(cfg, ctx).map_err(|e| op_err(Errno::EIO, e.to_string()))?);
        // No VM yet: not running until a client attaches (equal_share).
        vgpu.set_attached(false);
        vgpu.set_acquire_timeout(acquire_timeout(&self.config, &name, &vtype.id));
        let path = self.socket_path(&uuid);
        let _ = std::fs::remove_file(&path);
        let server = vfio_user::spawn(&path, vgpu.clone())
            .map_err(|e| op_err(Errno::EIO, format!("{}: {e}", path.display())))?;
        // Dropping the server on failure removes the socket; the vGPU then
        // leaves its parent.
        self.sockets
            .apply(&path)
            .map_err(|e| op_err(Errno::EIO, e.to_string()))?;
        tracing::info!(%uuid, vtype = %vtype.id, parent = %parent_id, socket = %path.display(), "vGPU created");
        let type_id = vtype.id.clone();
        self.vgpus.insert(
            uuid,
            VgpuSlot {
                server,
                vgpu,
                vtype,
                parent: parent_id.clone(),
                key,
            },
        );
        Ok(Created {
            uuid: name,
            type_id,
            parent: parent_id,
            socket: path,
        })
    }

    /// Remove a vGPU; a client attached to it is disconnected and the vGPU
    /// quiesced first.
    pub fn remove(&mut self, uuid: &str) -> Result<Removed, OpError> {
        let u = parse_uuid(uuid)?;
        let slot = self
            .vgpus
            .remove(&u)
            .ok_or_else(|| op_err(Errno::ENOENT, format!("no vGPU {u}")))?;
        let attached = slot.server.stats().attached.load(Ordering::Relaxed);
        drop(slot);
        tracing::info!(uuid = %u, attached, "vGPU removed");
        Ok(Removed {
            uuid: u.to_string(),
            was_attached: attached,
        })
    }

    pub fn socket_path(&self, uuid: &Uuid) -> PathBuf {
        self.run_dir.join(format!("{uuid}.sock"))
    }

    /// One line per vGPU.
    pub fn list(&self) -> Vec<VgpuSummary> {
        self.vgpus
            .iter()
            .map(|(u, v)| VgpuSummary {
                uuid: u.to_string(),
                type_id: v.vtype.id.clone(),
                parent: v.parent.clone(),
                socket: v.server.path().to_path_buf(),
                attached: v.server.stats().attached.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Full status of one vGPU (`Some(uuid)`) or all, in the spirit of
    /// `nvidia-smi vgpu -q`.
    pub fn status(&self, uuid: Option<&str>) -> Result<Vec<VgpuStatus>, OpError> {
        let wanted = uuid.map(parse_uuid).transpose()?;
        if let Some(u) = &wanted {
            if !self.vgpus.contains_key(u) {
                return Err(op_err(Errno::ENOENT, format!("no vGPU {u}")));
            }
        }
        Ok(self.status_where(|u| wanted.is_none_or(|w| w == *u)))
    }

    /// The status of every vGPU.
    pub fn status_all(&self) -> Vec<VgpuStatus> {
        self.status_where(|_| true)
    }

    fn status_where(&self, wanted: impl Fn(&Uuid) -> bool) -> Vec<VgpuStatus> {
        let stats: BTreeMap<&String, scheduler::ParentStats> = self
            .parents
            .iter()
            .map(|(id, p)| (id, p.parent.stats()))
            .collect();
        let mut out = Vec::new();
        for (u, v) in &self.vgpus {
            if !wanted(u) {
                continue;
            }
            let ps = &stats[&v.parent];
            let s = ps.vgpu(v.key);
            let dev = v.vgpu.stats();
            let srv = v.server.stats();
            out.push(VgpuStatus {
                uuid: u.to_string(),
                type_id: v.vtype.id.clone(),
                type_name: v.vtype.name.clone(),
                parent: v.parent.clone(),
                socket: v.server.path().to_path_buf(),
                attached: srv.attached.load(Ordering::Relaxed),
                health: v.vgpu.engine_health().into(),
                connections: srv.connections.load(Ordering::Relaxed),
                protocol_errors: srv.errors.load(Ordering::Relaxed),
                policy: ps.policy.name().to_string(),
                configured_share: s.and_then(|s| s.configured_share),
                cap: s.and_then(|s| s.cap),
                achieved_share: s.map(|s| s.share_window),
                gpu_time_ns: s.map(|s| s.total),
                commands: s.map(|s| s.commands),
                queue_depth: s.map(|s| s.queue_depth),
                wait_ns: s.map(|s| s.wait),
                slice_us: s.map(|s| s.slice / 1000),
                slices: s.map(|s| s.slices),
                slices_dry: s.map(|s| s.slices_dry),
                faults: dev.faults,
                interrupts: dev.msi_delivered,
                doorbells_polled: dev.doorbells_polled,
                doorbells_trapped: dev.doorbells_trapped,
                pinned_bytes: dev.pinned_bytes,
                framebuffer_bytes: v.vtype.framebuffer_bytes,
            });
        }
        out
    }

    /// The policy of a parent.
    pub fn policy_show(&self, parent: Option<&str>) -> Result<PolicyInfo, OpError> {
        let (id, slot) = self.parent(parent)?;
        let p = slot.parent.policy();
        let st = slot.parent.stats();
        Ok(PolicyInfo {
            parent: id.clone(),
            policy: p.kind.name().to_string(),
            timeslice_us: slot.parent.timeslice() / 1000,
            averaging_factor: p.averaging_factor,
            window_us: st.window / 1000,
        })
    }

    /// Engine and policy of one parent (`Some(id)`) or all.
    pub fn parents_status(&self, parent: Option<&str>) -> Result<Vec<ParentStatus>, OpError> {
        let ids: Vec<&String> = match parent {
            Some(p) => vec![self.parent(Some(p))?.0],
            None => self.parents.keys().collect(),
        };
        Ok(ids
            .into_iter()
            .map(|id| {
                let slot = &self.parents[id];
                let st = slot.parent.stats();
                let busy: f64 = st.vgpus.iter().map(|v| v.share_window).sum();
                ParentStatus {
                    parent: id.clone(),
                    engine: slot.engine.into(),
                    gpu: slot.gpu.clone(),
                    policy: st.policy.name().to_string(),
                    timeslice_us: st.timeslice / 1000,
                    window_us: st.window / 1000,
                    vgpus: self.vgpus.values().filter(|v| &v.parent == id).count(),
                    framebuffer_bytes: slot.capacity.framebuffer_bytes,
                    max_vgpus: slot.capacity.max_vgpus,
                    busy_ns: st.busy,
                    engine_busy_ratio: busy.clamp(0.0, 1.0),
                    idle_empty_ns: st.idle.empty,
                    idle_held_ns: st.idle.held,
                    idle_late_ns: st.idle.late,
                    engine_stalled_ns: slot.parent.host_stall().as_nanos() as u64,
                }
            })
            .collect())
    }

    /// Change a parent's policy (and timeslice) while vGPUs run.
    pub fn policy_set(
        &mut self,
        parent: Option<&str>,
        policy: &str,
        timeslice_us: Option<u64>,
    ) -> Result<PolicyInfo, OpError> {
        let kind = PolicyKind::from_name(policy).ok_or_else(|| {
            op_err(
                Errno::EINVAL,
                format!(
                    "unknown policy {policy:?} (best_effort, equal_share, fixed_share, weighted)"
                ),
            )
        })?;
        let (id, slot) = self.parent(parent)?;
        let mut p = slot.parent.policy();
        p.kind = kind;
        if let Some(us) = timeslice_us {
            if !(1000..=30_000).contains(&us) {
                return Err(op_err(
                    Errno::EINVAL,
                    format!("timeslice {us} us is outside 1000 ..= 30000"),
                ));
            }
            p.timeslice = Some(us * 1000);
        }
        slot.parent
            .set_policy(p)
            .map_err(|e| op_err(Errno::EINVAL, e.to_string()))?;
        tracing::info!(parent = %id, policy = kind.name(), "policy set");
        let id = id.clone();
        self.policy_show(Some(&id))
    }

    /// Load the policy file again and apply it; a file that fails to load
    /// changes nothing.
    pub fn reload(&mut self) -> Result<Reloaded, OpError> {
        let Some(path) = &self.config_path else {
            return Ok(Reloaded {
                reloaded: false,
                file: None,
                reason: Some("no --config file".into()),
            });
        };
        let file = ConfigFile::load(path).map_err(|e| op_err(Errno::EINVAL, e.to_string()))?;
        let config = file.policy;
        // Resolve everything first so that a bad file changes nothing.
        let ownership = SocketOwnership::resolve(&file.sockets.overridden_by(&self.sockets_cli))
            .map_err(|e| op_err(Errno::EINVAL, e.to_string()))?;
        let mut params = Vec::new();
        for (u, v) in &self.vgpus {
            let p = config
                .vgpu_params(&u.to_string(), &v.vtype.id, v.vtype.max_instances)
                .map_err(|e| op_err(Errno::EINVAL, e.to_string()))?;
            params.push((v.parent.clone(), v.key, p));
        }
        for (id, slot) in &self.parents {
            slot.parent
                .set_policy(parent_policy(&config, id, &slot.section))
                .map_err(|e| op_err(Errno::EINVAL, e.to_string()))?;
        }
        for (parent, key, p) in params {
            self.parents[&parent]
                .parent
                .set_params(key, p)
                .map_err(|e| op_err(Errno::EINVAL, e.to_string()))?;
        }
        for (u, v) in &self.vgpus {
            v.vgpu
                .set_acquire_timeout(acquire_timeout(&config, &u.to_string(), &v.vtype.id));
        }
        self.config = config;
        if file.catalog.placement != self.placement {
            self.placement = file.catalog.placement;
            tracing::info!(placement = self.placement.name(), "placement changed");
        }
        if ownership != self.sockets {
            self.sockets = ownership;
            self.apply_socket_ownership();
            tracing::info!(sockets = %self.sockets, "socket ownership changed");
        }
        tracing::info!(file = %path.display(), "configuration reloaded");
        Ok(Reloaded {
            reloaded: true,
            file: Some(path.clone()),
            reason: None,
        })
    }
}

/// A parent's policy: its `[parent."<id>"]`, else its catalogue section's
/// (`[parent."<section>"]`: every GPU of a `device = "all"` section), else
/// `[default]`.
fn parent_policy(config: &Config, id: &str, section: &str) -> scheduler::ParentPolicy {
    if config.parents.contains_key(id) {
        config.parent_policy(id)
    } else {
        config.parent_policy(section)
    }
}

/// A vGPU's semaphore acquire limit from the configuration, else the
/// device's default.
fn acquire_timeout(config: &Config, uuid: &str, type_id: &str) -> std::time::Duration {
    config.acquire_timeout(uuid, type_id).map_or(
        devmodel::vgpu::DEFAULT_ACQUIRE_TIMEOUT,
        std::time::Duration::from_nanos,
    )
}

pub(crate) fn description(t: &VgpuType) -> String {
    format!(
        "{} GiB framebuffer, {} channels, compute; fixed share 1/{}",
        t.framebuffer_bytes >> 30,
        t.channels,
        t.max_instances
    )
}

fn identity(t: &VgpuType) -> PciIdentity {
    PciIdentity {
        vendor_id: t.vendor_id,
        device_id: t.device_id,
        subsystem_vendor_id: t.vendor_id,
        subsystem_id: t.device_id,
        revision: 1,
    }
}

/// A UUID as the kernel accepts it in `create`: 36 characters in the
/// hyphenated form, any case.
pub fn parse_uuid(s: &str) -> Result<Uuid, OpError> {
    let t = s.strip_suffix('\n').unwrap_or(s);
    if t.len() != 36 {
        return Err(op_err(Errno::EINVAL, format!("{t:?} is not a UUID")));
    }
    Uuid::try_parse(t).map_err(|_| op_err(Errno::EINVAL, format!("{t:?} is not a UUID")))
}
