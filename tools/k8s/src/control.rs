//! vgpud's control socket, from the agent's side: one JSON request per
//! line, one reply per line (docs/control.md), read into the daemon's own
//! reply types.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use vgpud::daemon::{Created, ParentStatus, TypeInfo, VgpuStatus};

use crate::Error;

/// How long a request may take before vgpud counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest reply line read.
const MAX_REPLY: u64 = 16 << 20;

/// A vgpud, by its run directory.
#[derive(Clone, Debug)]
pub struct Vgpud {
    run_dir: PathBuf,
}

impl Vgpud {
    pub fn new(run_dir: &Path) -> Vgpud {
        Vgpud {
            run_dir: run_dir.to_path_buf(),
        }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn control(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    /// One request; its `result`.
    fn request<T: DeserializeOwned>(&self, op: &'static str, req: Value) -> Result<T, Error> {
        let path = self.control();
        let io = |source| Error::Unreachable {
            path: path.clone(),
            source,
        };
        let s = UnixStream::connect(&path).map_err(io)?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let mut w = s.try_clone().map_err(io)?;
        writeln!(w, "{req}").map_err(io)?;
        let mut line = String::new();
        let mut r = BufReader::new(std::io::Read::take(s, MAX_REPLY));
        r.read_line(&mut line).map_err(io)?;
        let reply: Value =
            serde_json::from_str(&line).map_err(|source| Error::Reply { op, source })?;
        if reply["ok"] == true {
            serde_json::from_value(reply["result"].clone())
                .map_err(|source| Error::Reply { op, source })
        } else {
            Err(Error::Refused {
                op,
                errno: reply["error"].as_str().unwrap_or("?").to_string(),
                message: reply["message"].as_str().unwrap_or("").to_string(),
            })
        }
    }

    /// Every vGPU's status.
    pub fn status(&self) -> Result<Vec<VgpuStatus>, Error> {
        self.request("status", json!({"op": "status"}))
    }

    /// Every parent's types.
    pub fn types(&self) -> Result<Vec<TypeInfo>, Error> {
        self.request("types", json!({"op": "types"}))
    }

    /// Every parent's engine, policy and capacity.
    pub fn parents(&self) -> Result<Vec<ParentStatus>, Error> {
        self.request("parents", json!({"op": "parents"}))
    }

    /// Create a vGPU of `type_id` with `uuid` (on `parent`, or the first
    /// parent with room).
    pub fn create(
        &self,
        type_id: &str,
        parent: Option<&str>,
        uuid: &str,
    ) -> Result<Created, Error> {
        self.request(
            "create",
            json!({"op": "create", "type": type_id, "parent": parent, "uuid": uuid}),
        )
    }

    /// Remove a vGPU (a VM attached to it loses the device).
    pub fn remove(&self, uuid: &str) -> Result<(), Error> {
        self.request::<Value>("remove", json!({"op": "remove", "uuid": uuid}))
            .map(|_| ())
    }
}
