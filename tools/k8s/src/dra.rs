//! The DRA kubelet plugin (`dra/v1`, Kubernetes 1.34 and later): driver
//! `vgpud.io`. It registers through the kubelet's plugin watcher
//! (`pluginregistration`: type `DRAPlugin`, service `v1.DRAPlugin`) and
//! serves `NodePrepareResources` / `NodeUnprepareResources`.
//!
//! Preparing a claim creates its vGPUs in vgpud: one per device the
//! scheduler allocated to it from this node's pool ([`crate::slices`]),
//! with a UUID derived from the claim's UID, the request and the device, so
//! that preparing again (the kubelet retries; the agent restarted) finds
//! the same vGPU. Each claim is recorded in a checkpoint file before its
//! vGPUs are made; a claim in the checkpoint is answered from it (and its
//! vGPUs made again if vgpud lost them). Unpreparing removes the vGPUs and
//! the record. The devices are CDI devices `vgpud.io/vgpu=<uuid>`
//! ([`crate::cdi`]).
//!
//! The kubelet's request names a claim only (namespace, name, UID); what
//! was allocated is in the ResourceClaim's status, which the plugin reads
//! from a [`ClaimSource`].
//!
//! Kubelet rules followed (kubelet source `pkg/kubelet/cm/dra/`): every
//! claim of a request gets an entry in the response, a failed claim an
//! `error` of its own (the kubelet retries those); unprepare of a claim
//! the plugin does not hold succeeds (it may be retried after a success).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::resource::v1::ResourceClaim;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::cdi::CdiSpec;
use crate::control::Vgpud;
use crate::names::{cdi_device, DOMAIN};
use crate::proto::{dra as pb, pluginregistration as reg};
use crate::slices::placements;
use crate::socket_dir;
use crate::Error;

/// The service version registered (`v1.DRAPlugin`).
pub const SERVICE: &str = "v1.DRAPlugin";
/// The plugin type the plugin watcher knows DRA drivers by.
pub const PLUGIN_TYPE: &str = "DRAPlugin";

/// Where the plugin learns what a claim was allocated.
#[derive(Clone, Debug)]
pub enum ClaimSource {
    /// `<dir>/<namespace>/<name>.json`: ResourceClaim objects as the API
    /// server serves them (`kubectl get resourceclaim -o json`).
    Dir(PathBuf),
    /// The API server, through `kubectl get` with this binary (in a pod:
    /// its service account).
    Kubectl(PathBuf),
}

/// A name the API server would accept for a namespace or claim (a DNS
/// subdomain), so that it can name a file.
fn api_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && !s.starts_with('.')
}

impl ClaimSource {
    fn get(&self, namespace: &str, name: &str) -> Result<ResourceClaim, Error> {
        if !api_name(namespace) || !api_name(name) {
            return Err(Error::Claim(format!(
                "{namespace:?}/{name:?} is not a claim name"
            )));
        }
        let what = format!("ResourceClaim {namespace}/{name}");
        let text = match self {
            ClaimSource::Dir(dir) => {
                let p = dir.join(namespace).join(format!("{name}.json"));
                std::fs::read(&p).map_err(|e| Error::file(&p, e))?
            }
            ClaimSource::Kubectl(bin) => {
                let args = [
                    "get",
                    "resourceclaims.resource.k8s.io",
                    "-n",
                    namespace,
                    name,
                    "-o",
                    "json",
                ];
                let out = Command::new(bin)
                    .args(args)
                    .output()
                    .map_err(|e| Error::file(bin, e))?;
                if !out.status.success() {
                    return Err(Error::Kubectl {
                        args: args.join(" "),
                        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                out.stdout
            }
        };
        serde_json::from_slice(&text).map_err(|source| Error::Json { what, source })
    }
}

/// One prepared device of a claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedDevice {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub uuid: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub parent: String,
}

/// A prepared claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedClaim {
    pub namespace: String,
    pub name: String,
    pub devices: Vec<PreparedDevice>,
}

/// The checkpoint: every claim prepared and not yet unprepared, by UID.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub claims: BTreeMap<String, PreparedClaim>,
}

/// The namespace of the UUIDs of prepared vGPUs (UUIDv5 of
/// `<claim uid>/<request>/<device>`).
const UUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7667d2a0_5e1f_4c3b_9a8d_6b2f0e4c1a93);

/// The vGPU UUID of a device of a claim.
pub fn vgpu_uuid(claim_uid: &str, request: &str, device: &str) -> String {
    uuid::Uuid::new_v5(
        &UUID_NAMESPACE,
        format!("{claim_uid}/{request}/{device}").as_bytes(),
    )
    .hyphenated()
    .to_string()
}

/// How the DRA plugin runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub kubelet_dir: PathBuf,
    /// The node's name: the pool's.
    pub node: String,
    /// Where the checkpoint lives.
    pub state_dir: PathBuf,
    pub claims: ClaimSource,
    pub cdi: CdiSpec,
}

/// The DRA plugin of a node.
pub struct Dra {
    vgpud: Vgpud,
    config: Config,
    checkpoint: Mutex<Checkpoint>,
}

fn lock(m: &Mutex<Checkpoint>) -> std::sync::MutexGuard<'_, Checkpoint> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dra {
    /// The plugin, with the claims its checkpoint holds.
    pub fn new(vgpud: Vgpud, config: Config) -> Result<Arc<Dra>, Error> {
        let path = config.state_dir.join("dra-checkpoint.json");
        let checkpoint = match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|source| Error::Json {
                what: path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(e) => return Err(Error::file(&path, e)),
        };
        Ok(Arc::new(Dra {
            vgpud,
            config,
            checkpoint: Mutex::new(checkpoint),
        }))
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.config.state_dir.join("dra-checkpoint.json")
    }

    /// The DRA service's socket and the registration socket.
    pub fn sockets(&self) -> (PathBuf, PathBuf) {
        (
            self.config
                .kubelet_dir
                .join("plugins")
                .join(DOMAIN)
                .join("dra.sock"),
            self.config
                .kubelet_dir
                .join("plugins_registry")
                .join(format!("{DOMAIN}-reg.sock")),
        )
    }

    /// Write the checkpoint (whole) and the CDI spec of its vGPUs.
    fn save(&self, cp: &Checkpoint) -> Result<(), Error> {
        let path = self.checkpoint_path();
        std::fs::create_dir_all(&self.config.state_dir)
            .map_err(|e| Error::file(&self.config.state_dir, e))?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(cp).map_err(|source| Error::Json {
            what: "checkpoint".into(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(|e| Error::file(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))?;
        let uuids: Vec<String> = cp
            .claims
            .values()
            .flat_map(|c| c.devices.iter().map(|d| d.uuid.clone()))
            .collect();
        self.config.cdi.write(&uuids)
    }

    /// Make sure vgpud has a claim's vGPUs, and their directories exist.
    fn ensure(&self, claim: &PreparedClaim) -> Result<(), Error> {
        let status = self.vgpud.status()?;
        for d in &claim.devices {
            let socket = match status.iter().find(|s| s.uuid == d.uuid) {
                Some(s) if s.type_id == d.type_id => s.socket.clone(),
                Some(s) => {
                    return Err(Error::Claim(format!(
                        "vGPU {} exists as a {}, not a {}",
                        d.uuid, s.type_id, d.type_id
                    )))
                }
                None => {
                    self.vgpud
                        .create(&d.type_id, Some(&d.parent), &d.uuid)?
                        .socket
                }
            };
            socket_dir::publish(self.vgpud.run_dir(), &d.uuid, &socket)?;
        }
        Ok(())
    }

    /// Prepare one claim: its devices for the kubelet.
    pub fn prepare(&self, claim: &pb::Claim) -> Result<Vec<pb::Device>, Error> {
        let mut cp = lock(&self.checkpoint);
        if let Some(p) = cp.claims.get(&claim.uid).cloned() {
            self.ensure(&p)?;
            return Ok(devices(&p));
        }
        let rc = self.config.claims.get(&claim.namespace, &claim.name)?;
        if rc.metadata.uid.as_deref() != Some(claim.uid.as_str()) {
            return Err(Error::Claim(format!(
                "claim {}/{} has UID {:?}, not {}",
                claim.namespace, claim.name, rc.metadata.uid, claim.uid
            )));
        }
        let results: Vec<_> = rc
            .status
            .and_then(|s| s.allocation)
            .and_then(|a| a.devices)
            .and_then(|d| d.results)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.driver == DOMAIN)
            .collect();
        if results.is_empty() {
            return Err(Error::Claim(format!(
                "claim {}/{} has no {DOMAIN} device allocated",
                claim.namespace, claim.name
            )));
        }
        let table = placements(&self.vgpud.types()?);
        let mut prepared = PreparedClaim {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            devices: Vec::new(),
        };
        for r in results {
            if r.pool != self.config.node {
                return Err(Error::Claim(format!(
                    "device {} is in pool {}, not this node's ({})",
                    r.device, r.pool, self.config.node
                )));
            }
            let Some(pl) = table.iter().find(|p| p.name == r.device) else {
                return Err(Error::Claim(format!(
                    "{} is no device of {DOMAIN} on {}",
                    r.device, self.config.node
                )));
            };
            prepared.devices.push(PreparedDevice {
                uuid: vgpu_uuid(&claim.uid, &r.request, &r.device),
                request: r.request,
                pool: r.pool,
                device: r.device,
                type_id: pl.type_id.clone(),
                parent: pl.parent.clone(),
            });
        }
        // Recorded before anything is made: a crash from here on leaves
        // a claim that prepare completes and unprepare cleans up.
        cp.claims.insert(claim.uid.clone(), prepared.clone());
        self.save(&cp)?;
        self.ensure(&prepared)?;
        tracing::info!(claim = %claim.uid, namespace = %claim.namespace, name = %claim.name, vgpus = prepared.devices.len(), "claim prepared");
        Ok(devices(&prepared))
    }

    /// Unprepare one claim: remove its vGPUs and its record.
    pub fn unprepare(&self, claim: &pb::Claim) -> Result<(), Error> {
        let mut cp = lock(&self.checkpoint);
        let Some(p) = cp.claims.get(&claim.uid).cloned() else {
            return Ok(());
        };
        for d in &p.devices {
            match self.vgpud.remove(&d.uuid) {
                Ok(()) => {}
                Err(e) if e.is_refused("ENOENT") => {}
                Err(e) => return Err(e),
            }
            socket_dir::withdraw(self.vgpud.run_dir(), &d.uuid);
        }
        cp.claims.remove(&claim.uid);
        self.save(&cp)?;
        tracing::info!(claim = %claim.uid, "claim unprepared");
        Ok(())
    }

    /// Serve the DRA service and the registration socket until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let (dra_sock, reg_sock) = self.sockets();
        // The service first: the kubelet dials the endpoint as soon as it
        // has the registration socket's answer.
        let dra_in = crate::grpc::listen(&dra_sock)?;
        let reg_in = crate::grpc::listen(&reg_sock)?;
        let (mut s1, mut s2) = (shutdown.clone(), shutdown.clone());
        let dra = tonic::transport::Server::builder()
            .add_service(pb::dra_plugin_server::DraPluginServer::new(Service(
                self.clone(),
            )))
            .serve_with_incoming_shutdown(dra_in, async move {
                let _ = s1.changed().await;
            });
        let registration = tonic::transport::Server::builder()
            .add_service(reg::registration_server::RegistrationServer::new(
                Registration {
                    endpoint: dra_sock.clone(),
                },
            ))
            .serve_with_incoming_shutdown(reg_in, async move {
                let _ = s2.changed().await;
            });
        tracing::info!(registration = %reg_sock.display(), endpoint = %dra_sock.display(), "DRA plugin serving");
        let both = async {
            let (a, b) = tokio::join!(dra, registration);
            a.and(b)
        };
        let r = crate::grpc::until_stopped(both, shutdown.clone()).await;
        let _ = std::fs::remove_file(&reg_sock);
        let _ = std::fs::remove_file(&dra_sock);
        r.map_err(|source| Error::Transport {
            what: "DRA plugin".into(),
            source,
        })
    }
}

fn devices(p: &PreparedClaim) -> Vec<pb::Device> {
    p.devices
        .iter()
        .map(|d| pb::Device {
            request_names: vec![d.request.clone()],
            pool_name: d.pool.clone(),
            device_name: d.device.clone(),
            cdi_device_ids: vec![cdi_device(&d.uuid)],
        })
        .collect()
}

struct Service(Arc<Dra>);

#[tonic::async_trait]
impl pb::dra_plugin_server::DraPlugin for Service {
    async fn node_prepare_resources(
        &self,
        req: Request<pb::NodePrepareResourcesRequest>,
    ) -> Result<Response<pb::NodePrepareResourcesResponse>, Status> {
        let dra = self.0.clone();
        let claims = req.into_inner().claims;
        let out = tokio::task::spawn_blocking(move || {
            claims
                .iter()
                .map(|c| {
                    let r = match dra.prepare(c) {
                        Ok(devices) => pb::NodePrepareResourceResponse {
                            devices,
                            error: String::new(),
                        },
                        Err(e) => {
                            tracing::warn!(claim = %c.uid, "prepare: {e}");
                            pb::NodePrepareResourceResponse {
                                devices: Vec::new(),
                                error: e.to_string(),
                            }
                        }
                    };
                    (c.uid.clone(), r)
                })
                .collect()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::NodePrepareResourcesResponse {
            claims: out,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<pb::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<pb::NodeUnprepareResourcesResponse>, Status> {
        let dra = self.0.clone();
        let claims = req.into_inner().claims;
        let out = tokio::task::spawn_blocking(move || {
            claims
                .iter()
                .map(|c| {
                    let error = match dra.unprepare(c) {
                        Ok(()) => String::new(),
                        Err(e) => {
                            tracing::warn!(claim = %c.uid, "unprepare: {e}");
                            e.to_string()
                        }
                    };
                    (c.uid.clone(), pb::NodeUnprepareResourceResponse { error })
                })
                .collect()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::NodeUnprepareResourcesResponse {
            claims: out,
        }))
    }
}

/// The plugin watcher's side: what the plugin is and where it serves.
struct Registration {
    endpoint: PathBuf,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: PLUGIN_TYPE.into(),
            name: DOMAIN.into(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: vec![SERVICE.into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!("registered with the kubelet as DRA driver {DOMAIN}");
        } else {
            tracing::error!(error = %s.error, "the kubelet refused the DRA plugin");
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// Publish the pool's ResourceSlices with `kubectl apply` (a real cluster;
/// the slices are what [`crate::slices::resource_slices`] builds).
pub fn publish_slices(kubectl: &Path, slices: &serde_json::Value) -> Result<(), Error> {
    use std::io::Write;
    let args = "apply -f -";
    let mut child = Command::new(kubectl)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::file(kubectl, e))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(slices.to_string().as_bytes())
            .map_err(|e| Error::file(kubectl, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::file(kubectl, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Kubectl {
            args: args.into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_devices_uuid_is_the_same_every_time_and_differs_between_devices() {
        let a = vgpu_uuid("c1", "gpu", "cpu0-vgpud-2c-0");
        assert_eq!(a, vgpu_uuid("c1", "gpu", "cpu0-vgpud-2c-0"));
        assert_ne!(a, vgpu_uuid("c2", "gpu", "cpu0-vgpud-2c-0"));
        assert_ne!(a, vgpu_uuid("c1", "gpu", "cpu0-vgpud-2c-1"));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }

    #[test]
    fn claim_names_must_be_api_names() {
        assert!(api_name("default"));
        assert!(api_name("gpu-claim.1"));
        for bad in ["", "..", "../etc", "a/b", "A", ".x"] {
            assert!(!api_name(bad), "{bad:?}");
        }
    }
}
