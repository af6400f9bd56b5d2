//! Pushbuffer segments: method headers, method dispatch and the audit.
//!
//! A GPFIFO entry points at a segment of 32-bit words. Each method header
//! (NVIDIA Fermi-style) names an opcode, a subchannel, a method address and
//! a count:
//!
//! ```text
//!  31   29 28          16 15   13 12            0
//! [opcode ][ count / imm ][ subch ][ method >> 2  ]
//! ```
//! * `1` INCR: `count` data words to method, method+4, …
//! * `3` NONINCR: `count` data words all to method
//! * `4` IMMD: one write of the 13-bit immediate `count` field, no data words
//! * `5` ONE_INC: the first data word to method, the rest to method+4
//! * `7` END_SEGMENT: the rest of the segment is ignored
//! * `0`, `2`, `6`: malformed
//!
//! The whole segment is decoded and every address it names is translated
//! and checked *before* any of it executes: a bad segment faults its channel
//! with nothing of it done.

use std::sync::Arc;

use mmio::regs::ErrorCode;

use crate::classes::{self, set_hi, set_lo, Class, MethodState};
use crate::command::{
    AcquireCond, Command, KernelLaunch, ModuleOp, Op, MAX_COMMAND_BYTES, MAX_GEMM_DIM, MAX_PARAMS,
    MAX_SPIN_NS,
};
use crate::gmmu::{Extent, Fault, KernelMap};
use mmio::methods::{
    compute, copy, host, MethodHeader, OP_END_SEGMENT, OP_IMMD, OP_INCR, OP_NONINCR, OP_ONE_INC,
};

/// Why a segment was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentError {
    pub code: ErrorCode,
    /// Index of the offending word in the segment.
    pub word: u32,
    /// The MMU fault, for MMU error codes.
    pub fault: Option<Fault>,
}

/// The channel's view of its GPU address space, used by the audit.
pub trait AddressSpace {
    /// Translate and check `va..va+len` for a read or a write.
    fn translate(&mut self, va: u64, len: u64, write: bool) -> Result<Vec<Extent>, Fault>;
    /// Read `len` bytes at `va` (parameter blocks).
    fn read(&mut self, va: u64, len: u32) -> Result<Vec<u8>, Fault>;
    /// Whether the backend runs guest PTX (`CAPS.PTX`).
    fn runs_ptx(&self) -> bool {
        false
    }
    /// What a guest kernel launched now would reach (a walk of the page
    /// tables, cached until an invalidate); `None` where the backend runs
    /// no PTX.
    fn kernel_map(&mut self) -> Option<Arc<KernelMap>> {
        None
    }
}

/// Most commands one segment may decode to (ABI §4.3).
pub const MAX_SEGMENT_COMMANDS: usize = 1 << 16;
/// Most physically contiguous extents the commands of one segment may
/// name, and one command alone: what bounds the memory a segment's decoded,
/// not yet executed work holds (an extent is 24 bytes, so 24 MiB; a channel
/// holds one decoded segment at a time). A command may still copy its
/// largest size, 1 GiB, between buffers of scattered 4 KiB pages on both
/// sides (2 × 262 144 extents).
pub const MAX_SEGMENT_EXTENTS: usize = 1 << 20;
pub const MAX_COMMAND_EXTENTS: usize = 1 << 19;

/// Decode and audit one segment, updating the channel's method state.
pub fn parse_segment(
    words: &[u32],
    state: &mut MethodState,
    space: &mut dyn AddressSpace,
) -> Result<Vec<Command>, SegmentError> {
    let mut out = Vec::new();
    let mut extents = 0usize;
    let mut counted = 0usize;
    let mut i = 0usize;
    // Commands decoded so far stay within the segment's bounds.
    let mut bounded = |out: &Vec<Command>, word: usize| -> Result<(), SegmentError> {
        extents += out[counted..]
            .iter()
            .map(Command::extent_count)
            .sum::<usize>();
        counted = out.len();
        if out.len() > MAX_SEGMENT_COMMANDS || extents > MAX_SEGMENT_EXTENTS {
            return Err(SegmentError {
                code: ErrorCode::InvalidArgument,
                word: word as u32,
                fault: None,
            });
        }
        Ok(())
    };
    while i < words.len() {
        let at = i as u32;
        let h = MethodHeader(words[i]);
        i += 1;
        let err = |code| SegmentError {
            code,
            word: at,
            fault: None,
        };
        let (method, sub) = (h.method_dw() << 2, h.subchannel());
        let count = h.count() as usize;
        match h.opcode() {
            OP_IMMD => {
                method_write(state, space, sub, method, h.count(), &mut out)
                    .map_err(|e| e.at(at))?;
                bounded(&out, at as usize)?;
            }
            OP_INCR | OP_NONINCR | OP_ONE_INC => {
                if words.len() - i < count {
                    return Err(err(ErrorCode::PushbufferTruncated));
                }
                for k in 0..count {
                    let m = match h.opcode() {
                        OP_INCR => method + 4 * k as u32,
                        OP_NONINCR => method,
                        _ => method + if k == 0 { 0 } else { 4 },
                    };
                    method_write(state, space, sub, m, words[i + k], &mut out)
                        .map_err(|e| e.at((i + k) as u32))?;
                    bounded(&out, i + k)?;
                }
                i += count;
            }
            OP_END_SEGMENT => break,
            _ => return Err(err(ErrorCode::MalformedHeader)),
        }
    }
    Ok(out)
}

/// An error inside one method, before its word index is known.
struct MethodError {
    code: ErrorCode,
    fault: Option<Fault>,
}
impl MethodError {
    fn at(self, word: u32) -> SegmentError {
        SegmentError {
            code: self.code,
            word,
            fault: self.fault,
        }
    }
}
impl From<Fault> for MethodError {
    fn from(f: Fault) -> Self {
        MethodError {
            code: f.code,
            fault: Some(f),
        }
    }
}
fn fail(code: ErrorCode) -> MethodError {
    MethodError { code, fault: None }
}

fn method_write(
    st: &mut MethodState,
    space: &mut dyn AddressSpace,
    sub: u8,
    method: u32,
    data: u32,
    out: &mut Vec<Command>,
) -> Result<(), MethodError> {
    if method < 0x100 {
        return host_method(st, space, sub, method, data, out);
    }
    match st.subchannels[sub as usize & 7] {
        None => Err(fail(ErrorCode::InvalidSubchannel)),
        Some(Class::Copy) => copy_method(st, space, method, data, out),
        Some(Class::Compute) => compute_method(st, space, method, data, out),
    }
}

fn host_method(
    st: &mut MethodState,
    space: &mut dyn AddressSpace,
    sub: u8,
    method: u32,
    data: u32,
    out: &mut Vec<Command>,
) -> Result<(), MethodError> {
    let h = &mut st.host;
    match method {
        host::SET_OBJECT => {
            let class = Class::from_id(data).ok_or(fail(ErrorCode::InvalidClass))?;
            st.subchannels[sub as usize & 7] = Some(class);
        }
        host::NOP | host::WFI => {}
        host::SEM_ADDR_LO => set_lo(&mut h.sem_addr, data),
        host::SEM_ADDR_HI => set_hi(&mut h.sem_addr, data),
        host::SEM_PAYLOAD_LO => set_lo(&mut h.payload, data),
        host::SEM_PAYLOAD_HI => set_hi(&mut h.payload, data),
        host::SEM_EXECUTE => {
            if data & !host::SEM_VALID_BITS != 0 {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            let wide = data & host::SEM_PAYLOAD_64 != 0;
            let op = data & 7;
            let size: u8 = match (op, data & host::SEM_TIMESTAMP != 0) {
                (host::SEM_OP_RELEASE, true) => 16,
                (
                    host::SEM_OP_RELEASE | host::SEM_OP_ACQUIRE_EQ | host::SEM_OP_ACQUIRE_GEQ,
                    false,
                ) => {
                    if wide {
                        8
                    } else {
                        4
                    }
                }
                _ => return Err(fail(ErrorCode::InvalidArgument)),
            };
            if !h.sem_addr.is_multiple_of(size as u64) {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            let payload = if wide || size == 16 {
                h.payload
            } else {
                h.payload & 0xFFFF_FFFF
            };
            if op == host::SEM_OP_RELEASE {
                let target = space.translate(h.sem_addr, size as u64, true)?;
                out.push(Command::SemRelease {
                    target,
                    payload,
                    size,
                    interrupt: data & host::SEM_INTERRUPT != 0,
                });
            } else {
                if data & (host::SEM_TIMESTAMP | host::SEM_INTERRUPT) != 0 {
                    return Err(fail(ErrorCode::InvalidArgument));
                }
                let target = space.translate(h.sem_addr, size as u64, false)?;
                let cond = if op == host::SEM_OP_ACQUIRE_EQ {
                    AcquireCond::Equal
                } else {
                    AcquireCond::GreaterOrEqual
                };
                out.push(Command::SemAcquire {
                    target,
                    payload,
                    wide,
                    cond,
                });
            }
        }
        host::NON_STALL_INTERRUPT => out.push(Command::Interrupt),
        _ => return Err(fail(ErrorCode::InvalidMethod)),
    }
    Ok(())
}

fn copy_method(
    st: &mut MethodState,
    space: &mut dyn AddressSpace,
    method: u32,
    data: u32,
    out: &mut Vec<Command>,
) -> Result<(), MethodError> {
    let c = &mut st.copy;
    match method {
        copy::SRC_LO => set_lo(&mut c.src, data),
        copy::SRC_HI => set_hi(&mut c.src, data),
        copy::DST_LO => set_lo(&mut c.dst, data),
        copy::DST_HI => set_hi(&mut c.dst, data),
        copy::SRC_PITCH => c.src_pitch = data,
        copy::DST_PITCH => c.dst_pitch = data,
        copy::LINE_BYTES => c.line_bytes = data,
        copy::LINE_COUNT => c.line_count = data,
        copy::MEMSET_PATTERN => c.pattern = data,
        copy::LAUNCH => {
            if data & !3 != 0 {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            let op = data & 3;
            let two_d = op == copy::OP_COPY_2D || op == copy::OP_MEMSET_2D;
            let lines = if two_d { c.line_count as u64 } else { 1 };
            let width = c.line_bytes as u64;
            if width
                .checked_mul(lines)
                .is_none_or(|t| t > MAX_COMMAND_BYTES)
            {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            let memset = op >= copy::OP_MEMSET_1D;
            if memset && (!width.is_multiple_of(4) || !c.dst.is_multiple_of(4)) {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            let c = *c;
            let gather = |space: &mut dyn AddressSpace,
                          base: u64,
                          pitch: u32,
                          write: bool|
             -> Result<Vec<Extent>, MethodError> {
                let mut all: Vec<Extent> = Vec::new();
                // Zero-width lines touch nothing; lines that follow each
                // other are one range; otherwise every line is a range of its
                // own, so more lines than ranges allowed cannot be.
                if width == 0 {
                    return Ok(all);
                }
                if pitch as u64 == width {
                    return Ok(space.translate(base, width * lines, write)?);
                }
                if lines > MAX_COMMAND_EXTENTS as u64 {
                    return Err(fail(ErrorCode::InvalidArgument));
                }
                for l in 0..lines {
                    let va = base
                        .checked_add(l * pitch as u64)
                        .ok_or(fail(ErrorCode::InvalidArgument))?;
                    for e in space.translate(va, width, write)? {
                        match all.last_mut() {
                            Some(p) if p.aperture == e.aperture && p.addr + p.len == e.addr => {
                                p.len += e.len
                            }
                            _ => all.push(e),
                        }
                    }
                    if all.len() > MAX_COMMAND_EXTENTS {
                        return Err(fail(ErrorCode::InvalidArgument));
                    }
                }
                Ok(all)
            };
            let dst = gather(space, c.dst, c.dst_pitch, true)?;
            if memset {
                out.push(Command::Engine(Op::Memset {
                    dst,
                    pattern: c.pattern,
                }));
            } else {
                let src = gather(space, c.src, c.src_pitch, false)?;
                out.push(Command::Engine(Op::Copy { src, dst }));
            }
        }
        _ => return Err(fail(ErrorCode::InvalidMethod)),
    }
    Ok(())
}

fn compute_method(
    st: &mut MethodState,
    space: &mut dyn AddressSpace,
    method: u32,
    data: u32,
    out: &mut Vec<Command>,
) -> Result<(), MethodError> {
    let c = &mut st.compute;
    match method {
        compute::PROGRAM => c.program = data,
        compute::PARAMS_LO => set_lo(&mut c.params, data),
        compute::PARAMS_HI => set_hi(&mut c.params, data),
        compute::PARAMS_SIZE => c.params_size = data,
        compute::GRID_X..=compute::BLOCK_Z => {
            let i = ((method - compute::GRID_X) / 4) as usize;
            if i < 3 {
                c.grid[i] = data
            } else {
                c.block[i - 3] = data
            }
        }
        compute::MODULE_LO => set_lo(&mut c.module, data),
        compute::MODULE_HI => set_hi(&mut c.module, data),
        compute::MODULE_SIZE => c.module_size = data,
        compute::FUNC_NAME_LO => set_lo(&mut c.func_name, data),
        compute::FUNC_NAME_HI => set_hi(&mut c.func_name, data),
        compute::FUNC_NAME_SIZE => c.func_name_size = data,
        compute::MODULE_LOG_LO => set_lo(&mut c.module_log, data),
        compute::MODULE_LOG_HI => set_hi(&mut c.module_log, data),
        compute::MODULE_LOG_SIZE => c.module_log_size = data,
        compute::SHARED_MEM_BYTES => c.shared_mem = data,
        compute::MODULE_HANDLE => c.module_handle = data,
        compute::INFO_LO => set_lo(&mut c.info, data),
        compute::INFO_HI => set_hi(&mut c.info, data),
        compute::FUNC_INFO | compute::MODULE_GLOBAL | compute::MODULE_UNLOAD => {
            let c = *c;
            out.push(Command::Engine(module_op(space, &c, method, data)?));
        }
        compute::MODULE_LOAD => {
            let c = *c;
            out.push(Command::Engine(module_load(space, &c, data)?));
        }
        compute::LAUNCH => {
            let c = *c;
            let op = if c.program == compute::PROG_MODULE || c.program & compute::PROG_PTX != 0 {
                kernel(space, &c)?
            } else {
                builtin(space, &c)?
            };
            out.push(Command::Engine(op));
        }
        _ => return Err(fail(ErrorCode::InvalidMethod)),
    }
    Ok(())
}

/// `MODULE_LOAD` of `slot` (a module handle below `MAX_MODULES`; ABI 1.2's slots are
/// handles 0–7): the image (PTX text, a cubin or a fatbin, which the engine tells apart) is
/// read now, as parameter blocks are; the log buffer is audited for writing. Backends without
/// PTX stop the channel with `UNSUPPORTED`.
fn module_load(
    space: &mut dyn AddressSpace,
    c: &classes::ComputeState,
    slot: u32,
) -> Result<Op, MethodError> {
    if !space.runs_ptx() {
        return Err(fail(ErrorCode::Unsupported));
    }
    if slot >= compute::MAX_MODULES
        || c.module_size == 0
        || c.module_size > compute::MAX_MODULE_BYTES
        || c.module_log_size > compute::MAX_MODULE_LOG
    {
        return Err(fail(ErrorCode::InvalidArgument));
    }
    let text = space.read(c.module, c.module_size)?;
    let log = if c.module_log_size > 0 {
        space.translate(c.module_log, c.module_log_size as u64, true)?
    } else {
        Vec::new()
    };
    Ok(Op::ModuleLoad {
        slot,
        text: text.into(),
        log,
    })
}

/// The `FUNC_NAME` a launch or query names: 1–4095 bytes, UTF-8, no NUL.
fn func_name(
    space: &mut dyn AddressSpace,
    c: &classes::ComputeState,
) -> Result<String, MethodError> {
    if c.func_name_size == 0 || c.func_name_size > compute::MAX_FUNC_NAME {
        return Err(fail(ErrorCode::InvalidArgument));
    }
    let name = space.read(c.func_name, c.func_name_size)?;
    String::from_utf8(name)
        .ok()
        .filter(|n| !n.contains('\0'))
        .ok_or_else(|| fail(ErrorCode::InvalidArgument))
}

/// `FUNC_INFO`, `MODULE_GLOBAL` and `MODULE_UNLOAD` of module `handle` (ABI 1.3): the name
/// is read and the answer buffer audited for writing now. A module that is not loaded or a
/// name it lacks is the answer's status, not a fault.
fn module_op(
    space: &mut dyn AddressSpace,
    c: &classes::ComputeState,
    method: u32,
    handle: u32,
) -> Result<Op, MethodError> {
    if !space.runs_ptx() {
        return Err(fail(ErrorCode::Unsupported));
    }
    if handle >= compute::MAX_MODULES {
        return Err(fail(ErrorCode::InvalidArgument));
    }
    if method == compute::MODULE_UNLOAD {
        return Ok(Op::Module(ModuleOp::Unload { handle }));
    }
    let name = func_name(space, c)?;
    let bytes = if method == compute::FUNC_INFO {
        compute::FUNC_INFO_BYTES
    } else {
        compute::GLOBAL_INFO_BYTES
    };
    if !c.info.is_multiple_of(8) {
        return Err(fail(ErrorCode::InvalidArgument));
    }
    let answer = space.translate(c.info, bytes as u64, true)?;
    Ok(Op::Module(if method == compute::FUNC_INFO {
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
    }))
}

/// `LAUNCH` of `PROGRAM = PROG_PTX | slot` or (ABI 1.3) `PROG_MODULE` with `MODULE_HANDLE`:
/// the function name and the parameter buffer are read now; the kernel reaches what the
/// channel's page tables map to VRAM in whole 2 MiB chunks ([`KernelMap`]), with
/// `SHARED_MEM_BYTES` of dynamic shared memory (`PROG_MODULE` only; ABI 1.2's launches have
/// none).
fn kernel(space: &mut dyn AddressSpace, c: &classes::ComputeState) -> Result<Op, MethodError> {
    let Some(map) = space.kernel_map() else {
        return Err(fail(ErrorCode::Unsupported));
    };
    let (slot, shared, limit) = if c.program == compute::PROG_MODULE {
        (c.module_handle, c.shared_mem, compute::MAX_MODULES)
    } else {
        (c.program & !compute::PROG_PTX, 0, compute::PTX_SLOTS)
    };
    if slot >= limit
        || shared > compute::MAX_SHARED_MEM
        || c.params_size > MAX_PARAMS
        || c.grid.contains(&0)
        || c.block.contains(&0)
    {
        return Err(fail(ErrorCode::InvalidArgument));
    }
    let func = func_name(space, c)?;
    let params = if c.params_size > 0 {
        space.read(c.params, c.params_size)?
    } else {
        Vec::new()
    };
    Ok(Op::Kernel(Box::new(KernelLaunch {
        slot,
        func,
        grid: c.grid,
        block: c.block,
        shared,
        params,
        map,
    })))
}

/// Little-endian fields of a parameter block.
struct Params<'a>(&'a [u8]);
impl Params<'_> {
    fn u32(&self, off: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_le_bytes(b)
    }
    fn u64(&self, off: usize) -> u64 {
        self.u32(off) as u64 | (self.u32(off + 4) as u64) << 32
    }
    fn f32(&self, off: usize) -> f32 {
        f32::from_bits(self.u32(off))
    }
}

/// Size of each built-in program's parameter block.
pub fn params_size(program: u32) -> Option<u32> {
    Some(match program {
        compute::PROG_FILL => 16,
        compute::PROG_SAXPY => 24,
        compute::PROG_GEMM_F32 => 48,
        compute::PROG_REDUCE_SUM => 24,
        compute::PROG_SPIN => 16,
        _ => return None,
    })
}

fn builtin(space: &mut dyn AddressSpace, c: &classes::ComputeState) -> Result<Op, MethodError> {
    let Some(need) = params_size(c.program) else {
        return Err(fail(ErrorCode::InvalidArgument));
    };
    if c.params_size < need || c.params_size > MAX_PARAMS {
        return Err(fail(ErrorCode::InvalidArgument));
    }
    let raw = space.read(c.params, need)?;
    let p = Params(&raw);
    let f32s = |space: &mut dyn AddressSpace,
                va: u64,
                n: u64,
                write: bool|
     -> Result<Vec<Extent>, MethodError> {
        if !va.is_multiple_of(4) {
            return Err(fail(ErrorCode::InvalidArgument));
        }
        Ok(space.translate(va, n * 4, write)?)
    };
    Ok(match c.program {
        compute::PROG_FILL => {
            let (dst, count, value) = (p.u64(0), p.u32(8), p.u32(12));
            if count as u64 * 4 > MAX_COMMAND_BYTES {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            Op::Memset {
                dst: f32s(space, dst, count as u64, true)?,
                pattern: value,
            }
        }
        compute::PROG_SAXPY => {
            let (x, y, n, a) = (p.u64(0), p.u64(8), p.u32(16), p.f32(20));
            if n as u64 * 4 > MAX_COMMAND_BYTES {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            Op::Saxpy {
                x: f32s(space, x, n as u64, false)?,
                y: f32s(space, y, n as u64, true)?,
                n,
                a,
            }
        }
        compute::PROG_GEMM_F32 => {
            let (a, b, cc) = (p.u64(0), p.u64(8), p.u64(16));
            let (m, n, k) = (p.u32(24), p.u32(28), p.u32(32));
            let (alpha, beta) = (p.f32(36), p.f32(40));
            if m > MAX_GEMM_DIM || n > MAX_GEMM_DIM || k > MAX_GEMM_DIM {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            let (m64, n64, k64) = (m as u64, n as u64, k as u64);
            Op::Gemm {
                a: f32s(space, a, m64 * k64, false)?.into(),
                b: f32s(space, b, k64 * n64, false)?.into(),
                c: f32s(space, cc, m64 * n64, true)?.into(),
                m,
                n,
                k,
                alpha,
                beta,
                span: 0..m64 * n64,
            }
        }
        compute::PROG_REDUCE_SUM => {
            let (src, dst, n) = (p.u64(0), p.u64(8), p.u32(16));
            if n as u64 * 4 > MAX_COMMAND_BYTES {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            Op::ReduceSum {
                src: f32s(space, src, n as u64, false)?,
                dst: f32s(space, dst, 1, true)?,
                n,
                sum: Default::default(),
            }
        }
        compute::PROG_SPIN => {
            let (dst, units, unit_ns) = (p.u64(0), p.u32(8), p.u32(12));
            if units as u64 * unit_ns as u64 > MAX_SPIN_NS {
                return Err(fail(ErrorCode::InvalidArgument));
            }
            let dst = if dst == 0 {
                None
            } else {
                Some(f32s(space, dst, 1, true)?)
            };
            Op::Spin {
                ns: units as u64 * unit_ns as u64,
                dst,
                report: units,
            }
        }
        _ => return Err(fail(ErrorCode::InvalidArgument)),
    })
}
