//! Who may connect to a vGPU's vfio-user socket: the owner, group and mode
//! vgpud gives each one (`[sockets]` in the configuration file, or
//! `--socket-owner`, `--socket-group`, `--socket-mode`; docs/config.md).
//! Applied at every create (vgpuctl, the sysfs tree, auto-start alike), so
//! also to the sockets re-created after a restart, and on reload to the
//! sockets that exist.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mdev_types::sockets::{Principal, Setting, SocketConfig};

/// A user or group name that could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("{origin}: no user {name:?} on this system")]
    NoUser { origin: String, name: String },
    #[error("{origin}: no group {name:?} on this system")]
    NoGroup { origin: String, name: String },
    #[error("{origin}: looking up {name:?}: {source}")]
    Lookup {
        origin: String,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A socket whose owner or mode could not be set.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("chown {path} to {uid:?}:{gid:?}: {source}")]
    Chown {
        path: PathBuf,
        uid: Option<u32>,
        gid: Option<u32>,
        #[source]
        source: io::Error,
    },
    #[error("chmod {path} to {mode:#o}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        #[source]
        source: io::Error,
    },
}

/// Resolved ownership; `None` leaves what the daemon's user, group and
/// umask give.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwnership {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

impl SocketOwnership {
    /// Resolve the names in `cfg` (each name through the system's user and
    /// group databases; a name of digits that is no user or group is taken
    /// as an id, as chown(1) does).
    pub fn resolve(cfg: &SocketConfig) -> Result<SocketOwnership, OwnershipError> {
        Ok(SocketOwnership {
            uid: cfg
                .owner
                .as_ref()
                .map(|s| resolve(s, Db::User))
                .transpose()?,
            gid: cfg
                .group
                .as_ref()
                .map(|s| resolve(s, Db::Group))
                .transpose()?,
            mode: cfg.mode.as_ref().map(|m| m.value),
        })
    }

    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        self.uid.is_some() || self.gid.is_some() || self.mode.is_some()
    }

    /// Give the socket at `path` this owner, group and mode.
    pub fn apply(&self, path: &Path) -> Result<(), ApplyError> {
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::chown(path, self.uid, self.gid).map_err(|source| {
                ApplyError::Chown {
                    path: path.to_path_buf(),
                    uid: self.uid,
                    gid: self.gid,
                    source,
                }
            })?;
        }
        if let Some(mode) = self.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
                |source| ApplyError::Chmod {
                    path: path.to_path_buf(),
                    mode,
                    source,
                },
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Display for SocketOwnership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        let mode = self.mode.map_or("-".to_string(), |m| format!("{m:04o}"));
        write!(f, "uid {} gid {} mode {mode}", id(self.uid), id(self.gid))
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Db {
    User,
    Group,
}

pub(crate) fn resolve(s: &Setting<Principal>, db: Db) -> Result<u32, OwnershipError> {
    let name = match &s.value {
        Principal::Id(id) => return Ok(*id),
        Principal::Name(n) => n,
    };
    let found = lookup(name, db).map_err(|source| OwnershipError::Lookup {
        origin: s.origin.clone(),
        name: name.clone(),
        source,
    })?;
    match (found.map(|(id, _)| id), name.parse::<u32>()) {
        (Some(id), _) => Ok(id),
        (None, Ok(id)) => Ok(id),
        (None, Err(_)) => Err(match db {
            Db::User => OwnershipError::NoUser {
                origin: s.origin.clone(),
                name: name.clone(),
            },
            Db::Group => OwnershipError::NoGroup {
                origin: s.origin.clone(),
                name: name.clone(),
            },
        }),
    }
}

/// The id of a user or group name (getpwnam_r / getgrnam_r), with the
/// user's primary group (a group's own id for a group); `None` when there
/// is no such name.
pub(crate) fn lookup(name: &str, db: Db) -> io::Result<Option<(u32, u32)>> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let mut id = None;
        let rc = match db {
            Db::User => {
                // SAFETY: passwd is plain data; all-zero is a valid value
                // that getpwnam_r overwrites.
                let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::passwd = std::ptr::null_mut();
                // SAFETY: every pointer is valid for the call: a
                // NUL-terminated name, a passwd, a buffer of buf.len()
                // bytes, and the result pointer.
                let rc = unsafe {
                    libc::getpwnam_r(
                        c.as_ptr(),
                        &mut pwd,
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut result,
                    )
                };
                if rc == 0 && !result.is_null() {
                    id = Some((pwd.pw_uid, pwd.pw_gid));
                }
                rc
            }
            Db::Group => {
                // SAFETY: as above, for group.
                let mut grp: libc::group = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::group = std::ptr::null_mut();
                // SAFETY: as above, for getgrnam_r.
                let rc = unsafe {
                    libc::getgrnam_r(
                        c.as_ptr(),
                        &mut grp,
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut result,
                    )
                };
                if rc == 0 && !result.is_null() {
                    id = Some((grp.gr_gid, grp.gr_gid));
                }
                rc
            }
        };
        match rc {
            0 => return Ok(id),
            libc::ERANGE if buf.len() < 1 << 20 => {
                let n = buf.len() * 2;
                buf.resize(n, 0);
            }
            // "not found" as some C libraries report it
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(p: Principal) -> Setting<Principal> {
        Setting {
            value: p,
            origin: "x.toml:2:9: sockets.group".into(),
        }
    }

    #[test]
    fn names_resolve_through_the_system_databases() {
        let cfg = SocketConfig {
            owner: Some(setting(Principal::Name("root".into()))),
            group: Some(setting(Principal::Name("root".into()))),
            mode: None,
        };
        let o = SocketOwnership::resolve(&cfg).unwrap();
        assert_eq!((o.uid, o.gid), (Some(0), Some(0)));
        let cfg = SocketConfig {
            group: Some(setting(Principal::Name("no-such-group-vgpud".into()))),
            ..SocketConfig::default()
        };
        assert_eq!(
            SocketOwnership::resolve(&cfg).unwrap_err().to_string(),
            "x.toml:2:9: sockets.group: no group \"no-such-group-vgpud\" on this system"
        );
        let cfg = SocketConfig {
            owner: Some(setting(Principal::Name("no-such-user-vgpud".into()))),
            ..SocketConfig::default()
        };
        assert!(matches!(
            SocketOwnership::resolve(&cfg),
            Err(OwnershipError::NoUser { .. })
        ));
        // digits that name no group: an id, as chown(1) takes them
        let cfg = SocketConfig {
            group: Some(setting(Principal::Name("4242".into()))),
            ..SocketConfig::default()
        };
        assert_eq!(SocketOwnership::resolve(&cfg).unwrap().gid, Some(4242));
    }
}
