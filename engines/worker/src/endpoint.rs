//! The worker's end of its socket and rings ([`crate::ring`]): frames from
//! the daemon in, messages to it out (from any thread of the worker).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devmodel::sync::lock;

use crate::ring::{self, Consumer, Doorbell, Producer, Record, Shared, Woken};
use crate::socket::{self, FrameReader};
use crate::wire::{Fatal, FatalReason, ToDaemon, ToWorker};
use crate::Error;

/// How long a message waits for room in the ring to the daemon, which
/// reads it as it comes.
const RING_FULL_WAIT: Duration = Duration::from_secs(10);

/// What a [`Sender`] sends on: the socket, and the ring when there is one.
struct Out {
    sock: UnixStream,
    buf: Vec<u8>,
    ring: Option<Producer>,
}

/// Sends messages to the daemon; clones share the socket, the ring and one
/// encoding buffer.
#[derive(Clone)]
pub struct Sender(Arc<Mutex<Out>>);

impl Sender {
    /// Send `m`: in the ring when it fits, else on the socket behind a
    /// ring marker (VRAM data). The daemon is woken only if it sleeps.
    pub fn send(&self, m: &ToDaemon) -> Result<(), Error> {
        let mut g = lock(&self.0);
        let Out { sock, buf, ring } = &mut *g;
        m.encode(buf)?;
        let io = |source| Error::Io {
            what: "sending to the daemon",
            source,
        };
        match ring {
            Some(r) => {
                let inline = buf.len() <= ring::MAX_INLINE;
                r.push(inline.then_some(&buf[..]), RING_FULL_WAIT)?;
                if !inline {
                    socket::send(sock, buf, &[]).map_err(io)?;
                }
                r.notify();
                Ok(())
            }
            None => socket::send(sock, buf, &[]).map_err(io),
        }
    }

    /// Corrupt the ring to the daemon (test-only: a hostile worker, asked
    /// for through [`crate::sandbox::Escape::garbage`]).
    pub fn scribble(&self, g: crate::ring::Garbage) {
        eprintln!("ring garbage {g:?}");
        let mut out = lock(&self.0);
        if g == crate::ring::Garbage::Unannounced {
            // A well-formed message, but on the socket, with no ring record.
            let done = ToDaemon::Done(crate::wire::Done {
                tag: 0,
                gpu_ns: 0,
                status: crate::wire::Status::Ok,
                value: 0.0,
            });
            let Out { sock, buf, .. } = &mut *out;
            if done.encode(buf).is_ok() {
                let _ = socket::send(sock, buf, &[]);
            }
        } else if let Some(r) = &mut out.ring {
            r.scribble(g);
        }
    }

    #[cfg(feature = "fuzzing")]
    pub(crate) fn for_fuzzing(s: UnixStream) -> Sender {
        Sender(Arc::new(Mutex::new(Out {
            sock: s,
            buf: Vec::new(),
            ring: None,
        })))
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

/// The socket and rings the daemon handed the worker.
pub struct Endpoint {
    sock: UnixStream,
    reader: FrameReader,
    rx: Option<Consumer>,
    /// How long to spin on an empty ring before sleeping.
    spin: Duration,
    out: Sender,
}

impl Endpoint {
    /// The socket at descriptor `fd`, and with `ring_fd` the ring file
    /// there and its doorbells (daemon to worker, worker to daemon) at the
    /// two descriptors after it.
    ///
    /// # Safety
    /// The descriptors must be open (a Unix stream socket, the ring's
    /// memfd, the worker's ends of two doorbell socket pairs) and owned by
    /// nothing else in the process (the
    /// ones the daemon passed at 3, 4, 5, 6).
    pub unsafe fn from_fd(fd: RawFd, ring_fd: Option<RawFd>) -> Result<Endpoint, Error> {
        // SAFETY: the caller guarantees `fd` is an owned, open socket.
        let sock = unsafe { UnixStream::from_raw_fd(fd) };
        let out = sock.try_clone().map_err(|source| Error::Io {
            what: "duplicating the socket",
            source,
        })?;
        let (rx, tx) = match ring_fd {
            Some(r) => {
                // SAFETY: the caller guarantees these are owned and open.
                let (file, to_worker, to_daemon) = unsafe {
                    (
                        File::from_raw_fd(r),
                        OwnedFd::from_raw_fd(r + 1),
                        OwnedFd::from_raw_fd(r + 2),
                    )
                };
                let shm = Arc::new(Shared::open(file)?);
                let ends = ring::worker_ends(
                    shm,
                    Doorbell::from_fd(to_worker),
                    Doorbell::from_fd(to_daemon),
                );
                (Some(ends.rx), Some(ends.tx))
            }
            None => (None, None),
        };
        Ok(Endpoint {
            sock,
            reader: FrameReader::new(),
            rx,
            spin: ring::spin_here(ring::WORKER_SPIN),
            out: Sender(Arc::new(Mutex::new(Out {
                sock: out,
                buf: Vec::with_capacity(64),
                ring: tx,
            }))),
        })
    }

    pub fn sender(&self) -> Sender {
        self.out.clone()
    }

    /// The next message and its descriptors; `None` once the daemon closed
    /// the socket. With a ring, messages come from it, and from the socket
    /// where the ring says so.
    pub fn recv(&mut self) -> Result<Option<(ToWorker<'_>, Vec<File>)>, Error> {
        let Some(rx) = &mut self.rx else {
            return self.recv_socket();
        };
        let mut socket_readable = false;
        loop {
            match rx.pop()? {
                Some(Record::Inline) => break,
                Some(Record::OnSocket) => return self.recv_socket(),
                None if socket_readable => {
                    // Nothing announced: only the daemon's end may be there.
                    return match self.recv_socket()? {
                        None => Ok(None),
                        Some(_) => Err(Error::Malformed(
                            "a frame on the socket without its ring record",
                        )),
                    };
                }
                None => {
                    let w = rx.wait(self.spin, Some(self.sock.as_raw_fd()), None, None);
                    socket_readable = w == Woken::Other;
                }
            }
        }
        let frame = self.rx.as_ref().map_or(&[][..], |r| r.frame());
        Ok(Some((ToWorker::decode(frame)?, Vec::new())))
    }

    fn recv_socket(&mut self) -> Result<Option<(ToWorker<'_>, Vec<File>)>, Error> {
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
