//! The worker's end of its socket: frames from the daemon in, messages to
//! it out (from any thread of the worker).

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use devmodel::sync::lock;

use crate::socket::{self, FrameReader};
use crate::wire::{Fatal, FatalReason, ToDaemon, ToWorker};
use crate::Error;

/// Sends messages to the daemon; clones share the socket and one encoding
/// buffer.
#[derive(Clone)]
pub struct Sender(Arc<Mutex<(UnixStream, Vec<u8>)>>);

impl Sender {
    /// Send `m`.
    pub fn send(&self, m: &ToDaemon) -> Result<(), Error> {
        let mut g = lock(&self.0);
        let (s, buf) = &mut *g;
        m.encode(buf)?;
        socket::send(s, buf, &[]).map_err(|source| Error::Io {
            what: "sending to the daemon",
            source,
        })
    }

    #[cfg(feature = "fuzzing")]
    pub(crate) fn for_fuzzing(s: UnixStream) -> Sender {
        Sender(Arc::new(Mutex::new((s, Vec::new()))))
    }

    /// Tell the daemon why this worker gives up (also on stderr, the
    /// daemon's log); best effort.
    pub fn fatal(&self, reason: FatalReason, code: u32, detail: &str) {
        eprintln!("{reason} (error {code}): {detail}");
        let _ = self.send(&ToDaemon::Fatal(Fatal {
            reason,
            code,
            detail,
        }));
    }
}

/// The socket the daemon handed the worker.
pub struct Endpoint {
    sock: UnixStream,
    reader: FrameReader,
    out: Sender,
}

impl Endpoint {
    /// The socket at descriptor `fd`.
    ///
    /// # Safety
    /// `fd` must be an open Unix stream socket that nothing else in the
    /// process owns (the one the daemon passed at descriptor 3).
    pub unsafe fn from_fd(fd: RawFd) -> Result<Endpoint, Error> {
        // SAFETY: the caller guarantees `fd` is an owned, open socket.
        let sock = unsafe { UnixStream::from_raw_fd(fd) };
        let out = sock.try_clone().map_err(|source| Error::Io {
            what: "duplicating the socket",
            source,
        })?;
        Ok(Endpoint {
            sock,
            reader: FrameReader::new(),
            out: Sender(Arc::new(Mutex::new((out, Vec::with_capacity(64))))),
        })
    }

    pub fn sender(&self) -> Sender {
        self.out.clone()
    }

    /// The next message and its descriptors; `None` once the daemon closed
    /// the socket.
    pub fn recv(&mut self) -> Result<Option<(ToWorker<'_>, Vec<File>)>, Error> {
        match self.reader.recv(&self.sock) {
            Ok((frame, files)) => Ok(Some((ToWorker::decode(frame)?, files))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(source) => Err(Error::Io {
                what: "reading from the daemon",
                source,
            }),
        }
    }
}
