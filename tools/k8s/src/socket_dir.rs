//! The directory a container gets for one vGPU: `<run-dir>/k8s/<uuid>/`
//! holding `vfio-user.sock`, a hard link to vgpud's socket of that vGPU,
//! mounted at `/var/run/vgpud/<uuid>/` in the container.
//!
//! A directory of its own per vGPU, not vgpud's run directory: that one
//! also holds the control socket (create, remove: the whole node's vGPUs)
//! and every other tenant's socket. A hard link, not a bind mount: a link
//! made again after vgpud restarts (a new socket) shows in a container
//! that mounted the directory before.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Where a container finds its vGPUs' directories.
pub const CONTAINER_DIR: &str = "/var/run/vgpud";
/// The socket's name inside a vGPU's directory.
pub const SOCKET_NAME: &str = "vfio-user.sock";

/// The vGPU's directory on the host.
pub fn host_dir(run_dir: &Path, uuid: &str) -> PathBuf {
    run_dir.join("k8s").join(uuid)
}

/// The vGPU's directory in a container.
pub fn container_dir(uuid: &str) -> String {
    format!("{CONTAINER_DIR}/{uuid}")
}

/// The vGPU's socket in a container (what QEMU is given).
pub fn container_socket(uuid: &str) -> String {
    format!("{CONTAINER_DIR}/{uuid}/{SOCKET_NAME}")
}

/// Make the vGPU's directory hold a link to `socket` (vgpud's), replacing
/// a link to an older socket; returns the directory.
pub fn publish(run_dir: &Path, uuid: &str, socket: &Path) -> Result<PathBuf, Error> {
    let dir = host_dir(run_dir, uuid);
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
    let link = dir.join(SOCKET_NAME);
    let target = std::fs::metadata(socket).map_err(|e| Error::file(socket, e))?;
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.ino() == target.ino() && m.dev() == target.dev() => return Ok(dir),
        Ok(_) => std::fs::remove_file(&link).map_err(|e| Error::file(&link, e))?,
        Err(_) => {}
    }
    std::fs::hard_link(socket, &link).map_err(|e| Error::file(&link, e))?;
    Ok(dir)
}

/// Remove the vGPU's directory.
pub fn withdraw(run_dir: &Path, uuid: &str) {
    let dir = host_dir(run_dir, uuid);
    let _ = std::fs::remove_file(dir.join(SOCKET_NAME));
    let _ = std::fs::remove_dir(&dir);
}
