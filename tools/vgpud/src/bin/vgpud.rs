//! vgpud: the vGPU host daemon.
//!
//! Hosts the parents (the cpu engine by default) and the vGPUs created on
//! them, serves each vGPU over vfio-user at `<run-dir>/<uuid>.sock` and
//! takes operations on `<run-dir>/control.sock`. SIGHUP reloads the
//! scheduling policy file; SIGTERM or SIGINT stops cleanly (vGPUs
//! quiesced, sockets removed). With `--demo` it also runs the demo workload
//! and exits when it is done.

use devmodel::sync::lock;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use mdev_types::sockets::{Principal, Setting};
use mdev_types::{Catalog, ConfigFile, SocketConfig};
use scheduler::Config;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vgpud::daemon::autostart::{self, Starter};
use vgpud::daemon::control::ControlServer;
use vgpud::daemon::metrics::MetricsServer;
use vgpud::daemon::{Daemon, DEFAULT_RUN_DIR};

#[derive(Parser)]
#[command(version, about = "vgpud: mediated pass-through vGPUs in user space")]
struct Args {
    /// Scheduling policy file (TOML, docs/config.md). Without one: the
    /// default parent `cpu0` runs best_effort.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the control socket and one vfio-user socket per vGPU
    /// [default: /run/vgpud; with --demo, a fresh directory under /tmp].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Mount the mdev sysfs tree (FUSE) at DIR/sys and keep mdevctl's
    /// directories (DIR/etc/mdevctl.d, DIR/usr/lib/mdevctl/scripts.d) there:
    /// `MDEVCTL_ENV_ROOT=DIR mdevctl ...` then manages vgpud's vGPUs.
    /// Devices defined with `--auto` start when vgpud starts.
    #[arg(long, value_name = "DIR")]
    mdev_root: Option<PathBuf>,
    /// The mdevctl that starts `auto` definitions when a parent appears
    /// (`mdevctl start-parent-mdevs <parent>`, as the kernel's udev rule
    /// runs it) [default: mdevctl on PATH; without one, a built-in fallback
    /// that runs no callouts and skips definitions with attributes].
    #[arg(long, value_name = "PATH", requires = "mdev_root")]
    mdevctl: Option<PathBuf>,
    /// Owner of each vGPU's vfio-user socket: a user name or uid. Overrides
    /// `owner` in the file's [sockets].
    #[arg(long, value_name = "USER")]
    socket_owner: Option<String>,
    /// Group of each vGPU's vfio-user socket: a group name or gid, e.g.
    /// libvirt-qemu. Overrides `group` in the file's [sockets].
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Mode of each vGPU's vfio-user socket, in octal, e.g. 0660 (QEMU
    /// needs write permission to connect). Overrides `mode` in [sockets].
    #[arg(long, value_name = "MODE", value_parser = socket_mode)]
    socket_mode: Option<u32>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g.
    /// 127.0.0.1:9400.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Run the demo workload for this many seconds of shared load, print
    /// what it measured and exit.
    #[arg(long, value_name = "SECONDS")]
    demo: Option<f64>,
    /// Policy for the demo's parent, overriding the file: best_effort,
    /// equal_share, fixed_share or weighted (default fixed_share).
    #[arg(long, requires = "demo")]
    policy: Option<String>,
    /// Log format on stderr: `text`, or `json` (one object per line, with
    /// the spans each event ran in: `vgpu`, `session`, `channel`). The
    /// level comes from VGPUD_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn socket_mode(s: &str) -> Result<u32, String> {
    mdev_types::sockets::parse_mode(s).ok_or_else(|| {
        format!("{s:?} is not a mode (octal permission bits, 0 ..= 0777, e.g. 0660)")
    })
}

/// The socket options of the command line, as settings that override the
/// file's.
fn socket_args(args: &Args) -> Result<SocketConfig, String> {
    let principal = |v: &Option<String>, opt: &str| -> Result<_, String> {
        v.as_deref()
            .map(|s| {
                Principal::from_arg(s)
                    .map(|value| Setting {
                        value,
                        origin: opt.to_string(),
                    })
                    .ok_or_else(|| format!("{opt}: empty name"))
            })
            .transpose()
    };
    Ok(SocketConfig {
        owner: principal(&args.socket_owner, "--socket-owner")?,
        group: principal(&args.socket_group, "--socket-group")?,
        mode: args.socket_mode.map(|value| Setting {
            value,
            origin: "--socket-mode".into(),
        }),
    })
}

/// Allocations from this size up are mapped on their own and unmapped when
/// freed. glibc otherwise raises the threshold after the first large free,
/// and a tenant's decoded segments (megabytes each) then come from the heap,
/// where small allocations made meanwhile can pin their pages after the
/// tenant has left.
const MMAP_THRESHOLD: i32 = 1 << 20;

fn main() -> ExitCode {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    let args = Args::parse();
    // The demo's selftests fault channels on purpose; its output is the
    // report, so it logs errors only unless VGPUD_LOG says otherwise.
    let default_level = if args.demo.is_some() { "error" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VGPUD_LOG")
        .unwrap_or_else(|_| default_level.into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    // One file holds both the scheduling policy and the type catalogue.
    let (config, catalog, file_sockets) = match &args.config {
        Some(path) => match ConfigFile::load(path) {
            Ok(f) => (f.policy, f.catalog, f.sockets),
            Err(e) => {
                eprintln!("vgpud: {e}");
                return ExitCode::from(2);
            }
        },
        None => (
            Config::default(),
            Catalog::default(),
            SocketConfig::default(),
        ),
    };
    let cli_sockets = match socket_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vgpud: {e}");
            return ExitCode::from(2);
        }
    };
    let starter = match Starter::find(args.mdevctl.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vgpud: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seconds) = args.demo {
        #[cfg(feature = "demo")]
        return demo(&args, config, &catalog, seconds);
        #[cfg(not(feature = "demo"))]
        {
            let _ = seconds;
            eprintln!("vgpud: --demo needs the `demo` feature (a default one)");
            return ExitCode::from(2);
        }
    }
    raise_fd_limit();
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
    if let Err(e) = prepare_run_dir(&run_dir) {
        eprintln!("vgpud: {e}");
        return ExitCode::from(1);
    }
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vgpud: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let daemon = match Daemon::new(&run_dir, args.config.clone(), config, &catalog) {
        Ok(d) => Arc::new(Mutex::new(d)),
        Err(e) => {
            eprintln!("vgpud: {e}");
            return ExitCode::from(1);
        }
    };
    match lock(&daemon).set_socket_ownership(cli_sockets, &file_sockets) {
        Ok(o) if o.is_set() => tracing::info!(sockets = %o, "vGPU socket ownership"),
        Ok(_) => {}
        Err(e) => {
            eprintln!("vgpud: {e}");
            return ExitCode::from(2);
        }
    }
    let control_path = run_dir.join("control.sock");
    let control = match ControlServer::spawn(&control_path, daemon.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vgpud: {}: {e}", control_path.display());
            return ExitCode::from(1);
        }
    };
    let sysfs = match &args.mdev_root {
        Some(root) => match vgpud::daemon::sysfs::mount(root, daemon.clone()) {
            Ok(m) => {
                let started = autostart::start_parents(&daemon, root, &starter);
                tracing::info!(root = %root.display(), auto_started = started.len(), "mdev tree mounted at {}/sys", root.display());
                Some(m)
            }
            Err(e) => {
                eprintln!(
                    "vgpud: --mdev-root {}: cannot mount the sysfs tree: {e}",
                    root.display()
                );
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let metrics = match args
        .metrics_addr
        .as_deref()
        .map(|a| MetricsServer::spawn(a, daemon.clone()))
        .transpose()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vgpud: --metrics-addr: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(m) = &metrics {
        tracing::info!(addr = %m.addr(), "metrics at http://{}/metrics", m.addr());
    }
    tracing::info!(run_dir = %run_dir.display(), control = %control_path.display(), "vgpud ready");
    for sig in signals.forever() {
        if sig == SIGHUP {
            let mut d = lock(&daemon);
            match d.reload() {
                Ok(v) => match serde_json::to_string(&v) {
                    Ok(json) => tracing::info!("SIGHUP: {json}"),
                    Err(_) => tracing::info!("SIGHUP: {v:?}"),
                },
                Err(e) => tracing::error!("SIGHUP: reload failed, policy unchanged: {e}"),
            }
            continue;
        }
        tracing::info!(signal = sig, "stopping");
        break;
    }
    drop(sysfs);
    drop(metrics);
    drop(control);
    match Arc::try_unwrap(daemon) {
        Ok(d) => drop(
            d.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ),
        Err(_) => tracing::warn!("daemon state still referenced at exit"),
    }
    tracing::info!("vgpud stopped");
    ExitCode::SUCCESS
}

/// Lift the soft limit on open files to the hard one: every VMM shares
/// guest memory and eventfds as descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Create the run directory; refuse to share it with a live daemon, and
/// clear sockets a dead one left behind.
fn prepare_run_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let control = dir.join("control.sock");
    if UnixStream::connect(&control).is_ok() {
        return Err(format!("another vgpud is serving {}", dir.display()));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "sock") {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

#[cfg(feature = "demo")]
fn demo(args: &Args, config: Config, catalog: &Catalog, seconds: f64) -> ExitCode {
    use scheduler::PolicyKind;
    let policy = match (&args.policy, &args.config) {
        (Some(name), _) => match PolicyKind::from_name(name) {
            Some(p) => Some(p),
            None => {
                eprintln!("vgpud: unknown policy {name:?} (best_effort, equal_share, fixed_share, weighted)");
                return ExitCode::from(2);
            }
        },
        (None, Some(_)) => None,
        (None, None) => Some(PolicyKind::FixedShare),
    };
    if !(seconds > 0.0 && seconds <= 3600.0) {
        eprintln!("vgpud: --demo seconds must be in (0, 3600]");
        return ExitCode::from(2);
    }
    let temp = args.run_dir.is_none();
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("vgpud-demo-{}", std::process::id())));
    if let Err(e) = prepare_run_dir(&run_dir) {
        eprintln!("vgpud: {e}");
        return ExitCode::from(1);
    }
    let daemon = match Daemon::new(&run_dir, args.config.clone(), config, catalog) {
        Ok(d) => Arc::new(Mutex::new(d)),
        Err(e) => {
            eprintln!("vgpud: {e}");
            if temp {
                let _ = std::fs::remove_dir_all(&run_dir);
            }
            return ExitCode::from(1);
        }
    };
    if let Some(kind) = policy {
        if let Err(e) = lock(&daemon).policy_set(None, kind.name(), None) {
            eprintln!("vgpud: {e}");
            return ExitCode::from(2);
        }
    }
    // The demo runs without its control socket (it only lets vgpuctl watch).
    let control = match ControlServer::spawn(&run_dir.join("control.sock"), daemon.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("vgpud: control socket: {e}; the demo runs without it");
            None
        }
    };
    println!(
        "vgpud demo: parent cpu0 (cpu engine), run dir {} (try: vgpuctl --run-dir {} status)",
        run_dir.display(),
        run_dir.display()
    );
    println!("two tenants connect over vfio-user, run the guest driver's selftest, then share the engine for {seconds} s");
    let result = vgpud::demo::run(&daemon, seconds);
    drop(control);
    drop(daemon);
    if temp {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    match result {
        Ok(r) => {
            print!("{}", vgpud::demo::render(&r));
            if vgpud::demo::all_passed(&r) {
                ExitCode::SUCCESS
            } else {
                eprintln!("vgpud demo: a selftest check failed");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vgpud demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
