//! vgpuctl: the operator's command line for a running vgpud.
//!
//! Talks to `<run-dir>/control.sock` (docs/control.md). Exit status: 0 on
//! success, 1 when vgpud refused the operation (its errno name and message
//! are printed), 2 on a usage error, 3 when vgpud cannot be reached, 4
//! when `record` cannot write its files.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use vgpud::daemon::control::Request;
use vgpud::daemon::{Created, ParentStatus, PolicyInfo, TypeInfo, VgpuStatus, VgpuSummary};
use vgpud::views::{chart, record, top, Sample};

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
    /// A live view: per parent its policy and engine busy; per vGPU its
    /// share (achieved between refreshes, against configured), queue depth,
    /// faults, commands/s and doorbells/s. Refreshes until interrupted.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after N refreshes.
        #[arg(short = 'n', long = "iterations", value_name = "N")]
        iterations: Option<u64>,
        /// One refresh, then exit (as -n 1; rates need two, so they show `-`).
        #[arg(long, conflicts_with = "iterations")]
        once: bool,
    },
    /// Sample every vGPU's achieved share for a while; write the samples
    /// as CSV and/or a chart (PNG, shares over time, configured dashed).
    #[command(group(clap::ArgGroup::new("output").required(true).multiple(true).args(["png", "csv"])))]
    Record {
        /// How long to record.
        #[arg(long)]
        seconds: f64,
        /// Write the chart here (PNG, 1000x500).
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// Write the samples here: time_s,vgpu,type,configured,achieved.
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
        /// Milliseconds between samples.
        #[arg(long, value_name = "MS", default_value_t = 200)]
        interval: u64,
        /// The chart's title [default: the parents and their policies].
        #[arg(long)]
        title: Option<String>,
    },
    /// A libvirt domain for a VM with this vGPU: `virsh define` it as it
    /// is, or paste the parts of `--fragment` into a domain of your own.
    LibvirtXml(LibvirtXmlArgs),
    /// Kubernetes: the manifests that install vgpud's node agent.
    K8s {
        #[command(subcommand)]
        cmd: K8sCmd,
    },
}

#[derive(Subcommand)]
enum K8sCmd {
    /// Print the DaemonSet, RBAC, DeviceClasses and KubeVirt pieces
    /// (docs/kubernetes.md) as YAML for `kubectl apply -f`.
    Manifests {
        /// A type to offer (DeviceClass, KubeVirt permitted device); by
        /// default every type of the running vgpud.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// The agent's image (vgpud-k8s, and kubectl for DRA).
        #[arg(long, default_value = concat!("vgpud:", env!("CARGO_PKG_VERSION")))]
        image: String,
        #[arg(long, default_value = "vgpud-system")]
        namespace: String,
        /// Leave out the DRA driver's pieces.
        #[arg(long)]
        no_dra: bool,
        /// Leave out KubeVirt's pieces.
        #[arg(long)]
        no_kubevirt: bool,
    },
}

#[derive(clap::Args)]
struct LibvirtXmlArgs {
    uuid: String,
    /// Print only the parts to paste into an existing domain, each with
    /// where it goes, instead of a complete domain.
    #[arg(long)]
    fragment: bool,
    /// The domain's name [default: vgpu-<first 8 digits of the UUID>].
    #[arg(long)]
    name: Option<String>,
    /// Guest RAM in MiB (all of it a shared memfd that vgpud maps).
    #[arg(long, default_value_t = 4096)]
    memory_mib: u64,
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// `kvm`, or `qemu` for TCG (no /dev/kvm).
    #[arg(long, default_value = "kvm", value_parser = ["kvm", "qemu"])]
    domain_type: String,
    /// A disk image to boot (qcow2 when its name ends in .qcow2, else raw).
    #[arg(long, value_name = "IMAGE")]
    disk: Option<PathBuf>,
    /// Boot this kernel directly (with --initrd, --cmdline).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line, to which `intel_iommu=on` is added.
    #[arg(long, value_name = "ARGS", requires = "kernel")]
    cmdline: Option<String>,
    /// Write the serial console to this file instead of a pty.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
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
    Usage(String),
    Output(String),
}

fn call(args: &Args, req: Request) -> Result<Value, Failure> {
    let path = args.run_dir.join("control.sock");
    let unreachable = |e: std::io::Error| {
        Failure::Unreachable(format!("cannot reach vgpud at {}: {e}", path.display()))
    };
    let line = serde_json::to_string(&req)
        .map_err(|e| Failure::Usage(format!("request not serializable: {e}")))?;
    let mut s = UnixStream::connect(&path).map_err(unreachable)?;
    writeln!(s, "{line}").map_err(unreachable)?;
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
fn call_as<T: DeserializeOwned>(args: &Args, req: Request) -> Result<T, Failure> {
    serde_json::from_value(call(args, req)?)
        .map_err(|e| Failure::Unreachable(format!("bad reply from vgpud: {e}")))
}

/// Every vGPU's status (and every parent's, with `parents`), when the reply came.
fn sample(args: &Args, parents: bool) -> Result<Sample, Failure> {
    let parents: Vec<ParentStatus> = if parents {
        call_as(args, Request::Parents { parent: None })?
    } else {
        Vec::new()
    };
    let vgpus: Vec<VgpuStatus> = call_as(args, Request::Status { uuid: None })?;
    Ok(Sample {
        at: Instant::now(),
        parents,
        vgpus,
    })
}

/// Sleep until `t`, if it is still ahead.
fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn run_top(args: &Args, interval: f64, iterations: Option<u64>) -> Result<(), Failure> {
    if !(0.05..=3600.0).contains(&interval) {
        return Err(Failure::Usage(format!(
            "--interval {interval}: must be 0.05 ..= 3600 seconds"
        )));
    }
    let period = Duration::from_secs_f64(interval);
    // On a terminal each frame replaces the last (clear, home); piped,
    // frames follow each other, separated by a blank line.
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut prev: Option<Sample> = None;
    let mut n = 0u64;
    loop {
        let cur = sample(args, true)?;
        let mut text = String::new();
        if tty {
            text.push_str("\x1b[2J\x1b[H");
        } else if n > 0 {
            text.push('\n');
        }
        text += &format!(
            "vgpuctl top: {} (every {interval} s, {:.1} s)\n",
            args.run_dir.display(),
            start.elapsed().as_secs_f64()
        );
        text += &top::frame(prev.as_ref(), &cur);
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            // The reader went away (a closed pipe): nothing left to show.
            return Ok(());
        }
        drop(out);
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        prev = Some(cur);
        sleep_until(start + period * n as u32);
    }
}

fn run_record(
    args: &Args,
    seconds: f64,
    interval_ms: u64,
    png: Option<&Path>,
    csv: Option<&Path>,
    title: Option<&str>,
) -> Result<(), Failure> {
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(Failure::Usage(format!(
            "--seconds {seconds}: must be in (0, 86400]"
        )));
    }
    if !(10..=60_000).contains(&interval_ms) {
        return Err(Failure::Usage(format!(
            "--interval {interval_ms}: must be 10 ..= 60000 ms"
        )));
    }
    let period = Duration::from_millis(interval_ms);
    let first = sample(args, true)?;
    let title = title.map_or_else(
        || {
            let parents: Vec<String> = first
                .parents
                .iter()
                .map(|p| format!("{} {}", p.parent, p.policy))
                .collect();
            format!("vGPU shares over time ({})", parents.join(", "))
        },
        str::to_string,
    );
    let start = first.at;
    let end = start + Duration::from_secs_f64(seconds);
    let mut prev = first;
    let mut points = Vec::new();
    for k in 1u32.. {
        let next = start + period * k;
        if next > end {
            break;
        }
        sleep_until(next);
        let cur = sample(args, false)?;
        points.extend(record::points(start, &prev, &cur));
        prev = cur;
    }
    let write = |path: &Path, what: &dyn Fn(std::fs::File) -> Result<(), String>| {
        let f = std::fs::File::create(path)
            .map_err(|e| Failure::Output(format!("{}: {e}", path.display())))?;
        what(f).map_err(|e| Failure::Output(format!("{}: {e}", path.display())))
    };
    if let Some(path) = csv {
        write(path, &|f| {
            record::write_csv(std::io::BufWriter::new(f), &points).map_err(|e| e.to_string())
        })?;
    }
    if let Some(path) = png {
        write(path, &|f| {
            chart::write_png(std::io::BufWriter::new(f), &points, &title).map_err(|e| e.to_string())
        })?;
    }
    println!(
        "{:<36} {:<10} {:>10} {:>13} {:>8}",
        "vgpu", "type", "configured", "mean_achieved", "samples"
    );
    for s in record::summary(&points) {
        println!(
            "{:<36} {:<10} {:>10} {:>13.3} {:>8}",
            s.uuid,
            s.type_id,
            opt(s.configured, 3),
            s.mean_achieved,
            s.points
        );
    }
    Ok(())
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
        Cmd::Types { parent, json } => types(args, parent.clone(), *json)?,
        Cmd::Create {
            vtype,
            parent,
            uuid,
        } => {
            let req = Request::Create {
                vtype: vtype.clone(),
                parent: parent.clone(),
                uuid: uuid.clone(),
            };
            let r: Created = call_as(args, req)?;
            println!("{} {}", r.uuid, r.socket.display());
        }
        Cmd::Remove { uuid } => {
            call(args, Request::Remove { uuid: uuid.clone() })?;
        }
        Cmd::List { json } => list(args, *json)?,
        Cmd::Status { uuid, json } => status(args, uuid.clone(), *json)?,
        Cmd::Policy { cmd } => policy(args, cmd)?,
        Cmd::Reload => {
            let r = call(args, Request::Reload)?;
            println!("{r}");
        }
        Cmd::LibvirtXml(x) => libvirt_xml(args, x)?,
        Cmd::K8s { cmd } => k8s(args, cmd)?,
        Cmd::Top {
            interval,
            iterations,
            once,
        } => run_top(args, *interval, if *once { Some(1) } else { *iterations })?,
        Cmd::Record {
            seconds,
            png,
            csv,
            interval,
            title,
        } => run_record(
            args,
            *seconds,
            *interval,
            png.as_deref(),
            csv.as_deref(),
            title.as_deref(),
        )?,
    }
    Ok(())
}

/// `vgpuctl types`.
fn types(args: &Args, parent: Option<String>, as_json: bool) -> Result<(), Failure> {
    let req = Request::Types { parent };
    if as_json {
        println!("{:#}", call(args, req)?);
        return Ok(());
    }
    let r: Vec<TypeInfo> = call_as(args, req)?;
    // Parents of a GPU each (`0000:65:00.0`) are wider than `cpu0`.
    let w = r.iter().map(|t| t.parent.len()).max().unwrap_or(0).max(8);
    println!(
        "{:<w$} {:<10} {:<8} {:>6} {:>5} {:>9}  description",
        "parent", "type", "name", "fb_gib", "max", "available"
    );
    for t in r {
        println!(
            "{:<w$} {:<10} {:<8} {:>6} {:>5} {:>9}  {}",
            t.parent,
            t.id,
            t.name,
            t.framebuffer_bytes >> 30,
            t.max_instances,
            t.available_instances,
            t.description
        );
    }
    Ok(())
}

/// `vgpuctl list`.
fn list(args: &Args, as_json: bool) -> Result<(), Failure> {
    if as_json {
        println!("{:#}", call(args, Request::List)?);
        return Ok(());
    }
    let r: Vec<VgpuSummary> = call_as(args, Request::List)?;
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
    Ok(())
}

/// `vgpuctl status`: one block per vGPU.
fn status(args: &Args, uuid: Option<String>, as_json: bool) -> Result<(), Failure> {
    let req = Request::Status { uuid };
    if as_json {
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
        println!(
            "    Health               : {}",
            serde_json::to_value(v.health)
                .ok()
                .and_then(|h| h.as_str().map(String::from))
                .unwrap_or_default()
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
    Ok(())
}

/// `vgpuctl policy show|set`.
fn policy(args: &Args, cmd: &PolicyCmd) -> Result<(), Failure> {
    match cmd {
        PolicyCmd::Show { parent } => {
            let req = Request::PolicyShow {
                parent: parent.clone(),
            };
            let r: PolicyInfo = call_as(args, req)?;
            println!(
                "{} {} timeslice {} us window {} us",
                r.parent, r.policy, r.timeslice_us, r.window_us
            );
        }
        PolicyCmd::Set {
            policy,
            parent,
            timeslice_us,
        } => {
            let req = Request::PolicySet {
                parent: parent.clone(),
                policy: policy.clone(),
                timeslice_us: *timeslice_us,
            };
            let r: PolicyInfo = call_as(args, req)?;
            println!("{} {} timeslice {} us", r.parent, r.policy, r.timeslice_us);
        }
    }
    Ok(())
}

/// `vgpuctl libvirt-xml`.
fn libvirt_xml(args: &Args, x: &LibvirtXmlArgs) -> Result<(), Failure> {
    let req = Request::Status {
        uuid: Some(x.uuid.clone()),
    };
    let r: Vec<VgpuStatus> = call_as(args, req)?;
    let Some(v) = r.first() else {
        return Err(Failure::Refused(
            "ENOENT".into(),
            format!("no vGPU {}", x.uuid),
        ));
    };
    if x.fragment {
        print!("{}", libvirt_fragment(v));
    } else {
        print!("{}", libvirt_domain(v, x));
    }
    Ok(())
}

/// `vgpuctl k8s manifests`.
fn k8s(args: &Args, cmd: &K8sCmd) -> Result<(), Failure> {
    let K8sCmd::Manifests {
        types,
        image,
        namespace,
        no_dra,
        no_kubevirt,
    } = cmd;
    // Names from the running vgpud's types; names of types it does not
    // have are the ids upper-cased (as the catalogue names them).
    let req = || Request::Types { parent: None };
    let known: Vec<TypeInfo> = if types.is_empty() {
        call_as(args, req())?
    } else {
        call_as(args, req()).unwrap_or_default()
    };
    let ids: Vec<String> = if types.is_empty() {
        known.iter().map(|t| t.id.clone()).collect()
    } else {
        types.clone()
    };
    let mut offered: Vec<(String, String)> = Vec::new();
    for id in ids {
        if offered.iter().any(|(i, _)| *i == id) {
            continue;
        }
        let name = known
            .iter()
            .find(|t| t.id == id)
            .map_or_else(|| id.to_uppercase(), |t| t.name.clone());
        offered.push((id, name));
    }
    let o = vgpud::kubernetes::Options {
        namespace: namespace.clone(),
        image: image.clone(),
        types: offered,
        dra: !no_dra,
        kubevirt: !no_kubevirt,
    };
    print!(
        "{}",
        vgpud::kubernetes::render(&vgpud::kubernetes::objects(&o))
    );
    Ok(())
}

/// Text for an XML attribute value or element content.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text for inside an XML comment, which may not hold `--`.
fn comment_safe(s: &str) -> String {
    s.replace("--", "- -")
}

const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// What a libvirt domain needs for a vGPU: libvirt has no vfio-user
/// `<hostdev>`, so the device goes on QEMU's command line; guest RAM must
/// be a shared memfd for QEMU to pass it to vgpud; the guest needs an IOMMU
/// (with caching mode, so QEMU sees every mapping) for vfio-pci to bind.
struct DomainParts {
    memory_backing: &'static str,
    ioapic: &'static str,
    iommu: &'static str,
    commandline: String,
}

fn parts(v: &VgpuStatus) -> DomainParts {
    let short = &v.uuid[..8.min(v.uuid.len())];
    let dev = json!({
        "driver": "vfio-user-pci",
        "id": format!("vgpu-{short}"),
        "socket": {"type": "unix", "path": v.socket.display().to_string()},
    });
    DomainParts {
        memory_backing: "<memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>\n",
        ioapic: "<ioapic driver='qemu'/>\n",
        iommu: "<iommu model='intel'>\n  <driver caching_mode='on'/>\n</iommu>\n",
        commandline: format!(
            "<qemu:commandline>\n  <qemu:arg value='-device'/>\n  <qemu:arg value=\"{}\"/>\n</qemu:commandline>\n",
            xml_escape(&dev.to_string())
        ),
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// The parts to paste into an existing domain, each with where it goes.
fn libvirt_fragment(v: &VgpuStatus) -> String {
    let p = parts(v);
    format!(
        "<!-- vGPU {uuid} ({t} on {parent}): the parts of a libvirt domain; see docs/mdev.md -->\n\
         <!-- 1. on <domain>: xmlns:qemu='{QEMU_NS}' -->\n\
         <!-- 2. in <domain> (merge into an existing <memoryBacking>): -->\n{mb}\
         <!-- 3. in <features>: -->\n{ioapic}\
         <!-- 4. in <devices>: -->\n{iommu}\
         <!-- 5. in <domain>, after <devices>: -->\n{cl}\
         <!-- 6. on the guest kernel's command line: intel_iommu=on -->\n",
        uuid = comment_safe(&v.uuid),
        t = comment_safe(&v.type_id),
        parent = comment_safe(&v.parent),
        mb = p.memory_backing,
        ioapic = p.ioapic,
        iommu = p.iommu,
        cl = p.commandline,
    )
}

/// A complete domain with the vGPU.
fn libvirt_domain(v: &VgpuStatus, x: &LibvirtXmlArgs) -> String {
    let p = parts(v);
    let short = &v.uuid[..8.min(v.uuid.len())];
    let name = x.name.clone().unwrap_or_else(|| format!("vgpu-{short}"));
    let mut os = String::from("<type arch='x86_64' machine='q35'>hvm</type>\n");
    if let Some(k) = &x.kernel {
        os += &format!(
            "<kernel>{}</kernel>\n",
            xml_escape(&k.display().to_string())
        );
        if let Some(i) = &x.initrd {
            os += &format!(
                "<initrd>{}</initrd>\n",
                xml_escape(&i.display().to_string())
            );
        }
        let cmdline = match &x.cmdline {
            Some(c) if c.split_whitespace().any(|w| w == "intel_iommu=on") => c.clone(),
            Some(c) => format!("{c} intel_iommu=on"),
            None => "intel_iommu=on".into(),
        };
        os += &format!("<cmdline>{}</cmdline>\n", xml_escape(&cmdline));
    } else {
        os += "<boot dev='hd'/>\n";
    }
    let mut devices = String::new();
    if let Some(d) = &x.disk {
        let format = if d.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        devices += &format!(
            "<disk type='file' device='disk'>\n  <driver name='qemu' type='{format}'/>\n  <source file='{}'/>\n  <target dev='vda' bus='virtio'/>\n</disk>\n",
            xml_escape(&d.display().to_string())
        );
    }
    match &x.console_log {
        Some(f) => {
            devices += &format!(
                "<serial type='file'>\n  <source path='{}'/>\n  <target port='0'/>\n</serial>\n<console type='file'>\n  <source path='{}'/>\n  <target type='serial' port='0'/>\n</console>\n",
                xml_escape(&f.display().to_string()),
                xml_escape(&f.display().to_string())
            );
        }
        None => devices += "<serial type='pty'/>\n<console type='pty'/>\n",
    }
    devices += p.iommu;
    let kernel_note = if x.kernel.is_some() {
        ""
    } else {
        "  <!-- the guest kernel needs intel_iommu=on on its command line (e.g. in\n       GRUB_CMDLINE_LINUX of the guest's /etc/default/grub) for vfio-pci to bind the vGPU -->\n"
    };
    format!(
        "<domain type='{dt}' xmlns:qemu='{QEMU_NS}'>\n\
         \x20 <name>{name}</name>\n\
         \x20 <!-- vGPU {uuid} ({t} on {parent}) -->\n\
         \x20 <memory unit='MiB'>{mem}</memory>\n\
         \x20 <vcpu>{vcpus}</vcpu>\n\
         {mb}\
         \x20 <os>\n{os}  </os>\n\
         {kernel_note}\
         \x20 <features>\n    <acpi/>\n    <apic/>\n{ioapic}  </features>\n\
         \x20 <devices>\n{devices}  </devices>\n\
         {cl}\
         </domain>\n",
        dt = x.domain_type,
        name = xml_escape(&name),
        uuid = comment_safe(&v.uuid),
        t = comment_safe(&v.type_id),
        parent = comment_safe(&v.parent),
        mem = x.memory_mib,
        vcpus = x.vcpus,
        mb = indent(p.memory_backing, "  "),
        os = indent(&os, "    "),
        ioapic = indent(p.ioapic, "    "),
        devices = indent(&devices, "    "),
        cl = indent(&p.commandline, "  "),
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
        Err(Failure::Usage(msg)) => {
            eprintln!("vgpuctl: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Output(msg)) => {
            eprintln!("vgpuctl: {msg}");
            ExitCode::from(4)
        }
    }
}
