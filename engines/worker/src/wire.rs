//! The messages between the daemon and a worker, as typed enums, and their
//! one encoding.
//!
//! A message is a *frame*: its first byte says what it is, the fields
//! follow little-endian. Encoding and decoding know nothing of the
//! transport: the Unix socket ([`crate::socket`]) prefixes each frame with
//! its `u32` length and carries guest RAM files as `SCM_RIGHTS` beside the
//! [`ToWorker::Layout`] that names them; a shared-memory descriptor ring
//! (one producer and one consumer each way) can carry the same frames in
//! its slots. Every frame is at most [`MAX_FRAME`] bytes. The messages of
//! the hot path are small and fixed: a [`Done`] is [`DONE_FRAME`] bytes, a
//! HOST access a few dozen; encoding goes into a buffer the caller keeps
//! ([`ToWorker::encode`], [`ToDaemon::encode`]), and decoding borrows the
//! frame's bytes (VRAM data, JIT text) instead of copying them, so a
//! [`Done`] is sent and received without an allocation.
//!
//! Neither side trusts the other's bytes: [`ToDaemon::decode`] is what the
//! daemon runs on whatever a worker — now running guest-supplied code in
//! its GPU driver — sends, and it fails with [`Error::Malformed`] on any
//! frame that is short, long, of an unknown kind or out of range; it never
//! allocates more than the frame holds. The worker trusts the daemon (its
//! parent, which audited every address against the vGPU's framebuffer and
//! DMA map) but still decodes strictly and checks every operation against
//! its own mappings before it reaches the device.

use std::borrow::Cow;
use std::sync::Arc;

use devmodel::command::{KernelLaunch, ModuleOp, Op, RunningSum, MAX_BATCH_OPS};
use devmodel::gmmu::{Aperture, Extent, KernelMap, KernelRun};
use mmio::devinfo::{DeviceInfo, MAX_ATTRS, NAME_BYTES};

use crate::Error;

/// Largest frame either side sends or accepts: a piece names at most a few
/// thousand extents, a module 4 MiB of text, a kernel map at most 2^18 runs.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest VRAM read or write one HOST access asks for.
pub const MAX_VRAM_ACCESS: u64 = 1 << 20;
/// Largest guest RAM layout: files (descriptors with one message) and
/// windows.
pub const MAX_LAYOUT_FILES: usize = 16;
pub const MAX_LAYOUT_WINDOWS: usize = 4096;
/// Longest detail text of a [`Fatal`].
pub const MAX_DETAIL: usize = 4096;
/// Bytes of an encoded [`ToDaemon::Done`].
pub const DONE_FRAME: usize = 1 + 8 + 8 + 1 + 8;

/// Frame kinds, daemon to worker.
mod to_worker {
    pub const LAYOUT: u8 = 1;
    pub const SUBMIT: u8 = 2;
    pub const READ_VRAM: u8 = 3;
    pub const WRITE_VRAM: u8 = 4;
    pub const CLEAR_VRAM: u8 = 5;
    pub const KERNEL_MAP: u8 = 6;
}

/// Frame kinds, worker to daemon.
mod to_daemon {
    pub const READY: u8 = 1;
    pub const DONE: u8 = 2;
    pub const DATA: u8 = 3;
    pub const FATAL: u8 = 4;
}

/// Operation kinds inside a SUBMIT.
mod kind {
    pub const COPY: u8 = 0;
    pub const MEMSET: u8 = 1;
    pub const SAXPY: u8 = 2;
    pub const GEMM: u8 = 3;
    pub const REDUCE: u8 = 4;
    pub const SPIN: u8 = 5;
    pub const BATCH: u8 = 6;
    pub const MODULE_LOAD: u8 = 7;
    pub const KERNEL: u8 = 8;
    pub const MODULE_UNLOAD: u8 = 9;
    pub const FUNC_INFO: u8 = 10;
    pub const MODULE_GLOBAL: u8 = 11;
}

/// Daemon to worker.
#[derive(Debug, PartialEq)]
pub enum ToWorker<'a> {
    /// The guest RAM layout now; the files' descriptors travel with the
    /// message, in order.
    Layout(Layout),
    /// Run an operation; its outcome comes back as a [`Done`] with `tag`.
    /// (Borrowed when sent: the daemon encodes the item's own operation.)
    Submit { tag: u64, op: Cow<'a, Op> },
    /// Read `len` bytes of VRAM at `offset` (a [`ToDaemon::Data`] answers).
    ReadVram { tag: u64, offset: u64, len: u64 },
    /// Write `data` to VRAM at `offset` (an empty `Data` answers).
    WriteVram {
        tag: u64,
        offset: u64,
        data: &'a [u8],
    },
    /// Zero the framebuffer and drop the guest's modules: the VM went away.
    ClearVram { tag: u64 },
    /// What guest kernels reach from now on; sent before the first launch
    /// that names its id (the launch carries only the id).
    KernelMap(Cow<'a, KernelMap>),
}

/// Worker to daemon.
#[derive(Debug, PartialEq)]
pub enum ToDaemon<'a> {
    /// Started and confined: the first message.
    Ready(Ready),
    /// An operation finished.
    Done(Done),
    /// A VRAM read's bytes, or a write's or clear's acknowledgement.
    Data {
        tag: u64,
        status: Status,
        data: &'a [u8],
    },
    /// The worker cannot go on; it exits after sending this.
    Fatal(Fatal<'a>),
}

/// What a worker offers once started.
#[derive(Clone, Debug, PartialEq)]
pub struct Ready {
    /// Framebuffer bytes it allocated.
    pub vram: u64,
    pub multiprocessors: u32,
    /// Where guest kernels see VA 0 (0: no guest PTX).
    pub ptx_va_base: u64,
    /// The most bytes one piece should move on this engine
    /// (`EngineContext::piece_bytes`).
    pub piece_bytes: u64,
    /// What the device is, as CUDA describes it: the vGPU's device-info
    /// block (ABI 1.3 §2.3). Its name is at most [`NAME_BYTES`] − 1 bytes
    /// and it has at most [`MAX_ATTRS`] attributes (longer ones are cut
    /// when sent, refused when received).
    pub device: DeviceInfo,
}

/// An operation's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Done {
    pub tag: u64,
    /// Engine time the item took, as the worker measured it.
    pub gpu_ns: u64,
    pub status: Status,
    /// A reduce's sum, or the engine's error number for a refused module
    /// or launch (`status` says which).
    pub value: f64,
}

/// Why a worker gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FatalReason {
    /// The engine could not start (no driver, no such device).
    Start = 1,
    /// The framebuffer does not fit in the device's free memory.
    OutOfMemory = 2,
    /// The worker could not confine itself.
    Sandbox = 3,
    /// The device's context is lost (a sticky error).
    DeviceLost = 4,
    /// A message it could not take.
    Protocol = 5,
}

impl std::fmt::Display for FatalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FatalReason::Start => "the engine could not start",
            FatalReason::OutOfMemory => "the framebuffer does not fit in the device's memory",
            FatalReason::Sandbox => "the worker could not confine itself",
            FatalReason::DeviceLost => "the device context is lost",
            FatalReason::Protocol => "a message the worker could not take",
        })
    }
}

/// A worker's last word: why, the engine's error number (the CUDA error,
/// 0 when there is none) and a line of detail for the log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fatal<'a> {
    pub reason: FatalReason,
    pub code: u32,
    pub detail: &'a str,
}

/// An operation's (or access's) outcome, as the worker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// A system-memory address outside the guest RAM the worker maps.
    Unmapped = 1,
    /// A VRAM range outside the framebuffer.
    VramRange = 2,
    /// The engine failed the operation.
    Engine = 3,
    /// The JIT rejected a guest module (the CUDA error in the value).
    Module = 4,
    /// The GPU refused a guest kernel launch (the CUDA error in the value).
    Refused = 5,
    /// The GPU faulted running the item: the worker's context is lost (the
    /// CUDA error in the value).
    Fault = 6,
}

impl Status {
    fn from_u8(v: u8) -> Result<Status, Error> {
        Ok(match v {
            0 => Status::Ok,
            1 => Status::Unmapped,
            2 => Status::VramRange,
            3 => Status::Engine,
            4 => Status::Module,
            5 => Status::Refused,
            6 => Status::Fault,
            _ => return Err(Error::Malformed("status")),
        })
    }
}

/// The guest RAM layout: its files (descriptors sent with the message) and
/// the windows of them at each guest address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub files: Vec<LayoutFile>,
    pub windows: Vec<LayoutWindow>,
}

/// One guest RAM file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutFile {
    pub len: u64,
    pub writable: bool,
}

/// `len` bytes at guest address `gpa`, `offset` bytes into `files[file]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutWindow {
    pub gpa: u64,
    pub len: u64,
    pub file: u32,
    pub offset: u64,
}

impl ToWorker<'_> {
    /// Encode into `out` (cleared first; its capacity is kept for the
    /// next message).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.clear();
        let mut w = Writer(out);
        match self {
            ToWorker::Layout(l) => {
                w.u8(to_worker::LAYOUT).u32(l.files.len() as u32);
                for f in &l.files {
                    w.u64(f.len).u8(f.writable as u8);
                }
                w.u32(l.windows.len() as u32);
                for r in &l.windows {
                    w.u64(r.gpa).u64(r.len).u32(r.file).u64(r.offset);
                }
            }
            ToWorker::Submit { tag, op } => {
                w.u8(to_worker::SUBMIT).u64(*tag).op(op);
            }
            ToWorker::ReadVram { tag, offset, len } => {
                w.u8(to_worker::READ_VRAM).u64(*tag).u64(*offset).u64(*len);
            }
            ToWorker::WriteVram { tag, offset, data } => {
                w.u8(to_worker::WRITE_VRAM)
                    .u64(*tag)
                    .u64(*offset)
                    .bytes(data);
            }
            ToWorker::ClearVram { tag } => {
                w.u8(to_worker::CLEAR_VRAM).u64(*tag);
            }
            ToWorker::KernelMap(map) => {
                w.u8(to_worker::KERNEL_MAP)
                    .u64(map.id)
                    .u32(map.runs.len() as u32);
                for r in &map.runs {
                    w.u64(r.va).u64(r.vram).u64(r.len).u8(r.read_only as u8);
                }
            }
        }
        fits(out.len())
    }

    /// Decode one frame.
    pub fn decode(frame: &[u8]) -> Result<ToWorker<'_>, Error> {
        let mut r = Reader::new(frame);
        let m = match r.u8()? {
            to_worker::LAYOUT => ToWorker::Layout(r.layout()?),
            to_worker::SUBMIT => ToWorker::Submit {
                tag: r.u64()?,
                op: Cow::Owned(r.op(0)?),
            },
            to_worker::READ_VRAM => ToWorker::ReadVram {
                tag: r.u64()?,
                offset: r.u64()?,
                len: r.u64()?,
            },
            to_worker::WRITE_VRAM => ToWorker::WriteVram {
                tag: r.u64()?,
                offset: r.u64()?,
                data: r.bytes()?,
            },
            to_worker::CLEAR_VRAM => ToWorker::ClearVram { tag: r.u64()? },
            to_worker::KERNEL_MAP => ToWorker::KernelMap(Cow::Owned(r.kernel_map()?)),
            _ => return Err(Error::Malformed("message kind")),
        };
        r.end()?;
        Ok(m)
    }
}

impl ToDaemon<'_> {
    /// Encode into `out` (cleared first; its capacity is kept).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.clear();
        let mut w = Writer(out);
        match self {
            ToDaemon::Ready(r) => {
                w.u8(to_daemon::READY)
                    .u64(r.vram)
                    .u32(r.multiprocessors)
                    .u64(r.ptx_va_base)
                    .u64(r.piece_bytes)
                    .device(&r.device);
            }
            ToDaemon::Done(d) => {
                w.u8(to_daemon::DONE)
                    .u64(d.tag)
                    .u64(d.gpu_ns)
                    .u8(d.status as u8)
                    .f64(d.value);
            }
            ToDaemon::Data { tag, status, data } => {
                w.u8(to_daemon::DATA)
                    .u64(*tag)
                    .u8(*status as u8)
                    .bytes(data);
            }
            ToDaemon::Fatal(f) => {
                let mut end = f.detail.len().min(MAX_DETAIL);
                while !f.detail.is_char_boundary(end) {
                    end -= 1;
                }
                w.u8(to_daemon::FATAL)
                    .u8(f.reason as u8)
                    .u32(f.code)
                    .bytes(&f.detail.as_bytes()[..end]);
            }
        }
        fits(out.len())
    }

    /// Decode one frame (any bytes: a worker may be hostile).
    pub fn decode(frame: &[u8]) -> Result<ToDaemon<'_>, Error> {
        let mut r = Reader::new(frame);
        let m = match r.u8()? {
            to_daemon::READY => ToDaemon::Ready(Ready {
                vram: r.u64()?,
                multiprocessors: r.u32()?,
                ptx_va_base: r.u64()?,
                piece_bytes: r.u64()?,
                device: r.device()?,
            }),
            to_daemon::DONE => ToDaemon::Done(Done {
                tag: r.u64()?,
                gpu_ns: r.u64()?,
                status: Status::from_u8(r.u8()?)?,
                value: r.f64()?,
            }),
            to_daemon::DATA => ToDaemon::Data {
                tag: r.u64()?,
                status: Status::from_u8(r.u8()?)?,
                data: r.bytes()?,
            },
            to_daemon::FATAL => {
                let reason = match r.u8()? {
                    1 => FatalReason::Start,
                    2 => FatalReason::OutOfMemory,
                    3 => FatalReason::Sandbox,
                    4 => FatalReason::DeviceLost,
                    5 => FatalReason::Protocol,
                    _ => return Err(Error::Malformed("fatal reason")),
                };
                let code = r.u32()?;
                let detail = r.bytes()?;
                if detail.len() > MAX_DETAIL {
                    return Err(Error::Malformed("fatal detail length"));
                }
                let detail =
                    std::str::from_utf8(detail).map_err(|_| Error::Malformed("fatal detail"))?;
                ToDaemon::Fatal(Fatal {
                    reason,
                    code,
                    detail,
                })
            }
            _ => return Err(Error::Malformed("message kind")),
        };
        r.end()?;
        Ok(m)
    }
}

fn fits(len: usize) -> Result<(), Error> {
    if len > MAX_FRAME {
        Err(Error::FrameTooLarge {
            len,
            max: MAX_FRAME,
        })
    } else {
        Ok(())
    }
}

/// A frame being built, appended to its caller's buffer.
struct Writer<'b>(&'b mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn f32(&mut self, v: f32) -> &mut Self {
        self.u32(v.to_bits())
    }
    fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    /// A device's identity: CUDA version, UUID, name (cut to fit the
    /// block at a character boundary), attributes (at most [`MAX_ATTRS`]).
    fn device(&mut self, d: &DeviceInfo) -> &mut Self {
        let mut end = d.name.len().min(NAME_BYTES - 1);
        while !d.name.is_char_boundary(end) {
            end -= 1;
        }
        self.u32(d.cuda_version);
        self.0.extend_from_slice(&d.uuid);
        self.bytes(&d.name.as_bytes()[..end]);
        let attrs = &d.attributes[..d.attributes.len().min(MAX_ATTRS as usize)];
        self.u32(attrs.len() as u32);
        for a in attrs {
            self.u32(*a as u32);
        }
        self
    }
    fn extents(&mut self, ext: &[Extent]) -> &mut Self {
        self.u32(ext.len() as u32);
        for e in ext {
            self.u8(matches!(e.aperture, Aperture::Vram) as u8)
                .u64(e.addr)
                .u64(e.len);
        }
        self
    }

    /// An operation, as [`Reader::op`] reads it back.
    fn op(&mut self, op: &Op) -> &mut Self {
        match op {
            Op::Copy { src, dst } => self.u8(kind::COPY).extents(src).extents(dst),
            Op::Memset { dst, pattern } => self.u8(kind::MEMSET).extents(dst).u32(*pattern),
            Op::Saxpy { x, y, n, a } => self.u8(kind::SAXPY).extents(x).extents(y).u32(*n).f32(*a),
            Op::Gemm {
                a,
                b,
                c,
                m,
                n,
                k,
                alpha,
                beta,
                span,
            } => self
                .u8(kind::GEMM)
                .extents(a)
                .extents(b)
                .extents(c)
                .u32(*m)
                .u32(*n)
                .u32(*k)
                .f32(*alpha)
                .f32(*beta)
                .u64(span.start)
                .u64(span.end),
            Op::ReduceSum { src, dst, n, sum } => self
                .u8(kind::REDUCE)
                .extents(src)
                .extents(dst)
                .u32(*n)
                .f64(sum.get()),
            Op::Spin { ns, dst, report } => self
                .u8(kind::SPIN)
                .u64(*ns)
                .extents(dst.as_deref().unwrap_or(&[]))
                .u32(*report),
            Op::Batch(ops) => {
                self.u8(kind::BATCH).u32(ops.len() as u32);
                for o in ops {
                    self.op(o);
                }
                self
            }
            Op::ModuleLoad { slot, text, log } => self
                .u8(kind::MODULE_LOAD)
                .u32(*slot)
                .bytes(text)
                .extents(log),
            Op::Kernel(k) => {
                self.u8(kind::KERNEL).u32(k.slot).bytes(k.func.as_bytes());
                for v in k.grid.iter().chain(&k.block) {
                    self.u32(*v);
                }
                self.u32(k.shared).bytes(&k.params).u64(k.map.id)
            }
            Op::Module(ModuleOp::Unload { handle }) => self.u8(kind::MODULE_UNLOAD).u32(*handle),
            Op::Module(ModuleOp::FuncInfo {
                handle,
                name,
                answer,
            }) => self
                .u8(kind::FUNC_INFO)
                .u32(*handle)
                .bytes(name.as_bytes())
                .extents(answer),
            Op::Module(ModuleOp::Global {
                handle,
                name,
                answer,
            }) => self
                .u8(kind::MODULE_GLOBAL)
                .u32(*handle)
                .bytes(name.as_bytes())
                .extents(answer),
        }
    }
}

/// A frame being read; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.b.len() < n {
            return Err(Error::Malformed("short"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    /// The frame must end here.
    fn end(&self) -> Result<(), Error> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed("trailing bytes"))
        }
    }
    fn u8(&mut self) -> Result<u8, Error> {
        let [v] = self.take(1)? else {
            return Err(Error::Malformed("short"));
        };
        Ok(*v)
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn f32(&mut self) -> Result<f32, Error> {
        Ok(f32::from_bits(self.u32()?))
    }
    fn f64(&mut self) -> Result<f64, Error> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::Malformed("flag")),
        }
    }
    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::try_from(self.u64()?).map_err(|_| Error::Malformed("length"))?;
        self.take(n)
    }
    /// A count of items of `size` bytes each that must all be in the
    /// frame (nothing is allocated for a count the frame cannot hold).
    fn count(&mut self, size: usize, max: usize) -> Result<usize, Error> {
        let n = self.u32()? as usize;
        if n > max || n > self.b.len() / size {
            return Err(Error::Malformed("count"));
        }
        Ok(n)
    }
    /// A device's identity as [`Writer::device`] wrote it; a name or an
    /// attribute table past the block's room is malformed.
    fn device(&mut self) -> Result<DeviceInfo, Error> {
        let cuda_version = self.u32()?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(self.take(16)?);
        let name = self.bytes()?;
        if name.len() >= NAME_BYTES {
            return Err(Error::Malformed("device name length"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| Error::Malformed("device name"))?
            .to_string();
        let n = self.count(4, MAX_ATTRS as usize)?;
        let attributes = (0..n)
            .map(|_| Ok(self.u32()? as i32))
            .collect::<Result<_, Error>>()?;
        Ok(DeviceInfo {
            cuda_version,
            uuid,
            name,
            attributes,
        })
    }
    fn extents(&mut self) -> Result<Vec<Extent>, Error> {
        let n = self.count(17, usize::MAX)?;
        (0..n)
            .map(|_| {
                let aperture = if self.bool()? {
                    Aperture::Vram
                } else {
                    Aperture::Sysmem
                };
                Ok(Extent {
                    aperture,
                    addr: self.u64()?,
                    len: self.u64()?,
                })
            })
            .collect()
    }

    fn layout(&mut self) -> Result<Layout, Error> {
        let n = self.count(9, MAX_LAYOUT_FILES)?;
        let files = (0..n)
            .map(|_| {
                Ok(LayoutFile {
                    len: self.u64()?,
                    writable: self.bool()?,
                })
            })
            .collect::<Result<_, Error>>()?;
        let m = self.count(28, MAX_LAYOUT_WINDOWS)?;
        let windows = (0..m)
            .map(|_| {
                Ok(LayoutWindow {
                    gpa: self.u64()?,
                    len: self.u64()?,
                    file: self.u32()?,
                    offset: self.u64()?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Layout { files, windows })
    }

    /// An operation written by [`Writer::op`]; `depth` 1 inside a batch.
    fn op(&mut self, depth: u32) -> Result<Op, Error> {
        Ok(match self.u8()? {
            kind::COPY => Op::Copy {
                src: self.extents()?,
                dst: self.extents()?,
            },
            kind::MEMSET => Op::Memset {
                dst: self.extents()?,
                pattern: self.u32()?,
            },
            kind::SAXPY => Op::Saxpy {
                x: self.extents()?,
                y: self.extents()?,
                n: self.u32()?,
                a: self.f32()?,
            },
            kind::GEMM => Op::Gemm {
                a: self.extents()?.into(),
                b: self.extents()?.into(),
                c: self.extents()?.into(),
                m: self.u32()?,
                n: self.u32()?,
                k: self.u32()?,
                alpha: self.f32()?,
                beta: self.f32()?,
                span: self.u64()?..self.u64()?,
            },
            kind::REDUCE => {
                let (src, dst, n) = (self.extents()?, self.extents()?, self.u32()?);
                let sum = RunningSum::default();
                sum.set(self.f64()?);
                Op::ReduceSum { src, dst, n, sum }
            }
            kind::SPIN => {
                let ns = self.u64()?;
                let dst = self.extents()?;
                Op::Spin {
                    ns,
                    dst: (!dst.is_empty()).then_some(dst),
                    report: self.u32()?,
                }
            }
            kind::BATCH if depth == 0 => {
                let n = self.count(1, MAX_BATCH_OPS)?;
                Op::Batch((0..n).map(|_| self.op(1)).collect::<Result<Vec<_>, _>>()?)
            }
            kind::BATCH => return Err(Error::Malformed("nested batch")),
            kind::MODULE_LOAD => Op::ModuleLoad {
                slot: self.u32()?,
                text: Arc::from(self.bytes()?),
                log: self.extents()?,
            },
            kind::KERNEL => {
                let slot = self.u32()?;
                let func = std::str::from_utf8(self.bytes()?)
                    .map_err(|_| Error::Malformed("function name"))?
                    .to_string();
                let mut dims = [0u32; 6];
                for d in &mut dims {
                    *d = self.u32()?;
                }
                let shared = self.u32()?;
                let params = self.bytes()?.to_vec();
                // The runs came in a KernelMap message before.
                let map = Arc::new(KernelMap {
                    id: self.u64()?,
                    runs: Vec::new(),
                });
                Op::Kernel(Box::new(KernelLaunch {
                    slot,
                    func,
                    grid: [dims[0], dims[1], dims[2]],
                    block: [dims[3], dims[4], dims[5]],
                    shared,
                    params,
                    map,
                }))
            }
            kind::MODULE_UNLOAD => Op::Module(ModuleOp::Unload {
                handle: self.u32()?,
            }),
            k @ (kind::FUNC_INFO | kind::MODULE_GLOBAL) => {
                let handle = self.u32()?;
                let name = String::from_utf8(self.bytes()?.to_vec())
                    .map_err(|_| Error::Malformed("symbol name"))?;
                let answer = self.extents()?;
                Op::Module(if k == kind::FUNC_INFO {
                    ModuleOp::FuncInfo {
                        handle,
                        name,
                        answer,
                    }
                } else {
                    ModuleOp::Global {
                        handle,
                        name,
                        answer,
                    }
                })
            }
            _ => return Err(Error::Malformed("operation kind")),
        })
    }

    fn kernel_map(&mut self) -> Result<KernelMap, Error> {
        let id = self.u64()?;
        let n = self.count(25, usize::MAX)?;
        let runs = (0..n)
            .map(|_| {
                Ok(KernelRun {
                    va: self.u64()?,
                    vram: self.u64()?,
                    len: self.u64()?,
                    read_only: self.bool()?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(KernelMap { id, runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(a: u64, l: u64) -> Extent {
        Extent {
            aperture: Aperture::Vram,
            addr: a,
            len: l,
        }
    }

    fn ops() -> Vec<Op> {
        vec![
            Op::Copy {
                src: vec![e(0, 8)],
                dst: vec![Extent {
                    aperture: Aperture::Sysmem,
                    addr: 0x8000_0000,
                    len: 8,
                }],
            },
            Op::Memset {
                dst: vec![e(16, 4), e(64, 12)],
                pattern: 0xA5A5_0F0F,
            },
            Op::Gemm {
                a: vec![e(0, 16)].into(),
                b: vec![e(16, 16)].into(),
                c: vec![e(32, 16)].into(),
                m: 2,
                n: 2,
                k: 2,
                alpha: 1.5,
                beta: -0.5,
                span: 1..3,
            },
            Op::Spin {
                ns: 5_000,
                dst: Some(vec![e(4, 4)]),
                report: 5,
            },
            Op::Batch(vec![Op::Saxpy {
                x: vec![e(0, 16)],
                y: vec![e(16, 16)],
                n: 4,
                a: 2.0,
            }]),
            Op::ModuleLoad {
                slot: 3,
                text: Arc::from(&b".version 8.0\n"[..]),
                log: vec![e(4096, 256)],
            },
            Op::Kernel(Box::new(KernelLaunch {
                slot: 1,
                func: "vec_add".into(),
                grid: [4096, 2, 1],
                block: [256, 1, 1],
                shared: 48 << 10,
                params: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
                map: Arc::new(KernelMap {
                    id: 77,
                    runs: Vec::new(),
                }),
            })),
            Op::Module(ModuleOp::Unload { handle: 4095 }),
            Op::Module(ModuleOp::FuncInfo {
                handle: 9,
                name: "_Z6kernelPf".into(),
                answer: vec![e(8192, 8320)],
            }),
            Op::Module(ModuleOp::Global {
                handle: 10,
                name: "counter".into(),
                answer: vec![e(0, 24)],
            }),
        ]
    }

    /// Every message to a worker, and every cut of its frame.
    #[test]
    fn messages_to_a_worker_survive_the_wire_and_cuts_are_errors() {
        let mut msgs: Vec<ToWorker> = ops()
            .into_iter()
            .enumerate()
            .map(|(i, op)| ToWorker::Submit {
                tag: i as u64,
                op: Cow::Owned(op),
            })
            .collect();
        msgs.extend([
            ToWorker::Layout(Layout {
                files: vec![LayoutFile {
                    len: 1 << 30,
                    writable: true,
                }],
                windows: vec![LayoutWindow {
                    gpa: 0,
                    len: 1 << 20,
                    file: 0,
                    offset: 4096,
                }],
            }),
            ToWorker::ReadVram {
                tag: 9,
                offset: 64,
                len: 8,
            },
            ToWorker::WriteVram {
                tag: 10,
                offset: 64,
                data: &[1, 2, 3],
            },
            ToWorker::ClearVram { tag: 11 },
            ToWorker::KernelMap(Cow::Owned(KernelMap {
                id: 5,
                runs: vec![KernelRun {
                    va: 1 << 21,
                    vram: 0,
                    len: 4 << 21,
                    read_only: true,
                }],
            })),
        ]);
        let mut buf = Vec::new();
        for m in &msgs {
            m.encode(&mut buf).unwrap();
            assert_eq!(&ToWorker::decode(&buf).unwrap(), m);
            for cut in 0..buf.len() {
                assert!(ToWorker::decode(&buf[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut long = buf.clone();
            long.push(0);
            assert!(ToWorker::decode(&long).is_err(), "trailing byte");
        }
        // A batch inside a batch, an unknown kind, a flag that is not 0/1.
        let nested = [
            to_worker::SUBMIT,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            kind::BATCH,
            1,
            0,
            0,
            0,
            kind::BATCH,
        ];
        assert!(matches!(
            ToWorker::decode(&nested),
            Err(Error::Malformed("nested batch"))
        ));
        assert!(ToWorker::decode(&[99]).is_err());
        // A count the frame cannot hold allocates nothing and fails.
        let huge = [
            to_worker::KERNEL_MAP,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0x7F,
        ];
        assert!(matches!(
            ToWorker::decode(&huge),
            Err(Error::Malformed("count"))
        ));
    }

    /// Every message to the daemon, and every cut of its frame.
    #[test]
    fn messages_to_the_daemon_survive_the_wire_and_cuts_are_errors() {
        let msgs = [
            ToDaemon::Ready(Ready {
                vram: 1 << 30,
                multiprocessors: 132,
                ptx_va_base: 0x2000_0000_0000,
                piece_bytes: 32 << 20,
                device: DeviceInfo {
                    cuda_version: 13000,
                    uuid: *b"0123456789abcdef",
                    name: "NVIDIA H100 80GB HBM3".into(),
                    attributes: vec![0, 1024, 1024, 64, -1],
                },
            }),
            ToDaemon::Done(Done {
                tag: 7,
                gpu_ns: 12_345,
                status: Status::Fault,
                value: 700.0,
            }),
            ToDaemon::Data {
                tag: 8,
                status: Status::Ok,
                data: &[9; 16],
            },
            ToDaemon::Fatal(Fatal {
                reason: FatalReason::OutOfMemory,
                code: 2,
                detail: "cuMemCreate (framebuffer)",
            }),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            m.encode(&mut buf).unwrap();
            assert_eq!(&ToDaemon::decode(&buf).unwrap(), m);
            for cut in 0..buf.len() {
                assert!(ToDaemon::decode(&buf[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
        // A Done is its fixed size.
        msgs[1].encode(&mut buf).unwrap();
        assert_eq!(buf.len(), DONE_FRAME);
        // An unknown status, reason, or text that is not UTF-8.
        buf[17] = 7;
        assert!(matches!(
            ToDaemon::decode(&buf),
            Err(Error::Malformed("status"))
        ));
        let bad_text = [
            to_daemon::FATAL,
            1,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xFF,
        ];
        assert!(ToDaemon::decode(&bad_text).is_err());
        let bad_reason = [to_daemon::FATAL, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(ToDaemon::decode(&bad_reason).is_err());
        // A long detail is cut (at a character boundary) when sent.
        let long = "é".repeat(MAX_DETAIL);
        ToDaemon::Fatal(Fatal {
            reason: FatalReason::Start,
            code: 0,
            detail: &long,
        })
        .encode(&mut buf)
        .unwrap();
        let ToDaemon::Fatal(f) = ToDaemon::decode(&buf).unwrap() else {
            panic!("not a fatal");
        };
        assert_eq!(f.detail.len(), MAX_DETAIL);
    }

    /// A device identity past the block's room is cut when sent and
    /// refused when received (a worker's bytes are not trusted).
    #[test]
    fn a_ready_device_is_bounded_each_way() {
        let ready = |name: String, attributes: Vec<i32>| {
            ToDaemon::Ready(Ready {
                vram: 0,
                multiprocessors: 1,
                ptx_va_base: 0,
                piece_bytes: 1,
                device: DeviceInfo {
                    cuda_version: 0,
                    uuid: [7; 16],
                    name,
                    attributes,
                },
            })
        };
        let mut buf = Vec::new();
        ready("é".repeat(200), (0..600).collect())
            .encode(&mut buf)
            .unwrap();
        let ToDaemon::Ready(r) = ToDaemon::decode(&buf).unwrap() else {
            panic!("not a Ready");
        };
        assert_eq!(
            r.device.name,
            "é".repeat(127),
            "cut at a character boundary"
        );
        assert_eq!(
            r.device.attributes,
            (0..MAX_ATTRS as i32).collect::<Vec<_>>()
        );
        assert_eq!(r.device.uuid, [7; 16]);
        // Hand-made frames: a 255-byte name is the most; 256 bytes, a name
        // that is not UTF-8, or one attribute too many are malformed.
        let frame = |name: &[u8], attrs: u32| {
            let mut f = vec![to_daemon::READY];
            f.extend_from_slice(&[0; 8 + 4 + 8 + 8 + 4 + 16]);
            f.extend_from_slice(&(name.len() as u64).to_le_bytes());
            f.extend_from_slice(name);
            f.extend_from_slice(&attrs.to_le_bytes());
            f.extend((0..attrs).flat_map(|a| a.to_le_bytes()));
            f
        };
        assert!(ToDaemon::decode(&frame(&[b'a'; NAME_BYTES - 1], MAX_ATTRS)).is_ok());
        assert!(matches!(
            ToDaemon::decode(&frame(&[b'a'; NAME_BYTES], 0)),
            Err(Error::Malformed("device name length"))
        ));
        assert!(matches!(
            ToDaemon::decode(&frame(&[0xFF], 0)),
            Err(Error::Malformed("device name"))
        ));
        assert!(matches!(
            ToDaemon::decode(&frame(b"x", MAX_ATTRS + 1)),
            Err(Error::Malformed("count"))
        ));
    }

    #[test]
    fn frames_past_the_limit_are_refused_when_encoded() {
        let data = vec![0u8; MAX_FRAME];
        let m = ToWorker::WriteVram {
            tag: 1,
            offset: 0,
            data: &data,
        };
        assert!(matches!(
            m.encode(&mut Vec::new()),
            Err(Error::FrameTooLarge { .. })
        ));
    }
}
