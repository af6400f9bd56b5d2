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
