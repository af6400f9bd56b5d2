//! Blocking waits that a stop signal can end: every server thread of the
//! daemon sleeps in one of these, so that shutdown never waits on a
//! client.

use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

/// Wait until one of `fds` is readable (or hung up) or `stop` is signalled.
/// Returns which of `fds` are ready, or `None` once `stop` fired (or poll
/// itself failed, which is treated the same: the caller winds down).
pub fn readable(stop: &EventFd, fds: &[RawFd]) -> Option<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
        .chain(fds.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: poll(2) reads and writes exactly `p.len()` pollfd entries
        // at `p.as_mut_ptr()`, a live, exclusively borrowed Vec.
        let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, -1) };
        if n >= 0 {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
    if p[0].revents != 0 {
        return None;
    }
    Some(p[1..].iter().map(|f| f.revents != 0).collect())
}
