//! The worker's confinement. A worker runs guest input through its device
//! driver (a GPU's JIT parses guest PTX), so before any of that input
//! reaches it — before its first message from the daemon — it confines
//! itself, in two steps:
//!
//! 1. [`prepare`], the first thing the worker does, while it has one
//!    thread: an empty capability bounding set, no supplementary groups,
//!    the sandbox's group, and the sandbox's user as its real and
//!    effective user (the saved user stays root for step 2, with only
//!    `CAP_SYS_CHROOT` left in its permitted set and none effective), and
//!    `PR_SET_NO_NEW_PRIVS`. Every thread created after this, the device
//!    driver's included, inherits that. The device is then opened and its
//!    driver loaded as the unprivileged user (its nodes and libraries
//!    must be readable by it; they are, as installed: 0666 and 0644).
//! 2. [`Confinement::enter`], once the engine has started: `chroot` into
//!    an empty directory (the sandbox's root) and `chdir("/")`, so that no
//!    path leads anywhere; the saved user dropped too, which clears every
//!    capability of every thread; not dumpable (no ptrace, no core, no
//!    `/proc/<pid>/mem` for another process of the user); tight rlimits
//!    (no core, no file written, few descriptors); and a seccomp filter on
//!    every thread (`SECCOMP_FILTER_FLAG_TSYNC`): the system calls the
//!    worker and its driver make once running ([`BASE_SYSCALLS`] and the
//!    engine's own list) are allowed, any other kills the process
//!    (`SIGSYS`), which faults only this worker's vGPU.
//!
//! What the worker can still reach is what it held open at step 2: its
//! socket, the device's nodes and the driver's mappings; and what the
//! daemon hands it later: the guest RAM files of its VM (descriptors).
//! It cannot open a file, create a socket, start a program, trace or
//! signal another process, or gain a privilege.
//!
//! A daemon that is not root cannot change users: its workers keep its
//! user, take no `chroot` (only a `chdir` into the root), and still set
//! no-new-privileges, the rlimits and the filter.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use seccompiler::{
    apply_filter_all_threads, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp,
    SeccompCondition, SeccompFilter, SeccompRule,
};

use crate::Error;

/// Who a worker runs as and where its root is (the daemon's `[workers]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPolicy {
    pub uid: u32,
    pub gid: u32,
    /// An empty directory, owned by root and not writable by the worker.
    pub root: PathBuf,
}

impl SandboxPolicy {
    /// The worker's command-line arguments for this policy.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--sandbox-uid".into(),
            self.uid.to_string(),
            "--sandbox-gid".into(),
            self.gid.to_string(),
            "--sandbox-root".into(),
            self.root.display().to_string(),
        ]
    }
}

/// Test-only: `VGPUD_WORKER_TEST_ESCAPE=1` in the daemon's environment
/// makes its workers try to get out of the sandbox when a guest's memset
/// carries one of the [`Escape`] patterns, as a worker taken over by guest
/// input would (the sandbox tests, tools/vgpud/tests/sandbox.rs).
pub const ESCAPE_ENV: &str = "VGPUD_WORKER_TEST_ESCAPE";
/// `VGPUD_WORKER_SECCOMP=log`: a call outside the list is logged by the
/// kernel and allowed instead of killing the worker (measuring the list).
pub const SECCOMP_ENV: &str = "VGPUD_WORKER_SECCOMP";

static ESCAPE_TEST: OnceLock<bool> = OnceLock::new();

/// What the test-only escape tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// `execve("/bin/sh")`.
    Execve,
    /// `open("/etc/shadow")`.
    Shadow,
    /// `socket(AF_INET, SOCK_STREAM)`.
    Inet,
    /// `ptrace(PTRACE_ATTACH, <the daemon>)`.
    Ptrace,
}

impl Escape {
    /// The memset pattern that asks for this attempt.
    pub const fn pattern(self) -> u32 {
        0x5EC0_0D00
            | match self {
                Escape::Execve => 1,
                Escape::Shadow => 2,
                Escape::Inet => 3,
                Escape::Ptrace => 4,
            }
    }

    /// The attempt an operation asks for (a memset of an escape pattern,
    /// alone or in a batch), when escape tests are on (never otherwise).
    pub fn requested(op: &devmodel::command::Op) -> Option<Escape> {
        use devmodel::command::Op;
        if !ESCAPE_TEST.get().copied().unwrap_or(false) {
            return None;
        }
        let ops = match op {
            Op::Batch(ops) => ops.as_slice(),
            one => std::slice::from_ref(one),
        };
        ops.iter().find_map(|o| match o {
            Op::Memset { pattern, .. } => {
                [Escape::Execve, Escape::Shadow, Escape::Inet, Escape::Ptrace]
                    .into_iter()
                    .find(|e| e.pattern() == *pattern)
            }
            _ => None,
        })
    }

    /// The ring garbage an operation asks for (a memset of
    /// [`crate::ring::Garbage::pattern`]), when escape tests are on: a worker taken over
    /// by guest input scribbling on its ring to the daemon.
    pub fn garbage(op: &devmodel::command::Op) -> Option<crate::ring::Garbage> {
        use crate::ring::Garbage;
        use devmodel::command::Op;
        if !ESCAPE_TEST.get().copied().unwrap_or(false) {
            return None;
        }
        match op {
            Op::Memset { pattern, .. } => {
                Garbage::ALL.into_iter().find(|g| g.pattern() == *pattern)
            }
            _ => None,
        }
    }

    /// Try it. The sandbox kills the worker (`SIGSYS`) or the call fails;
    /// either way the worker ends: 65 when the call failed, 66 when it
    /// succeeded (the test fails on that).
    pub fn attempt(self, daemon: i32) -> ! {
        eprintln!("escape attempt {self:?}");
        // SAFETY: each call is made with valid, NUL-terminated strings and
        // null-terminated argument arrays; none of them touches memory of
        // this process on success but the returned descriptor.
        let rc = unsafe {
            match self {
                Escape::Execve => {
                    let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
                    let envp = [std::ptr::null()];
                    libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr())
                }
                Escape::Shadow => libc::open(c"/etc/shadow".as_ptr(), libc::O_RDONLY),
                Escape::Inet => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0),
                Escape::Ptrace => libc::ptrace(libc::PTRACE_ATTACH, daemon, 0, 0) as i32,
            }
        };
        if rc < 0 {
            eprintln!(
                "escape attempt {self:?} failed: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(65);
        }
        eprintln!("escape attempt {self:?} SUCCEEDED");
        std::process::exit(66);
    }
}

/// A worker between [`prepare`] and [`Confinement::enter`].
pub struct Confinement {
    policy: Option<SandboxPolicy>,
    /// The root, opened while the worker could still reach it (its path
    /// may lead through directories only root may search).
    root: Option<std::fs::File>,
    /// Started as root: users change and the root is a `chroot`.
    privileged: bool,
    /// The daemon's pid (the escape test's `ptrace` target).
    daemon: i32,
}

/// Step 1 (see the module doc); `None` confines nothing (the daemon's
/// `[workers] sandbox = false`).
pub fn prepare(policy: Option<SandboxPolicy>) -> Result<Confinement, Error> {
    let _ = ESCAPE_TEST.set(std::env::var_os(ESCAPE_ENV).is_some_and(|v| v == "1"));
    // SAFETY: getppid and geteuid take no arguments and cannot fail.
    let (daemon, euid) = unsafe { (libc::getppid(), libc::geteuid()) };
    let Some(p) = policy else {
        return Ok(Confinement {
            policy: None,
            root: None,
            privileged: false,
            daemon,
        });
    };
    let privileged = euid == 0;
    let root = std::fs::File::open(&p.root).map_err(|source| Error::Sandbox {
        what: "opening the sandbox root",
        source,
    })?;
    if privileged {
        drop_bounding_set()?;
        // SAFETY: plain credential calls with no pointers but setgroups'
        // (an empty list).
        unsafe {
            check("setgroups", libc::setgroups(0, std::ptr::null()))?;
            check("setresgid", libc::setresgid(p.gid, p.gid, p.gid))?;
            check("setresuid", libc::setresuid(p.uid, p.uid, 0))?;
        }
        set_caps(0, 1 << CAP_SYS_CHROOT)?;
        // SAFETY: prctl with integer arguments only.
        check("clearing ambient capabilities", unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        })?;
    }
    // SAFETY: prctl with integer arguments only.
    check("PR_SET_NO_NEW_PRIVS", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    Ok(Confinement {
        policy: Some(p),
        root: Some(root),
        privileged,
        daemon,
    })
}

impl Confinement {
    /// The daemon's pid.
    pub fn daemon(&self) -> i32 {
        self.daemon
    }

    /// Step 2 (see the module doc), with `extra` system calls allowed
    /// beside [`BASE_SYSCALLS`] (the engine's driver's own), and
    /// `rooted`, calls that name paths, allowed only once the worker's root
    /// is the empty directory (there they find nothing: a driver that
    /// looks for a file gets `ENOENT` instead of killing its worker).
    pub fn enter(mut self, extra: &[i64], rooted: &[i64]) -> Result<(), Error> {
        let (Some(p), Some(root)) = (&self.policy, self.root.take()) else {
            return Ok(());
        };
        let highest_fd = check_descriptors(root.as_raw_fd())?;
        // SAFETY: fchdir on a descriptor this value owns.
        check("fchdir into the sandbox root", unsafe {
            libc::fchdir(root.as_raw_fd())
        })?;
        drop(root);
        if self.privileged {
            set_caps(1 << CAP_SYS_CHROOT, 1 << CAP_SYS_CHROOT)?;
            chroot_here()?;
            // The saved user too: every thread's capabilities go (glibc
            // applies it to every thread of the process).
            // SAFETY: a plain credential call.
            check("setresuid", unsafe { libc::setresuid(p.uid, p.uid, p.uid) })?;
            if caps_left()? {
                return Err(Error::Sandbox {
                    what: "capabilities left after dropping the saved user",
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                });
            }
        }
        // SAFETY: prctl with integer arguments only.
        check("PR_SET_DUMPABLE", unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0)
        })?;
        limit(libc::RLIMIT_CORE, 0)?;
        limit(libc::RLIMIT_FSIZE, 0)?;
        limit(libc::RLIMIT_NOFILE, highest_fd + 1 + EXTRA_FDS)?;
        let mut allowed = extra.to_vec();
        if self.privileged {
            allowed.extend_from_slice(rooted);
        }
        install_filters(&allowed)
    }
}

/// Descriptors a worker may open beyond those it holds when confined:
/// guest RAM files the daemon sends, duplicates of them, a driver's
/// occasional new one.
const EXTRA_FDS: u64 = 64;

fn check(what: &'static str, rc: i32) -> Result<(), Error> {
    if rc < 0 {
        Err(Error::Sandbox {
            what,
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// Every capability out of the bounding set (this thread's, inherited by
/// every thread and program after).
fn drop_bounding_set() -> Result<(), Error> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return check("PR_CAPBSET_DROP", rc);
        }
    }
    Ok(())
}

/// `capset` of this thread: effective and permitted sets (capabilities
/// 0..32), nothing inheritable.
fn set_caps(effective: u32, permitted: u32) -> Result<(), Error> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective,
            permitted,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: capset reads one header and two data records (version 3),
    // both alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check("capset", rc as i32)
}

/// Whether this thread has any capability permitted.
fn caps_left() -> Result<bool, Error> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data records (version 3) into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check("capget", rc as i32)?;
    Ok(data
        .iter()
        .any(|d| d.permitted | d.effective | d.inheritable != 0))
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// `CAP_SYS_CHROOT` (linux/capability.h).
const CAP_SYS_CHROOT: u32 = 18;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Make the working directory the root, and go to it.
fn chroot_here() -> Result<(), Error> {
    // SAFETY: a NUL-terminated path, alive for the call.
    check("chroot", unsafe { libc::chroot(c".".as_ptr()) })?;
    std::env::set_current_dir("/").map_err(|source| Error::Sandbox {
        what: "chdir(\"/\") in the sandbox root",
        source,
    })
}

/// The highest open descriptor; an open directory other than the root
/// (`root`, closed next) is an error (`fchdir` would lead out of the root).
fn check_descriptors(root: i32) -> Result<u64, Error> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|source| Error::Sandbox {
        what: "listing open descriptors",
        source,
    })?;
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut highest = 2;
    for fd in fds {
        // SAFETY: fstat writes one stat record; a descriptor closed since
        // the listing (the listing's own) just fails.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if fd == root || unsafe { libc::fstat(fd, &mut st) } != 0 {
            continue;
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Error::Sandbox {
                what: "an open directory would lead out of the sandbox root",
                source: std::io::Error::from_raw_os_error(libc::EISDIR),
            });
        }
        highest = highest.max(fd as u64);
    }
    Ok(highest)
}

fn limit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), Error> {
    let r = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads one rlimit record.
    check("setrlimit", unsafe { libc::setrlimit(resource, &r) })
}

/// System calls every worker makes once running: its socket, memory,
/// threads, time and signals; no file is opened, no socket or process
/// created. `clone` (threads only), `tgkill` (this process only),
/// `prlimit64` (its own limits) and `prctl` (thread names) are allowed with
/// their arguments checked.
pub const BASE_SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mlock,
    libc::SYS_munlock,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_getrandom,
    libc::SYS_membarrier,
    // Memory figures (sysconf(_SC_PHYS_PAGES)): the cpu engine's limits.
    libc::SYS_sysinfo,
];

/// The filter: `extra` and [`BASE_SYSCALLS`] allowed, `clone` for threads,
/// `tgkill` to this process, `prctl` for names; anything else kills the
/// process. A second filter answers `clone3` with `ENOSYS` (its flags are
/// behind a pointer, out of a filter's reach), so that the C library
/// creates threads with `clone`.
fn install_filters(extra: &[i64]) -> Result<(), Error> {
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.into()))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BASE_SYSCALLS
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let cond = |arg, op, value| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
            .map_err(|e| Error::Seccomp(e.into()))
    };
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|e| Error::Seccomp(e.into()));
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, SeccompCmpOp::Eq, pid)?])?],
    );
    // Its own limits only (the C library's getrlimit).
    rules.insert(
        libc::SYS_prlimit64,
        vec![rule(vec![cond(0, SeccompCmpOp::Eq, 0)?])?],
    );
    let prctl = [libc::PR_SET_NAME, libc::PR_GET_NAME, libc::PR_SET_VMA]
        .into_iter()
        .map(|op| rule(vec![cond(0, SeccompCmpOp::Eq, op as u64)?]))
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_prctl, prctl);
    rules.insert(libc::SYS_clone3, Vec::new());
    let violation = match std::env::var(SECCOMP_ENV).as_deref() {
        Ok("log") => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    };
    let allow = SeccompFilter::new(rules, violation, SeccompAction::Allow, arch)
        .map_err(|e| Error::Seccomp(e.into()))?;
    let no_clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| Error::Seccomp(e.into()))?;
    // The allowlist last: installing a filter takes prctl and seccomp,
    // which it does not allow.
    for f in [no_clone3, allow] {
        let prog: BpfProgram = f
            .try_into()
            .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.into()))?;
        apply_filter_all_threads(&prog).map_err(Error::Seccomp)?;
    }
    Ok(())
}
