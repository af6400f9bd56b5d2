//! Shared-memory descriptor rings between the daemon and a worker: one
//! producer and one consumer in each direction, so that an item goes to
//! the worker, and its completion comes back, without a system call each.
//!
//! **The shared file.** The daemon creates one sealed memfd (its size can
//! neither shrink nor grow: a worker cannot make the daemon's accesses
//! fault) and hands it to the worker at start with the worker's ends of
//! two doorbells ([`Doorbell`]: a datagram socket pair each), one each
//! way. The file holds, in order: a control page per ring, then each
//! ring's data. A control page has the producer's `head`, the
//! consumer's `tail` (each a `u64` count of slots, on a cache line of its
//! own) and the consumer's `waiting` flag.
//!
//! **Records.** A record starts on a [`SLOT`]-byte boundary with an 8-byte
//! header (`u32` length, `u32` kind), its bytes following and running on
//! over the next slots, wrapping at the end of the data. A frame longer
//! than [`MAX_INLINE`] (or one with descriptors) goes over the socket: its
//! ring record is a marker ([`Record::OnSocket`]) that keeps it in order
//! with the frames around it.
//!
//! **Wake-ups.** A consumer that finds its ring empty spins a little
//! ([`WORKER_SPIN`], [`DAEMON_SPIN`]; none on a host of fewer than
//! [`MIN_CPUS_TO_SPIN`] CPUs), then sets `waiting`, looks once more and sleeps in `poll` on
//! its doorbell (and on the socket, whose end of file says the peer is
//! gone). A producer rings the doorbell only when it finds `waiting` set
//! (and clears it): a busy consumer costs its producer no system call, and
//! a burst of records one wake-up. The daemon also nudges its own reader
//! (a doorbell of its own, polled beside the ring's) when an item goes to
//! a worker that had none: the reader wakes while the worker runs the
//! item and spins for its completion ([`DAEMON_DUE_SPIN`]), so that a lone
//! short item's way back costs no wake-up. While a worker holds a deep
//! queue ([`GATHER_DEPTH`] items), the daemon's reader naps instead
//! ([`Consumer::nap`], [`DAEMON_GATHER`]) without setting `waiting`: the
//! worker rings for none of the completions, and the reader takes them in
//! batches.
//!
//! **Hostile peers.** Each side keeps its own index in private memory and
//! reads the other's once per call: a consumer refuses a `head` more than a
//! ring ahead of its `tail`, a header whose record does not lie within what
//! was published or is longer than [`MAX_INLINE`], or an unknown kind; a
//! producer refuses a `tail` behind what it consumed before or past its
//! `head` ([`RingError::Corrupt`]: the daemon then treats the worker as
//! broken). A record is copied out of shared memory into the consumer's
//! own buffer (allocated once, [`MAX_INLINE`] bytes) before it is decoded.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of a slot: records start on slot boundaries.
pub const SLOT: usize = 64;
/// Bytes of a record's header (length, kind).
const HEADER: usize = 8;
/// The longest frame a record carries; longer ones go over the socket.
pub const MAX_INLINE: usize = 64 << 10;
/// Slots of the daemon-to-worker ring (1 MiB: 64 items in flight of up to
/// 16 KiB each, or any burst of small ones).
pub const TO_WORKER_SLOTS: u64 = 16 << 10;
/// Slots of the worker-to-daemon ring (256 KiB; completions are one slot).
pub const TO_DAEMON_SLOTS: u64 = 4 << 10;
/// How long a consumer that found its ring empty keeps looking before it
/// sleeps: about one item's hand-over, so that a stream of items costs
/// no wake-up.
pub const WORKER_SPIN: Duration = Duration::from_micros(30);
/// The daemon's reader spins less: it holds one of the host's cores per
/// busy worker while it spins, and a completion late by a wake-up costs
/// the GPU nothing while items stay queued there.
pub const DAEMON_SPIN: Duration = Duration::from_micros(5);
/// How long the daemon's reader (and its completion thread) keep looking
/// while items are at the worker: a short item's completion (a 100 µs
/// kernel and its hand-over) then costs no wake-up on its way back, which
/// on a virtual machine's idle CPU is tens of µs. At most this much of a
/// core per completion of a longer item.
pub const DAEMON_DUE_SPIN: Duration = Duration::from_micros(200);
/// Items at a worker from which the daemon's reader takes their
/// completions in batches: between looks it naps [`DAEMON_GATHER`] rather
/// than asking the worker to ring for each. With this many queued the GPU
/// has work for far longer than the nap (32 items of 10 µs: 320 µs), so a
/// completion seen later costs it nothing, and a vGPU busy with short items
/// costs the host a wake-up per batch (of each thread a completion passes
/// through), not one per item.
pub const GATHER_DEPTH: usize = 32;
/// The reader's nap while [`GATHER_DEPTH`] items or more are at the worker.
pub const DAEMON_GATHER: Duration = Duration::from_micros(50);
/// Below this many CPUs a consumer does not spin: the thread it waits for
/// needs the CPU more (as the cpu engine's completion thread decides).
pub const MIN_CPUS_TO_SPIN: usize = 4;

/// `spin` where the host has [`MIN_CPUS_TO_SPIN`] CPUs or more, else none.
/// Ask before a worker is confined (it reads the process's CPU set).
pub fn spin_here(spin: Duration) -> Duration {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= MIN_CPUS_TO_SPIN {
        spin
    } else {
        Duration::ZERO
    }
}
const PAGE: usize = 4096;
const KIND_INLINE: u32 = 1;
const KIND_SOCKET: u32 = 2;
/// Offsets in a control page.
const HEAD: usize = 0;
const TAIL: usize = 64;
const WAITING: usize = 128;

/// Which ring of the shared file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToWorker,
    ToDaemon,
}

impl Direction {
    fn slots(self) -> u64 {
        match self {
            Direction::ToWorker => TO_WORKER_SLOTS,
            Direction::ToDaemon => TO_DAEMON_SLOTS,
        }
    }
    fn control(self) -> usize {
        match self {
            Direction::ToWorker => 0,
            Direction::ToDaemon => PAGE,
        }
    }
    fn data(self) -> usize {
        match self {
            Direction::ToWorker => 2 * PAGE,
            Direction::ToDaemon => 2 * PAGE + TO_WORKER_SLOTS as usize * SLOT,
        }
    }
}

/// Bytes of the shared file.
pub const FILE_BYTES: usize = 2 * PAGE + (TO_WORKER_SLOTS + TO_DAEMON_SLOTS) as usize * SLOT;

/// What goes wrong with a ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// The peer's index or a record header is impossible: the peer is
    /// broken or hostile.
    #[error("the peer corrupted the ring: {0}")]
    Corrupt(&'static str),
    /// The frame is empty or longer than [`MAX_INLINE`].
    #[error("a {0}-byte frame does not go in a ring record")]
    TooLong(usize),
    /// The peer did not make room within the time allowed.
    #[error("the ring stayed full")]
    Full,
    #[error("ring set-up: {what}")]
    Setup { what: &'static str, errno: i32 },
}

fn os(what: &'static str) -> RingError {
    RingError::Setup {
        what,
        errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    }
}

/// The shared file, mapped.
pub struct Shared {
    base: *mut u8,
    file: File,
}

// SAFETY: the mapping is shared memory reached only through atomics and
// byte copies; it lives as long as the value.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// A new shared file (the daemon's side), sealed at its size.
    pub fn create() -> Result<Shared, RingError> {
        // SAFETY: a NUL-terminated name; the flags are memfd_create's.
        let fd = unsafe {
            libc::memfd_create(
                c"vgpud-ring".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: a descriptor just created and owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(FILE_BYTES as u64)
            .map_err(|_| os("sizing the ring file"))?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on a memfd made with MFD_ALLOW_SEALING.
        if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
            return Err(os("sealing the ring file"));
        }
        Shared::map(file)
    }

    /// Map a shared file handed over by the daemon (the worker's side); it
    /// must be exactly [`FILE_BYTES`] long.
    pub fn open(file: File) -> Result<Shared, RingError> {
        let len = file
            .metadata()
            .map_err(|_| os("the ring file's size"))?
            .len();
        if len != FILE_BYTES as u64 {
            return Err(RingError::Setup {
                what: "the ring file's size",
                errno: libc::EINVAL,
            });
        }
        Shared::map(file)
    }

    fn map(file: File) -> Result<Shared, RingError> {
        // SAFETY: a fresh shared mapping of the whole file, which cannot
        // shrink (sealed by the daemon); unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("mapping the ring file"));
        }
        Ok(Shared {
            base: p.cast(),
            file,
        })
    }

    /// The file, to hand to the worker.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn word64(&self, dir: Direction, off: usize) -> &AtomicU64 {
        // SAFETY: the offset is within the control page of `dir`, 8-byte
        // aligned (the mapping is page-aligned); shared memory is only
        // ever accessed atomically at these offsets.
        unsafe { &*self.base.add(dir.control() + off).cast::<AtomicU64>() }
    }

    fn word32(&self, dir: Direction, off: usize) -> &AtomicU32 {
        // SAFETY: as in word64.
        unsafe { &*self.base.add(dir.control() + off).cast::<AtomicU32>() }
    }

    /// Copy `src` into `dir`'s data at byte `at` (wrapping).
    fn write_data(&self, dir: Direction, at: usize, src: &[u8]) {
        let cap = dir.slots() as usize * SLOT;
        let first = src.len().min(cap - at);
        // SAFETY: `at < cap` and both pieces lie within the ring's data;
        // the peer may read these bytes at any time, which only gives it
        // what it would get anyway.
        unsafe {
            let d = self.base.add(dir.data());
            std::ptr::copy_nonoverlapping(src.as_ptr(), d.add(at), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), d, src.len() - first);
        }
    }

    /// Copy `dst.len()` bytes of `dir`'s data from byte `at` (wrapping).
    fn read_data(&self, dir: Direction, at: usize, dst: &mut [u8]) {
        let cap = dir.slots() as usize * SLOT;
        let first = dst.len().min(cap - at);
        // SAFETY: as in write_data; whatever the peer writes meanwhile are
        // just bytes, interpreted only after this copy.
        unsafe {
            let d = self.base.add(dir.data());
            std::ptr::copy_nonoverlapping(d.add(at), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(d, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base.cast(), FILE_BYTES);
        }
    }
}

/// One side's end of a doorbell: a pair of connected datagram sockets, an
/// end each side. One side rings (sends a byte), the other sleeps on its end
/// (`poll`) and drains it. Each side's end is an open file of its own, and
/// every send and receive is `MSG_DONTWAIT`: a peer cannot make this side
/// block, as it could with an eventfd both shared (clearing `O_NONBLOCK` on
/// it and filling its counter), and a peer that rings without end holds a
/// drain to a bounded number of reads.
pub struct Doorbell(OwnedFd);

impl Doorbell {
    /// A doorbell's two ends: this process's, and the one for the peer.
    pub fn pair() -> Result<(Doorbell, Doorbell), RingError> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` is a valid out-array of two descriptors.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(os("socketpair"));
        }
        // SAFETY: two descriptors just created, each owned here once.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Doorbell(a), Doorbell(b)))
    }

    /// A doorbell's end handed over at start.
    pub fn from_fd(fd: OwnedFd) -> Doorbell {
        Doorbell(fd)
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Wake the other end's waiter (a full queue already means "wake up").
    pub fn ring(&self) {
        let one = [1u8];
        // SAFETY: sends one byte from a live buffer; a full queue (EAGAIN)
        // already means "wake up".
        unsafe {
            libc::send(self.fd(), one.as_ptr().cast(), 1, libc::MSG_DONTWAIT);
        }
    }

    /// Take what was rung (a bounded number of rings: what is left wakes
    /// the next wait at once).
    pub fn drain(&self) {
        let mut v = [0u8; 64];
        for _ in 0..DRAIN_READS {
            // SAFETY: receives into a live buffer of its length; EAGAIN
            // once nothing is queued.
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    v.as_mut_ptr().cast(),
                    v.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
        }
    }
}

/// The most rings one drain reads (each is a datagram): what is left makes
/// the next wait return at once, and the consumer looks at its ring again.
const DRAIN_READS: usize = 64;

fn slots_for(len: usize) -> u64 {
    (HEADER + len).div_ceil(SLOT) as u64
}

/// The producing end of one ring.
pub struct Producer {
    shm: Arc<Shared>,
    dir: Direction,
    /// The next slot to fill (private: the shared copy is only published).
    head: u64,
    /// The consumer's tail as last read (it only grows).
    tail: u64,
    bell: Arc<Doorbell>,
}

/// What [`Consumer::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// A frame, copied out of the ring: [`Consumer::frame`].
    Inline,
    /// The next frame comes over the socket.
    OnSocket,
}

impl Producer {
    pub fn new(shm: Arc<Shared>, dir: Direction, bell: Arc<Doorbell>) -> Producer {
        let head = shm.word64(dir, HEAD).load(Ordering::Acquire);
        let tail = shm.word64(dir, TAIL).load(Ordering::Acquire);
        Producer {
            shm,
            dir,
            head,
            tail: tail.min(head),
            bell,
        }
    }

    /// Free slots, from the consumer's tail read once now.
    fn free(&mut self) -> Result<u64, RingError> {
        let t = self.shm.word64(self.dir, TAIL).load(Ordering::Acquire);
        if t < self.tail || t > self.head {
            return Err(RingError::Corrupt("the consumer's tail moved out of range"));
        }
        self.tail = t;
        Ok(self.dir.slots() - (self.head - t))
    }

    /// Append `frame` (when `inline`) or a marker for a frame sent on the
    /// socket; `false` when there is no room now. Does not ring.
    pub fn try_push(&mut self, frame: Option<&[u8]>) -> Result<bool, RingError> {
        let (kind, body) = match frame {
            Some(f) if f.is_empty() || f.len() > MAX_INLINE => {
                return Err(RingError::TooLong(f.len()))
            }
            Some(f) => (KIND_INLINE, f),
            None => (KIND_SOCKET, &[][..]),
        };
        let need = slots_for(body.len());
        if self.free()? < need {
            return Ok(false);
        }
        let cap = self.dir.slots();
        let at = (self.head % cap) as usize * SLOT;
        let mut hdr = [0u8; HEADER];
        hdr[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        hdr[4..].copy_from_slice(&kind.to_le_bytes());
        self.shm.write_data(self.dir, at, &hdr);
        let cap_bytes = cap as usize * SLOT;
        self.shm
            .write_data(self.dir, (at + HEADER) % cap_bytes, body);
        self.head += need;
        self.shm
            .word64(self.dir, HEAD)
            .store(self.head, Ordering::Release);
        Ok(true)
    }

    /// Append, waiting up to `limit` for room (the consumer is behind).
    pub fn push(&mut self, frame: Option<&[u8]>, limit: Duration) -> Result<(), RingError> {
        let t = Instant::now();
        let mut tries = 0u32;
        loop {
            if self.try_push(frame)? {
                return Ok(());
            }
            // Make sure the consumer is awake to make room.
            self.bell.ring();
            if t.elapsed() > limit {
                return Err(RingError::Full);
            }
            tries += 1;
            if tries < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Wake the consumer if it sleeps (after one or more pushes).
    pub fn notify(&self) {
        // Pairs with the consumer's fence between setting `waiting` and
        // reading `head`: either it sees the new head, or this sees the flag.
        fence(Ordering::SeqCst);
        let w = self.shm.word32(self.dir, WAITING);
        if w.load(Ordering::Relaxed) != 0 && w.swap(0, Ordering::AcqRel) != 0 {
            self.bell.ring();
        }
    }
}

/// Test-only ways a hostile worker corrupts its ring to the daemon
/// ([`crate::sandbox::Escape::garbage`]): each must make the daemon stop
/// that worker, and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Garbage {
    /// `head` far beyond the ring.
    Head,
    /// A record claiming more bytes than any record has.
    Length,
    /// A record of an unknown kind.
    Kind,
    /// A well-formed record whose bytes are no message.
    Bytes,
    /// `head` moved backwards.
    Backwards,
    /// A frame on the socket that no ring record announced.
    Unannounced,
}

impl Garbage {
    pub const ALL: [Garbage; 6] = [
        Garbage::Head,
        Garbage::Length,
        Garbage::Kind,
        Garbage::Bytes,
        Garbage::Backwards,
        Garbage::Unannounced,
    ];

    /// The memset pattern that asks for it.
    pub const fn pattern(self) -> u32 {
        0x5EC0_0E00
            | match self {
                Garbage::Head => 1,
                Garbage::Length => 2,
                Garbage::Kind => 3,
                Garbage::Bytes => 4,
                Garbage::Backwards => 5,
                Garbage::Unannounced => 6,
            }
    }
}

impl Producer {
    /// Corrupt this ring as `g` says (test-only: a hostile worker; the
    /// socket's part of [`Garbage::Unannounced`] is the sender's).
    pub fn scribble(&mut self, g: Garbage) {
        let cap = self.dir.slots();
        let at = (self.head % cap) as usize * SLOT;
        let hdr = |len: u32, kind: u32| {
            let mut h = [0u8; HEADER];
            h[..4].copy_from_slice(&len.to_le_bytes());
            h[4..].copy_from_slice(&kind.to_le_bytes());
            h
        };
        let head = match g {
            Garbage::Head => self.head + cap * 3 + 17,
            Garbage::Length => {
                self.shm
                    .write_data(self.dir, at, &hdr(u32::MAX - 3, KIND_INLINE));
                self.head + 1
            }
            Garbage::Kind => {
                self.shm.write_data(self.dir, at, &hdr(8, 0x7777));
                self.head + 1
            }
            Garbage::Bytes => {
                let mut rec = [0xEEu8; SLOT];
                rec[..HEADER].copy_from_slice(&hdr(40, KIND_INLINE));
                self.shm.write_data(self.dir, at, &rec);
                self.head + 1
            }
            Garbage::Backwards => self.head.wrapping_sub(5),
            Garbage::Unannounced => return,
        };
        self.shm
            .word64(self.dir, HEAD)
            .store(head, Ordering::Release);
        self.bell.ring();
    }
}

/// What a consumer's wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// Records may be waiting.
    Ring,
    /// The other descriptor (the socket) is readable or closed.
    Other,
    /// This process's own doorbell was rung (and nothing else).
    Nudged,
    /// Nothing within the time given.
    Timeout,
}

/// The consuming end of one ring.
pub struct Consumer {
    shm: Arc<Shared>,
    dir: Direction,
    /// The next slot to read (private).
    tail: u64,
    buf: Vec<u8>,
    /// Bytes of the last inline frame in `buf`.
    len: usize,
    bell: Arc<Doorbell>,
}

impl Consumer {
    pub fn new(shm: Arc<Shared>, dir: Direction, bell: Arc<Doorbell>) -> Consumer {
        let tail = shm.word64(dir, TAIL).load(Ordering::Acquire);
        Consumer {
            shm,
            dir,
            tail,
            buf: vec![0; MAX_INLINE],
            len: 0,
            bell,
        }
    }

    /// Slots published and not read yet (the producer's head read once).
    fn available(&self) -> Result<u64, RingError> {
        let h = self.shm.word64(self.dir, HEAD).load(Ordering::Acquire);
        let n = h.wrapping_sub(self.tail);
        if n > self.dir.slots() {
            return Err(RingError::Corrupt("the producer's head is out of range"));
        }
        Ok(n)
    }

    /// The last inline frame [`Consumer::pop`] copied out.
    pub fn frame(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// The next record, if any (an inline frame is then in
    /// [`Consumer::frame`] until the next call).
    pub fn pop(&mut self) -> Result<Option<Record>, RingError> {
        let avail = self.available()?;
        if avail == 0 {
            return Ok(None);
        }
        let cap = self.dir.slots();
        let at = (self.tail % cap) as usize * SLOT;
        let mut hdr = [0u8; HEADER];
        self.shm.read_data(self.dir, at, &mut hdr);
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let kind = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let rec = match kind {
            KIND_INLINE if len == 0 || len > MAX_INLINE => {
                return Err(RingError::Corrupt("a record's length"))
            }
            KIND_INLINE => Record::Inline,
            KIND_SOCKET if len == 0 => Record::OnSocket,
            _ => return Err(RingError::Corrupt("a record's kind")),
        };
        let need = slots_for(len);
        if need > avail {
            return Err(RingError::Corrupt(
                "a record longer than what was published",
            ));
        }
        let cap_bytes = cap as usize * SLOT;
        let body = self
            .buf
            .get_mut(..len)
            .ok_or(RingError::Corrupt("length"))?;
        self.shm
            .read_data(self.dir, (at + HEADER) % cap_bytes, body);
        self.len = len;
        self.tail += need;
        self.shm
            .word64(self.dir, TAIL)
            .store(self.tail, Ordering::Release);
        Ok(Some(rec))
    }

    /// Wait for records: spin for `spin`, then sleep on the doorbell,
    /// `other` (a socket whose end of file or frame matters) and `nudge`
    /// (this process's own doorbell, rung to make the wait end and look
    /// again: [`Woken::Nudged`]), up to `timeout` (`None`: for ever).
    pub fn wait(
        &self,
        spin: Duration,
        other: Option<RawFd>,
        nudge: Option<&Doorbell>,
        timeout: Option<Duration>,
    ) -> Woken {
        let t = Instant::now();
        while t.elapsed() < spin {
            if self.available().map_or(true, |n| n > 0) {
                return Woken::Ring;
            }
            std::hint::spin_loop();
        }
        let waiting = self.shm.word32(self.dir, WAITING);
        waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.available().map_or(true, |n| n > 0) {
            waiting.store(0, Ordering::Relaxed);
            return Woken::Ring;
        }
        let (n, rev) = sleep_on(
            [Some(self.bell.fd()), other, nudge.map(Doorbell::fd)],
            timeout,
        );
        waiting.store(0, Ordering::Relaxed);
        if rev[0] != 0 {
            self.bell.drain();
        }
        let nudged = rev[2] != 0;
        if let (true, Some(b)) = (nudged, nudge) {
            b.drain();
        }
        if n > 0 && rev[1] != 0 {
            Woken::Other
        } else if nudged && rev[0] == 0 {
            Woken::Nudged
        } else if n != 0 {
            Woken::Ring
        } else {
            Woken::Timeout
        }
    }

    /// Sleep for `span` without asking the producer to ring (`waiting`
    /// stays clear, so its records cost it no system call), unless `other`
    /// or `nudge` wakes it first: a consumer that knows more records are
    /// coming (a deep queue at its peer) takes them in batches, a wake-up
    /// each, not one a record.
    pub fn nap(&self, span: Duration, other: Option<RawFd>, nudge: Option<&Doorbell>) -> Woken {
        let (n, rev) = sleep_on([None, other, nudge.map(Doorbell::fd)], Some(span));
        let nudged = rev[2] != 0;
        if let (true, Some(b)) = (nudged, nudge) {
            b.drain();
        }
        if n > 0 && rev[1] != 0 {
            Woken::Other
        } else if nudged {
            Woken::Nudged
        } else {
            Woken::Timeout
        }
    }
}

/// Sleep until one of `fds` is readable (or closed) or `timeout` passes
/// (`None`: for ever): how many are, and each one's events.
fn sleep_on(fds: [Option<RawFd>; 3], timeout: Option<Duration>) -> (i32, [i16; 3]) {
    let mut p = fds.map(|fd| libc::pollfd {
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    });
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    // SAFETY: three pollfd records in a live array (a negative fd is
    // ignored); the timeout, where given, is a live timespec.
    let n = unsafe {
        libc::ppoll(
            p.as_mut_ptr(),
            3,
            ts.as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec),
            std::ptr::null(),
        )
    };
    (n, p.map(|f| f.revents))
}

/// One side's pair of ends: what it sends and what it receives.
pub struct Ends {
    pub tx: Producer,
    pub rx: Consumer,
}

/// The worker's ends of a shared file and its doorbells (`to_worker` it
/// sleeps on, `to_daemon` it rings).
pub fn worker_ends(shm: Arc<Shared>, to_worker: Doorbell, to_daemon: Doorbell) -> Ends {
    Ends {
        tx: Producer::new(shm.clone(), Direction::ToDaemon, Arc::new(to_daemon)),
        rx: Consumer::new(shm, Direction::ToWorker, Arc::new(to_worker)),
    }
}

/// The daemon's ends.
pub fn daemon_ends(shm: Arc<Shared>, to_worker: Arc<Doorbell>, to_daemon: Arc<Doorbell>) -> Ends {
    Ends {
        tx: Producer::new(shm.clone(), Direction::ToWorker, to_worker),
        rx: Consumer::new(shm, Direction::ToDaemon, to_daemon),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(dir: Direction) -> (Producer, Consumer, Arc<Shared>) {
        let shm = Arc::new(Shared::create().unwrap());
        let (ringer, sleeper) = Doorbell::pair().unwrap();
        (
            Producer::new(shm.clone(), dir, Arc::new(ringer)),
            Consumer::new(shm.clone(), dir, Arc::new(sleeper)),
            shm,
        )
    }

    fn frame(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    #[test]
    fn records_wrap_around_fill_the_ring_and_come_out_in_order() {
        let (mut p, mut c, _shm) = pair(Direction::ToDaemon);
        assert_eq!(c.pop(), Ok(None));
        // Frames of odd sizes, many times around the ring.
        let mut sent: std::collections::VecDeque<Vec<u8>> = Default::default();
        let check = |c: &mut Consumer, want: Vec<u8>| {
            if want.is_empty() {
                assert_eq!(c.pop().unwrap(), Some(Record::OnSocket));
            } else {
                assert_eq!(c.pop().unwrap(), Some(Record::Inline));
                assert_eq!(c.frame(), &want[..]);
            }
        };
        for i in 0..20_000u32 {
            let len = 1 + (i as usize * 97) % 700;
            // Every seventh a marker (an empty frame in `sent`).
            let f = if i % 7 == 0 {
                Vec::new()
            } else {
                frame(i, len)
            };
            let inline = (!f.is_empty()).then_some(&f[..]);
            while !p.try_push(inline).unwrap() {
                check(&mut c, sent.pop_front().unwrap());
            }
            sent.push_back(f);
        }
        while let Some(want) = sent.pop_front() {
            check(&mut c, want);
        }
        assert_eq!(c.pop(), Ok(None));
        assert!(p.head > TO_DAEMON_SLOTS * 10, "wrapped many times");
    }

    #[test]
    fn a_full_ring_refuses_and_frees_room_as_it_is_read() {
        let (mut p, mut c, _shm) = pair(Direction::ToDaemon);
        let f = [9u8; SLOT - HEADER];
        let mut n = 0;
        while p.try_push(Some(&f)).unwrap() {
            n += 1;
        }
        assert_eq!(n, TO_DAEMON_SLOTS, "one slot each, the whole ring");
        assert_eq!(
            p.push(Some(&f), Duration::from_millis(5)),
            Err(RingError::Full)
        );
        assert_eq!(c.pop().unwrap(), Some(Record::Inline));
        assert_eq!(c.frame(), &f[..]);
        assert!(p.try_push(Some(&f)).unwrap());
        assert!(!p.try_push(Some(&f)).unwrap());
        assert_eq!(
            p.try_push(Some(&[0; MAX_INLINE + 1])),
            Err(RingError::TooLong(MAX_INLINE + 1))
        );
        assert_eq!(p.try_push(Some(&[])), Err(RingError::TooLong(0)));
    }

    #[test]
    fn a_sleeping_consumer_is_woken_by_a_push_and_only_then() {
        let (mut p, mut c, _shm) = pair(Direction::ToWorker);
        // Nothing: the wait times out.
        assert_eq!(
            c.wait(Duration::ZERO, None, None, Some(Duration::from_millis(20))),
            Woken::Timeout
        );
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            p.try_push(Some(b"wake")).unwrap();
            p.notify();
            p
        });
        assert_eq!(
            c.wait(Duration::ZERO, None, None, Some(Duration::from_secs(10))),
            Woken::Ring
        );
        assert_eq!(c.pop().unwrap(), Some(Record::Inline));
        assert_eq!(c.frame(), b"wake");
        let p = t.join().unwrap();
        // A notify with nobody waiting rings nothing: the next wait sleeps.
        p.notify();
        assert_eq!(
            c.wait(Duration::ZERO, None, None, Some(Duration::from_millis(20))),
            Woken::Timeout
        );
        // The other descriptor wakes it too.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(
            c.wait(
                Duration::ZERO,
                Some(b.as_raw_fd()),
                None,
                Some(Duration::from_secs(10))
            ),
            Woken::Other
        );
        // So does a nudge, and says so.
        let (mine, peer) = Doorbell::pair().unwrap();
        peer.ring();
        assert_eq!(
            c.wait(
                Duration::ZERO,
                None,
                Some(&mine),
                Some(Duration::from_secs(10))
            ),
            Woken::Nudged
        );
    }

    #[test]
    fn a_napping_consumer_is_not_rung_and_finds_the_records_after_its_nap() {
        let (mut p, mut c, _shm) = pair(Direction::ToDaemon);
        let span = Duration::from_millis(30);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            p.try_push(Some(b"one")).unwrap();
            p.try_push(Some(b"two")).unwrap();
            // The consumer did not ask for a ring: this rings nothing.
            p.notify();
            p
        });
        let t0 = Instant::now();
        assert_eq!(c.nap(span, None, None), Woken::Timeout);
        assert!(
            t0.elapsed() >= span,
            "the nap ended early: {:?}",
            t0.elapsed()
        );
        let _p = t.join().unwrap();
        for want in [&b"one"[..], b"two"] {
            assert_eq!(c.pop().unwrap(), Some(Record::Inline));
            assert_eq!(c.frame(), want);
        }
        // The doorbell stayed silent: a wait now sleeps to its timeout.
        assert_eq!(
            c.wait(Duration::ZERO, None, None, Some(Duration::from_millis(20))),
            Woken::Timeout
        );
        // The socket's end and a nudge cut a nap short.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(a);
        let long = Duration::from_secs(10);
        assert_eq!(c.nap(long, Some(b.as_raw_fd()), None), Woken::Other);
        let (mine, peer) = Doorbell::pair().unwrap();
        peer.ring();
        assert_eq!(c.nap(long, None, Some(&mine)), Woken::Nudged);
    }

    #[test]
    fn the_shared_file_cannot_be_resized_by_the_peer() {
        let shm = Shared::create().unwrap();
        assert!(shm.file().set_len(4096).is_err(), "shrink refused");
        assert!(
            shm.file().set_len(FILE_BYTES as u64 * 2).is_err(),
            "growth refused"
        );
        let dup = shm.file().try_clone().unwrap();
        assert!(Shared::open(dup).is_ok());
    }

    /// The consumer's control page and data, as a hostile producer writes them.
    fn scribble(shm: &Shared, dir: Direction, head: u64, at: usize, bytes: &[u8]) {
        shm.write_data(dir, at % (dir.slots() as usize * SLOT), bytes);
        shm.word64(dir, HEAD).store(head, Ordering::Release);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever a hostile producer writes (its head, headers, bytes),
        /// the consumer returns records that lie within what was published
        /// and at most MAX_INLINE long, or Corrupt: never a panic, never an
        /// index outside the ring.
        #[test]
        fn a_hostile_producer_gets_corrupt_or_bounded_records(
            start in 0u64..(1 << 40),
            writes in proptest::collection::vec(
                (any::<u64>(), 0usize..(TO_DAEMON_SLOTS as usize * SLOT), proptest::collection::vec(any::<u8>(), 0..96)),
                1..24,
            ),
        ) {
            let shm = Arc::new(Shared::create().unwrap());
            let dir = Direction::ToDaemon;
            shm.word64(dir, TAIL).store(start, Ordering::Release);
            shm.word64(dir, HEAD).store(start, Ordering::Release);
            let bell = Arc::new(Doorbell::pair().unwrap().1);
            let mut c = Consumer::new(shm.clone(), dir, bell);
            for (head, at, bytes) in writes {
                // Heads near the tail sometimes, anything else otherwise.
                let head = if head % 3 == 0 { start.wrapping_add(head % 64) } else { head };
                scribble(&shm, dir, head, at, &bytes);
                let before = c.tail;
                match c.pop() {
                    Ok(Some(Record::Inline)) => {
                        let f = c.frame();
                        prop_assert!(!f.is_empty() && f.len() <= MAX_INLINE);
                        let used = c.tail - before;
                        prop_assert!(used <= TO_DAEMON_SLOTS);
                        prop_assert!(head.wrapping_sub(before) >= used);
                    }
                    Ok(Some(Record::OnSocket)) => prop_assert_eq!(c.tail - before, 1),
                    Ok(None) => prop_assert_eq!(c.tail, before),
                    Err(RingError::Corrupt(_)) => prop_assert_eq!(c.tail, before),
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
            }
        }

        /// A hostile consumer's tail (behind, ahead, anything) is refused
        /// by the producer, which never writes past the room it had.
        #[test]
        fn a_hostile_consumer_tail_is_refused(tail in any::<u64>(), pushes in 0usize..40) {
            let (mut p, _c, shm) = pair(Direction::ToWorker);
            for i in 0..pushes {
                p.try_push(Some(&frame(i as u32, 100))).unwrap();
            }
            let head = p.head;
            shm.word64(Direction::ToWorker, TAIL).store(tail, Ordering::Release);
            match p.try_push(Some(b"x")) {
                Ok(_) => prop_assert!(tail <= head),
                Err(RingError::Corrupt(_)) => prop_assert!(tail > head),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
            prop_assert!(p.head - p.tail <= TO_WORKER_SLOTS);
        }
    }
}
