//! `--metrics-addr`: a Prometheus text endpoint (`GET` or `HEAD /metrics`)
//! with the per-vGPU figures of `status` and the parents' (engine busy,
//! policy, available instances), for operators who watch shares, faults and
//! queues from their monitoring rather than with `vgpuctl status`.

use devmodel::sync::lock;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Daemon, ParentStatus, StartError, TypeInfo, VgpuStatus};

/// The running endpoint; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn spawn(addr: &str, daemon: Arc<Mutex<Daemon>>) -> Result<MetricsServer, StartError> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let thread = devmodel::thread::spawn("metrics", move || serve(listener, stop2, daemon))?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port is known here when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, stop: EventFd, daemon: Arc<Mutex<Daemon>>) {
    while crate::wait::readable(&stop, &[listener.as_raw_fd()]).is_some() {
        if let Ok((stream, _)) = listener.accept() {
            // One short request at a time; a slow client gets cut off.
            let _ = answer(stream, &daemon);
        }
    }
}

/// The content type of the text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn answer(mut s: TcpStream, daemon: &Mutex<Daemon>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    // Read the whole request head (it may come in pieces), at most 8 KiB.
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let line = line.lines().next().unwrap_or("");
    let mut words = line.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => ("200 OK", CONTENT_TYPE, render(daemon)),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try GET /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET or HEAD /metrics\n".to_string(),
        ),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    write!(
        s,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )?;
    // HEAD: the headers GET would send, without the body.
    if method != "HEAD" {
        s.write_all(body.as_bytes())?;
    }
    Ok(())
}

/// One per-vGPU series: its name, type, help and where its value comes
/// from in a vGPU's status (`None`: no sample for that vGPU), before `scale`.
struct Series {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&VgpuStatus) -> Option<f64>,
    scale: f64,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    value: fn(&VgpuStatus) -> Option<f64>,
) -> Series {
    Series {
        name,
        kind: "counter",
        help,
        value,
        scale: 1.0,
    }
}

const fn gauge(
    name: &'static str,
    help: &'static str,
    value: fn(&VgpuStatus) -> Option<f64>,
) -> Series {
    Series {
        name,
        kind: "gauge",
        help,
        value,
        scale: 1.0,
    }
}

/// Every per-vGPU series, each read from a field of [`VgpuStatus`]
/// (labels `uuid`, `type`, `parent`).
const SERIES: [Series; 20] = [
    gauge(
        "vgpud_vgpu_attached",
        "1 when a VMM is connected to the vGPU",
        |v| Some(if v.attached { 1.0 } else { 0.0 }),
    ),
    gauge(
        "vgpud_vgpu_healthy",
        "1 when the vGPU's engine can run its work (health ok)",
        |v| {
            Some(if v.health == super::Health::Ok {
                1.0
            } else {
                0.0
            })
        },
    ),
    counter(
        "vgpud_vgpu_connections_total",
        "vfio-user connections accepted since the vGPU was created",
        |v| Some(v.connections as f64),
    ),
    counter(
        "vgpud_vgpu_protocol_errors_total",
        "vfio-user messages answered with an error, or that ended a connection",
        |v| Some(v.protocol_errors as f64),
    ),
    Series {
        name: "vgpud_vgpu_gpu_seconds_total",
        kind: "counter",
        help: "engine time the vGPU's work used",
        value: |v| v.gpu_time_ns.map(|x| x as f64),
        scale: 1e-9,
    },
    counter(
        "vgpud_vgpu_commands_total",
        "engine commands completed",
        |v| v.commands.map(|x| x as f64),
    ),
    gauge(
        "vgpud_vgpu_achieved_share_ratio",
        "share of the parent's time the vGPU used over the averaging window",
        |v| v.achieved_share,
    ),
    gauge(
        "vgpud_vgpu_configured_share_ratio",
        "share the policy promises (strict policies) or reserves (weighted)",
        |v| v.configured_share,
    ),
    gauge(
        "vgpud_vgpu_cap_ratio",
        "most of the parent's time the vGPU may use (weighted with a cap)",
        |v| v.cap,
    ),
    gauge(
        "vgpud_vgpu_queue_depth",
        "engine commands queued in the scheduler",
        |v| v.queue_depth.map(|x| x as f64),
    ),
    counter(
        "vgpud_vgpu_slices_total",
        "slices of the parent's time the vGPU was given",
        |v| v.slices.map(|x| x as f64),
    ),
    counter(
        "vgpud_vgpu_slices_dry_total",
        "slices that ended early because the vGPU had nothing more queued",
        |v| v.slices_dry.map(|x| x as f64),
    ),
    Series {
        name: "vgpud_vgpu_wait_seconds_total",
        kind: "counter",
        help: "time commands waited for the engine",
        value: |v| v.wait_ns.map(|x| x as f64),
        scale: 1e-9,
    },
    counter(
        "vgpud_vgpu_faults_total",
        "channel faults (MMU faults and channel errors)",
        |v| Some(v.faults as f64),
    ),
    counter(
        "vgpud_vgpu_interrupts_total",
        "MSIs delivered to the guest",
        |v| Some(v.interrupts as f64),
    ),
    counter(
        "vgpud_vgpu_doorbells_polled_total",
        "doorbells the device saw by polling the doorbell page (no trap)",
        |v| Some(v.doorbells_polled as f64),
    ),
    counter(
        "vgpud_vgpu_doorbells_trapped_total",
        "doorbells that trapped (DOORBELL register, unmapped doorbell page)",
        |v| Some(v.doorbells_trapped as f64),
    ),
    gauge(
        "vgpud_vgpu_pinned_bytes",
        "guest memory mapped and pinned for the vGPU",
        |v| Some(v.pinned_bytes as f64),
    ),
    gauge(
        "vgpud_vgpu_framebuffer_bytes",
        "framebuffer of the vGPU's type",
        |v| Some(v.framebuffer_bytes as f64),
    ),
    gauge(
        "vgpud_vgpu_info",
        "the vGPU's type name, as the label type_name",
        |_| Some(1.0),
    ),
];

/// One per-parent series (label `parent`), read from [`ParentStatus`].
struct ParentSeries {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ParentStatus) -> f64,
}

const PARENT_SERIES: [ParentSeries; 9] = [
    ParentSeries {
        name: "vgpud_parent_engine_busy_ratio",
        kind: "gauge",
        help: "share of wall time the engine ran vGPU work over the averaging window",
        value: |p| p.engine_busy_ratio,
    },
    ParentSeries {
        name: "vgpud_parent_engine_busy_seconds_total",
        kind: "counter",
        help: "engine time all vGPUs' work used",
        value: |p| p.busy_ns as f64 * 1e-9,
    },
    ParentSeries {
        name: "vgpud_parent_engine_idle_empty_seconds_total",
        kind: "counter",
        help: "time the engine had no item and no vGPU had work queued",
        value: |p| p.idle_empty_ns as f64 * 1e-9,
    },
    ParentSeries {
        name: "vgpud_parent_engine_idle_held_seconds_total",
        kind: "counter",
        help: "time the engine had no item while a strict share or a cap held queued work",
        value: |p| p.idle_held_ns as f64 * 1e-9,
    },
    ParentSeries {
        name: "vgpud_parent_engine_idle_late_seconds_total",
        kind: "counter",
        help: "time the engine had no item while runnable work waited for the daemon",
        value: |p| p.idle_late_ns as f64 * 1e-9,
    },
    ParentSeries {
        name: "vgpud_parent_engine_stalled_seconds_total",
        kind: "counter",
        help: "time spins held the engine past their length while its threads waited for a host CPU (charged to no vGPU)",
        value: |p| p.engine_stalled_ns as f64 * 1e-9,
    },
    ParentSeries {
        name: "vgpud_parent_timeslice_seconds",
        kind: "gauge",
        help: "the scheduler's timeslice in force",
        value: |p| p.timeslice_us as f64 * 1e-6,
    },
    ParentSeries {
        name: "vgpud_parent_vgpus",
        kind: "gauge",
        help: "vGPUs created on the parent",
        value: |p| p.vgpus as f64,
    },
    ParentSeries {
        name: "vgpud_parent_policy_info",
        kind: "gauge",
        help: "the parent's scheduling policy, as the label policy",
        value: |_| 1.0,
    },
];

/// What one scrape shows: every vGPU, every parent, every type.
pub struct Snapshot {
    pub vgpus: Vec<VgpuStatus>,
    pub parents: Vec<ParentStatus>,
    pub types: Vec<TypeInfo>,
}

/// The Prometheus exposition of the daemon now.
pub fn render(daemon: &Mutex<Daemon>) -> String {
    let snap = {
        let d = lock(daemon);
        Snapshot {
            vgpus: d.status_all(),
            parents: d.parents_status(None).unwrap_or_default(),
            types: d.types(None).unwrap_or_default(),
        }
    };
    render_snapshot(&snap)
}

/// A label value, escaped as the text format wants (`\\`, `\"`, `\n`).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The exposition of `snap`: every series with its HELP and TYPE, families
/// never interleaved.
pub fn render_snapshot(snap: &Snapshot) -> String {
    let mut out = String::new();
    head(
        &mut out,
        "vgpud_build_info",
        "gauge",
        "the vgpud build running",
    );
    let _ = writeln!(
        out,
        "vgpud_build_info{{version=\"{}\"}} 1",
        esc(env!("CARGO_PKG_VERSION"))
    );
    for s in &SERIES {
        head(&mut out, s.name, s.kind, s.help);
        for v in &snap.vgpus {
            let Some(x) = (s.value)(v) else {
                continue;
            };
            let _ = write!(
                out,
                "{}{{uuid=\"{}\",type=\"{}\",parent=\"{}\"",
                s.name,
                esc(&v.uuid),
                esc(&v.type_id),
                esc(&v.parent)
            );
            if s.name == "vgpud_vgpu_info" {
                let _ = write!(out, ",type_name=\"{}\"", esc(&v.type_name));
            }
            let _ = writeln!(out, "}} {}", x * s.scale);
        }
    }
    for s in &PARENT_SERIES {
        let name = s.name;
        head(&mut out, name, s.kind, s.help);
        for p in &snap.parents {
            let _ = write!(out, "{name}{{parent=\"{}\"", esc(&p.parent));
            if name == "vgpud_parent_policy_info" {
                let _ = write!(
                    out,
                    ",policy=\"{}\",engine=\"{}\"",
                    esc(&p.policy),
                    esc(&p.engine)
                );
            }
            let _ = writeln!(out, "}} {}", (s.value)(p));
        }
    }
    head(
        &mut out,
        "vgpud_parent_gpu_info",
        "gauge",
        "a GPU parent's GPU: its name, UUID, PCI address and NUMA node (-1: none) as labels",
    );
    for p in &snap.parents {
        if let Some(g) = &p.gpu {
            let node = g.numa_node.map_or(-1, |n| n as i64);
            let _ = writeln!(
                out,
                "vgpud_parent_gpu_info{{parent=\"{}\",gpu=\"{}\",uuid=\"{}\",pci_bus_id=\"{}\",numa_node=\"{node}\"}} 1",
                esc(&p.parent),
                esc(&g.name),
                esc(&g.uuid),
                esc(&g.pci_bus_id)
            );
        }
    }
    head(
        &mut out,
        "vgpud_parent_gpu_memory_bytes",
        "gauge",
        "a GPU parent's GPU memory, as the driver reports it",
    );
    for p in &snap.parents {
        if let Some(g) = &p.gpu {
            let _ = writeln!(
                out,
                "vgpud_parent_gpu_memory_bytes{{parent=\"{}\"}} {}",
                esc(&p.parent),
                g.memory_bytes
            );
        }
    }
    head(
        &mut out,
        "vgpud_parent_available_instances",
        "gauge",
        "vGPUs of the type that can still be created on the parent",
    );
    for t in &snap.types {
        let _ = writeln!(
            out,
            "vgpud_parent_available_instances{{parent=\"{}\",type=\"{}\"}} {}",
            esc(&t.parent),
            esc(&t.id),
            t.available_instances
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_has_a_sample_per_vgpu() {
        let dir = std::env::temp_dir().join(format!("vgpud-metrics-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = Mutex::new(
            Daemon::new(
                &dir,
                None,
                scheduler::Config::default(),
                &mdev_types::Catalog::default(),
            )
            .unwrap(),
        );
        // fixed_share: every figure, the configured share included, is known.
        lock(&daemon).policy_set(None, "fixed_share", None).unwrap();
        let u = "aa618089-8b16-4d01-a136-25a0f3c73123";
        lock(&daemon).create("vgpud-2c", None, Some(u)).unwrap();
        let text = render(&daemon);
        let labels = format!("{{uuid=\"{u}\",type=\"vgpud-2c\",parent=\"cpu0\"}}");
        for s in &SERIES {
            let labels = if s.name == "vgpud_vgpu_info" {
                format!("{{uuid=\"{u}\",type=\"vgpud-2c\",parent=\"cpu0\",type_name=\"VGPU-2C\"}}")
            } else {
                labels.clone()
            };
            if s.name == "vgpud_vgpu_cap_ratio" {
                // No cap under fixed_share: the family without a sample.
                assert!(!text.contains(&format!("{}{{", s.name)), "{text}");
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {} {}\n", s.name, s.kind)),
                "{}: no TYPE line in\n{text}",
                s.name
            );
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{}{labels} ", s.name))),
                "{}: no sample for the vGPU in\n{text}",
                s.name
            );
        }
        assert!(text.contains(&format!("vgpud_vgpu_configured_share_ratio{labels} 0.25\n")));
        assert!(text.contains("vgpud_parent_policy_info{parent=\"cpu0\",policy=\"fixed_share\",engine=\"cpu\"} 1\n"), "{text}");
        // One sample per type, as `types` counts it (the host's memory may
        // lower what the parent's 8 GiB and 8 slots leave).
        for t in lock(&daemon).types(None).unwrap() {
            let line = format!(
                "vgpud_parent_available_instances{{parent=\"cpu0\",type=\"{}\"}} {}\n",
                t.id, t.available_instances
            );
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        assert!(text.contains(&format!(
            "vgpud_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains(&format!("vgpud_vgpu_attached{labels} 0\n")));
        drop(daemon);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
