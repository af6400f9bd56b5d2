//! Audited work: what a pushbuffer segment turns into once every address
//! in it has been translated and checked.
//!
//! HOST commands (semaphores, interrupts) are carried out by the channel's
//! front end; [`Op`]s go to the execution [`crate::backend::Backend`]. Every
//! buffer is a list of physically contiguous [`Extent`]s that the GMMU has
//! already checked against this vGPU's framebuffer and DMA map.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::gmmu::{Extent, KernelMap};

/// The ABI's limits on one command (§5), defined with its methods.
pub use mmio::methods::{MAX_COMMAND_BYTES, MAX_GEMM_DIM, MAX_PARAMS, MAX_SPIN_NS};

/// An engine operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Copy `src` to `dst` (equal total lengths), front to back.
    Copy { src: Vec<Extent>, dst: Vec<Extent> },
    /// Fill `dst` (a multiple of 4 bytes) with a 32-bit pattern.
    Memset { dst: Vec<Extent>, pattern: u32 },
    /// `y[i] = a * x[i] + y[i]` over `n` f32 elements.
    Saxpy {
        x: Vec<Extent>,
        y: Vec<Extent>,
        n: u32,
        a: f32,
    },
    /// `C = alpha * A·B + beta * C`, row-major f32, A m×k, B k×n, C m×n,
    /// for the elements of C numbered `span` in row-major order (the whole
    /// of C, `0..m·n`, as decoded; a piece covers part of it).
    Gemm {
        a: Arc<[Extent]>,
        b: Arc<[Extent]>,
        c: Arc<[Extent]>,
        m: u32,
        n: u32,
        k: u32,
        alpha: f32,
        beta: f32,
        span: Range<u64>,
    },
    /// `*dst = Σ src[i]` over `n` f32 elements, summed in order in f64 onto
    /// `sum` (zero as decoded; pieces carry it from one to the next). An
    /// empty `dst` writes nothing: the sum goes on in the next piece.
    ReduceSum {
        src: Vec<Extent>,
        dst: Vec<Extent>,
        n: u32,
        sum: RunningSum,
    },
    /// Occupy the engine for `ns` (the program's units × unit length),
    /// then write `report` (its unit count, u32) to `dst` if given.
    Spin {
        ns: u64,
        dst: Option<Vec<Extent>>,
        report: u32,
    },
    /// Short operations that follow one another in a channel, carried out
    /// in order as one engine item, as a GPU's command processor runs
    /// methods back to back: the host's costs per item (scheduling,
    /// completion) are paid once per batch, not once per command. Never
    /// nested, never holds a spin or a gemm ([`Op::batch_cost`]).
    Batch(Vec<Op>),
    /// Load guest PTX `text` into module `slot` of the vGPU (backends with
    /// `CAPS.PTX`), replacing what the slot held, and write the JIT log
    /// (NUL-terminated, truncated to the buffer) to `log`.
    ModuleLoad {
        slot: u32,
        text: Arc<[u8]>,
        log: Vec<Extent>,
    },
    /// Run a guest kernel (backends with `CAPS.PTX`).
    Kernel(Box<KernelLaunch>),
    /// A module query or unload (ABI 1.3; backends with `CAPS.PTX`).
    Module(ModuleOp),
}

/// What ABI 1.3 asks of a loaded module besides its kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleOp {
    /// `MODULE_UNLOAD`: module `handle` goes (its host memory with it).
    Unload { handle: u32 },
    /// `FUNC_INFO`: function `name` of module `handle`, its parameter layout and attributes
    /// written to `answer` (`mmio::methods::compute::FUNC_INFO_BYTES`).
    FuncInfo {
        handle: u32,
        name: String,
        answer: Vec<Extent>,
    },
    /// `MODULE_GLOBAL`: global `name` of module `handle`, its address and size written to
    /// `answer` (`GLOBAL_INFO_BYTES`).
    Global {
        handle: u32,
        name: String,
        answer: Vec<Extent>,
    },
}

/// A guest kernel launch: function `func` of module `slot` (a module handle: 0–7 are the
/// slots of ABI 1.2) on `grid` × `block` threads with `shared` bytes of dynamic shared
/// memory, with the parameter buffer `params` as CUDA lays it out, in the address space
/// `map` (what the launching channel's page tables give kernels, taken at audit).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelLaunch {
    pub slot: u32,
    pub func: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared: u32,
    pub params: Vec<u8>,
    pub map: Arc<KernelMap>,
}

impl Command {
    /// How many extents the command names.
    pub fn extent_count(&self) -> usize {
        match self {
            Command::Engine(op) => op.extent_count(),
            Command::SemRelease { target, .. } | Command::SemAcquire { target, .. } => target.len(),
            Command::Interrupt => 0,
        }
    }
}

/// The most bytes one engine item copies, sets or streams (a multiple of the
/// cpu engine's copy chunk, so a copy in pieces moves its bytes in the same
/// steps as a copy in one).
pub const PIECE_BYTES: u64 = 4 << 20;
/// The most time one `spin` item occupies the engine.
pub const PIECE_NS: u64 = 1_000_000;
/// The most extents one copy, memset or saxpy item names on a side: a 2D
/// copy of many short lines moves few bytes per extent, and each costs the
/// engine a lookup.
pub const PIECE_EXTENTS: usize = 4096;
/// The most multiply-adds one `gemm_f32` item carries out (the cpu engine
/// does one in about 2.5 ns: a piece is about 0.6 ms).
pub const PIECE_FMAS: u64 = 1 << 18;

/// The most commands one [`Op::Batch`] carries out.
pub const MAX_BATCH_OPS: usize = 1024;

/// A sum carried from one piece of a `reduce_sum` to the next, in f64.
#[derive(Clone, Debug, Default)]
pub struct RunningSum(Arc<AtomicU64>);

impl RunningSum {
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Acquire))
    }
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Release);
    }
}

impl PartialEq for RunningSum {
    fn eq(&self, other: &Self) -> bool {
        self.get().to_bits() == other.get().to_bits()
    }
}

/// How many bytes from the front of `ext` fit in `max_extents` extents.
fn reach(ext: &[Extent], max_extents: usize) -> u64 {
    total(&ext[..ext.len().min(max_extents)])
}

/// Bytes the next piece of an operation over the given extent lists moves:
/// at most `max` bytes and [`PIECE_EXTENTS`] extents on every side; `None`
/// when the whole of `len` bytes fits in one piece.
fn piece_bytes(len: u64, max: u64, sides: &[&[Extent]]) -> Option<u64> {
    let b = sides
        .iter()
        .map(|e| reach(e, PIECE_EXTENTS))
        .fold(max, u64::min);
    (len > b).then_some(b)
}

/// Take the first `bytes` bytes off `ext` (splitting an extent if needed).
fn split_extents(ext: &mut Vec<Extent>, bytes: u64) -> Vec<Extent> {
    let mut front = Vec::new();
    let mut left = bytes;
    let mut taken = 0;
    for e in ext.iter_mut() {
        if left == 0 {
            break;
        }
        if e.len <= left {
            front.push(*e);
            left -= e.len;
            taken += 1;
        } else {
            front.push(Extent { len: left, ..*e });
            e.addr += left;
            e.len -= left;
            left = 0;
        }
    }
    ext.drain(..taken);
    front
}

fn total(ext: &[Extent]) -> u64 {
    ext.iter().map(|e| e.len).sum()
}

impl Op {
    /// No item holds the engine for long: an operation larger than a piece
    /// ([`PIECE_BYTES`], [`PIECE_NS`]) gives up its first piece here and
    /// keeps the rest, so that the host scheduler decides between pieces.
    /// Pieces run in order and their results are those of the whole, bit
    /// for bit: a copy or memset by chunks of bytes and extents (a 2D copy
    /// by groups of lines), saxpy and reduce_sum by element ranges (the sum
    /// carried in f64, the last piece writing it), gemm by runs of C's
    /// elements (each summed over k in the same order), spin by slices (the
    /// last piece writes the report). `None`: run `self` whole.
    pub fn take_piece(&mut self) -> Option<Op> {
        self.take_piece_of(PIECE_BYTES)
    }

    /// [`take_piece`](Self::take_piece) with pieces of at most `max_bytes`
    /// (an engine that moves bytes faster takes larger ones: the same time).
    pub fn take_piece_of(&mut self, max_bytes: u64) -> Option<Op> {
        let max = max_bytes.max(4);
        match self {
            Op::Batch(_) => None,
            Op::Copy { src, dst } => {
                let b = piece_bytes(total(src), max, &[src, dst])?;
                Some(Op::Copy {
                    src: split_extents(src, b),
                    dst: split_extents(dst, b),
                })
            }
            Op::Memset { dst, pattern } => {
                // Whole words: the pattern restarts at every piece.
                let b = piece_bytes(total(dst), max, &[dst])? & !3;
                (b > 0).then(|| Op::Memset {
                    dst: split_extents(dst, b),
                    pattern: *pattern,
                })
            }
            Op::Saxpy { x, y, n, a } => {
                let k = (piece_bytes(*n as u64 * 4, max, &[x, y])? / 4) as u32;
                (k > 0).then(|| {
                    *n -= k;
                    Op::Saxpy {
                        x: split_extents(x, k as u64 * 4),
                        y: split_extents(y, k as u64 * 4),
                        n: k,
                        a: *a,
                    }
                })
            }
            Op::ReduceSum { src, n, sum, .. } => {
                let k = (piece_bytes(*n as u64 * 4, max, &[src])? / 4) as u32;
                (k > 0).then(|| {
                    *n -= k;
                    Op::ReduceSum {
                        src: split_extents(src, k as u64 * 4),
                        dst: Vec::new(),
                        n: k,
                        sum: sum.clone(),
                    }
                })
            }
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
            } => {
                let per_piece = (PIECE_FMAS / (*k).max(1) as u64).max(1);
                if span.end - span.start <= per_piece {
                    return None;
                }
                let piece = span.start..span.start + per_piece;
                span.start = piece.end;
                Some(Op::Gemm {
                    a: a.clone(),
                    b: b.clone(),
                    c: c.clone(),
                    m: *m,
                    n: *n,
                    k: *k,
                    alpha: *alpha,
                    beta: *beta,
                    span: piece,
                })
            }
            Op::Spin { ns, report, .. } if *ns > PIECE_NS => {
                *ns -= PIECE_NS;
                Some(Op::Spin {
                    ns: PIECE_NS,
                    dst: None,
                    report: *report,
                })
            }
            _ => None,
        }
    }

    /// The bytes a short operation moves, by which batches are bounded
    /// (as pieces are: [`PIECE_BYTES`]); `None` for operations that are
    /// never batched (spin and gemm, whose cost is time and arithmetic).
    pub fn batch_cost(&self) -> Option<u64> {
        match self {
            Op::Copy { src, .. } => Some(total(src)),
            Op::Memset { dst, .. } => Some(total(dst)),
            Op::Saxpy { n, .. } => Some(*n as u64 * 8),
            Op::ReduceSum { n, .. } => Some(*n as u64 * 4),
            Op::Gemm { .. }
            | Op::Spin { .. }
            | Op::Batch(_)
            | Op::ModuleLoad { .. }
            | Op::Kernel(_)
            | Op::Module(_) => None,
        }
    }

    /// The commands the operation carries out (a batch's, else one).
    pub fn commands(&self) -> u64 {
        match self {
            Op::Batch(ops) => ops.len() as u64,
            _ => 1,
        }
    }

    /// How many extents the operation names (what its decoded form costs;
    /// a module's text and a kernel's parameters count as the extents
    /// their bytes would fill).
    pub fn extent_count(&self) -> usize {
        let as_extents = |bytes: usize| bytes.div_ceil(std::mem::size_of::<Extent>());
        match self {
            Op::ModuleLoad { text, log, .. } => as_extents(text.len()) + log.len(),
            Op::Kernel(k) => as_extents(k.params.len() + k.func.len()),
            Op::Module(ModuleOp::Unload { .. }) => 0,
            Op::Module(ModuleOp::FuncInfo { name, answer, .. })
            | Op::Module(ModuleOp::Global { name, answer, .. }) => {
                as_extents(name.len()) + answer.len()
            }
            Op::Batch(ops) => ops.iter().map(Op::extent_count).sum(),
            Op::Copy { src, dst } => src.len() + dst.len(),
            Op::Memset { dst, .. } => dst.len(),
            Op::Saxpy { x, y, .. } => x.len() + y.len(),
            Op::Gemm { a, b, c, .. } => a.len() + b.len() + c.len(),
            Op::ReduceSum { src, dst, .. } => src.len() + dst.len(),
            Op::Spin { dst, .. } => dst.as_ref().map_or(0, Vec::len),
        }
    }

    /// Short name for logs and statistics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Copy { .. } => "copy",
            Op::Memset { .. } => "memset",
            Op::Saxpy { .. } => "saxpy",
            Op::Gemm { .. } => "gemm_f32",
            Op::ReduceSum { .. } => "reduce_sum",
            Op::Spin { .. } => "spin",
            Op::Batch(_) => "batch",
            Op::ModuleLoad { .. } => "module_load",
            Op::Kernel(_) => "kernel",
            Op::Module(ModuleOp::Unload { .. }) => "module_unload",
            Op::Module(ModuleOp::FuncInfo { .. }) => "func_info",
            Op::Module(ModuleOp::Global { .. }) => "module_global",
        }
    }
}

/// Semaphore acquire condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireCond {
    /// Memory equals the payload.
    Equal,
    /// Memory minus payload, as a signed (wrapping) number, is ≥ 0.
    GreaterOrEqual,
}

/// One step of a channel, in submission order.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run an operation on the engine; the channel waits for it.
    Engine(Op),
    /// Write a semaphore: `size` 4 (32-bit payload), 8 (64-bit payload) or
    /// 16 (64-bit payload then 64-bit timestamp).
    SemRelease {
        target: Vec<Extent>,
        payload: u64,
        size: u8,
        interrupt: bool,
    },
    /// Wait until the semaphore satisfies `cond` against `payload`.
    SemAcquire {
        target: Vec<Extent>,
        payload: u64,
        wide: bool,
        cond: AcquireCond,
    },
    /// Raise the HOST (non-stall) interrupt.
    Interrupt,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gmmu::Aperture;

    fn ext(addr: u64, len: u64) -> Extent {
        Extent {
            aperture: Aperture::Sysmem,
            addr,
            len,
        }
    }

    #[test]
    fn pieces_cover_the_whole_in_order() {
        const M: u64 = 1 << 20;
        let mut op = Op::Copy {
            src: vec![ext(0, 3 * M), ext(100 * M, 7 * M)],
            dst: vec![ext(200 * M, M), ext(300 * M, 9 * M)],
        };
        let mut pieces = Vec::new();
        while let Some(p) = op.take_piece() {
            pieces.push(p);
        }
        pieces.push(op);
        let bytes = |e: &[Extent]| e.iter().map(|x| x.len).sum::<u64>();
        let mut src_all = Vec::new();
        let mut dst_all = Vec::new();
        for p in &pieces {
            let Op::Copy { src, dst } = p else {
                panic!("a copy splits into copies")
            };
            assert_eq!(bytes(src), bytes(dst));
            assert!(bytes(src) <= PIECE_BYTES);
            src_all.extend_from_slice(src);
            dst_all.extend_from_slice(dst);
        }
        assert_eq!(pieces.len(), 3, "4 + 4 + 2 MiB");
        // Concatenated, the pieces are the original extents, split at
        // piece boundaries only.
        assert_eq!(
            src_all,
            [
                ext(0, 3 * M),
                ext(100 * M, M),
                ext(101 * M, 4 * M),
                ext(105 * M, 2 * M)
            ]
        );
        assert_eq!(
            dst_all,
            [
                ext(200 * M, M),
                ext(300 * M, 3 * M),
                ext(303 * M, 4 * M),
                ext(307 * M, 2 * M)
            ]
        );
        // A spin of one 2.5 ms unit: pieces by time, not by unit.
        let mut spin = Op::Spin {
            ns: 2_500_000,
            dst: None,
            report: 1,
        };
        let first = spin.take_piece();
        assert!(matches!(
            first,
            Some(Op::Spin {
                ns: 1_000_000,
                dst: None,
                report: 1
            })
        ));
        assert!(spin.take_piece().is_some());
        assert!(spin.take_piece().is_none(), "the last 0.5 ms runs whole");
        assert!(matches!(spin, Op::Spin { ns: 500_000, .. }));
    }

    #[test]
    fn short_lines_make_pieces_of_at_most_piece_extents() {
        // A 2D copy of 10,000 one-byte lines (pitch 2) into a flat buffer:
        // pieces by groups of lines, each naming ≤ PIECE_EXTENTS extents.
        let lines: Vec<Extent> = (0..10_000).map(|l| ext(2 * l, 1)).collect();
        let mut op = Op::Copy {
            src: lines.clone(),
            dst: vec![ext(1 << 30, 10_000)],
        };
        let mut src_all = Vec::new();
        let mut dst_bytes = 0;
        let mut n = 0;
        loop {
            let piece = op.take_piece();
            let last = piece.is_none();
            let Op::Copy { src, dst } = piece.unwrap_or_else(|| op.clone()) else {
                panic!("a copy splits into copies")
            };
            assert!(src.len() <= PIECE_EXTENTS && dst.len() <= PIECE_EXTENTS);
            assert_eq!(total(&src), total(&dst));
            assert_eq!(dst[0].addr, (1 << 30) + dst_bytes, "dst continues in order");
            dst_bytes += total(&dst);
            src_all.extend(src);
            n += 1;
            if last {
                break;
            }
        }
        assert_eq!(n, 3, "4096 + 4096 + 1808 lines");
        assert_eq!(src_all, lines);
        assert_eq!(dst_bytes, 10_000);
    }
}
