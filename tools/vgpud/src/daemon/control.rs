//! The control socket: `<run-dir>/control.sock`, one JSON object per line
//! each way (docs/control.md).
//!
//! A request names an operation in `op`; the reply is
//! `{"ok":true,"result":…}` or `{"ok":false,"error":"EEXIST","message":…}`.
//! Clients are served concurrently, operations one at a time.

use devmodel::sync::lock;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{op_err, Daemon, OpError, StartError};
use crate::errno::Errno;

/// The longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// One request (what `vgpuctl` serializes, what the socket deserializes).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Types {
        parent: Option<String>,
    },
    Create {
        #[serde(rename = "type")]
        vtype: String,
        parent: Option<String>,
        uuid: Option<String>,
    },
    Remove {
        uuid: String,
    },
    List,
    Status {
        uuid: Option<String>,
    },
    Parents {
        parent: Option<String>,
    },
    PolicyShow {
        parent: Option<String>,
    },
    PolicySet {
        parent: Option<String>,
        policy: String,
        timeslice_us: Option<u64>,
    },
    Reload,
}

/// Run one request against the daemon; the reply's `result` is what the
/// operation returned ([`super::replies`]), as JSON.
pub fn execute(daemon: &Mutex<Daemon>, req: Request) -> Result<Value, OpError> {
    let mut d = lock(daemon);
    match req {
        Request::Types { parent } => reply(d.types(parent.as_deref())),
        Request::Create {
            vtype,
            parent,
            uuid,
        } => reply(d.create(&vtype, parent.as_deref(), uuid.as_deref())),
        Request::Remove { uuid } => reply(d.remove(&uuid)),
        Request::List => reply(Ok(d.list())),
        Request::Status { uuid } => reply(d.status(uuid.as_deref())),
        Request::Parents { parent } => reply(d.parents_status(parent.as_deref())),
        Request::PolicyShow { parent } => reply(d.policy_show(parent.as_deref())),
        Request::PolicySet {
            parent,
            policy,
            timeslice_us,
        } => reply(d.policy_set(parent.as_deref(), &policy, timeslice_us)),
        Request::Reload => reply(d.reload()),
    }
}

/// An operation's result as JSON (a path that is not UTF-8 cannot be sent: `EIO`).
fn reply<T: Serialize>(r: Result<T, OpError>) -> Result<Value, OpError> {
    serde_json::to_value(r?).map_err(|e| op_err(Errno::EIO, format!("reply not sendable: {e}")))
}

/// Answer one request line.
pub fn answer(daemon: &Mutex<Daemon>, line: &str) -> Value {
    match serde_json::from_str::<Request>(line) {
        Err(e) => {
            json!({"ok": false, "error": Errno::EINVAL, "message": format!("bad request: {e}")})
        }
        Ok(req) => match execute(daemon, req) {
            Ok(result) => json!({"ok": true, "result": result}),
            Err(e) => json!({"ok": false, "error": e.errno, "message": e.message}),
        },
    }
}

/// The running control socket; dropping it stops it and removes the socket.
pub struct ControlServer {
    path: PathBuf,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn spawn(path: &Path, daemon: Arc<Mutex<Daemon>>) -> Result<ControlServer, StartError> {
        let listener = UnixListener::bind(path)?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let thread = match devmodel::thread::spawn("control", move || {
            accept_loop(listener, stop2, daemon)
        }) {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e.into());
            }
        };
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, stop: EventFd, daemon: Arc<Mutex<Daemon>>) {
    let mut clients: Vec<(UnixStream, JoinHandle<()>)> = Vec::new();
    while crate::wait::readable(&stop, &[listener.as_raw_fd()]).is_some() {
        clients.retain(|(_, t)| !t.is_finished());
        if let Ok((stream, _)) = listener.accept() {
            let Ok(mine) = stream.try_clone() else {
                continue;
            };
            let d = daemon.clone();
            match devmodel::thread::spawn("control-client", move || serve_client(stream, d)) {
                Ok(t) => clients.push((mine, t)),
                // The client is disconnected; the daemon serves the others.
                Err(e) => tracing::warn!("control client not served: {e}"),
            }
        }
    }
    // Unblock and join every client.
    for (s, t) in clients {
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = t.join();
    }
}

fn serve_client(stream: UnixStream, daemon: Arc<Mutex<Daemon>>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE {
            // Too long to be a request; the rest of the line is not read.
            let r = json!({"ok": false, "error": Errno::EINVAL, "message": format!("request longer than {MAX_LINE} bytes")});
            let _ = writeln!(out, "{r}");
            return;
        } else if line.trim().is_empty() {
            continue;
        } else {
            answer(&daemon, line.trim())
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}
