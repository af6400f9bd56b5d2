//! Starting threads (the front ends, engine workers and the daemon's own). A thread that cannot start (out of
//! memory, out of processes) is an error its caller gets, never a parent
//! without a dispatcher or a server without its loop.

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

/// How much lower than the engines the front ends run (a nice value). The
/// engine is the physical device being shared: on a host short of cores, a
/// tenant's front end decoding a flood of commands must not slow the engine
/// down for everyone (its decoding is charged to it by the scheduler, but
/// only the CPU scheduler can keep it off the engine's core).
pub const FRONT_END_NICE: i32 = 5;

/// Lower the calling thread's CPU priority by [`FRONT_END_NICE`] (Linux
/// sets nice values per thread). Best effort: a failure leaves it as is.
pub fn run_below_engines() {
    // SAFETY: gettid and setpriority take integers and touch no process
    // memory; PRIO_PROCESS with a thread id changes only that thread.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, FRONT_END_NICE)
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "front end keeps its priority");
    }
}
