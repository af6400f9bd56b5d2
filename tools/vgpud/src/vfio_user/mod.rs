//! The vfio-user server: one vGPU on one Unix socket.
//!
//! A VMM (QEMU's `vfio-user-pci`) connects, negotiates the protocol
//! version, shares guest RAM as file descriptors (DMA_MAP), discovers the
//! regions and interrupts, and then traps every access of the guest to the
//! vGPU's config space and BARs into REGION_READ/WRITE messages. The server
//! turns each message into a call on the device model's face
//! ([`devmodel::Vgpu`]) and replies.
//!
//! One client is attached at a time; a second one is turned away while the
//! first is connected. When the client goes away — cleanly, by crashing, or
//! by sending something malformed — the vGPU is quiesced: its work is
//! dropped (device reset), its interrupts are disarmed and every DMA region
//! the client mapped is unmapped and unpinned, and the socket waits for the
//! next connection.
//!
//! Why not the rust-vmm `vfio_user` crate's `Server`: it panics on a
//! version message whose capability string lacks its NUL, allocates
//! whatever `count` or `message_size` the client claims, loses message
//! framing after an error (the rest of a rejected message is read as the
//! next header), and serves exactly one connection per `run`. A hostile
//! guest's VMM must not be able to do any of that to the daemon, so the
//! server is ours (see docs/vfio-user.md); the crate's `Client` is used by
//! the tests as the independent peer.

pub mod wire;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::errno::Errno;
use devmodel::vgpu::check_irqs;
use devmodel::Vgpu;
use mmio::bar::{irq_info, region_info, IRQ_INDEX_MSIX, NUM_IRQ_INDEXES, NUM_REGIONS};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use wire::{DmaMap, DmaUnmap, Fields, Header, Opcode, Payload, RegionAccess, SetIrqs, HEADER_SIZE};

/// How long the rest of a message may take once its header arrived, and
/// how long a reply may wait for the client to read.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of one vGPU's socket, for status and metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// A client is connected now.
    pub attached: AtomicBool,
    /// Connections accepted since start.
    pub connections: AtomicU64,
    /// Messages handled.
    pub messages: AtomicU64,
    /// Messages answered with an error, or that ended a connection.
    pub errors: AtomicU64,
}

/// A running server; dropping it stops the thread and removes the socket.
pub struct ServerHandle {
    path: PathBuf,
    stop: EventFd,
    stats: Arc<ServerStats>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serve `vgpu` on a new socket at `path` (which must not exist) from a
/// thread of its own.
pub fn spawn(path: &Path, vgpu: Arc<Vgpu>) -> std::io::Result<ServerHandle> {
    let listener = UnixListener::bind(path)?;
    let stop = EventFd::new(EFD_NONBLOCK)?;
    let stats = Arc::new(ServerStats::default());
    let server = Server {
        listener,
        stop: stop.try_clone()?,
        vgpu,
        stats: stats.clone(),
    };
    let name = format!("vfio-user-{}", server.vgpu.config().name);
    let thread = match devmodel::thread::spawn_data_path(name, move || server.run()) {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(std::io::Error::new(e.source.kind(), e));
        }
    };
    Ok(ServerHandle {
        path: path.to_path_buf(),
        stop,
        stats,
        thread: Some(thread),
    })
}

struct Server {
    listener: UnixListener,
    stop: EventFd,
    vgpu: Arc<Vgpu>,
    stats: Arc<ServerStats>,
}

/// What `poll` saw.
struct Ready {
    stop: bool,
    listener: bool,
    stream: bool,
}

impl Server {
    fn name(&self) -> &str {
        &self.vgpu.config().name
    }

    fn poll(&self, stream: Option<&UnixStream>) -> Ready {
        let mut fds = vec![self.listener.as_raw_fd()];
        fds.extend(stream.map(|s| s.as_raw_fd()));
        match crate::wait::readable(&self.stop, &fds) {
            None => Ready {
                stop: true,
                listener: false,
                stream: false,
            },
            Some(r) => Ready {
                stop: false,
                listener: r[0],
                stream: r.get(1).copied().unwrap_or(false),
            },
        }
    }

    fn run(self) {
        // Every event of the server and of the device work its sessions do
        // carries the vGPU.
        let _span = self.vgpu.span().clone().entered();
        tracing::info!(vgpu = %self.name(), "vfio-user server listening");
        let mut waiting = None;
        loop {
            let stream = match waiting.take() {
                Some(s) => s,
                None => {
                    let ready = self.poll(None);
                    if ready.stop {
                        break;
                    }
                    if !ready.listener {
                        continue;
                    }
                    match self.listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!(vgpu = %self.name(), "accept failed: {e}");
                            continue;
                        }
                    }
                }
            };
            match self.serve(stream) {
                Served::Stop => break,
                Served::Next(next) => waiting = next,
            }
        }
        tracing::info!(vgpu = %self.name(), "vfio-user server stopped");
    }

    /// Serve one client until it leaves or the server is stopped.
    fn serve(&self, mut stream: UnixStream) -> Served {
        let connection = self.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let _span = tracing::info_span!("session", connection).entered();
        self.stats.attached.store(true, Ordering::Relaxed);
        self.vgpu.set_attached(true);
        tracing::info!(vgpu = %self.name(), "client attached");
        // Reads happen only once poll says a message has begun; this bounds
        // how long the rest of it may take. A client that stops reading its
        // replies is likewise given up on rather than blocking the server.
        if let Err(e) = stream
            .set_read_timeout(Some(MESSAGE_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(MESSAGE_TIMEOUT)))
        {
            tracing::warn!(vgpu = %self.name(), "cannot bound message reads and writes: {e}");
        }
        let mut session = Session {
            vgpu: &self.vgpu,
            versioned: false,
            reply_fd: None,
            maps: Vec::new(),
        };
        let outcome = loop {
            let ready = self.poll(Some(&stream));
            if ready.stop {
                break Served::Stop;
            }
            if ready.listener {
                if let Ok((other, _)) = self.listener.accept() {
                    // A VMM that reconnects at once (restarted, or a new
                    // one after a kill) may come before its old
                    // connection's end is read: it is served next.
                    if hung_up(&stream) {
                        break Served::Next(Some(other));
                    }
                    tracing::warn!(vgpu = %self.name(), "second client turned away: the vGPU is attached");
                    drop(other);
                }
            }
            if !ready.stream {
                continue;
            }
            match self.one_message(&mut stream, &mut session) {
                Ok(()) => {}
                Err(End::Closed) => break Served::Next(None),
                Err(End::Violation(why)) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(vgpu = %self.name(), "disconnecting client: {why}");
                    break Served::Next(None);
                }
            }
        };
        drop(stream);
        session.quiesce();
        self.stats.attached.store(false, Ordering::Relaxed);
        self.vgpu.set_attached(false);
        let st = self.vgpu.stats();
        tracing::info!(vgpu = %self.name(), commands = st.commands, gpu_time_ns = st.gpu_time_ns, faults = st.faults, "client detached; vGPU quiesced, guest memory unmapped");
        outcome
    }

    /// Read, handle and answer one message.
    fn one_message(&self, stream: &mut UnixStream, session: &mut Session) -> Result<(), End> {
        let (header, fds) = read_header(stream)?;
        if (header.message_size as usize) < HEADER_SIZE || header.message_size > wire::MAX_MESSAGE {
            return Err(End::Violation(format!(
                "message size {} outside {}..={}",
                header.message_size,
                HEADER_SIZE,
                wire::MAX_MESSAGE
            )));
        }
        if header.flags & wire::FLAG_TYPE_MASK != wire::FLAG_TYPE_COMMAND {
            return Err(End::Violation(format!(
                "message type {:#x} from a client must be a command",
                header.flags & wire::FLAG_TYPE_MASK
            )));
        }
        let mut body = vec![0u8; header.message_size as usize - HEADER_SIZE];
        stream
            .read_exact(&mut body)
            .map_err(|e| End::Violation(format!("truncated message: {e}")))?;
        self.stats.messages.fetch_add(1, Ordering::Relaxed);

        let result = session.handle(&header, &body, fds);
        if let Err(errno) = &result {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(vgpu = %self.name(), command = header.command, errno = errno.name(), "command failed");
        }
        if header.no_reply() {
            return Ok(());
        }
        let (reply, payload) = match result {
            Ok(p) => (header.reply(Ok(p.len())), p),
            Err(errno) => (header.reply(Err(errno.raw())), Vec::new()),
        };
        let mut msg = reply.encode().to_vec();
        msg.extend_from_slice(&payload);
        match session.reply_fd.take() {
            // A mappable region's backing file travels with its info.
            Some(fd) => send_with_fd(stream, &msg, &fd),
            None => stream.write_all(&msg).map_err(|_| End::Closed),
        }
    }
}

enum Served {
    /// The client left; serve the next one (already accepted, if given).
    Next(Option<UnixStream>),
    Stop,
}

/// Return the allocator's free memory to the system (glibc's heaps keep it
/// otherwise).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether the client closed its end of `stream` (what it sent before
/// closing no longer matters: nobody is there to answer).
fn hung_up(stream: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll reads and writes exactly the one pollfd it is given,
    // which lives on this stack frame for the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

enum End {
    /// The client closed the connection.
    Closed,
    /// The client broke the protocol so that framing is lost.
    Violation(String),
}

/// Receive a header and the file descriptors that came with it.
fn read_header(stream: &mut UnixStream) -> Result<(Header, Vec<File>), End> {
    let mut buf = [0u8; HEADER_SIZE];
    let mut raw_fds = [-1 as RawFd; wire::MAX_MSG_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: HEADER_SIZE,
    }];
    // SAFETY: the iovec points at `buf`, which outlives the call, and
    // `raw_fds` has room for MAX_MSG_FDS descriptors.
    let got = unsafe { stream.recv_with_fds(&mut iov, &mut raw_fds) };
    let (n, nfds) = match got {
        Ok(v) => v,
        Err(e) if e.errno() == libc::ECONNRESET => return Err(End::Closed),
        Err(e) => return Err(End::Violation(format!("receive failed: {e}"))),
    };
    // Own every descriptor at once so that all paths close them.
    // SAFETY: recvmsg installed exactly `nfds` new descriptors in this
    // process and nothing else refers to them: each File takes sole
    // ownership of one and closes it on every path.
    let fds: Vec<File> = raw_fds[..nfds]
        .iter()
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Err(End::Closed);
    }
    if n < HEADER_SIZE {
        stream
            .read_exact(&mut buf[n..])
            .map_err(|e| End::Violation(format!("truncated header: {e}")))?;
    }
    Ok((Header::decode(&buf), fds))
}

/// Send `msg` with `fd` attached (SCM_RIGHTS), all of it.
fn send_with_fd(stream: &mut UnixStream, msg: &[u8], fd: &File) -> Result<(), End> {
    let sent = stream
        .send_with_fd(msg, fd.as_raw_fd())
        .map_err(|_| End::Closed)?;
    // The descriptor went with the first bytes; the rest follow plainly.
    stream.write_all(&msg[sent..]).map_err(|_| End::Closed)
}

/// One client's state: what it mapped, whether it said hello.
struct Session<'a> {
    vgpu: &'a Vgpu,
    versioned: bool,
    /// A descriptor to send with the next reply (a mappable region's file).
    reply_fd: Option<File>,
    /// DMA regions the client mapped: (address, size, backed by a file).
    maps: Vec<(u64, u64, bool)>,
}

impl Session<'_> {
    fn handle(&mut self, h: &Header, body: &[u8], fds: Vec<File>) -> Result<Vec<u8>, Errno> {
        let cmd = Opcode::from_u16(h.command).ok_or(Errno::ENOSYS)?;
        if !self.versioned && cmd != Opcode::Version {
            return Err(Errno::EINVAL);
        }
        // Only these commands carry descriptors.
        if !fds.is_empty() && !matches!(cmd, Opcode::DmaMap | Opcode::DeviceSetIrqs) {
            return Err(Errno::EINVAL);
        }
        let einval = |_| Errno::EINVAL;
        match cmd {
            Opcode::Version => self.version(body),
            Opcode::DmaMap => {
                let m = DmaMap::decode(body).map_err(einval)?;
                self.dma_map(m, fds)
            }
            Opcode::DmaUnmap => {
                let u = DmaUnmap::decode(body).map_err(einval)?;
                self.dma_unmap(u)
            }
            Opcode::DeviceGetInfo => {
                let argsz = Fields::new(body).u32().map_err(einval)?;
                if argsz < 16 {
                    return Err(Errno::EINVAL);
                }
                Ok(Payload::default()
                    .u32(16)
                    .u32(VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET)
                    .u32(NUM_REGIONS)
                    .u32(NUM_IRQ_INDEXES)
                    .0)
            }
            Opcode::DeviceGetRegionInfo => {
                let mut f = Fields::new(body);
                let argsz = f.u32().map_err(einval)?;
                let _flags = f.u32().map_err(einval)?;
                let index = f.u32().map_err(einval)?;
                let region = region_info(index).ok_or(Errno::EINVAL)?;
                if argsz < 32 {
                    return Err(Errno::EINVAL);
                }
                let mut flags = if region.rw {
                    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                } else {
                    0
                };
                // Shared memory: the client may map the file sent with the
                // reply (at offset 0) instead of trapping each access.
                if region.mappable {
                    match self.vgpu.doorbell_file() {
                        Ok(f) => {
                            flags |= VFIO_REGION_INFO_FLAG_MMAP;
                            self.reply_fd = Some(f);
                        }
                        Err(e) => {
                            tracing::warn!(vgpu = %self.vgpu.config().name, "doorbell page not offered for mapping: {e}")
                        }
                    }
                }
                Ok(Payload::default()
                    .u32(32)
                    .u32(flags)
                    .u32(index)
                    .u32(0)
                    .u64(region.size)
                    .u64(0)
                    .0)
            }
            Opcode::DeviceGetIrqInfo => {
                let mut f = Fields::new(body);
                let argsz = f.u32().map_err(einval)?;
                let _flags = f.u32().map_err(einval)?;
                let index = f.u32().map_err(einval)?;
                let irq = irq_info(index).ok_or(Errno::EINVAL)?;
                if argsz < 16 {
                    return Err(Errno::EINVAL);
                }
                let flags = if irq.count > 0 {
                    VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE
                } else {
                    VFIO_IRQ_INFO_EVENTFD
                };
                Ok(Payload::default()
                    .u32(16)
                    .u32(flags)
                    .u32(index)
                    .u32(irq.count)
                    .0)
            }
            Opcode::DeviceSetIrqs => {
                let s = SetIrqs::decode(body).map_err(einval)?;
                self.set_irqs(s, fds)
            }
            Opcode::RegionRead => {
                let a = RegionAccess::decode(body).map_err(einval)?;
                if a.count > wire::MAX_DATA_XFER {
                    return Err(Errno::EINVAL);
                }
                let mut p = a.encode();
                let start = p.0.len();
                p.0.resize(start + a.count as usize, 0);
                self.vgpu
                    .region_read(a.region, a.offset, &mut p.0[start..])
                    .map_err(|e| Errno::from(&e))?;
                Ok(p.0)
            }
            Opcode::RegionWrite => {
                let a = RegionAccess::decode(body).map_err(einval)?;
                let data = &body[RegionAccess::SIZE..];
                if data.len() != a.count as usize {
                    return Err(Errno::EINVAL);
                }
                self.vgpu
                    .region_write(a.region, a.offset, data)
                    .map_err(|e| Errno::from(&e))?;
                Ok(a.encode().0)
            }
            Opcode::DeviceReset => {
                self.vgpu.reset();
                Ok(Vec::new())
            }
            // Not offered: no mappable regions with io fds, no DMA through
            // messages, no coalesced writes, no migration.
            Opcode::DeviceGetRegionIoFds
            | Opcode::DmaRead
            | Opcode::DmaWrite
            | Opcode::RegionWriteMulti
            | Opcode::DeviceFeature
            | Opcode::MigDataRead
            | Opcode::MigDataWrite => Err(Errno::ENOTSUP),
        }
    }

    /// VERSION: major 0; the reply's minor is at most the client's, and our
    /// capabilities are the ones every client knows.
    fn version(&mut self, body: &[u8]) -> Result<Vec<u8>, Errno> {
        let mut f = Fields::new(body);
        let major = f.u16().map_err(|_| Errno::EINVAL)?;
        let minor = f.u16().map_err(|_| Errno::EINVAL)?;
        let json = f.rest();
        let json = json.strip_suffix(&[0]).unwrap_or(json);
        if !json.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(json).map_err(|_| Errno::EINVAL)?;
            if !v.is_object() {
                return Err(Errno::EINVAL);
            }
        }
        if major != 0 {
            return Err(Errno::ENOTSUP);
        }
        self.versioned = true;
        let caps = serde_json::json!({"capabilities": {"max_msg_fds": wire::MAX_MSG_FDS, "max_data_xfer_size": wire::MAX_DATA_XFER}});
        let mut p = Payload::default()
            .u16(0)
            .u16(minor.min(1))
            .bytes(caps.to_string().as_bytes())
            .0;
        p.push(0);
        Ok(p)
    }

    fn dma_map(&mut self, m: DmaMap, mut fds: Vec<File>) -> Result<Vec<u8>, Errno> {
        tracing::debug!(vgpu = %self.vgpu.config().name, "DMA_MAP {:#x}+{:#x} offset {:#x} flags {:#x} fds {}", m.address, m.size, m.offset, m.flags, fds.len());
        if fds.len() > 1 || m.size == 0 || m.address.checked_add(m.size).is_none() {
            return Err(Errno::EINVAL);
        }
        if self
            .maps
            .iter()
            .any(|&(a, s, _)| m.address < a + s && a < m.address + m.size)
        {
            return Err(Errno::EEXIST);
        }
        match fds.pop() {
            Some(fd) => {
                self.vgpu.dma_map(m.address, m.size, fd, m.offset, m.flags & wire::DMA_MAP_WRITE != 0).map_err(|e| {
                    tracing::warn!(vgpu = %self.vgpu.config().name, "DMA_MAP {:#x}+{:#x} refused: {e}", m.address, m.size);
                    Errno::from(&e)
                })?;
                self.maps.push((m.address, m.size, true));
            }
            // A region the client cannot share (ROM, VGA holes): the device
            // never reaches it; commands that try fault.
            None => self.maps.push((m.address, m.size, false)),
        }
        Ok(Vec::new())
    }

    fn dma_unmap(&mut self, u: DmaUnmap) -> Result<Vec<u8>, Errno> {
        if u.flags & wire::DMA_UNMAP_ALL != 0 {
            self.unmap_all();
            return Ok(u.encode());
        }
        tracing::debug!(vgpu = %self.vgpu.config().name, "DMA_UNMAP {:#x}+{:#x} flags {:#x}", u.address, u.size, u.flags);
        // The range may reach the top of the 64-bit space (a vIOMMU unmaps
        // it in halves), so compare in 128 bits.
        let (lo, hi) = (u.address as u128, u.address as u128 + u.size as u128);
        let span = |a: u64, s: u64| (a as u128, a as u128 + s as u128);
        // As the kernel's type1 IOMMU does: every mapping inside the range
        // goes, a range with none inside is a no-op, and one that would
        // split a mapping is an error.
        if let Some(&(a, s, _)) = self.maps.iter().find(|&&(a, s, _)| {
            let (ma, mb) = span(a, s);
            ma < hi && lo < mb && (ma < lo || mb > hi)
        }) {
            tracing::debug!(vgpu = %self.vgpu.config().name, "DMA_UNMAP {:#x}+{:#x} would split the mapping {a:#x}+{s:#x}", u.address, u.size);
            return Err(Errno::EINVAL);
        }
        let inside: Vec<_> = self
            .maps
            .iter()
            .copied()
            .filter(|&(a, s, _)| span(a, s).0 >= lo && span(a, s).1 <= hi)
            .collect();
        // One call for every backed map inside: they are disjoint and no
        // other map lies between them.
        let backed = inside.iter().filter(|m| m.2);
        if let (Some(lo), Some(hi)) = (
            backed.clone().map(|m| m.0).min(),
            backed.map(|m| m.0 + m.1).max(),
        ) {
            self.vgpu
                .dma_unmap(lo, hi - lo)
                .map_err(|e| Errno::from(&e))?;
        }
        self.maps.retain(|m| !inside.contains(m));
        Ok(u.encode())
    }

    fn unmap_all(&mut self) {
        if self.maps.drain(..).any(|m| m.2) {
            if let Err(e) = self.vgpu.dma_unmap(0, u64::MAX) {
                tracing::warn!(vgpu = %self.vgpu.config().name, "unmapping the client's memory: {e}");
            }
        }
    }

    /// SET_IRQS: MSI-X eventfds in, out, or all off; other indexes may only
    /// be switched off (the device has no INTx or MSI).
    fn set_irqs(&mut self, s: SetIrqs, fds: Vec<File>) -> Result<Vec<u8>, Errno> {
        let data = s.flags
            & (VFIO_IRQ_SET_DATA_NONE
                | VFIO_IRQ_SET_DATA_EVENTFD
                | vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_BOOL);
        let action = s.flags & !data;
        if irq_info(s.index).is_none() || action != VFIO_IRQ_SET_ACTION_TRIGGER {
            return Err(Errno::EINVAL);
        }
        let disable_all = data == VFIO_IRQ_SET_DATA_NONE && s.count == 0 && s.start == 0;
        // An index without vectors (all but MSI-X) may only be switched off.
        if irq_info(s.index).is_none_or(|i| i.count == 0) {
            return if disable_all && fds.is_empty() {
                Ok(Vec::new())
            } else {
                Err(Errno::EINVAL)
            };
        }
        // The vectors must exist before anything is allocated for them: the
        // count is the client's.
        if !disable_all {
            check_irqs(s.index, s.start, s.count as usize).map_err(|e| Errno::from(&e))?;
        }
        let slots: Vec<Option<File>> = if disable_all {
            Vec::new()
        } else if data == VFIO_IRQ_SET_DATA_EVENTFD && fds.is_empty() {
            (0..s.count).map(|_| None).collect()
        } else if data == VFIO_IRQ_SET_DATA_EVENTFD && fds.len() == s.count as usize {
            fds.into_iter().map(Some).collect()
        } else {
            return Err(Errno::EINVAL);
        };
        self.vgpu
            .set_irqs(s.index, s.start, slots)
            .map_err(|e| Errno::from(&e))?;
        Ok(Vec::new())
    }

    /// The client is gone: drop its work, give back the framebuffer's
    /// memory, disarm interrupts, unmap and unpin its memory.
    fn quiesce(&mut self) {
        self.vgpu.release();
        if let Err(e) = self.vgpu.set_irqs(IRQ_INDEX_MSIX, 0, Vec::new()) {
            tracing::warn!(vgpu = %self.vgpu.config().name, "disarming interrupts: {e}");
        }
        self.unmap_all();
        // Cancelled items hold decoded work until they come back.
        if !self.vgpu.wait_quiet(Duration::from_secs(1)) {
            tracing::debug!(vgpu = %self.vgpu.config().name, "items still at the engine after the client left");
        }
        // The client's decoded work and buffers went back to the allocator
        // (the last of it as cancelled items finish coming back): give
        // what is free back to the system, now and twice more shortly, so
        // that a tenant's flood does not stay in vgpud's memory after it
        // has left.
        trim_heap();
        let _ = devmodel::thread::spawn("heap-trim", || {
            for wait in [200, 1000] {
                std::thread::sleep(Duration::from_millis(wait));
                trim_heap();
            }
        });
    }
}

/// Drive one session with `data` as the client's messages (each cut at its
/// header's size, descriptors none), then end it as a departing client
/// does: the fuzz target's entry (`fuzz/fuzz_targets/vfio_user_session.rs`).
#[cfg(feature = "fuzzing")]
pub fn fuzz_session(vgpu: &Vgpu, data: &[u8]) {
    let mut session = Session {
        vgpu,
        versioned: false,
        reply_fd: None,
        maps: Vec::new(),
    };
    let mut rest = data;
    while rest.len() >= HEADER_SIZE {
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&rest[..HEADER_SIZE]);
        let header = Header::decode(&h);
        let size = (header.message_size as usize).clamp(HEADER_SIZE, rest.len());
        let _ = session.handle(&header, &rest[HEADER_SIZE..size], Vec::new());
        rest = &rest[size..];
    }
    session.quiesce();
}
