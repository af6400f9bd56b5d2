//! vgpuctl: the operator's command line for a running vgpud.
//!
//! Talks to `<run-dir>/control.sock` (docs/control.md). Exit status: 0 on
//! success, 1 when vgpud refused the operation (its errno name and message
//! are printed), 2 on a usage error, 3 when vgpud cannot be reached.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use vgpud::daemon::{Created, PolicyInfo, TypeInfo, VgpuStatus, VgpuSummary};

#[derive(Parser)]
#[command(version, about = "vgpuctl: manage the vGPUs of a running vgpud")]
struct Args {
    /// vgpud's run directory (where control.sock lives).
    #[arg(long, global = true, default_value = vgpud::daemon::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// vGPU types per parent, with available instances.
    Types {
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Create a vGPU; prints its UUID and socket.
    Create {
        #[arg(long = "type")]
        vtype: String,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        uuid: Option<String>,
    },
    /// Remove a vGPU (a VM attached to it loses the device).
    Remove { uuid: String },
    /// vGPUs and their sockets.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Per-vGPU status: attachment, policy, shares, GPU time, queue, faults.
    Status {
        uuid: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show or change a parent's scheduling policy.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Reload the scheduling policy file (as SIGHUP does).
    Reload,
    /// The libvirt domain XML that attaches a vGPU to a VM.
    LibvirtXml { uuid: String },
}

#[derive(Subcommand)]
enum PolicyCmd {
    Show {
        #[arg(long)]
        parent: Option<String>,
    },
    Set {
        /// best_effort, equal_share, fixed_share or weighted.
        policy: String,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        timeslice_us: Option<u64>,
    },
}

enum Failure {
    Refused(String, String),
    Unreachable(String),
}

fn call(args: &Args, req: Value) -> Result<Value, Failure> {
    let path = args.run_dir.join("control.sock");
    let unreachable = |e: std::io::Error| {
        Failure::Unreachable(format!("cannot reach vgpud at {}: {e}", path.display()))
    };
    let mut s = UnixStream::connect(&path).map_err(unreachable)?;
    writeln!(s, "{req}").map_err(unreachable)?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(unreachable)?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| Failure::Unreachable(format!("bad reply from vgpud: {e}")))?;
    if v["ok"] == true {
        Ok(v["result"].clone())
    } else {
        Err(Failure::Refused(
            v["error"].as_str().unwrap_or("EIO").to_string(),
            v["message"].as_str().unwrap_or("").to_string(),
        ))
    }
}

/// The result of `req`, read as `T` (docs/control.md; the daemon's
/// `vgpud::daemon::replies`).
fn call_as<T: DeserializeOwned>(args: &Args, req: Value) -> Result<T, Failure> {
    serde_json::from_value(call(args, req)?)
        .map_err(|e| Failure::Unreachable(format!("bad reply from vgpud: {e}")))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

/// A figure the daemon may not know, as the JSON reply shows it.
fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("null".into(), |x| x.to_string())
}

fn run(args: &Args) -> Result<(), Failure> {
    match &args.cmd {
        Cmd::Types {
            parent,
            json: as_json,
        } => {
            let req = json!({"op": "types", "parent": parent});
            if *as_json {
                println!("{:#}", call(args, req)?);
                return Ok(());
            }
            let r: Vec<TypeInfo> = call_as(args, req)?;
            println!(
                "{:<8} {:<10} {:<8} {:>6} {:>5} {:>9}  description",
                "parent", "type", "name", "fb_gib", "max", "available"
            );
            for t in r {
                println!(
                    "{:<8} {:<10} {:<8} {:>6} {:>5} {:>9}  {}",
                    t.parent,
                    t.id,
                    t.name,
                    t.framebuffer_bytes >> 30,
                    t.max_instances,
                    t.available_instances,
                    t.description
                );
            }
        }
        Cmd::Create {
            vtype,
            parent,
            uuid,
        } => {
            let r: Created = call_as(
                args,
                json!({"op": "create", "type": vtype, "parent": parent, "uuid": uuid}),
            )?;
            println!("{} {}", r.uuid, r.socket.display());
        }
        Cmd::Remove { uuid } => {
            call(args, json!({"op": "remove", "uuid": uuid}))?;
        }
        Cmd::List { json: as_json } => {
            let req = json!({"op": "list"});
            if *as_json {
                println!("{:#}", call(args, req)?);
                return Ok(());
            }
            let r: Vec<VgpuSummary> = call_as(args, req)?;
            for v in r {
                println!(
                    "{} {} {} {} {}",
                    v.uuid,
                    v.type_id,
                    v.parent,
                    if v.attached { "attached" } else { "detached" },
                    v.socket.display()
                );
            }
        }
        Cmd::Status {
            uuid,
            json: as_json,
        } => {
            let req = json!({"op": "status", "uuid": uuid});
            if *as_json {
                println!("{:#}", call(args, req)?);
                return Ok(());
            }
            let r: Vec<VgpuStatus> = call_as(args, req)?;
            for v in r {
                println!("vGPU {}", v.uuid);
                println!("    Type                 : {} ({})", v.type_name, v.type_id);
                println!("    Parent               : {}", v.parent);
                println!("    Socket               : {}", v.socket.display());
                println!(
                    "    Attached             : {}",
                    if v.attached { "Yes" } else { "No" }
                );
                println!("    Scheduling Policy    : {}", v.policy);
                println!("    Configured Share     : {}", opt(v.configured_share, 3));
                println!("    Achieved Share       : {}", opt(v.achieved_share, 3));
                println!(
                    "    GPU Time             : {:.3} s",
                    v.gpu_time_ns.unwrap_or(0) as f64 / 1e9
                );
                println!("    Commands             : {}", or_null(v.commands));
                println!("    Queue Depth          : {}", or_null(v.queue_depth));
                println!("    Faults               : {}", v.faults);
                println!("    Interrupts           : {}", v.interrupts);
                println!(
                    "    Doorbells            : {} polled, {} trapped",
                    v.doorbells_polled, v.doorbells_trapped
                );
                println!(
                    "    Framebuffer          : {} MiB",
                    v.framebuffer_bytes >> 20
                );
                println!("    Pinned Guest Memory  : {} MiB", v.pinned_bytes >> 20);
            }
        }
        Cmd::Policy {
            cmd: PolicyCmd::Show { parent },
        } => {
            let r: PolicyInfo = call_as(args, json!({"op": "policy_show", "parent": parent}))?;
            println!(
                "{} {} timeslice {} us window {} us",
                r.parent, r.policy, r.timeslice_us, r.window_us
            );
        }
        Cmd::Policy {
            cmd:
                PolicyCmd::Set {
                    policy,
                    parent,
                    timeslice_us,
                },
        } => {
            let r: PolicyInfo = call_as(
                args,
                json!({"op": "policy_set", "parent": parent, "policy": policy, "timeslice_us": timeslice_us}),
            )?;
            println!("{} {} timeslice {} us", r.parent, r.policy, r.timeslice_us);
        }
        Cmd::Reload => {
            let r = call(args, json!({"op": "reload"}))?;
            println!("{r}");
        }
        Cmd::LibvirtXml { uuid } => {
            let r: Vec<VgpuStatus> = call_as(args, json!({"op": "status", "uuid": uuid}))?;
            let socket = r.first().map(|v| v.socket.display().to_string());
            print!("{}", libvirt_xml(uuid, socket.as_deref().unwrap_or("")));
        }
    }
    Ok(())
}

/// What a libvirt domain needs for a vfio-user device: libvirt has no
/// vfio-user `<hostdev>`, so the device goes on QEMU's command line, and
/// guest RAM must be a shared memfd for QEMU to pass it to vgpud.
fn libvirt_xml(uuid: &str, socket: &str) -> String {
    let dev = json!({"driver": "vfio-user-pci", "id": format!("vgpu-{}", &uuid[..8.min(uuid.len())]), "socket": {"type": "unix", "path": socket}});
    let dev = dev
        .to_string()
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    format!(
        "<!-- add xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' to <domain> -->\n\
         <memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>\n\
         <qemu:commandline>\n  <qemu:arg value='-device'/>\n  <qemu:arg value=\"{dev}\"/>\n</qemu:commandline>\n"
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(code, msg)) => {
            eprintln!("vgpuctl: {code}: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(msg)) => {
            eprintln!("vgpuctl: {msg}");
            ExitCode::from(3)
        }
    }
}
