//! Frames over a Unix stream socket: each a little-endian `u32` length,
//! then the frame ([`crate::wire`]). Descriptors (guest RAM files) travel
//! as `SCM_RIGHTS` with the first bytes of the frame that names them.
//!
//! This is the one place that knows the transport: a shared-memory ring
//! would replace [`send`] and [`FrameReader`] and keep the frames.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::wire::{MAX_FRAME, MAX_LAYOUT_FILES};

/// Send one frame, with `fds` attached.
pub fn send(s: &UnixStream, frame: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if frame.is_empty() || frame.len() > MAX_FRAME || fds.len() > MAX_LAYOUT_FILES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame or descriptor count out of range",
        ));
    }
    let len = (frame.len() as u32).to_le_bytes();
    let mut s = s;
    // The descriptors go with the first bytes; the rest follows plainly.
    let sent = s
        .send_with_fds(&[&len[..], frame], fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent < 4 {
        s.write_all(&len[sent..])?;
        s.write_all(frame)
    } else {
        s.write_all(&frame[sent - 4..])
    }
}

/// Receives frames into a buffer it keeps: a frame's bytes are borrowed
/// from it until the next [`FrameReader::recv`].
pub struct FrameReader {
    buf: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader { buf: Vec::new() }
    }

    /// The next frame and the descriptors that came with it. End of file
    /// before a frame is `UnexpectedEof`; a length of 0 or above
    /// [`MAX_FRAME`] is `InvalidData` (nothing is allocated for it).
    pub fn recv(&mut self, s: &UnixStream) -> io::Result<(&[u8], Vec<File>)> {
        let mut len = [0u8; 4];
        let mut fds = [-1i32; MAX_LAYOUT_FILES];
        let mut io = [libc::iovec {
            iov_base: len.as_mut_ptr().cast(),
            iov_len: 4,
        }];
        // SAFETY: the iovec points at `len`, which outlives the call, and
        // `fds` has room for the descriptors recvmsg may install.
        let (got, nfds) = unsafe { s.recv_with_fds(&mut io, &mut fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        let files: Vec<File> = fds
            .get(..nfds)
            .unwrap_or(&[])
            .iter()
            // SAFETY: these are descriptors this process just received and
            // owns; each is wrapped once.
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        self.rest_of_frame(s, len, got)?;
        Ok((&self.buf, files))
    }

    /// The next frame, taking no descriptors: plain reads give the kernel no
    /// room for any that came with it, so it closes them (unix(7)), and
    /// none is ever open in this process. The daemon reads a worker so:
    /// a worker has nothing to hand it, and a descriptor open in the daemon
    /// even for a moment would go to a worker it spawned then.
    pub fn recv_frame(&mut self, s: &UnixStream) -> io::Result<&[u8]> {
        let mut len = [0u8; 4];
        let mut r = s;
        let got = r.read(&mut len)?;
        self.rest_of_frame(s, len, got)?;
        Ok(&self.buf)
    }

    /// A frame whose first `got` bytes of length prefix are in `len`: the
    /// rest of the prefix, then the frame (into the buffer). Nothing read
    /// is the peer's end; a length of 0 or over [`MAX_FRAME`] is refused
    /// before anything is allocated.
    fn rest_of_frame(
        &mut self,
        mut s: &UnixStream,
        mut len: [u8; 4],
        got: usize,
    ) -> io::Result<()> {
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        s.read_exact(&mut len[got..])?;
        let n = u32::from_le_bytes(len) as usize;
        if n == 0 || n > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame size"));
        }
        self.buf.resize(n, 0);
        s.read_exact(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn frames_and_descriptors_cross_and_bad_lengths_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = File::open("/proc/self/stat").unwrap();
        send(&a, b"hello", &[f.as_raw_fd()]).unwrap();
        send(&a, &[7; 100_000], &[]).unwrap();
        let mut r = FrameReader::new();
        let (frame, files) = r.recv(&b).unwrap();
        assert_eq!((frame, files.len()), (&b"hello"[..], 1));
        let (frame, files) = r.recv(&b).unwrap();
        assert_eq!((frame.len(), files.len()), (100_000, 0));
        assert!(frame.iter().all(|&x| x == 7));
        // A peer that claims a frame larger than any: refused unread.
        let mut w = &a;
        w.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(r.recv(&b).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(send(&a, &[], &[]).is_err());
        drop(a);
        assert_eq!(r.recv(&b).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Descriptors sent to a reader that takes none are closed, not
    /// received: no descriptor of the process names the file sent.
    #[test]
    fn a_reader_that_takes_no_descriptors_leaves_none_open() {
        let path = std::env::temp_dir().join(format!("vgpud-fd-test-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let names_it = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
                .count()
        };
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, b"with a descriptor", &[f.as_raw_fd(), f.as_raw_fd()]).unwrap();
        send(&a, &[3; 70_000], &[f.as_raw_fd()]).unwrap();
        drop(f);
        let mut r = FrameReader::new();
        assert_eq!(r.recv_frame(&b).unwrap(), b"with a descriptor");
        assert_eq!(r.recv_frame(&b).unwrap().len(), 70_000);
        assert_eq!(names_it(), 0, "a descriptor sent along is open here");
        drop(a);
        assert_eq!(
            r.recv_frame(&b).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let _ = std::fs::remove_file(&path);
    }
}
