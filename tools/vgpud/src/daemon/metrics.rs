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

use serde_json::Value;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Daemon;

/// The running endpoint; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn spawn(addr: &str, daemon: Arc<Mutex<Daemon>>) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, stop2, daemon))?;
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

/// The Prometheus exposition of every vGPU's status.
pub fn render(daemon: &Mutex<Daemon>) -> String {
    let status = {
        let d = lock(daemon);
        d.status(None).unwrap_or(Value::Null)
    };
    let vgpus = status.as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let metrics: [(&str, &str, &str, &str, f64); 9] = [
        (
            "vgpud_vgpu_attached",
            "gauge",
            "1 when a VMM is connected to the vGPU",
            "attached",
            1.0,
        ),
        (
            "vgpud_vgpu_gpu_seconds_total",
            "counter",
            "engine time the vGPU's work used",
            "gpu_time_ns",
            1e-9,
        ),
        (
            "vgpud_vgpu_commands_total",
            "counter",
            "engine commands completed",
            "commands",
            1.0,
        ),
        (
            "vgpud_vgpu_share",
            "gauge",
            "share of the parent's time over the averaging window",
            "achieved_share",
            1.0,
        ),
        (
            "vgpud_vgpu_configured_share",
            "gauge",
            "share the policy promises (strict policies, reservations)",
            "configured_share",
            1.0,
        ),
        (
            "vgpud_vgpu_queue_depth",
            "gauge",
            "engine commands queued in the scheduler",
            "queue_depth",
            1.0,
        ),
        (
            "vgpud_vgpu_wait_seconds_total",
            "counter",
            "time commands waited for the engine",
            "wait_ns",
            1e-9,
        ),
        (
            "vgpud_vgpu_faults_total",
            "counter",
            "channel faults (MMU faults and channel errors)",
            "faults",
            1.0,
        ),
        (
            "vgpud_vgpu_pinned_bytes",
            "gauge",
            "guest memory mapped and pinned for the vGPU",
            "pinned_bytes",
            1.0,
        ),
    ];
    for (name, kind, help, key, scale) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for v in &vgpus {
            let value = match &v[key] {
                Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                x => x.as_f64(),
            };
            if let Some(x) = value {
                let _ = writeln!(
                    out,
                    "{name}{{uuid=\"{}\",type=\"{}\",parent=\"{}\"}} {}",
                    v["uuid"].as_str().unwrap_or(""),
                    v["type"].as_str().unwrap_or(""),
                    v["parent"].as_str().unwrap_or(""),
                    x * scale
                );
            }
        }
    }
    out
}
