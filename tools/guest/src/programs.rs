//! The COMPUTE class's built-in programs and their parameter blocks
//! (ABI §5.5). Every buffer is a GPU VA; f32 buffers must be 4-byte
//! aligned.

/// Built-in program ids (`PROGRAM` method data).
pub const FILL: u32 = 1;
pub const SAXPY: u32 = 2;
pub const GEMM_F32: u32 = 3;
pub const REDUCE_SUM: u32 = 4;
pub const SPIN: u32 = 5;

/// Largest `m`, `n`, `k` of a GEMM.
pub const GEMM_MAX_DIM: u32 = 4096;
/// Longest `spin`, in ns.
pub const SPIN_MAX_NS: u64 = 10_000_000_000;

/// A built-in program launch: its id and its parameter block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Program {
    /// `dst[i] = value` for `i < count` (32-bit words).
    Fill { dst: u64, count: u32, value: u32 },
    /// `y[i] = a·x[i] + y[i]` (fused multiply-add), `i < n`.
    Saxpy { x: u64, y: u64, n: u32, a: f32 },
    /// `C = α·A·B + β·C`, row-major: A m×k, B k×n, C m×n.
    Gemm {
        a: u64,
        b: u64,
        c: u64,
        m: u32,
        n: u32,
        k: u32,
        alpha: f32,
        beta: f32,
    },
    /// `*dst = Σ src[i]` (f32).
    ReduceSum { src: u64, dst: u64, n: u32 },
    /// Occupy the engine for `units × unit_ns` ns, then write `units` to
    /// `dst` (0 = no write).
    Spin { dst: u64, units: u32, unit_ns: u32 },
}

impl Program {
    /// The program id.
    pub fn id(&self) -> u32 {
        match self {
            Program::Fill { .. } => FILL,
            Program::Saxpy { .. } => SAXPY,
            Program::Gemm { .. } => GEMM_F32,
            Program::ReduceSum { .. } => REDUCE_SUM,
            Program::Spin { .. } => SPIN,
        }
    }

    /// The parameter block, laid out as the ABI's table says.
    pub fn params(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(48);
        match *self {
            Program::Fill { dst, count, value } => {
                p.extend(dst.to_le_bytes());
                p.extend(count.to_le_bytes());
                p.extend(value.to_le_bytes());
            }
            Program::Saxpy { x, y, n, a } => {
                p.extend(x.to_le_bytes());
                p.extend(y.to_le_bytes());
                p.extend(n.to_le_bytes());
                p.extend(a.to_le_bytes());
            }
            Program::Gemm {
                a,
                b,
                c,
                m,
                n,
                k,
                alpha,
                beta,
            } => {
                for v in [a, b, c] {
                    p.extend(v.to_le_bytes());
                }
                for v in [m, n, k] {
                    p.extend(v.to_le_bytes());
                }
                p.extend(alpha.to_le_bytes());
                p.extend(beta.to_le_bytes());
                p.extend(0u32.to_le_bytes());
            }
            Program::ReduceSum { src, dst, n } => {
                p.extend(src.to_le_bytes());
                p.extend(dst.to_le_bytes());
                p.extend(n.to_le_bytes());
                p.extend(0u32.to_le_bytes());
            }
            Program::Spin {
                dst,
                units,
                unit_ns,
            } => {
                p.extend(dst.to_le_bytes());
                p.extend(units.to_le_bytes());
                p.extend(unit_ns.to_le_bytes());
            }
        }
        p
    }
}

/// A PTX kernel's parameter block, laid out as CUDA lays out a kernel's
/// parameters (each at its natural alignment, as `cuLaunchKernel`'s
/// `CU_LAUNCH_PARAM_BUFFER_POINTER` takes them): push them in the order
/// of the kernel's signature.
///
/// ```
/// use vgpu_guest::programs::KernelParams;
/// // vec_add(const float* x, const float* y, float* out, unsigned n)
/// let p = KernelParams::new().ptr(0x10).ptr(0x20).ptr(0x30).u32(1 << 20);
/// assert_eq!(p.bytes().len(), 28);
/// // f(unsigned a, unsigned long long b): b is 8-byte aligned.
/// assert_eq!(KernelParams::new().u32(1).u64(2).bytes().len(), 16);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelParams {
    bytes: Vec<u8>,
}

impl KernelParams {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append `v` at the next multiple of `align` (zero padding).
    fn push(mut self, align: usize, v: &[u8]) -> Self {
        let at = self.bytes.len().div_ceil(align) * align;
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(v);
        self
    }

    /// A 32-bit integer (`int`, `unsigned`).
    pub fn u32(self, v: u32) -> Self {
        self.push(4, &v.to_le_bytes())
    }

    /// A 64-bit integer (`long long`, `size_t`).
    pub fn u64(self, v: u64) -> Self {
        self.push(8, &v.to_le_bytes())
    }

    /// A `float`.
    pub fn f32(self, v: f32) -> Self {
        self.push(4, &v.to_le_bytes())
    }

    /// A pointer: a kernel address, e.g. [`Device::kernel_ptr`](crate::Device::kernel_ptr).
    pub fn ptr(self, v: u64) -> Self {
        self.u64(v)
    }

    /// The block (at most 4096 bytes for a launch).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_params_use_natural_alignment() {
        let p = KernelParams::new()
            .u32(7)
            .ptr(0x1122_3344_5566_7788)
            .f32(1.5)
            .u32(9);
        assert_eq!(p.bytes().len(), 24);
        assert_eq!(&p.bytes()[0..4], &7u32.to_le_bytes());
        assert_eq!(&p.bytes()[4..8], &[0; 4], "padding before the pointer");
        assert_eq!(&p.bytes()[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&p.bytes()[16..20], &1.5f32.to_le_bytes());
        assert_eq!(&p.bytes()[20..24], &9u32.to_le_bytes());
        assert!(KernelParams::new().bytes().is_empty());
    }

    #[test]
    fn parameter_blocks_have_abi_sizes_and_offsets() {
        let f = Program::Fill {
            dst: 0x1122_3344_5566_7788,
            count: 9,
            value: 0xABCD,
        }
        .params();
        assert_eq!(f.len(), 16);
        assert_eq!(&f[8..12], &9u32.to_le_bytes());
        let s = Program::Saxpy {
            x: 1,
            y: 2,
            n: 3,
            a: 2.5,
        }
        .params();
        assert_eq!(s.len(), 24);
        assert_eq!(&s[20..24], &2.5f32.to_le_bytes());
        let g = Program::Gemm {
            a: 1,
            b: 2,
            c: 3,
            m: 4,
            n: 5,
            k: 6,
            alpha: 1.5,
            beta: -0.5,
        }
        .params();
        assert_eq!(g.len(), 48);
        assert_eq!(&g[16..24], &3u64.to_le_bytes());
        assert_eq!(&g[32..36], &6u32.to_le_bytes());
        assert_eq!(&g[40..44], &(-0.5f32).to_le_bytes());
        assert_eq!(
            Program::ReduceSum {
                src: 1,
                dst: 2,
                n: 3
            }
            .params()
            .len(),
            24
        );
        let sp = Program::Spin {
            dst: 0,
            units: 7,
            unit_ns: 1000,
        }
        .params();
        assert_eq!((sp.len(), &sp[12..16]), (16, &1000u32.to_le_bytes()[..]));
        assert_eq!(
            Program::Spin {
                dst: 0,
                units: 0,
                unit_ns: 0
            }
            .id(),
            5
        );
    }
}
