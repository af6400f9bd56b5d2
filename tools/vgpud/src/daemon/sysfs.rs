//! The mdev control plane as the kernel shows it: a sysfs-compatible tree,
//! mounted with FUSE at `<mdev-root>/sys`, that `mdevctl` (with
//! `MDEVCTL_ENV_ROOT=<mdev-root>`) and anything else written against the
//! kernel's mdev ABI (Documentation/driver-api/vfio-mediated-device.rst)
//! drive unchanged.
//!
//! ```text
//! sys/class/mdev_bus/<parent>            -> ../../devices/vgpud/<parent>
//! sys/devices/vgpud/<parent>/mdev_supported_types/<type>/
//!     name  description  device_api  available_instances   (read)
//!     create                                                 (write a UUID)
//!     devices/<uuid>                     -> ../../../<uuid>
//! sys/devices/vgpud/<parent>/<uuid>/
//!     remove                                                 (write a non-zero number)
//!     mdev_type                          -> ../mdev_supported_types/<type>
//!     vfio_user_socket                                       (read: where to attach it)
//! sys/bus/mdev/devices/<uuid>            -> ../../../devices/vgpud/<parent>/<uuid>
//! ```
//!
//! Every link is relative, so that it resolves inside the mount. Writes fail
//! with the kernel's errno: `create` EINVAL (not a UUID), EEXIST (UUID in
//! use on any parent), EUSERS (no instance left); `remove` parses its value
//! as the kernel's `kstrtoul(buf, 0, ..)` does ([`kstrtoul`]): EINVAL unless
//! it is a number, any non-zero number removes, `0` does nothing. Nothing is cached: every
//! lookup reads the daemon's state, and the kernel is told not to cache
//! either.

use devmodel::sync::lock;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

use super::Daemon;
use crate::errno::Errno;

/// The kernel may not cache anything: vGPUs come and go.
const TTL: Duration = Duration::ZERO;
/// The bus directory parents live under.
const BUS: &str = "vgpud";

/// What a path in the tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir(Vec<(String, Kind)>),
    /// A readable attribute, its contents.
    Attr(String),
    /// A write-only control file.
    Control,
    Link(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Link,
}

fn dir(names: impl IntoIterator<Item = (String, Kind)>) -> Node {
    Node::Dir(names.into_iter().collect())
}

fn d(name: &str) -> (String, Kind) {
    (name.to_string(), Kind::Dir)
}
fn f(name: &str) -> (String, Kind) {
    (name.to_string(), Kind::File)
}
fn l(name: &str) -> (String, Kind) {
    (name.to_string(), Kind::Link)
}

/// The node at `path` (components below `sys/`), from the daemon's state.
fn resolve(daemon: &Daemon, path: &[&str]) -> Option<Node> {
    let parents = daemon.parent_ids();
    match path {
        [] => Some(dir([d("class"), d("bus"), d("devices")])),
        ["class"] => Some(dir([d("mdev_bus")])),
        ["class", "mdev_bus"] => Some(dir(parents.iter().map(|p| l(p)))),
        ["class", "mdev_bus", p] if parents.iter().any(|x| x == p) => {
            Some(Node::Link(format!("../../devices/{BUS}/{p}")))
        }
        ["bus"] => Some(dir([d("mdev")])),
        ["bus", "mdev"] => Some(dir([d("devices")])),
        ["bus", "mdev", "devices"] => {
            Some(dir(daemon.vgpu_ids().into_iter().map(|(u, _, _)| l(&u))))
        }
        ["bus", "mdev", "devices", u] => {
            let (_, p, _) = daemon.vgpu_ids().into_iter().find(|(x, _, _)| x == u)?;
            Some(Node::Link(format!("../../../devices/{BUS}/{p}/{u}")))
        }
        ["devices"] => Some(dir([d(BUS)])),
        ["devices", b] if *b == BUS => Some(dir(parents.iter().map(|p| d(p)))),
        ["devices", b, p, rest @ ..] if *b == BUS && parents.iter().any(|x| x == p) => {
            resolve_parent(daemon, p, rest)
        }
        _ => None,
    }
}

fn resolve_parent(daemon: &Daemon, parent: &str, path: &[&str]) -> Option<Node> {
    let vgpus: Vec<(String, String)> = daemon
        .vgpu_ids()
        .into_iter()
        .filter(|(_, p, _)| p == parent)
        .map(|(u, _, t)| (u, t))
        .collect();
    let types = daemon.parent_types(parent);
    match path {
        [] => Some(dir(
            std::iter::once(d("mdev_supported_types")).chain(vgpus.iter().map(|(u, _)| d(u)))
        )),
        ["mdev_supported_types"] => Some(dir(types.iter().map(|t| d(&t.id)))),
        ["mdev_supported_types", t, rest @ ..] => {
            let vt = types.iter().find(|x| x.id == *t)?;
            match rest {
                [] => Some(dir([
                    f("name"),
                    f("description"),
                    f("device_api"),
                    f("available_instances"),
                    f("create"),
                    d("devices"),
                ])),
                ["name"] => Some(Node::Attr(format!("{}\n", vt.name))),
                ["description"] => Some(Node::Attr(format!("{}\n", super::description(vt)))),
                ["device_api"] => Some(Node::Attr("vfio-pci\n".into())),
                ["available_instances"] => {
                    Some(Node::Attr(format!("{}\n", daemon.available(parent, vt))))
                }
                ["create"] => Some(Node::Control),
                ["devices"] => Some(dir(vgpus
                    .iter()
                    .filter(|(_, ty)| ty == t)
                    .map(|(u, _)| l(u)))),
                ["devices", u] if vgpus.iter().any(|(x, ty)| x == u && ty == t) => {
                    Some(Node::Link(format!("../../../{u}")))
                }
                _ => None,
            }
        }
        [u, rest @ ..] => {
            let (_, t) = vgpus.iter().find(|(x, _)| x == u)?;
            match rest {
                [] => Some(dir([f("remove"), l("mdev_type"), f("vfio_user_socket")])),
                ["remove"] => Some(Node::Control),
                ["mdev_type"] => Some(Node::Link(format!("../mdev_supported_types/{t}"))),
                ["vfio_user_socket"] => {
                    let uuid = super::parse_uuid(u).ok()?;
                    Some(Node::Attr(format!(
                        "{}\n",
                        daemon.socket_path(&uuid).display()
                    )))
                }
                _ => None,
            }
        }
    }
}

/// Why [`kstrtoul`] refused its input (the kernel's two errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KstrtoxError {
    /// Not a number in the kernel's syntax (`-EINVAL`).
    #[error("not a number")]
    Invalid,
    /// More than an `unsigned long` holds (`-ERANGE`).
    #[error("out of range")]
    Range,
}

/// The kernel's `kstrtoul(buf, 0, &val)` (lib/kstrtox.c) on what was
/// written to a sysfs attribute: kernfs ends the buffer with a NUL, so the
/// text stops at the first NUL byte. One optional `+`; the base from the
/// prefix (`0x` followed by a hex digit: 16, else a leading `0`: 8, else
/// 10); at least one digit; then at most one newline and nothing else.
/// No other white space anywhere, no sign `-`.
pub fn kstrtoul(buf: &[u8]) -> Result<u64, KstrtoxError> {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let mut s = &buf[..end];
    if let [b'+', rest @ ..] = s {
        s = rest;
    }
    let base: u32 = match s {
        [b'0', x, h, ..] if x.eq_ignore_ascii_case(&b'x') && h.is_ascii_hexdigit() => {
            s = &s[2..];
            16
        }
        [b'0', ..] => 8,
        _ => 10,
    };
    let digits = s
        .iter()
        .take_while(|c| char::from(**c).is_digit(base))
        .count();
    if digits == 0 {
        return Err(KstrtoxError::Invalid);
    }
    let mut value: u64 = 0;
    let mut overflow = false;
    for &c in &s[..digits] {
        let v = char::from(c).to_digit(base).map_or(0, u64::from);
        match value
            .checked_mul(u64::from(base))
            .and_then(|x| x.checked_add(v))
        {
            Some(x) => value = x,
            None => overflow = true,
        }
    }
    if overflow {
        return Err(KstrtoxError::Range);
    }
    match &s[digits..] {
        [] | [b'\n'] => Ok(value),
        _ => Err(KstrtoxError::Invalid),
    }
}

/// The FUSE file system over the daemon.
struct Tree {
    daemon: Arc<Mutex<Daemon>>,
    /// Inode numbers by path and back; paths are stable names, so an inode
    /// keeps its number for the daemon's lifetime.
    inodes: HashMap<String, u64>,
    paths: Vec<String>,
    uid: u32,
    gid: u32,
    born: SystemTime,
}

impl Tree {
    fn ino(&mut self, path: &str) -> u64 {
        if let Some(&i) = self.inodes.get(path) {
            return i;
        }
        self.paths.push(path.to_string());
        let i = self.paths.len() as u64; // inode 1 is the root ("")
        self.inodes.insert(path.to_string(), i);
        i
    }

    fn path(&self, ino: u64) -> Option<String> {
        self.paths.get((ino as usize).checked_sub(1)?).cloned()
    }

    fn node(&self, path: &str) -> Option<Node> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let d = lock(&self.daemon);
        resolve(&d, &parts)
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size) = match node {
            Node::Dir(_) => (FileType::Directory, 0o755, 0),
            Node::Attr(s) => (FileType::RegularFile, 0o444, s.len() as u64),
            Node::Control => (FileType::RegularFile, 0o200, 4096),
            Node::Link(t) => (FileType::Symlink, 0o777, t.len() as u64),
        };
        FileAttr {
            ino,
            size,
            blocks: 0,
            atime: self.born,
            mtime: self.born,
            ctime: self.born,
            crtime: self.born,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// A write to a control file: `create` or `remove`.
    fn control(&self, path: &str, data: &[u8]) -> Result<(), Errno> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut d = lock(&self.daemon);
        match parts.as_slice() {
            // The kernel takes 36 characters, or 37 with a newline; `create`
            // checks that (EINVAL) before anything else.
            ["devices", _, p, "mdev_supported_types", t, "create"] => {
                let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
                d.create(t, Some(p), Some(text)).map(|_| ()).map_err(|e| {
                    tracing::info!("sysfs create {:?} on {p}/{t}: {e}", text.trim_end());
                    e.errno
                })
            }
            // The kernel's remove_store: kstrtoul(buf, 0, &val), any failure
            // EINVAL; a non-zero value removes, zero does nothing.
            ["devices", _, _, u, "remove"] => {
                if kstrtoul(data).map_err(|_| Errno::EINVAL)? == 0 {
                    return Ok(());
                }
                d.remove(u).map(|_| ()).map_err(|e| e.errno)
            }
            _ => Err(Errno::EACCES),
        }
    }
}

impl Filesystem for Tree {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let (Some(dir), Some(name)) = (self.path(parent), name.to_str()) else {
            return reply.error(Errno::ENOENT.raw());
        };
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        match self.node(&path) {
            Some(node) => {
                let ino = self.ino(&path);
                reply.entry(&TTL, &self.attr(ino, &node), 0)
            }
            None => reply.error(Errno::ENOENT.raw()),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.node(&p)) {
            Some(node) => reply.attr(&TTL, &self.attr(ino, &node)),
            None => reply.error(Errno::ENOENT.raw()),
        }
    }

    /// Only the truncation an `open(O_TRUNC)` of a control file implies.
    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        match self.path(ino).and_then(|p| self.node(&p)) {
            Some(node @ Node::Control)
                if mode.is_none()
                    && uid.is_none()
                    && gid.is_none()
                    && size.is_none_or(|s| s == 0) =>
            {
                reply.attr(&TTL, &self.attr(ino, &node))
            }
            Some(_) => reply.error(Errno::EPERM.raw()),
            None => reply.error(Errno::ENOENT.raw()),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.path(ino).and_then(|p| self.node(&p)) {
            Some(Node::Link(t)) => reply.data(t.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL.raw()),
            None => reply.error(Errno::ENOENT.raw()),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let read = flags & libc::O_ACCMODE != libc::O_WRONLY;
        match self.path(ino).and_then(|p| self.node(&p)) {
            Some(Node::Attr(_)) if !write => reply.opened(0, fuser::consts::FOPEN_DIRECT_IO),
            Some(Node::Control) if !read => reply.opened(0, fuser::consts::FOPEN_DIRECT_IO),
            Some(Node::Attr(_)) | Some(Node::Control) => reply.error(Errno::EACCES.raw()),
            Some(_) => reply.error(Errno::EISDIR.raw()),
            None => reply.error(Errno::ENOENT.raw()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        match self.path(ino).and_then(|p| self.node(&p)) {
            Some(Node::Attr(s)) => {
                let b = s.as_bytes();
                let start = (offset.max(0) as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                reply.data(&b[start..end])
            }
            Some(_) => reply.error(Errno::EACCES.raw()),
            None => reply.error(Errno::ENOENT.raw()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _wf: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(path) = self.path(ino) else {
            return reply.error(Errno::ENOENT.raw());
        };
        if offset != 0 || data.len() > 4096 {
            return reply.error(Errno::EINVAL.raw());
        }
        match self.control(&path, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e.raw()),
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(path) = self.path(ino) else {
            return reply.error(Errno::ENOENT.raw());
        };
        let Some(Node::Dir(entries)) = self.node(&path) else {
            return reply.error(Errno::ENOTDIR.raw());
        };
        let mut all = vec![
            (ino, FileType::Directory, ".".to_string()),
            (ino, FileType::Directory, "..".to_string()),
        ];
        for (name, kind) in entries {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            let ft = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
                Kind::Link => FileType::Symlink,
            };
            all.push((self.ino(&child), ft, name));
        }
        for (i, (ino, ft, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, (i + 1) as i64, ft, name) {
                break;
            }
        }
        reply.ok()
    }
}

/// The mounted tree; dropping it unmounts.
pub struct SysfsMount {
    _session: fuser::BackgroundSession,
}

/// Prepare `root` for mdevctl (`etc/mdevctl.d`, `usr/lib/mdevctl/scripts.d/
/// {callouts,notifiers}`) and mount the tree at `root/sys`.
pub fn mount(root: &Path, daemon: Arc<Mutex<Daemon>>) -> std::io::Result<SysfsMount> {
    for sub in [
        "etc/mdevctl.d",
        "usr/lib/mdevctl/scripts.d/callouts",
        "usr/lib/mdevctl/scripts.d/notifiers",
        "sys",
    ] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    let mountpoint = root.join("sys");
    // A daemon that died leaves its mount behind ("transport endpoint is
    // not connected"); clear it.
    if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 on a path we own; failure (nothing mounted) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut tree = Tree {
        daemon,
        inodes: HashMap::new(),
        paths: Vec::new(),
        uid,
        gid,
        born: SystemTime::now(),
    };
    tree.ino("");
    let options = [
        MountOption::FSName("vgpud".into()),
        MountOption::Subtype("mdev".into()),
        MountOption::AllowOther,
        MountOption::NoExec,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    let session = fuser::spawn_mount2(tree, &mountpoint, &options)?;
    Ok(SysfsMount { _session: session })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_parses_like_the_kernels_kstrtoul_base_0() {
        use KstrtoxError::{Invalid, Range};
        let cases: &[(&[u8], Result<u64, KstrtoxError>)] = &[
            (b"1", Ok(1)),
            (b"1\n", Ok(1)),
            (b"2", Ok(2)),
            (b"0", Ok(0)),
            (b"0\n", Ok(0)),
            (b"+1", Ok(1)),
            (b"0x1", Ok(1)),
            (b"0X1f\n", Ok(31)),
            (b"+0x10", Ok(16)),
            (b"010", Ok(8)),
            (b"00", Ok(0)),
            (b"18446744073709551615", Ok(u64::MAX)),
            (b"0xffffffffffffffff", Ok(u64::MAX)),
            (b"1\0garbage", Ok(1)),
            // kernfs passes a NUL-terminated copy: the string ends at the NUL
            (b"0\0 1", Ok(0)),
            (b"18446744073709551616", Err(Range)),
            (b"0x10000000000000000", Err(Range)),
            (b"", Err(Invalid)),
            (b"\n", Err(Invalid)),
            (b"1 ", Err(Invalid)),
            (b"1 \n", Err(Invalid)),
            (b" 1", Err(Invalid)),
            (b"1\n\n", Err(Invalid)),
            (b"1\r\n", Err(Invalid)),
            (b"1\t", Err(Invalid)),
            (b"-1", Err(Invalid)),
            (b"++1", Err(Invalid)),
            (b"+", Err(Invalid)),
            (b"yes", Err(Invalid)),
            (b"abc", Err(Invalid)),
            (b"08", Err(Invalid)),
            (b"0x", Err(Invalid)),
            (b"0xg", Err(Invalid)),
            (b"0b1", Err(Invalid)),
            (b"1a", Err(Invalid)),
            (b"0x1 ", Err(Invalid)),
        ];
        for (input, want) in cases {
            assert_eq!(
                kstrtoul(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn links_resolve_inside_the_tree() {
        // Resolve each relative link textually from its own directory and
        // check that the target exists in the tree.
        let dir = std::env::temp_dir().join(format!("vgpud-sysfs-unit-{}", std::process::id()));
        let mut daemon = Daemon::new(
            &dir,
            None,
            scheduler::Config::default(),
            &mdev_types::Catalog::default(),
        )
        .unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let u = "aa618089-8b16-4d01-a136-25a0f3c73123";
        daemon.create("vgpud-2c", None, Some(u)).unwrap();
        let links = [
            vec!["class", "mdev_bus", "cpu0"],
            vec!["bus", "mdev", "devices", u],
            vec![
                "devices",
                "vgpud",
                "cpu0",
                "mdev_supported_types",
                "vgpud-2c",
                "devices",
                u,
            ],
            vec!["devices", "vgpud", "cpu0", u, "mdev_type"],
        ];
        for link in links {
            let Some(Node::Link(target)) = resolve(&daemon, &link) else {
                panic!("{link:?} is not a link")
            };
            let mut at: Vec<&str> = link[..link.len() - 1].to_vec();
            for c in target.split('/') {
                if c == ".." {
                    assert!(at.pop().is_some(), "{target} climbs out of sys/");
                } else {
                    at.push(c);
                }
            }
            assert!(
                matches!(resolve(&daemon, &at), Some(Node::Dir(_))),
                "{link:?} -> {target} does not reach a directory"
            );
        }
        assert_eq!(
            resolve(
                &daemon,
                &[
                    "devices",
                    "vgpud",
                    "cpu0",
                    "mdev_supported_types",
                    "vgpud-8c",
                    "available_instances"
                ]
            ),
            Some(Node::Attr("0\n".into()))
        );
        assert_eq!(
            resolve(
                &daemon,
                &[
                    "devices",
                    "vgpud",
                    "cpu0",
                    "mdev_supported_types",
                    "vgpud-2c",
                    "available_instances"
                ]
            ),
            Some(Node::Attr("3\n".into()))
        );
        assert_eq!(
            resolve(
                &daemon,
                &[
                    "bus",
                    "mdev",
                    "devices",
                    "0f0a7e4c-2bd4-4e5e-9c55-0a4f6b0e1d01"
                ]
            ),
            None
        );
        drop(daemon);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
