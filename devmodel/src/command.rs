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
    /// Occupy the engine for `units * unit_ns` ns, then write `units` (u32)
    /// to `dst` if given.
    Spin {
        units: u32,
        unit_ns: u32,
        dst: Option<Vec<Extent>>,
    },
}

impl Op {
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
