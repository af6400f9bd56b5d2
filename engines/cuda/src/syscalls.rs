//! The system calls the CUDA driver makes once a worker runs, beyond the
//! worker's own ([`engine_worker::sandbox::BASE_SYSCALLS`]): what the
//! seccomp filter allows it.
//!
//! NOT YET MEASURED on a GPU (no GPU machine could be started in the session
//! that wrote it): the list is the driver's known needs (ioctls on the device
//! nodes, mappings of them, its threads' waits and NUMA calls) on top of
//! what the emulated worker was measured to call. `tests/gpu/syscalls.sh`
//! measures it on a GPU machine (the worker under strace, its filter in log
//! mode); its result replaces this list. Meanwhile the calls that name a
//! path are allowed inside the empty root ([`CUDA_PATH_SYSCALLS`]), so that
//! a driver looking for a file is told `ENOENT` rather than killed.
//!
//! ABI 1.3's calls add nothing to the list (also not yet measured): the
//! device identity is asked before the filter; the JIT linker (`cuLink*`)
//! runs in the process, like the JIT it shares with `cuModuleLoadDataEx`,
//! and the worker uses it on its own kernels before the filter
//! (`ptx::KernelSpace::try_link`), so that any library it loads is loaded
//! then; loading a cubin or fatbin, `cuFuncGetParamInfo`,
//! `cuFuncGetAttribute`, `cuFuncSetAttribute` and `cuModuleGetGlobal`
//! reach the device through its ioctls and mappings, as PTX modules did.
//! `tests/gpu/syscalls.sh` and the GPU run's guest-CUDA part (workers
//! confined) check it.

/// Allowed for the CUDA worker beside the base list.
pub const CUDA_SYSCALLS: &[i64] = &[
    // The driver talks to /dev/nvidia*, /dev/nvidia-uvm through ioctls and
    // maps them.
    libc::SYS_ioctl,
    // Its helper threads wait on descriptors and events.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_getrusage,
    libc::SYS_uname,
    libc::SYS_mincore,
    libc::SYS_get_mempolicy,
    libc::SYS_set_mempolicy,
    libc::SYS_mbind,
    libc::SYS_getcpu,
    // Calls a driver's threads may make now and then that reach nothing
    // outside the process: its own event and timer descriptors, its limits
    // (prlimit64 of itself is in the base filter), advice on its own files,
    // scheduling figures. Nothing that changes another process: workers
    // share a user, so sched_setaffinity, setpriority or prlimit64 of
    // another pid could reach another tenant's worker.
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_getrlimit,
    libc::SYS_getpriority,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_get_priority_max,
    libc::SYS_flock,
    libc::SYS_fadvise64,
    libc::SYS_getcwd,
    libc::SYS_getppid,
    libc::SYS_times,
];

/// Calls that name a path, allowed only inside the empty root (where they
/// find nothing): the driver looks for files now and then (its JIT's cache
/// is off: `CUDA_CACHE_DISABLE`), and must get `ENOENT`, not be killed.
pub const CUDA_PATH_SYSCALLS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_stat,
    libc::SYS_lstat,
];
