//! `--metrics-addr`: a Prometheus text endpoint (`GET /metrics`) with the
//! per-vGPU figures of `status`, for operators who watch shares, faults and
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

use super::{Daemon, StartError, VgpuStatus};

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
    let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
        ("200 OK", render(daemon))
    } else {
        ("404 Not Found", "try GET /metrics\n".to_string())
    };
    write!(s, "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// One series: its name, type, help and where its value comes from in a
/// vGPU's status (`None`: no sample for that vGPU), before `scale`.
struct Series {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&VgpuStatus) -> Option<f64>,
    scale: f64,
}

/// Every series, each read from a field of [`VgpuStatus`].
const SERIES: [Series; 11] = [
    Series {
        name: "vgpud_vgpu_attached",
        kind: "gauge",
        help: "1 when a VMM is connected to the vGPU",
        value: |v| Some(if v.attached { 1.0 } else { 0.0 }),
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_gpu_seconds_total",
        kind: "counter",
        help: "engine time the vGPU's work used",
        value: |v| v.gpu_time_ns.map(|x| x as f64),
        scale: 1e-9,
    },
    Series {
        name: "vgpud_vgpu_commands_total",
        kind: "counter",
        help: "engine commands completed",
        value: |v| v.commands.map(|x| x as f64),
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_share",
        kind: "gauge",
        help: "share of the parent's time over the averaging window",
        value: |v| v.achieved_share,
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_configured_share",
        kind: "gauge",
        help: "share the policy promises (strict policies, reservations)",
        value: |v| v.configured_share,
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_queue_depth",
        kind: "gauge",
        help: "engine commands queued in the scheduler",
        value: |v| v.queue_depth.map(|x| x as f64),
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_wait_seconds_total",
        kind: "counter",
        help: "time commands waited for the engine",
        value: |v| v.wait_ns.map(|x| x as f64),
        scale: 1e-9,
    },
    Series {
        name: "vgpud_vgpu_faults_total",
        kind: "counter",
        help: "channel faults (MMU faults and channel errors)",
        value: |v| Some(v.faults as f64),
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_doorbells_polled_total",
        kind: "counter",
        help: "doorbells the device saw by polling the doorbell page (no trap)",
        value: |v| Some(v.doorbells_polled as f64),
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_doorbells_trapped_total",
        kind: "counter",
        help: "doorbells that trapped (DOORBELL register, unmapped doorbell page)",
        value: |v| Some(v.doorbells_trapped as f64),
        scale: 1.0,
    },
    Series {
        name: "vgpud_vgpu_pinned_bytes",
        kind: "gauge",
        help: "guest memory mapped and pinned for the vGPU",
        value: |v| Some(v.pinned_bytes as f64),
        scale: 1.0,
    },
];

/// The Prometheus exposition of every vGPU's status.
pub fn render(daemon: &Mutex<Daemon>) -> String {
    let vgpus = lock(daemon).status_all();
    render_status(&vgpus)
}

fn render_status(vgpus: &[VgpuStatus]) -> String {
    let mut out = String::new();
    for s in &SERIES {
        let (name, kind, help) = (s.name, s.kind, s.help);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for v in vgpus {
            if let Some(x) = (s.value)(v) {
                let _ = writeln!(
                    out,
                    "{name}{{uuid=\"{}\",type=\"{}\",parent=\"{}\"}} {}",
                    v.uuid,
                    v.type_id,
                    v.parent,
                    x * s.scale
                );
            }
        }
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
        assert!(text.contains(&format!("vgpud_vgpu_configured_share{labels} 0.25\n")));
        assert!(text.contains(&format!("vgpud_vgpu_attached{labels} 0\n")));
        drop(daemon);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
