//! Starting threads (the front ends, engine workers and the daemon's own). A thread that cannot start (out of
//! memory, out of processes) is an error its caller gets, never a parent
//! without a dispatcher or a server without its loop.
//!
//! The threads a command passes through on its way to the engine and back (a
//! vGPU's front end and vfio-user server, a parent's dispatcher, the engine's
//! workers and its completion thread) are the *data path*: they start with
//! [`spawn_data_path`], which raises them to [`DATA_PATH_NICE`]. On a host whose
//! CPUs are busy (the VMs' vCPUs, a build) a thread at the default priority
//! waits milliseconds for a core after its wake-up, and the engine idles or an
//! item's measured time grows meanwhile; the guarantees of the policies are in
//! engine time, so they would go with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A thread that could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start thread {name}: {source}")]
pub struct SpawnError {
    /// The thread's name.
    pub name: String,
    #[source]
    pub source: std::io::Error,
}

/// The nice value of data-path threads: ahead of the default (0) that VMs and
/// other work run at, below the real-time classes (a spinning real-time thread
/// could take a core from the host). Raising a thread needs `CAP_SYS_NICE`, or
/// a process already at this value (`Nice=-10` in `dist/vgpud.service`).
pub const DATA_PATH_NICE: i32 = -10;

/// Start `f` on a new thread called `name`.
pub fn spawn<F, T>(name: impl Into<String>, f: F) -> Result<JoinHandle<T>, SpawnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.into();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| SpawnError { name, source })
}

/// Start `f` on a new data-path thread called `name`, at [`DATA_PATH_NICE`].
pub fn spawn_data_path<F, T>(name: impl Into<String>, f: F) -> Result<JoinHandle<T>, SpawnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    spawn(name, move || {
        raise_current(DATA_PATH_NICE);
        f()
    })
}

/// The time slice data-path threads ask the kernel for (Linux ≥ 6.12, EEVDF:
/// `sched_attr.sched_runtime` of a normal thread). A thread with a short
/// slice has an early deadline, so when it wakes (a completion, a doorbell,
/// the end of a sleep inside an item) it preempts a CPU-bound neighbour at
/// once instead of waiting up to that neighbour's slice (measured on a 2-core
/// host beside a build: the cpu engine's worker waited 5–11 % of the time for
/// a CPU at nice -10 with the default slice).
pub const DATA_PATH_SLICE_NS: u64 = 100_000;

/// The kernel's `struct sched_attr` (include/uapi/linux/sched/types.h).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks for a short time slice for the calling thread (see
/// [`DATA_PATH_SLICE_NS`]); kernels without custom slices refuse, and the
/// thread keeps the default.
fn short_slice(nice: i32) -> bool {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: DATA_PATH_SLICE_NS,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: sched_setattr(0 = this thread, attr, 0) reads the one struct
    // it is given, whose size field says how much of it there is.
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0 }
}

/// Raises the calling thread to `nice` (never lowers it) with a short time
/// slice. Where the process may not (no `CAP_SYS_NICE`), the thread stays
/// where it is and the first such thread says so once.
pub fn raise_current(nice: i32) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    // SAFETY: gettid takes no arguments and touches no memory.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // getpriority may legitimately return -1: errno tells an error apart.
    // SAFETY: errno is this thread's; getpriority reads integers only.
    let now = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    };
    if std::io::Error::last_os_error().raw_os_error() == Some(0) && now <= nice {
        short_slice(now);
        return;
    }
    if short_slice(nice) {
        return;
    }
    // SAFETY: setpriority takes integers only and changes this thread's nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
        let e = std::io::Error::last_os_error();
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %e,
                nice,
                "data-path threads stay at the default priority: shares may not hold while the host's CPUs are busy (give vgpud CAP_SYS_NICE or Nice={nice})"
            );
        }
    }
}

/// CPU time the calling thread has used. The front end charges a vGPU the CPU
/// time it spent on the vGPU's commands with it, not the wall time: on a busy
/// host a thread that waits for a core meanwhile would charge the vGPU for the
/// daemon's lateness.
pub fn cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the one timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_current() -> i32 {
        // SAFETY: as in raise_current.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn cpu_time_counts_work_not_sleep() {
        let t0 = cpu_time();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let slept = cpu_time() - t0;
        let t1 = cpu_time();
        let until = std::time::Instant::now() + std::time::Duration::from_millis(30);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = cpu_time() - t1;
        assert!(slept < std::time::Duration::from_millis(5), "{slept:?}");
        assert!(worked > std::time::Duration::from_millis(1), "{worked:?}");
    }

    #[test]
    fn a_data_path_thread_runs_at_the_data_path_nice_value_where_allowed() {
        let before = nice_of_current();
        let nice = spawn_data_path("nice-test", nice_of_current)
            .unwrap()
            .join()
            .unwrap();
        // SAFETY: geteuid reads an integer.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(nice, DATA_PATH_NICE);
        } else {
            assert!(nice == DATA_PATH_NICE || nice == before, "{nice}");
        }
        // Only the new thread was raised.
        assert_eq!(nice_of_current(), before);
    }
}
