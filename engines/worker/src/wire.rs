//! The messages between the daemon and a vGPU's CUDA worker process, on a
//! Unix stream socket: each a little-endian `u32` length, then the body,
//! whose first byte says what it is. Descriptors (guest RAM files) travel
//! as `SCM_RIGHTS` with the message that names them.
//!
//! The worker trusts the daemon (its parent, which audited every address
//! against the vGPU's framebuffer and DMA map) but not the GPU: every
//! operation it is handed is checked again against its own mappings before
//! it reaches the device, so a daemon bug faults the item, not the GPU.

use std::sync::Arc;

use devmodel::command::{KernelLaunch, ModuleOp, Op, RunningSum};
use devmodel::gmmu::{Aperture, Extent, KernelMap, KernelRun};

/// Largest message either side accepts (a batch of a piece's extents is
/// far below it).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Daemon to worker.
pub mod to_worker {
    /// The guest RAM layout: files (their descriptors attached, in order)
    /// and the windows of them at each guest address.
    pub const LAYOUT: u8 = 1;
    /// Run an operation: tag, then the operation.
    pub const SUBMIT: u8 = 2;
    /// Read VRAM: tag, offset, length.
    pub const READ_VRAM: u8 = 3;
    /// Write VRAM: tag, offset, length, bytes.
    pub const WRITE_VRAM: u8 = 4;
    /// Zero the framebuffer (the VM went away): tag.
    pub const CLEAR_VRAM: u8 = 5;
    /// What guest kernels reach from now on ([`super::KernelMap`]): id,
    /// then the runs. Sent before the first launch that names the id.
    pub const KERNEL_MAP: u8 = 6;
}

/// Worker to daemon.
pub mod to_daemon {
    /// Started: framebuffer bytes, multiprocessors, the GPU address of
    /// guest kernels' VA 0 (0: no guest PTX).
    pub const READY: u8 = 1;
    /// An operation finished: tag, GPU time (ns), status, value (f64).
    pub const DONE: u8 = 2;
    /// A VRAM read's bytes, or a write's or clear's acknowledgement: tag,
    /// status, bytes.
    pub const DATA: u8 = 3;
    /// The worker cannot go on (a sticky CUDA error, a start failure):
    /// the reason, as text; it exits after sending it.
    pub const FATAL: u8 = 4;
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
    /// The GPU failed the operation.
    Engine = 3,
    /// The JIT rejected a guest module (the CUDA error in the value).
    Module = 4,
    /// The GPU refused a guest kernel launch (the CUDA error in the value).
    Refused = 5,
    /// The GPU faulted running the item: the worker's context is lost.
    Fault = 6,
}

impl Status {
    pub fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Ok,
            1 => Status::Unmapped,
            2 => Status::VramRange,
            4 => Status::Module,
            5 => Status::Refused,
            6 => Status::Fault,
            _ => Status::Engine,
        }
    }
}

/// Operation kinds on the wire.
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

/// A message body being built.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn new(what: u8) -> Writer {
        Writer(vec![what])
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.u32(v.to_bits())
    }
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub fn extents(&mut self, ext: &[Extent]) -> &mut Self {
        self.u32(ext.len() as u32);
        for e in ext {
            self.u8(matches!(e.aperture, Aperture::Vram) as u8)
                .u64(e.addr)
                .u64(e.len);
        }
        self
    }

    /// An operation, as [`Reader::op`] reads it back.
    pub fn op(&mut self, op: &Op) -> &mut Self {
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

    /// A [`to_worker::KERNEL_MAP`] body.
    pub fn kernel_map(&mut self, map: &KernelMap) -> &mut Self {
        self.u64(map.id).u32(map.runs.len() as u32);
        for r in &map.runs {
            self.u64(r.va).u64(r.vram).u64(r.len).u8(r.read_only as u8);
        }
        self
    }
}

/// A message that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed worker message: {0}")]
pub struct Malformed(pub &'static str);

/// A message body being read.
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.b.len() < n {
            return Err(Malformed("short"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn f32(&mut self) -> Result<f32, Malformed> {
        Ok(f32::from_bits(self.u32()?))
    }
    pub fn f64(&mut self) -> Result<f64, Malformed> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(self.u64()?).map_err(|_| Malformed("length"))?;
        self.take(n)
    }
    pub fn rest(&self) -> &'a [u8] {
        self.b
    }
    pub fn extents(&mut self) -> Result<Vec<Extent>, Malformed> {
        let n = self.u32()? as usize;
        if n > self.b.len() / 17 {
            return Err(Malformed("extent count"));
        }
        (0..n)
            .map(|_| {
                let aperture = if self.u8()? != 0 {
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

    /// An operation written by [`Writer::op`].
    pub fn op(&mut self) -> Result<Op, Malformed> {
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
            kind::BATCH => {
                let n = self.u32()? as usize;
                if n > devmodel::command::MAX_BATCH_OPS {
                    return Err(Malformed("batch size"));
                }
                let ops = (0..n).map(|_| self.op()).collect::<Result<Vec<_>, _>>()?;
                if ops.iter().any(|o| matches!(o, Op::Batch(_))) {
                    return Err(Malformed("nested batch"));
                }
                Op::Batch(ops)
            }
            kind::MODULE_LOAD => Op::ModuleLoad {
                slot: self.u32()?,
                text: Arc::from(self.bytes()?),
                log: self.extents()?,
            },
            kind::KERNEL => {
                let slot = self.u32()?;
                let func = String::from_utf8(self.bytes()?.to_vec())
                    .map_err(|_| Malformed("function name"))?;
                let mut dims = [0u32; 6];
                for d in &mut dims {
                    *d = self.u32()?;
                }
                let shared = self.u32()?;
                let params = self.bytes()?.to_vec();
                // The runs came in a KERNEL_MAP message before.
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
                    .map_err(|_| Malformed("symbol name"))?;
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
            _ => return Err(Malformed("operation kind")),
        })
    }

    /// A map written by [`Writer::kernel_map`].
    pub fn kernel_map(&mut self) -> Result<KernelMap, Malformed> {
        let id = self.u64()?;
        let n = self.u32()? as usize;
        if n > self.b.len() / 25 {
            return Err(Malformed("run count"));
        }
        let runs = (0..n)
            .map(|_| {
                Ok(KernelRun {
                    va: self.u64()?,
                    vram: self.u64()?,
                    len: self.u64()?,
                    read_only: self.u8()? != 0,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(KernelMap { id, runs })
    }
}

/// Send one message (`body`, with `fds` attached).
pub fn send(
    s: &std::os::unix::net::UnixStream,
    body: &[u8],
    fds: &[std::os::fd::RawFd],
) -> std::io::Result<()> {
    use std::io::Write;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    let mut s = s;
    if fds.is_empty() {
        return s.write_all(&frame);
    }
    // The descriptors go with the first bytes; the rest follows plainly.
    let sent = s
        .send_with_fds(&[&frame[..]], fds)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    s.write_all(&frame[sent..])
}

/// Receive one message: its body, and the descriptors that came with it.
pub fn recv(s: &std::os::unix::net::UnixStream) -> std::io::Result<(Vec<u8>, Vec<std::fs::File>)> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut len = [0u8; 4];
    let mut fds = [-1i32; 16];
    let mut io = [libc::iovec {
        iov_base: len.as_mut_ptr().cast(),
        iov_len: 4,
    }];
    // SAFETY: the iovec points at `len`, which outlives the call, and
    // `fds` has room for the 16 descriptors recvmsg may install.
    let (got, nfds) = unsafe { s.recv_with_fds(&mut io, &mut fds) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: the first `nfds` entries are descriptors this process just
    // received and owns; each is wrapped once.
    let files: Vec<std::fs::File> = fds[..nfds]
        .iter()
        .map(|&fd| unsafe { std::fs::File::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut s = s;
    if got < 4 {
        s.read_exact(&mut len[got..])?;
    }
    let n = u32::from_le_bytes(len) as usize;
    if n == 0 || n > MAX_MESSAGE {
        return Err(std::io::Error::other("worker message size"));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    Ok((body, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_survive_the_wire() {
        let e = |a, l| Extent {
            aperture: Aperture::Vram,
            addr: a,
            len: l,
        };
        let ops = vec![
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
        ];
        for op in ops {
            let mut w = Writer::default();
            w.op(&op);
            let back = Reader::new(&w.0).op().unwrap();
            assert_eq!(back, op);
        }
        // Truncated or nonsense bodies are errors, not panics.
        let mut w = Writer::default();
        w.op(&Op::Copy {
            src: vec![e(0, 8)],
            dst: vec![e(8, 8)],
        });
        for cut in 0..w.0.len() {
            assert!(Reader::new(&w.0[..cut]).op().is_err());
        }
        assert!(Reader::new(&[99]).op().is_err());
        // Kernel maps too.
        let map = KernelMap {
            id: 5,
            runs: vec![KernelRun {
                va: 1 << 21,
                vram: 0,
                len: 4 << 21,
                read_only: true,
            }],
        };
        let mut w = Writer::default();
        w.kernel_map(&map);
        assert_eq!(Reader::new(&w.0).kernel_map().unwrap(), map);
        for cut in 0..w.0.len() {
            assert!(Reader::new(&w.0[..cut]).kernel_map().is_err());
        }
        assert!(Reader::new(&[0, 0xFF, 0xFF, 0xFF, 0x7F]).op().is_err());
    }
}
