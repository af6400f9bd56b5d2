//! vgpud-k8s: vgpud's node agent for Kubernetes (docs/kubernetes.md).
//!
//! `serve` runs the device plugin (with `--layout`) and the DRA plugin
//! (with `--dra`) until SIGTERM; `resource-slices` prints what the DRA
//! driver publishes; `kubevirt-hook` serves KubeVirt's domain hook in a
//! virt-launcher sidecar; `kubevirt-rewrite` rewrites one domain (stdin to
//! stdout). Exit status 1 on an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use vgpud_k8s::cdi::CdiSpec;
use vgpud_k8s::control::Vgpud;
use vgpud_k8s::device_plugin::{self, DevicePlugin, Policy};
use vgpud_k8s::dra::{self, ClaimSource, Dra};
use vgpud_k8s::kubevirt::{rewrite_domain, DomainHook, Rewrite};
use vgpud_k8s::layout::Layout;
use vgpud_k8s::{proto, slices, Error};

#[derive(Parser)]
#[command(version, about = "vgpud's Kubernetes node agent")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the device plugin and/or the DRA plugin until SIGTERM.
    Serve(ServeArgs),
    /// Print the ResourceSlices of this node's pool (a JSON List).
    ResourceSlices {
        #[arg(long, default_value = vgpud::daemon::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
    },
    /// Serve KubeVirt's domain hook (DomainHookService) on a socket.
    KubevirtHook {
        #[arg(long)]
        socket: PathBuf,
        /// Where QEMU finds the vGPUs' directories.
        #[arg(long, default_value = vgpud_k8s::socket_dir::CONTAINER_DIR)]
        socket_dir: PathBuf,
    },
    /// Rewrite a domain XML from stdin to stdout, as the hook does.
    KubevirtRewrite {
        /// The VMI (JSON) whose vgpud devices to rewrite; without it,
        /// every mediated host device.
        #[arg(long)]
        vmi: Option<PathBuf>,
        #[arg(long, default_value = vgpud_k8s::socket_dir::CONTAINER_DIR)]
        socket_dir: PathBuf,
        /// Give the guest an IOMMU (as the VMI annotation does).
        #[arg(long)]
        guest_iommu: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// vgpud's run directory (its control socket, the vGPUs' sockets).
    #[arg(long, default_value = vgpud::daemon::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The kubelet's root directory.
    #[arg(long, default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// The node layout (pre-created vGPUs): runs the device plugin.
    #[arg(long)]
    layout: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "pack")]
    policy: Policy,
    /// Write CDI specs here; the device plugin then names CDI devices
    /// (the runtime must know CDI) instead of returning mounts.
    #[arg(long)]
    cdi_dir: Option<PathBuf>,
    /// Run the DRA plugin.
    #[arg(long)]
    dra: bool,
    #[arg(long, env = "NODE_NAME", required_if_eq("dra", "true"))]
    node_name: Option<String>,
    /// Where the DRA checkpoint lives.
    #[arg(long, default_value = "/var/lib/vgpud-k8s")]
    state_dir: PathBuf,
    /// Read ResourceClaims from <DIR>/<namespace>/<name>.json.
    #[arg(long, conflicts_with = "kubectl")]
    claims_dir: Option<PathBuf>,
    /// Read ResourceClaims, and publish the ResourceSlices, with kubectl.
    #[arg(long)]
    kubectl: Option<PathBuf>,
    /// How often vgpud is asked for the vGPUs' health, in ms.
    #[arg(long, default_value_t = 500)]
    health_interval_ms: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// A flag that turns true at SIGTERM or SIGINT.
fn shutdown_on_signal() -> Result<watch::Receiver<bool>, Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).map_err(Error::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Runtime)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn serve(a: ServeArgs) -> Result<(), Error> {
    let vgpud = Vgpud::new(&a.run_dir);
    let shutdown = shutdown_on_signal()?;
    let mut tasks = Vec::new();
    let mut health = None;
    if let Some(path) = &a.layout {
        let layout = Layout::load(path)?;
        let plugin = DevicePlugin::new(
            vgpud.clone(),
            layout,
            device_plugin::Config {
                kubelet_dir: a.kubelet_dir.clone(),
                policy: a.policy,
                cdi: a
                    .cdi_dir
                    .as_ref()
                    .map(|d| CdiSpec::new(d, "device-plugin", &a.run_dir)),
                health_interval: Duration::from_millis(a.health_interval_ms.max(50)),
            },
        );
        // The devices' health is known before the kubelet first asks.
        plugin.refresh();
        plugin.write_cdi()?;
        health = Some(plugin.watch_health(shutdown.clone()));
        tasks.push(tokio::spawn(plugin.run(shutdown.clone())));
    }
    if a.dra {
        let node = a.node_name.clone().unwrap_or_default();
        let claims = match (&a.claims_dir, &a.kubectl) {
            (Some(d), _) => ClaimSource::Dir(d.clone()),
            (None, Some(k)) => ClaimSource::Kubectl(k.clone()),
            (None, None) => ClaimSource::Kubectl(PathBuf::from("kubectl")),
        };
        if let Some(k) = &a.kubectl {
            let list = slices_list(&vgpud, &node)?;
            dra::publish_slices(k, &list)?;
        }
        let cdi_dir = a
            .cdi_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/run/cdi"));
        let plugin = Dra::new(
            vgpud.clone(),
            dra::Config {
                kubelet_dir: a.kubelet_dir.clone(),
                node,
                state_dir: a.state_dir.clone(),
                claims,
                cdi: CdiSpec::new(&cdi_dir, "dra", &a.run_dir),
            },
        )?;
        tasks.push(tokio::spawn(plugin.run(shutdown.clone())));
    }
    if tasks.is_empty() {
        return Err(Error::Usage(
            "nothing to serve: give --layout and/or --dra".into(),
        ));
    }
    let mut result = Ok(());
    for t in tasks {
        match t.await {
            Ok(Err(e)) => result = Err(e),
            Err(e) => tracing::error!("task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(h) = health {
        let _ = h.join();
    }
    result
}

fn slices_list(vgpud: &Vgpud, node: &str) -> Result<serde_json::Value, Error> {
    let items = slices::resource_slices(node, &vgpud.parents()?, &vgpud.types()?);
    let items = serde_json::to_value(items).map_err(|source| Error::Json {
        what: "ResourceSlices".into(),
        source,
    })?;
    Ok(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))
}

async fn kubevirt_hook(socket: PathBuf, socket_dir: PathBuf) -> Result<(), Error> {
    let shutdown = shutdown_on_signal()?;
    let mut stop = shutdown.clone();
    let incoming = vgpud_k8s::grpc::listen(&socket)?;
    tracing::info!(socket = %socket.display(), "KubeVirt domain hook serving");
    let server = tonic::transport::Server::builder()
        .add_service(
            proto::kubevirt::domain_hook_service_server::DomainHookServiceServer::new(DomainHook {
                socket_dir,
            }),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.changed().await;
        });
    let r = vgpud_k8s::grpc::until_stopped(server, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    r.map_err(|source| Error::Transport {
        what: "KubeVirt hook".into(),
        source,
    })
}

fn run(args: Args) -> Result<(), Error> {
    match args.cmd {
        Cmd::Serve(a) => runtime()?.block_on(serve(a)),
        Cmd::ResourceSlices { run_dir, node_name } => {
            let list = slices_list(&Vgpud::new(&run_dir), &node_name)?;
            println!("{list:#}");
            Ok(())
        }
        Cmd::KubevirtHook { socket, socket_dir } => {
            runtime()?.block_on(kubevirt_hook(socket, socket_dir))
        }
        Cmd::KubevirtRewrite {
            vmi,
            socket_dir,
            guest_iommu,
        } => {
            let mut how = match &vmi {
                Some(p) => {
                    let text = std::fs::read(p).map_err(|e| Error::file(p, e))?;
                    let v = serde_json::from_slice(&text).map_err(|source| Error::Json {
                        what: p.display().to_string(),
                        source,
                    })?;
                    Rewrite::for_vmi(&v, &socket_dir)
                }
                None => Rewrite {
                    aliases: None,
                    socket_dir,
                    guest_iommu: false,
                },
            };
            how.guest_iommu |= guest_iommu;
            let xml = std::io::read_to_string(std::io::stdin())
                .map_err(|e| Error::file(std::path::Path::new("stdin"), e))?;
            let (out, uuids) = rewrite_domain(&xml, &how)?;
            eprintln!("vgpud-k8s: {} vGPU(s): {}", uuids.len(), uuids.join(" "));
            print!("{out}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VGPUD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpud-k8s: {e}");
            ExitCode::from(1)
        }
    }
}
