//! The device plugin (kubelet device plugin API v1beta1): one resource
//! per vGPU type of the node layout, `vgpud.io/<type>`, whose devices are
//! the layout's vGPUs, by UUID, with their parent's NUMA node.
//!
//! What the kubelet requires, and where (kubelet source,
//! `pkg/kubelet/cm/devicemanager/`):
//! - The plugin serves its socket before it registers: `Register` connects
//!   back to it before answering (`plugin/v1beta1/server.go` `Register` →
//!   `connectClient`; `client.go` `Connect` dials with `WithBlock`, then
//!   `PluginConnected` asks `GetDevicePluginOptions`).
//! - Registration names `v1beta1` and an extended resource name
//!   (`server.go` `isVersionCompatibleWithPlugin`,
//!   `v1helper.IsExtendedResourceName`).
//! - A restarting kubelet removes every socket in `device-plugins/`
//!   (`CleanupPluginDirectory` at `Start`): a plugin notices its socket or
//!   `kubelet.sock` gone or replaced, serves again and registers again.
//! - `ListAndWatch` streams the whole device list each time it changes
//!   (`client.go` `Run` → `PluginListAndWatchReceiver`).
//! - `GetPreferredAllocation` is asked only when the options say so
//!   (`manager.go` `callGetPreferredAllocationIfAvailable`), with the
//!   available devices and those that must be included.
//!
//! Health follows vgpud: a device is healthy while vgpud answers, has the
//! vGPU with the layout's type (and parent), and says its `health` is `ok`.
//! A vGPU vgpud lacks (a restarted vgpud keeps none) is created again with
//! its UUID.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use vgpud::daemon::Health;

use crate::cdi::CdiSpec;
use crate::control::Vgpud;
use crate::layout::{Layout, LayoutVgpu};
use crate::names::{cdi_device, kubevirt_mdev_env, resource_name, socket_env};
use crate::proto::deviceplugin as pb;
use crate::socket_dir;
use crate::Error;

/// The device plugin API version this plugin serves.
pub const VERSION: &str = "v1beta1";
/// The health strings of the API (`constants.go`).
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// Which devices `GetPreferredAllocation` prefers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Fill the parents already in use first: whole GPUs stay free for
    /// the types that need a whole GPU.
    Pack,
    /// One device from each parent in turn, the freest first: a pod's
    /// vGPUs do not share an engine.
    Spread,
}

/// How the device plugin runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The kubelet's root directory (`/var/lib/kubelet`).
    pub kubelet_dir: PathBuf,
    pub policy: Policy,
    /// When set, `Allocate` names CDI devices (the runtime knows CDI) and
    /// this spec describes them; otherwise it returns mounts.
    pub cdi: Option<CdiSpec>,
    /// How often vgpud is asked for the vGPUs' health.
    pub health_interval: Duration,
}

/// One resource: the layout's vGPUs of one type.
struct Resource {
    /// `vgpud.io/<type>`.
    name: String,
    /// The plugin's socket, in the kubelet's `device-plugins` directory.
    socket: String,
    devices: Vec<LayoutVgpu>,
    /// The device list `ListAndWatch` streams.
    list: watch::Sender<Vec<pb::Device>>,
}

/// The device plugin of a node.
pub struct DevicePlugin {
    vgpud: Vgpud,
    layout: Layout,
    config: Config,
    resources: Vec<Arc<Resource>>,
    /// What was last logged of each vGPU's health.
    said: std::sync::Mutex<BTreeMap<String, String>>,
}

/// What the plugin offers, in registration and `GetDevicePluginOptions`
/// alike.
fn options() -> pb::DevicePluginOptions {
    pb::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

fn device(v: &LayoutVgpu, healthy: bool) -> pb::Device {
    pb::Device {
        id: v.uuid.clone(),
        health: if healthy { HEALTHY } else { UNHEALTHY }.into(),
        topology: v.numa_node.map(|n| pb::TopologyInfo {
            nodes: vec![pb::NumaNode { id: n }],
        }),
    }
}

impl DevicePlugin {
    pub fn new(vgpud: Vgpud, layout: Layout, config: Config) -> Arc<DevicePlugin> {
        let resources = layout
            .types()
            .into_iter()
            .map(|t| {
                let devices: Vec<LayoutVgpu> = layout
                    .vgpus
                    .iter()
                    .filter(|v| v.type_id == t)
                    .cloned()
                    .collect();
                let (list, _) = watch::channel(devices.iter().map(|v| device(v, false)).collect());
                Arc::new(Resource {
                    name: resource_name(&t),
                    socket: format!("vgpud-{t}.sock"),
                    devices,
                    list,
                })
            })
            .collect();
        Arc::new(DevicePlugin {
            vgpud,
            layout,
            config,
            resources,
            said: Default::default(),
        })
    }

    /// Write the CDI spec of the layout's vGPUs, when CDI is on.
    pub fn write_cdi(&self) -> Result<(), Error> {
        match &self.config.cdi {
            Some(spec) => {
                let uuids: Vec<String> = self.layout.vgpus.iter().map(|v| v.uuid.clone()).collect();
                spec.write(&uuids)
            }
            None => Ok(()),
        }
    }

    fn plugins_dir(&self) -> PathBuf {
        self.config.kubelet_dir.join("device-plugins")
    }

    /// Ask vgpud once: create what it lacks, link the sockets, and set
    /// every device's health (a changed list goes out on `ListAndWatch`).
    /// Returns the healthy devices' count.
    pub fn refresh(&self) -> usize {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let status = self.vgpud.status();
        let mut healthy = HashSet::new();
        for v in &self.layout.vgpus {
            let why = match &status {
                Err(e) => Err(format!("vgpud: {e}")),
                Ok(all) => match all.iter().find(|s| s.uuid == v.uuid) {
                    Some(s) if s.type_id != v.type_id => Err(format!(
                        "vgpud has it as a {}, not a {}",
                        s.type_id, v.type_id
                    )),
                    Some(s) if v.parent.as_ref().is_some_and(|p| *p != s.parent) => {
                        Err(format!("vgpud has it on {}", s.parent))
                    }
                    Some(s) if s.health != Health::Ok => Err(format!("health {:?}", s.health)),
                    Some(s) => socket_dir::publish(self.vgpud.run_dir(), &v.uuid, &s.socket)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => self
                        .vgpud
                        .create(&v.type_id, v.parent.as_deref(), &v.uuid)
                        .and_then(|c| socket_dir::publish(self.vgpud.run_dir(), &v.uuid, &c.socket))
                        .map(|_| ())
                        .map_err(|e| format!("not created: {e}")),
                },
            };
            let now = match &why {
                Ok(()) => "healthy".to_string(),
                Err(w) => w.clone(),
            };
            if said.get(&v.uuid) != Some(&now) {
                match &why {
                    Ok(()) => tracing::info!(uuid = %v.uuid, "vGPU healthy"),
                    Err(w) => tracing::warn!(uuid = %v.uuid, "vGPU unhealthy: {w}"),
                }
                said.insert(v.uuid.clone(), now);
            }
            if why.is_ok() {
                healthy.insert(v.uuid.as_str());
            }
        }
        for r in &self.resources {
            let new: Vec<pb::Device> = r
                .devices
                .iter()
                .map(|v| device(v, healthy.contains(v.uuid.as_str())))
                .collect();
            r.list.send_if_modified(|cur| {
                let changed = *cur != new;
                if changed {
                    *cur = new;
                }
                changed
            });
        }
        healthy.len()
    }

    /// Keep the devices' health current until `stop`.
    pub fn watch_health(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || {
            while !*stop.borrow() {
                me.refresh();
                std::thread::sleep(me.config.health_interval);
            }
        })
    }

    /// Serve every resource and keep it registered with the kubelet,
    /// serving and registering again when the kubelet restarts, until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let dir = self.plugins_dir();
        let kubelet = dir.join("kubelet.sock");
        loop {
            let Some(seen) = wait_for(&kubelet, &mut shutdown).await else {
                return Ok(());
            };
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut servers = Vec::new();
            let mut registered = vec![false; self.resources.len()];
            for r in &self.resources {
                // Bound before Register is sent: the kubelet's dial finds
                // a listener (connections queue until the server runs).
                let incoming = crate::grpc::listen(&dir.join(&r.socket))?;
                let svc = Service {
                    res: r.clone(),
                    plugin: self.clone(),
                    stop: stop_rx.clone(),
                };
                let mut stop = stop_rx.clone();
                servers.push(tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(pb::device_plugin_server::DevicePluginServer::new(svc))
                        .serve_with_incoming_shutdown(incoming, async move {
                            let _ = stop.changed().await;
                        }),
                ));
            }
            let mut last_try: Option<Instant> = None;
            let mut failures = 0u32;
            let stopped = loop {
                if last_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_try = Some(Instant::now());
                    for (r, done) in self.resources.iter().zip(registered.iter_mut()) {
                        if *done {
                            continue;
                        }
                        match register(&kubelet, r).await {
                            Ok(()) => {
                                tracing::info!(resource = %r.name, socket = %r.socket, "registered with the kubelet");
                                *done = true;
                            }
                            Err(e) => {
                                failures += 1;
                                if failures < 5 || failures.is_multiple_of(60) {
                                    tracing::warn!(resource = %r.name, "registration: {e}");
                                }
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    break true;
                }
                let gone = self.resources.iter().any(|r| !dir.join(&r.socket).exists());
                if file_id(&kubelet) != Some(seen) || gone {
                    tracing::info!("the kubelet restarted (its socket or ours replaced): serving and registering again");
                    break false;
                }
            };
            let _ = stop_tx.send(true);
            for s in servers {
                // A stream the kubelet holds open ends with the stop; a
                // server that still lingers is dropped.
                let abort = s.abort_handle();
                if tokio::time::timeout(Duration::from_secs(1), s)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
            if stopped {
                for r in &self.resources {
                    let _ = std::fs::remove_file(dir.join(&r.socket));
                }
                return Ok(());
            }
        }
    }
}

/// A file's identity, to tell a replaced socket from the one seen before.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Wait until `p` exists; `None` at shutdown.
async fn wait_for(p: &Path, shutdown: &mut watch::Receiver<bool>) -> Option<(u64, u64)> {
    loop {
        if *shutdown.borrow() {
            return None;
        }
        if let Some(id) = file_id(p) {
            return Some(id);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// `Register` one resource with the kubelet on `kubelet`.
async fn register(kubelet: &Path, r: &Resource) -> Result<(), Error> {
    let call = async {
        let ch = crate::grpc::connect(kubelet).await?;
        pb::registration_client::RegistrationClient::new(ch)
            .register(pb::RegisterRequest {
                version: VERSION.into(),
                endpoint: r.socket.clone(),
                resource_name: r.name.clone(),
                options: Some(options()),
            })
            .await
            .map_err(|status| Error::Rpc {
                what: "Register".into(),
                status,
            })
    };
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(Error::Rpc {
            what: "Register".into(),
            status: Status::deadline_exceeded("no answer in 10 s"),
        }),
    }
}

/// A preferred allocation of `size` devices out of `available`, with every
/// one of `must` (the kubelet's `must_include_deviceIDs`) first; only
/// devices of `devices` count, in their order.
pub fn preferred(
    devices: &[LayoutVgpu],
    available: &[String],
    must: &[String],
    size: usize,
    policy: Policy,
) -> Vec<String> {
    let avail: HashSet<&str> = available.iter().map(String::as_str).collect();
    let mut out: Vec<String> = Vec::new();
    for m in must {
        if avail.contains(m.as_str()) && !out.contains(m) && out.len() < size {
            out.push(m.clone());
        }
    }
    let parent_of = |id: &str| {
        devices
            .iter()
            .find(|d| d.uuid == id)
            .map(|d| d.parent.clone().unwrap_or_default())
    };
    // The free devices of each parent, in layout order.
    let mut free: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in devices {
        if avail.contains(d.uuid.as_str()) && !out.contains(&d.uuid) {
            free.entry(d.parent.clone().unwrap_or_default())
                .or_default()
                .push(d.uuid.clone());
        }
    }
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    for id in &out {
        if let Some(p) = parent_of(id) {
            *used.entry(p).or_default() += 1;
        }
    }
    while out.len() < size {
        let pick = match policy {
            // The parent already used most, else one that holds the rest
            // of the request, the one with the fewest free devices first
            // (best fit).
            Policy::Pack => {
                let need = size - out.len();
                free.iter()
                    .filter(|(_, f)| !f.is_empty())
                    .min_by_key(|(p, f)| {
                        (
                            std::cmp::Reverse(used.get(*p).copied().unwrap_or(0)),
                            f.len() < need,
                            f.len(),
                        )
                    })
                    .map(|(p, _)| p.clone())
            }
            // The parent used least, else the one with the most free.
            Policy::Spread => free
                .iter()
                .filter(|(_, f)| !f.is_empty())
                .min_by_key(|(p, f)| {
                    (
                        used.get(*p).copied().unwrap_or(0),
                        std::cmp::Reverse(f.len()),
                    )
                })
                .map(|(p, _)| p.clone()),
        };
        let Some(p) = pick else {
            break;
        };
        if let Some(f) = free.get_mut(&p) {
            out.push(f.remove(0));
            *used.entry(p).or_default() += 1;
        }
    }
    out
}

/// One resource's `DevicePlugin` service.
#[derive(Clone)]
struct Service {
    res: Arc<Resource>,
    plugin: Arc<DevicePlugin>,
    /// Set when this serving generation stops (the kubelet restarted, or
    /// the agent stops): open `ListAndWatch` streams end.
    stop: watch::Receiver<bool>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<pb::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::device_plugin_server::DevicePlugin for Service {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<DeviceStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut list = self.res.list.subscribe();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let devices = list.borrow_and_update().clone();
                if tx
                    .send(Ok(pb::ListAndWatchResponse { devices }))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::select! {
                    r = list.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        let container_responses = req
            .into_inner()
            .container_requests
            .iter()
            .map(|c| pb::ContainerPreferredAllocationResponse {
                device_i_ds: preferred(
                    &self.res.devices,
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    c.allocation_size.max(0) as usize,
                    self.plugin.config.policy,
                ),
            })
            .collect();
        Ok(Response::new(pb::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let run_dir = self.plugin.vgpud.run_dir();
        let mut container_responses = Vec::new();
        for c in &req.get_ref().container_requests {
            for id in &c.devices_ids {
                if !self.res.devices.iter().any(|d| d.uuid == *id) {
                    return Err(Status::invalid_argument(format!(
                        "{id} is not a device of {}",
                        self.res.name
                    )));
                }
            }
            let mut r = pb::ContainerAllocateResponse::default();
            // KubeVirt's contract: the UUIDs, in the order asked.
            r.envs
                .insert(kubevirt_mdev_env(&self.res.name), c.devices_ids.join(","));
            if self.plugin.config.cdi.is_some() {
                r.cdi_devices = c
                    .devices_ids
                    .iter()
                    .map(|id| pb::CdiDevice {
                        name: cdi_device(id),
                    })
                    .collect();
            } else {
                for id in &c.devices_ids {
                    r.envs
                        .insert(socket_env(id), socket_dir::container_socket(id));
                    r.mounts.push(pb::Mount {
                        container_path: socket_dir::container_dir(id),
                        host_path: socket_dir::host_dir(run_dir, id).display().to_string(),
                        read_only: false,
                    });
                }
            }
            container_responses.push(r);
        }
        Ok(Response::new(pb::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        Ok(Response::new(pb::PreStartContainerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(u: &str, parent: &str) -> LayoutVgpu {
        LayoutVgpu {
            uuid: u.into(),
            type_id: "t".into(),
            parent: Some(parent.into()),
            numa_node: None,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pack_fills_a_parent_and_spread_takes_one_from_each() {
        let d = [
            dev("a1", "g0"),
            dev("a2", "g0"),
            dev("a3", "g0"),
            dev("b1", "g1"),
            dev("b2", "g1"),
        ];
        let all = ids(&["a1", "a2", "a3", "b1", "b2"]);
        // g1 has fewer free: pack fills it first.
        assert_eq!(
            preferred(&d, &all, &[], 2, Policy::Pack),
            ids(&["b1", "b2"])
        );
        assert_eq!(
            preferred(&d, &all, &[], 2, Policy::Spread),
            ids(&["a1", "b1"])
        );
        // A must-include device's parent is packed onto.
        assert_eq!(
            preferred(&d, &all, &ids(&["a2"]), 3, Policy::Pack),
            ids(&["a2", "a1", "a3"])
        );
        // ... and spread away from.
        assert_eq!(
            preferred(&d, &all, &ids(&["a2"]), 2, Policy::Spread),
            ids(&["a2", "b1"])
        );
        // Never outside what is available, never more than asked.
        let some = ids(&["a3", "b2"]);
        assert_eq!(
            preferred(&d, &some, &[], 5, Policy::Pack),
            ids(&["a3", "b2"])
        );
        assert_eq!(
            preferred(&d, &all, &[], 0, Policy::Spread),
            Vec::<String>::new()
        );
        assert_eq!(
            preferred(&d, &all, &ids(&["zz"]), 1, Policy::Pack),
            ids(&["b1"]),
            "an unknown must-include is not invented"
        );
    }
}
