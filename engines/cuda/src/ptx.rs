//! Guest PTX: the modules a guest loads, the address space its kernels run
//! in, and their launches.
//!
//! Guest kernels run in a 512 GiB range of this process's GPU address space
//! reserved at [`PTX_VA_BASE`]: the vGPU's VA `v` is at `PTX_VA_BASE + v`.
//! The framebuffer's 2 MiB chunks are mapped there again, chunk by chunk,
//! where the launching channel's page tables put them
//! ([`devmodel::gmmu::KernelMap`]). Nothing else is mapped in that range:
//! a guest pointer outside its mapped VRAM faults this process's context.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::driver::sys;
use devmodel::command::KernelLaunch;
use devmodel::gmmu::{Extent, KernelMap, KernelRun, PAGE_2M, VA_BITS};
use engine_worker::wire::Status;

use crate::driver::{
    chunk_prop, set_access, Mapping, Module, VaReservation, CUDA_ERROR_NOT_FOUND,
    CUDA_ERROR_NOT_SUPPORTED,
};
use crate::worker::{InFlight, Worker};

/// Where guest kernels see the vGPU's VA 0 (`PTX_VA_BASE`, ABI §7.1): a
/// fixed address, so that a new worker (after a fault) gives the guest the
/// same pointers. 32 TiB lies between where Linux puts programs' own
/// mappings and CUDA's; a worker that cannot reserve the range there runs
/// no guest PTX and says so.
pub const PTX_VA_BASE: u64 = 0x2000_0000_0000;

/// The JIT's log buffers, each way.
const LOG: usize = 64 << 10;

/// Guest kernels' address space and the guest's modules. Field order is
/// drop order: mappings before their reservation.
pub struct KernelSpace {
    /// The runs in force (their id, and each run with its chunks' mappings).
    map: (u64, Vec<(KernelRun, Vec<Mapping>)>),
    /// The map sent for the next launch.
    pub(crate) next_map: Option<KernelMap>,
    /// Guest modules by slot, and their functions by (slot, name).
    modules: HashMap<u32, Module>,
    functions: HashMap<(u32, String), sys::CUfunction>,
    /// The 2^39 bytes at [`PTX_VA_BASE`] (none: no guest PTX here).
    range: Option<VaReservation>,
}

impl KernelSpace {
    /// Reserve guest kernels' 2^39 bytes at [`PTX_VA_BASE`]; a space with
    /// no range where that (or 2 MiB mapping granularity) is not to be had.
    pub fn reserve(dev: sys::CUdevice) -> KernelSpace {
        let mut s = KernelSpace {
            map: (0, Vec::new()),
            next_map: None,
            modules: HashMap::new(),
            functions: HashMap::new(),
            range: None,
        };
        if let Err(e) = chunk_prop(dev) {
            eprintln!("{e}: no guest PTX");
            return s;
        }
        match VaReservation::new(1usize << VA_BITS, PTX_VA_BASE) {
            Ok(r) if r.ptr == PTX_VA_BASE => s.range = Some(r),
            Ok(r) => eprintln!(
                "guest kernel address space landed at {:#x}, not {PTX_VA_BASE:#x}: no guest PTX",
                r.ptr
            ),
            Err(e) => eprintln!("guest kernel address space not reserved ({e}): no guest PTX"),
        }
        s
    }

    /// Where guest kernels see VA 0 (0: no guest PTX here).
    pub fn base(&self) -> u64 {
        self.range.as_ref().map_or(0, |r| r.ptr)
    }

    /// Drop every module (the stream is idle).
    pub fn unload_all(&mut self) {
        self.functions.clear();
        self.modules.clear();
    }
}

impl Worker {
    /// Load guest PTX into `slot` (JIT-compiled now, on this thread) and
    /// queue its log for the guest's buffer `log`. A module the slot held
    /// is unloaded once the work queued before has run.
    pub(crate) fn module_load(
        &mut self,
        slot: u32,
        text: &[u8],
        log: &[Extent],
        item: &mut InFlight,
    ) -> Result<(), Status> {
        if self.kspace.base() == 0 {
            item.error = CUDA_ERROR_NOT_SUPPORTED;
            return Err(Status::Refused);
        }
        if let Some(old) = self.kspace.modules.remove(&slot) {
            self.kspace.functions.retain(|(s, _), _| *s != slot);
            // The stream's work (which may run the old module's kernels)
            // completes before the module goes.
            let _ = self.stream.sync();
            drop(old);
        }
        let mut image = text.to_vec();
        image.push(0);
        let (mut info, mut error) = (vec![0u8; LOG], vec![0u8; LOG]);
        let mut opts = [
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut vals: [*mut c_void; 4] = [
            info.as_mut_ptr().cast(),
            LOG as *mut c_void,
            error.as_mut_ptr().cast(),
            LOG as *mut c_void,
        ];
        let mut module = std::ptr::null_mut();
        // SAFETY: `image` is NUL-terminated text; each log option points at
        // a live buffer of the size given beside it.
        let r = unsafe {
            sys::cuModuleLoadDataEx(
                &mut module,
                image.as_ptr().cast(),
                opts.len() as u32,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        };
        let ok = r == sys::CUresult::CUDA_SUCCESS;
        if ok {
            self.kspace.modules.insert(slot, Module(module));
        }
        self.write_log(if ok { &info } else { &error }, log)?;
        if ok {
            Ok(())
        } else {
            item.error = r as u32;
            Err(Status::Module)
        }
    }

    /// Queue the JIT's log `text` (up to its NUL) for the guest's buffer
    /// `log`, NUL-terminated, truncated to the buffer.
    fn write_log(&self, text: &[u8], log: &[Extent]) -> Result<(), Status> {
        let len = text.iter().position(|&b| b == 0).unwrap_or(LOG - 1);
        let total: u64 = log.iter().map(|e| e.len).sum();
        if total == 0 {
            return Ok(());
        }
        let mut bytes = text[..len.min(total as usize - 1)].to_vec();
        bytes.push(0);
        let mut at = 0usize;
        for e in log {
            if at >= bytes.len() {
                break;
            }
            let n = (e.len as usize).min(bytes.len() - at);
            let dst = self.resolve(e)?;
            // SAFETY: `n` bytes inside the resolved extent; the source is
            // pageable, so the call returns once it has been staged.
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(dst, bytes[at..].as_ptr().cast(), n, self.stream.0)
            };
            at += n;
        }
        Ok(())
    }

    /// Make `map` the address space guest kernels run in: the runs of the
    /// framebuffer the daemon sent for it, mapped at `PTX_VA_BASE + va`.
    fn apply_map(&mut self, map: &KernelMap) -> Result<(), Status> {
        if self.kspace.map.0 == map.id {
            return Ok(());
        }
        let Some(next) = self.kspace.next_map.take().filter(|m| m.id == map.id) else {
            eprintln!("kernel map {} was not sent", map.id);
            return Err(Status::Engine);
        };
        let same = next.runs.len() == self.kspace.map.1.len()
            && next
                .runs
                .iter()
                .zip(&self.kspace.map.1)
                .all(|(a, (b, _))| a == b);
        if same {
            self.kspace.map.0 = next.id;
            return Ok(());
        }
        let size = self.fb.chunk_bytes();
        let fits = |r: &KernelRun| {
            r.va.checked_add(r.len).is_some_and(|e| e <= 1 << VA_BITS)
                && r.vram.checked_add(r.len).is_some_and(|e| e <= size)
                && (r.va | r.vram | r.len).is_multiple_of(PAGE_2M)
        };
        // The work queued before (which may use the old mappings)
        // completes first; the old mappings go.
        let _ = self.stream.sync();
        self.kspace.map = (0, Vec::new());
        let base = self.kspace.base();
        for r in next.runs.iter().filter(|r| fits(r)) {
            let at = base + r.va;
            let first = (r.vram / PAGE_2M) as usize;
            let chunks = self
                .fb
                .chunks
                .get(first..first + (r.len / PAGE_2M) as usize)
                .unwrap_or(&[]);
            let mut mapped = Vec::with_capacity(chunks.len());
            for (k, c) in chunks.iter().enumerate() {
                match Mapping::new(at + k as u64 * PAGE_2M, c) {
                    Ok(m) => mapped.push(m),
                    Err(e) => {
                        eprintln!("mapping a guest kernel chunk: {e}");
                        self.kspace.map.1.push((*r, mapped));
                        return Err(Status::Engine);
                    }
                }
            }
            self.kspace.map.1.push((*r, mapped));
            if let Err(e) = set_access(at, r.len as usize, self.device, !r.read_only) {
                eprintln!("access of a guest kernel run: {e}");
                return Err(Status::Engine);
            }
        }
        self.kspace.map.0 = next.id;
        Ok(())
    }

    /// The function `k` names, looked up once per module.
    fn function(&mut self, k: &KernelLaunch) -> Result<sys::CUfunction, u32> {
        let Some(module) = self.kspace.modules.get(&k.slot) else {
            return Err(CUDA_ERROR_NOT_FOUND);
        };
        let key = (k.slot, k.func.clone());
        if let Some(f) = self.kspace.functions.get(&key) {
            return Ok(*f);
        }
        let name = std::ffi::CString::new(k.func.as_bytes()).map_err(|_| CUDA_ERROR_NOT_FOUND)?;
        let mut f = std::ptr::null_mut();
        // SAFETY: `module` is loaded; `name` is NUL-terminated.
        let r = unsafe { sys::cuModuleGetFunction(&mut f, module.0, name.as_ptr()) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(r as u32);
        }
        self.kspace.functions.insert(key, f);
        Ok(f)
    }

    /// Queue a guest kernel: its module's function, in its channel's
    /// address space, with the guest's grid, block and parameter buffer.
    pub(crate) fn kernel(&mut self, k: &KernelLaunch, item: &mut InFlight) -> Result<(), Status> {
        let refuse = |item: &mut InFlight, code: u32| {
            item.error = code;
            Err(Status::Refused)
        };
        if self.kspace.base() == 0 {
            return refuse(item, CUDA_ERROR_NOT_SUPPORTED);
        }
        let f = match self.function(k) {
            Ok(f) => f,
            Err(code) => return refuse(item, code),
        };
        self.apply_map(&k.map)?;
        let mut params = k.params.clone();
        let mut size = params.len();
        let mut extra: [*mut c_void; 5] = [
            sys::CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT as usize as *mut c_void,
            params.as_mut_ptr().cast(),
            sys::CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT as usize as *mut c_void,
            (&mut size as *mut usize).cast(),
            sys::CU_LAUNCH_PARAM_END_AS_INT as usize as *mut c_void,
        ];
        let extra_ptr = if params.is_empty() {
            std::ptr::null_mut()
        } else {
            extra.as_mut_ptr()
        };
        // SAFETY: the parameter buffer and its size live across the call
        // (CUDA copies them); the function belongs to this context.
        let r = unsafe {
            sys::cuLaunchKernel(
                f,
                k.grid[0],
                k.grid[1],
                k.grid[2],
                k.block[0],
                k.block[1],
                k.block[2],
                0,
                self.stream.0,
                std::ptr::null_mut(),
                extra_ptr,
            )
        };
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            refuse(item, r as u32)
        }
    }
}
