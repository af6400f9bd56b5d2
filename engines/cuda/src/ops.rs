//! The built-in operations on the GPU: copies by runs of contiguous bytes,
//! and the kernels of `kernels.cu` (compiled with NVRTC at start-up) for
//! fills, saxpy, gemm, reduce and spin. An operand spread over several
//! extents is gathered into scratch device memory first and, when the
//! kernel writes it, scattered back after.

use std::ffi::c_void;

use cudarc::driver::sys;
use devmodel::command::Op;
use devmodel::gmmu::Extent;
use engine_worker::wire::Status;

use crate::driver::{ck, DeviceBuffer, Module};
use crate::worker::{engine_error, InFlight, Worker, SUM_SLOTS};
use crate::Error;

/// The kernels of `kernels.cu`, and the module that holds them.
pub struct Kernels {
    fill: sys::CUfunction,
    saxpy: sys::CUfunction,
    gemm: sys::CUfunction,
    reduce: sys::CUfunction,
    store_sum: sys::CUfunction,
    pub(crate) spin: sys::CUfunction,
    _module: Module,
}

impl Kernels {
    /// Compile `kernels.cu` with NVRTC and load it; also its PTX.
    pub fn compile() -> Result<(Kernels, String), Error> {
        let ptx = cudarc::nvrtc::compile_ptx(include_str!("kernels.cu")).map_err(Error::Compile)?;
        let src = std::ffi::CString::new(ptx.to_src()).map_err(|_| Error::GuestFile {
            what: "NVRTC's PTX holds a NUL",
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        let mut module = std::ptr::null_mut();
        // SAFETY: `src` is NUL-terminated PTX text, alive for the call.
        ck("cuModuleLoadData", unsafe {
            sys::cuModuleLoadData(&mut module, src.as_ptr().cast())
        })?;
        let module = Module(module);
        let get = |name: &std::ffi::CStr| -> Result<sys::CUfunction, Error> {
            let mut f = std::ptr::null_mut();
            // SAFETY: `module` is loaded; `name` is NUL-terminated.
            ck("cuModuleGetFunction", unsafe {
                sys::cuModuleGetFunction(&mut f, module.0, name.as_ptr())
            })?;
            Ok(f)
        };
        let kernels = Kernels {
            fill: get(c"fill_pattern")?,
            saxpy: get(c"saxpy")?,
            gemm: get(c"gemm")?,
            reduce: get(c"reduce_sum")?,
            store_sum: get(c"store_sum")?,
            spin: get(c"spin")?,
            _module: module,
        };
        Ok((kernels, ptx.to_src()))
    }
}

/// Scratch operands a kernel writes, with the extents to scatter them to.
type Back = Vec<(sys::CUdeviceptr, Vec<(u64, u64)>)>;

/// A kernel argument: a pointer to a live value of the parameter's type.
fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

impl Worker {
    /// Queue one operation on the stream.
    pub(crate) fn queue(&mut self, op: &Op, item: &mut InFlight) -> Result<(), Status> {
        let mut back = Back::new();
        match op {
            Op::Copy { src, dst } => self.copy(src, dst)?,
            Op::Memset { dst, pattern } => self.memset(dst, *pattern)?,
            Op::Saxpy { x, y, n, a } => self.saxpy(x, y, *n, *a, item, &mut back)?,
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
                let (m64, n64, k64) = (*m as u64, *n as u64, *k as u64);
                let ap = self.operand(a, m64 * k64 * 4, item, &mut back, false)?;
                let bp = self.operand(b, k64 * n64 * 4, item, &mut back, false)?;
                let cp = self.operand(c, m64 * n64 * 4, item, &mut back, true)?;
                let (first, last) = (span.start, span.end.min(m64 * n64));
                self.gemm([ap, bp, cp], *n, *k, (*alpha, *beta), (first, last))?;
            }
            Op::ReduceSum { src, dst, n, sum } => {
                self.reduce(src, dst, *n, sum.get(), item, &mut back)?
            }
            Op::Spin { ns, dst, report } => {
                self.spin(*ns, dst.as_deref(), *report, item, &mut back)?
            }
            Op::Batch(_) | Op::ModuleLoad { .. } | Op::Kernel(_) | Op::Module(_) => {
                return Err(engine_error("an operation out of place", "not a built-in"))
            }
        }
        // Scatter written scratch operands back to their extents.
        for (buf, parts) in back {
            let mut at = 0;
            for (p, l) in parts {
                // SAFETY: inside the scratch buffer and the resolved extent.
                unsafe { sys::cuMemcpyAsync(p, buf + at, l as usize, self.stream.0) };
                at += l;
            }
        }
        Ok(())
    }

    /// Pairs of source and destination ranges, contiguous runs merged
    /// (guest RAM and VRAM are mostly contiguous behind page-sized
    /// extents): one copy per run.
    fn copy(&self, src: &[Extent], dst: &[Extent]) -> Result<(), Status> {
        let (mut si, mut di, mut so, mut dof) = (0usize, 0usize, 0u64, 0u64);
        let mut run: Option<(u64, u64, u64)> = None;
        while let (Some(s), Some(d)) = (src.get(si), dst.get(di)) {
            let n = (s.len - so).min(d.len - dof);
            let sp = self.resolve(s)? + so;
            let dp = self.resolve(d)? + dof;
            run = match run {
                Some((rs, rd, rn)) if rs + rn == sp && rd + rn == dp => Some((rs, rd, rn + n)),
                Some((rs, rd, rn)) => {
                    // SAFETY: both ranges lie inside resolved extents.
                    unsafe { sys::cuMemcpyAsync(rd, rs, rn as usize, self.stream.0) };
                    Some((sp, dp, n))
                }
                None => Some((sp, dp, n)),
            };
            so += n;
            dof += n;
            if so == s.len {
                si += 1;
                so = 0;
            }
            if dof == d.len {
                di += 1;
                dof = 0;
            }
        }
        if let Some((rs, rd, rn)) = run {
            // SAFETY: as above.
            unsafe { sys::cuMemcpyAsync(rd, rs, rn as usize, self.stream.0) };
        }
        Ok(())
    }

    /// A 32-bit pattern over every extent, its phase carried across them.
    fn memset(&self, dst: &[Extent], pattern: u32) -> Result<(), Status> {
        let mut phase = 0u64;
        for e in dst {
            let mut p = self.resolve(e)?;
            let (mut n, mut pat, mut ph) = (e.len, pattern, (phase % 4) as u32);
            let g = self.grid(n / 4 + 1);
            let f = self.k.fill;
            self.launch(
                f,
                g,
                256,
                &mut [arg(&mut p), arg(&mut n), arg(&mut pat), arg(&mut ph)],
            )?;
            phase += e.len;
        }
        Ok(())
    }

    fn saxpy(
        &self,
        x: &[Extent],
        y: &[Extent],
        n: u32,
        a: f32,
        item: &mut InFlight,
        back: &mut Back,
    ) -> Result<(), Status> {
        let bytes = n as u64 * 4;
        let mut xp = self.operand(x, bytes, item, back, false)?;
        let mut yp = self.operand(y, bytes, item, back, true)?;
        let (mut n, mut a) = (n, a);
        let g = self.grid(n as u64);
        self.launch(
            self.k.saxpy,
            g,
            256,
            &mut [arg(&mut xp), arg(&mut yp), arg(&mut n), arg(&mut a)],
        )
    }

    /// The elements `first..last` of C (row-major) of `C = alpha·A·B +
    /// beta·C`, with the operands at `abc`.
    fn gemm(
        &self,
        abc: [u64; 3],
        n: u32,
        k: u32,
        (alpha, beta): (f32, f32),
        (first, last): (u64, u64),
    ) -> Result<(), Status> {
        let [mut ap, mut bp, mut cp] = abc;
        let (mut nn, mut kk, mut al, mut be) = (n, k, alpha, beta);
        let (mut first, mut last) = (first, last);
        let g = self.grid(last.saturating_sub(first));
        self.launch(
            self.k.gemm,
            g,
            256,
            &mut [
                arg(&mut ap),
                arg(&mut bp),
                arg(&mut cp),
                arg(&mut nn),
                arg(&mut kk),
                arg(&mut al),
                arg(&mut be),
                arg(&mut first),
                arg(&mut last),
            ],
        )
    }

    /// Sum `n` floats of `src` into the item's mapped f64 slot (carrying
    /// `carry` in), and store the sum so far to `dst` when it is given.
    fn reduce(
        &mut self,
        src: &[Extent],
        dst: &[Extent],
        n: u32,
        carry: f64,
        item: &mut InFlight,
        back: &mut Back,
    ) -> Result<(), Status> {
        let mut sp = self.operand(src, n as u64 * 4, item, back, false)?;
        let slot = self.next_sum;
        self.next_sum = (self.next_sum + 1) % SUM_SLOTS;
        // SAFETY: `slot` < SUM_SLOTS, inside the mapped host buffer.
        let host = unsafe { self.sums.host.cast::<f64>().add(slot) };
        // SAFETY: as above; the slot's previous item completed long ago (a
        // ring far deeper than the items in flight).
        unsafe { std::ptr::write_volatile(host, 0.0) };
        let mut acc = self.sums.dev + slot as u64 * 8;
        let mut nn = n;
        let g = self.grid(nn as u64).min(1024);
        self.launch(
            self.k.reduce,
            g,
            256,
            &mut [arg(&mut sp), arg(&mut nn), arg(&mut acc)],
        )?;
        item.sum = Some((host, carry));
        if !dst.is_empty() {
            let mut dp = self.operand(dst, 4, item, back, true)?;
            let mut c = carry;
            self.launch(
                self.k.store_sum,
                1,
                1,
                &mut [arg(&mut acc), arg(&mut c), arg(&mut dp)],
            )?;
        }
        Ok(())
    }

    /// Occupy every multiprocessor for `ns`, then write `report` to `dst`
    /// (and its start and end to a timeline slot, where there is one).
    fn spin(
        &mut self,
        ns: u64,
        dst: Option<&[Extent]>,
        report: u32,
        item: &mut InFlight,
        back: &mut Back,
    ) -> Result<(), Status> {
        let mut dp = match dst {
            Some(d) => self.operand(d, 4, item, back, true)?,
            None => 0,
        };
        let slot = self.timeline.as_mut().map(|t| t.take());
        let mut at = slot.as_ref().map_or(0, |s| s.0);
        let (mut ns, mut rep, mut sync) = (ns, report, self.spin_sync.0);
        self.launch(
            self.k.spin,
            self.sms,
            32,
            &mut [
                arg(&mut ns),
                arg(&mut dp),
                arg(&mut rep),
                arg(&mut sync),
                arg(&mut at),
            ],
        )?;
        // Read once the item completes: only a spin that was launched.
        if let Some((_, host)) = slot {
            item.spins.push(host);
        }
        Ok(())
    }

    /// One contiguous device buffer holding `ext` (`bytes` long): the
    /// extent itself, or scratch gathered from the pieces (and scattered
    /// back after the kernel when `written`).
    fn operand(
        &self,
        ext: &[Extent],
        bytes: u64,
        item: &mut InFlight,
        back: &mut Back,
        written: bool,
    ) -> Result<u64, Status> {
        let total: u64 = ext.iter().map(|e| e.len).sum();
        if total < bytes {
            return Err(engine_error(
                "an operand",
                format_args!("{total} bytes of extents for {bytes}"),
            ));
        }
        if let [one] = ext {
            return self.resolve(one);
        }
        let parts: Vec<(u64, u64)> = ext
            .iter()
            .map(|e| self.resolve(e).map(|p| (p, e.len)))
            .collect::<Result<_, _>>()?;
        let buf = DeviceBuffer::new(total.max(4) as usize)
            .map_err(|e| engine_error("scratch memory", e))?;
        let mut at = 0;
        for (p, l) in &parts {
            // SAFETY: the copies stay inside the new buffer of `total`
            // bytes and inside each resolved extent.
            unsafe { sys::cuMemcpyAsync(buf.0 + at, *p, *l as usize, self.stream.0) };
            at += l;
        }
        let ptr = buf.0;
        item.scratch.push(buf);
        if written {
            back.push((ptr, parts));
        }
        Ok(ptr)
    }

    fn launch(
        &self,
        f: sys::CUfunction,
        grid: u32,
        block: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), Status> {
        // SAFETY: `args` points at live values of the types the kernel's
        // parameters have (checked by each caller against kernels.cu).
        let r = unsafe {
            sys::cuLaunchKernel(
                f,
                grid.max(1),
                1,
                1,
                block,
                1,
                1,
                0,
                self.stream.0,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(engine_error("cuLaunchKernel", format_args!("{r:?}")))
        }
    }

    fn grid(&self, elems: u64) -> u32 {
        (elems.div_ceil(256).min(self.sms as u64 * 16)) as u32
    }
}
