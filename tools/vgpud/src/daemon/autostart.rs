//! Starting mdevctl's `auto` definitions when a parent appears.
//!
//! With a kernel mdev driver, a udev rule (mdevctl's `60-mdevctl.rules`) runs
//! `mdevctl start-parent-mdevs <parent>` when a parent registers and has a
//! directory under `/etc/mdevctl.d`. vgpud does the same for each of its
//! parents once the sysfs tree is mounted, with `MDEVCTL_ENV_ROOT` set to
//! its `--mdev-root`: so mdevctl itself applies each definition's
//! attributes, rolls back a device whose attribute cannot be written, and
//! runs the callout and notifier scripts, exactly as it would for a kernel
//! driver. mdevctl writes to the tree, so the daemon's lock must not be held
//! meanwhile.
//!
//! Without mdevctl, a built-in fallback starts the definitions itself: no
//! callouts are run, and a definition with attributes is not started
//! (vGPUs have no writable attributes, so mdevctl would fail it and roll it
//! back too). The log says which way was taken.

use devmodel::sync::lock;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::Daemon;

/// How `auto` definitions are started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Starter {
    /// `mdevctl start-parent-mdevs <parent>`, with this binary.
    Mdevctl(PathBuf),
    /// vgpud's own reading of the definitions (no callouts; definitions
    /// with attributes are skipped).
    Builtin,
}

/// A `--mdevctl` path that is not an executable file.
#[derive(Debug, thiserror::Error)]
#[error("--mdevctl {path}: not an executable file")]
pub struct NoMdevctl {
    pub path: PathBuf,
}

impl Starter {
    /// `explicit` (`--mdevctl PATH`), which must be executable; else
    /// `mdevctl` on `PATH`; else the built-in fallback.
    pub fn find(explicit: Option<&Path>) -> Result<Starter, NoMdevctl> {
        if let Some(p) = explicit {
            return if is_executable(p) {
                Ok(Starter::Mdevctl(p.to_path_buf()))
            } else {
                Err(NoMdevctl {
                    path: p.to_path_buf(),
                })
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        Ok(std::env::split_paths(&path)
            .map(|d| d.join("mdevctl"))
            .find(|p| is_executable(p))
            .map_or(Starter::Builtin, Starter::Mdevctl))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Start the `auto` definitions of every parent (of those parents that have
/// a directory under `<root>/etc/mdevctl.d`, as the udev rule requires).
/// Returns the UUIDs of the vGPUs that were started.
pub fn start_parents(daemon: &Arc<Mutex<Daemon>>, root: &Path, starter: &Starter) -> Vec<String> {
    let parents = lock(daemon).parent_ids();
    let before: Vec<String> = active(daemon);
    for parent in parents {
        let dir = root.join("etc/mdevctl.d").join(&parent);
        if !dir.is_dir() {
            continue;
        }
        match starter {
            Starter::Mdevctl(bin) => run_mdevctl(bin, root, &parent),
            Starter::Builtin => builtin(&mut lock(daemon), &dir, &parent),
        }
    }
    active(daemon)
        .into_iter()
        .filter(|u| !before.contains(u))
        .collect()
}

fn active(daemon: &Arc<Mutex<Daemon>>) -> Vec<String> {
    lock(daemon)
        .vgpu_ids()
        .into_iter()
        .map(|(u, _, _)| u)
        .collect()
}

/// `MDEVCTL_ENV_ROOT=<root> mdevctl start-parent-mdevs <parent>`; what it
/// says (its warnings name each definition it could not start) goes to the
/// log.
fn run_mdevctl(bin: &Path, root: &Path, parent: &str) {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    tracing::info!(%parent, mdevctl = %bin.display(), "mdevctl start-parent-mdevs {parent}");
    let out = Command::new(bin)
        .arg("start-parent-mdevs")
        .arg(parent)
        .env("MDEVCTL_ENV_ROOT", &root)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => {
            for line in String::from_utf8_lossy(&o.stderr)
                .lines()
                .chain(String::from_utf8_lossy(&o.stdout).lines())
                .filter(|l| !l.trim().is_empty())
            {
                tracing::warn!(%parent, "mdevctl: {line}");
            }
            if !o.status.success() {
                tracing::warn!(%parent, status = %o.status, "mdevctl start-parent-mdevs failed");
            }
        }
        Err(e) => tracing::error!(%parent, mdevctl = %bin.display(), "cannot run mdevctl: {e}"),
    }
}

/// The fallback: each definition file `<dir>/<uuid>` with `"start": "auto"`
/// and no attributes is created as its `mdev_type`.
fn builtin(daemon: &mut Daemon, dir: &Path, parent: &str) {
    tracing::warn!(
        %parent,
        "mdevctl not found (install it, or give --mdevctl PATH): starting auto definitions \
         with vgpud's fallback, which runs no callout scripts and skips definitions with attributes"
    );
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let Some(uuid) = f.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let def: Value = match std::fs::read(&f)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(file = %f.display(), "mdevctl definition unreadable: {e}");
                continue;
            }
        };
        if def["start"] != "auto" {
            continue;
        }
        let Some(t) = def["mdev_type"].as_str() else {
            tracing::warn!(file = %f.display(), "mdevctl definition without mdev_type");
            continue;
        };
        if def["attrs"].as_array().is_some_and(|a| !a.is_empty()) {
            tracing::warn!(
                %uuid, %parent,
                "not started: the definition sets attributes, and a vGPU has none that can be written"
            );
            continue;
        }
        match daemon.create(t, Some(parent), Some(&uuid)) {
            Ok(_) => {}
            Err(e) => tracing::warn!(%uuid, %parent, "auto-start of a defined vGPU failed: {e}"),
        }
    }
}
