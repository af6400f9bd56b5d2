//! The locking policy of the daemon's shared state, in one place.
//!
//! A mutex is *poisoned* when a thread panics while holding it. vgpud does
//! not let that stop the other tenants: every piece of state behind these
//! locks is kept consistent at each point where a holder could panic (each
//! update is a single assignment or is validated before it is applied), so
//! the next holder takes the guard as it is. A guest-driven path never
//! panics by design; this is the policy for the case where an invariant
//! breaks anyway.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Take `m`, whether or not an earlier holder panicked.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wait on `cv`, releasing `guard`, under the same policy as [`lock`].
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// Wait on `cv` for at most `timeout`, under the same policy as [`lock`].
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(guard, timeout) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

/// The value of `m`, whether or not an earlier holder panicked.
pub fn into_inner<T>(m: Mutex<T>) -> T {
    m.into_inner().unwrap_or_else(|p| p.into_inner())
}
