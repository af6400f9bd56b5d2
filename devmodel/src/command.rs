//! Audited work: what a pushbuffer segment turns into once every address
//! in it has been translated and checked.
//!
//! HOST commands (semaphores, interrupts) are carried out by the channel's
//! front end; [`Op`]s go to the execution [`crate::backend::Backend`]. Every
//! buffer is a list of physically contiguous [`Extent`]s that the GMMU has
//! already checked against this vGPU's framebuffer and DMA map.

use crate::gmmu::Extent;

/// Largest number of bytes one copy or memset may touch (1 GiB).
pub const MAX_COMMAND_BYTES: u64 = 1 << 30;
/// Largest matrix dimension of `gemm_f32`.
pub const MAX_GEMM_DIM: u32 = 4096;
/// Longest `spin` program, in nanoseconds (10 s).
pub const MAX_SPIN_NS: u64 = 10_000_000_000;
/// Largest parameter block.
pub const MAX_PARAMS: u32 = 4096;

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
    /// `C = alpha * A·B + beta * C`, row-major f32, A m×k, B k×n, C m×n.
    Gemm {
        a: Vec<Extent>,
        b: Vec<Extent>,
        c: Vec<Extent>,
        m: u32,
        n: u32,
        k: u32,
        alpha: f32,
        beta: f32,
    },
    /// `*dst = Σ src[i]` over `n` f32 elements.
    ReduceSum {
        src: Vec<Extent>,
        dst: Vec<Extent>,
        n: u32,
    },
    /// Occupy the engine for `ns` (the program's units × unit length),
    /// then write `report` (its unit count, u32) to `dst` if given.
    Spin {
        ns: u64,
        dst: Option<Vec<Extent>>,
        report: u32,
    },
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
    /// Pieces run in order and their results are those of the whole: a copy
    /// or memset by chunks, saxpy by element ranges, spin by slices (the
    /// last piece writes the report). `None`: run `self` whole (`gemm_f32` and
    /// `reduce_sum` always run whole).
    pub fn take_piece(&mut self) -> Option<Op> {
        match self {
            Op::Copy { src, dst } if total(src) > PIECE_BYTES => Some(Op::Copy {
                src: split_extents(src, PIECE_BYTES),
                dst: split_extents(dst, PIECE_BYTES),
            }),
            Op::Memset { dst, pattern } if total(dst) > PIECE_BYTES => Some(Op::Memset {
                dst: split_extents(dst, PIECE_BYTES),
                pattern: *pattern,
            }),
            Op::Saxpy { x, y, n, a } if *n as u64 * 4 > PIECE_BYTES => {
                let k = (PIECE_BYTES / 4) as u32;
                *n -= k;
                Some(Op::Saxpy {
                    x: split_extents(x, k as u64 * 4),
                    y: split_extents(y, k as u64 * 4),
                    n: k,
                    a: *a,
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

    /// How many extents the operation names (what its decoded form costs).
    pub fn extent_count(&self) -> usize {
        match self {
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
}
