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
use std::ffi::{c_void, CString};

use cudarc::driver::sys;
use devmodel::command::{KernelLaunch, ModuleOp};
use devmodel::gmmu::{Extent, KernelMap, KernelRun, PAGE_2M, VA_BITS};
use engine_worker::wire::Status;
use mmio::methods::compute;

use crate::driver::{
    chunk_prop, ck, set_access, LinkState, Mapping, Module, VaReservation,
    CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_SUPPORTED,
};
use crate::modules::{
    func_info_answer, global_answer, Compiled, ImageKind, Loader, ModuleTable, Refusal,
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

/// A function of a guest module, looked up once.
pub struct Function {
    f: sys::CUfunction,
    /// The dynamic shared memory its launches may use now
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`), raised by the
    /// launches that need more.
    shared: u32,
}

/// A guest module: the driver's, and its functions by name. Dropping it
/// unloads it (once no queued work runs its kernels: see
/// `InFlight::retired` in `crate::worker`).
pub struct GuestModule {
    functions: HashMap<String, Function>,
    module: Module,
}

/// Guest kernels' address space and the guest's modules. Field order is
/// drop order: mappings before their reservation.
pub struct KernelSpace {
    /// The runs in force (their id, and each run with its chunks' mappings).
    map: (u64, Vec<(KernelRun, Vec<Mapping>)>),
    /// The map sent for the next launch.
    pub(crate) next_map: Option<KernelMap>,
    /// Guest modules by handle (ABI 1.2's slots are handles 0–7).
    modules: ModuleTable<GuestModule>,
    /// How they are compiled and loaded.
    loader: Driver,
    /// The 2^39 bytes at [`PTX_VA_BASE`] (none: no guest PTX).
    range: Option<VaReservation>,
}

impl KernelSpace {
    /// Reserve guest kernels' 2^39 bytes at [`PTX_VA_BASE`]; a space with
    /// no range where that (or 2 MiB mapping granularity) is not to be had.
    pub fn reserve(dev: sys::CUdevice) -> KernelSpace {
        let mut s = KernelSpace {
            map: (0, Vec::new()),
            next_map: None,
            modules: ModuleTable::default(),
            loader: Driver { link: false },
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

    /// Try the compile path of guest PTX (the driver's JIT linker) on
    /// `ptx`, and load its output, before the worker is confined: whatever
    /// the driver loads for it the first time (its JIT compiler library)
    /// is loaded while there are files to load it from. Where it fails,
    /// guest PTX is loaded directly, each load compiled again (said on
    /// stderr).
    pub fn try_link(&mut self, ptx: &str) {
        self.loader.link = true;
        let linked = self
            .loader
            .compile(ptx.as_bytes())
            .and_then(|c| self.loader.load(&c.code, ImageKind::Cubin));
        if let Err(r) = linked {
            self.loader.link = false;
            eprintln!(
                "guest PTX will be compiled at each load: the JIT linker refused the built-in kernels (CUDA error {}): {}",
                r.code,
                String::from_utf8_lossy(&r.log)
            );
        }
    }

    /// Drop every module (the stream is idle).
    pub fn unload_all(&mut self) {
        let (n, bytes) = self.modules.usage();
        let c = self.modules.counts;
        if n > 0 || c.compiled > 0 {
            eprintln!(
                "{n} guest modules ({bytes} bytes of images) unloaded; {} texts compiled, {} loads from the cache",
                c.compiled, c.cached
            );
        }
        drop(self.modules.clear());
    }
}

/// The driver's JIT and loader, with log buffers for each call.
struct Driver {
    /// PTX goes through the JIT linker and its output is cached (else it
    /// is loaded directly: [`KernelSpace::try_link`]).
    link: bool,
}

/// The log up to its NUL.
fn trimmed(mut log: Vec<u8>) -> Vec<u8> {
    let n = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    log.truncate(n);
    log
}

/// The four JIT options that collect the info and error logs into `info`
/// and `error` (each [`LOG`] bytes).
fn log_options(info: &mut [u8], error: &mut [u8]) -> ([sys::CUjit_option; 4], [*mut c_void; 4]) {
    (
        [
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ],
        [
            info.as_mut_ptr().cast(),
            info.len() as *mut c_void,
            error.as_mut_ptr().cast(),
            error.len() as *mut c_void,
        ],
    )
}

impl Loader for Driver {
    type Module = GuestModule;

    /// PTX to a cubin through the driver's JIT linker (`cuLink*`, one PTX
    /// input: what `cuModuleLoadData` of the text compiles, kept).
    fn compile(&mut self, ptx: &[u8]) -> Result<Compiled, Refusal> {
        if !self.link {
            return Err(Refusal::new(CUDA_ERROR_NOT_SUPPORTED));
        }
        let mut text = ptx.to_vec();
        text.push(0);
        let (mut info, mut error) = (vec![0u8; LOG], vec![0u8; LOG]);
        let (mut opts, mut vals) = log_options(&mut info, &mut error);
        let mut state = std::ptr::null_mut();
        // SAFETY: each log option points at a live buffer of the size
        // given beside it, for the life of the link.
        ck("cuLinkCreate", unsafe {
            sys::cuLinkCreate_v2(4, opts.as_mut_ptr(), vals.as_mut_ptr(), &mut state)
        })
        .map_err(|e| Refusal::new(e.code))?;
        let link = LinkState(state);
        let refused = |r: sys::CUresult, error: Vec<u8>| Refusal {
            code: r as u32,
            log: trimmed(error),
        };
        // SAFETY: `text` is NUL-terminated PTX of the length given, alive
        // for the call; no per-input options.
        let r = unsafe {
            sys::cuLinkAddData_v2(
                link.0,
                sys::CUjitInputType::CU_JIT_INPUT_PTX,
                text.as_mut_ptr().cast(),
                ptx.len(),
                c"guest.ptx".as_ptr(),
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            drop(link);
            return Err(refused(r, error));
        }
        let (mut cubin, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the link holds one input; its output stays valid until
        // the link is destroyed (after the copy below).
        let r = unsafe { sys::cuLinkComplete(link.0, &mut cubin, &mut size) };
        if r != sys::CUresult::CUDA_SUCCESS || cubin.is_null() {
            drop(link);
            return Err(refused(r, error));
        }
        // SAFETY: the driver's output, `size` bytes at `cubin`.
        let code = unsafe { std::slice::from_raw_parts(cubin.cast::<u8>(), size) }.to_vec();
        drop(link);
        Ok(Compiled {
            code,
            log: trimmed(info),
        })
    }

    /// `cuModuleLoadDataEx` of the image as it came (PTX NUL-terminated).
    fn load(&mut self, image: &[u8], kind: ImageKind) -> Result<(GuestModule, Vec<u8>), Refusal> {
        let owned;
        let image = if kind == ImageKind::Ptx {
            let mut t = image.to_vec();
            t.push(0);
            owned = t;
            &owned[..]
        } else {
            image
        };
        let (mut info, mut error) = (vec![0u8; LOG], vec![0u8; LOG]);
        let (mut opts, mut vals) = log_options(&mut info, &mut error);
        let mut module = std::ptr::null_mut();
        // SAFETY: PTX is NUL-terminated; a cubin's or fatbin's headers lie
        // inside its bytes (`modules::audit`); each log option points at a
        // live buffer of the size given beside it.
        let r = unsafe {
            sys::cuModuleLoadDataEx(
                &mut module,
                image.as_ptr().cast(),
                opts.len() as u32,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        };
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok((
                GuestModule {
                    functions: HashMap::new(),
                    module: Module(module),
                },
                trimmed(info),
            ))
        } else {
            Err(Refusal {
                code: r as u32,
                log: trimmed(error),
            })
        }
    }
}

/// The function attributes `FUNC_INFO` reports, in `CUfunction_attribute`
/// order (0–15).
const FUNC_ATTRIBUTES: [sys::CUfunction_attribute; compute::FUNC_ATTRIBUTES] = {
    use sys::CUfunction_attribute::*;
    [
        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
        CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
        CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES,
        CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES,
        CU_FUNC_ATTRIBUTE_NUM_REGS,
        CU_FUNC_ATTRIBUTE_PTX_VERSION,
        CU_FUNC_ATTRIBUTE_BINARY_VERSION,
        CU_FUNC_ATTRIBUTE_CACHE_MODE_CA,
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET,
        CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH,
        CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT,
        CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH,
        CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
        CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE,
    ]
};

/// A function attribute (0 where the driver has none for it).
fn attribute(f: sys::CUfunction, a: sys::CUfunction_attribute) -> i32 {
    let mut v = 0;
    // SAFETY: a query of a function of this context, valid out-pointer.
    let r = unsafe { sys::cuFuncGetAttribute(&mut v, a, f) };
    if r == sys::CUresult::CUDA_SUCCESS {
        v
    } else {
        0
    }
}

impl GuestModule {
    /// Function `name`, looked up once (the driver's error when it has
    /// none).
    fn function(&mut self, name: &str) -> Result<&mut Function, u32> {
        if !self.functions.contains_key(name) {
            let c = CString::new(name).map_err(|_| CUDA_ERROR_NOT_FOUND)?;
            let mut f = std::ptr::null_mut();
            // SAFETY: the module is loaded; `c` is NUL-terminated.
            let r = unsafe { sys::cuModuleGetFunction(&mut f, self.module.0, c.as_ptr()) };
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(r as u32);
            }
            let shared = attribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            )
            .max(0) as u32;
            self.functions
                .insert(name.to_string(), Function { f, shared });
        }
        self.functions.get_mut(name).ok_or(CUDA_ERROR_NOT_FOUND)
    }
}

/// A function's parameters (offset, size) and attributes.
type Description = (Vec<(u32, u32)>, [i32; compute::FUNC_ATTRIBUTES]);

/// Function `f`'s parameter layout (`cuFuncGetParamInfo`, index by index
/// until the driver says there is none: at most one past
/// [`compute::MAX_FUNC_PARAMS`]) and attributes.
fn describe(f: sys::CUfunction) -> Result<Description, u32> {
    let mut params = Vec::new();
    for i in 0..=compute::MAX_FUNC_PARAMS as usize {
        let (mut off, mut size) = (0usize, 0usize);
        // SAFETY: a query of a function of this context, valid out-pointers.
        let r = unsafe { sys::cuFuncGetParamInfo(f, i, &mut off, &mut size) };
        match r {
            sys::CUresult::CUDA_SUCCESS => params.push((
                u32::try_from(off).unwrap_or(u32::MAX),
                u32::try_from(size).unwrap_or(u32::MAX),
            )),
            // Past the last parameter.
            sys::CUresult::CUDA_ERROR_INVALID_VALUE => break,
            e => return Err(e as u32),
        }
    }
    Ok((params, FUNC_ATTRIBUTES.map(|a| attribute(f, a))))
}

impl Worker {
    /// Load a guest image under module `handle` (PTX compiled now, on this
    /// thread, or taken from the cache; a cubin or fatbin loaded as it is)
    /// and queue its log for the guest's buffer `log`. A module the handle
    /// held goes once the work queued before has run.
    pub(crate) fn module_load(
        &mut self,
        handle: u32,
        image: &[u8],
        log: &[Extent],
        item: &mut InFlight,
    ) -> Result<(), Status> {
        if self.kspace.base() == 0 {
            item.error = CUDA_ERROR_NOT_SUPPORTED;
            return Err(Status::Refused);
        }
        let KernelSpace {
            modules, loader, ..
        } = &mut self.kspace;
        match modules.load(loader, handle, image) {
            Ok(done) => {
                item.retired.extend(done.replaced);
                self.write_text(&done.log, log)
            }
            Err((refusal, replaced)) => {
                item.retired.extend(replaced);
                self.write_text(&refusal.log, log)?;
                item.error = refusal.code;
                Err(Status::Module)
            }
        }
    }

    /// ABI 1.3's module operations: `MODULE_UNLOAD` (the module goes once
    /// the work queued before has run), `FUNC_INFO` and `MODULE_GLOBAL`
    /// (their answers queued for the guest's buffer; a missing module or
    /// name is the answer's status, not a failure).
    pub(crate) fn module_op(&mut self, op: &ModuleOp, item: &mut InFlight) -> Result<(), Status> {
        if self.kspace.base() == 0 {
            item.error = CUDA_ERROR_NOT_SUPPORTED;
            return Err(Status::Refused);
        }
        match op {
            ModuleOp::Unload { handle } => {
                item.retired.extend(self.kspace.modules.unload(*handle));
                Ok(())
            }
            ModuleOp::FuncInfo {
                handle,
                name,
                answer,
            } => {
                let info = self
                    .kspace
                    .modules
                    .get_mut(*handle)
                    .ok_or(CUDA_ERROR_INVALID_HANDLE)
                    .and_then(|m| m.function(name).map(|f| f.f))
                    .and_then(describe);
                let bytes = match info {
                    Ok((params, attrs)) => func_info_answer(0, &params, &attrs),
                    Err(code) => func_info_answer(code, &[], &[0; compute::FUNC_ATTRIBUTES]),
                };
                self.write_guest(&bytes, answer)
            }
            ModuleOp::Global {
                handle,
                name,
                answer,
            } => {
                let found = self
                    .kspace
                    .modules
                    .get(*handle)
                    .ok_or(CUDA_ERROR_INVALID_HANDLE)
                    .and_then(|m| global(m, name));
                let bytes = match found {
                    Ok((addr, size)) => global_answer(0, addr, size),
                    Err(code) => global_answer(code, 0, 0),
                };
                self.write_guest(&bytes, answer)
            }
        }
    }

    /// Queue `text` for the guest's buffer `log`, NUL-terminated, truncated
    /// to the buffer.
    fn write_text(&self, text: &[u8], log: &[Extent]) -> Result<(), Status> {
        let total: u64 = log.iter().map(|e| e.len).sum();
        if total == 0 {
            return Ok(());
        }
        let mut bytes = text[..text.len().min(total as usize - 1)].to_vec();
        bytes.push(0);
        self.write_guest(&bytes, log)
    }

    /// Queue `bytes` for the guest memory `to` (as far as it reaches), in
    /// order on the work stream.
    fn write_guest(&self, bytes: &[u8], to: &[Extent]) -> Result<(), Status> {
        let mut at = 0usize;
        for e in to {
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

    /// Queue a guest kernel: its module's function, in its channel's
    /// address space, with the guest's grid, block, dynamic shared memory
    /// (the function's opt-in limit raised to it when it needs more; past
    /// what the GPU allows the driver refuses, and so is the launch) and
    /// parameter buffer.
    pub(crate) fn kernel(&mut self, k: &KernelLaunch, item: &mut InFlight) -> Result<(), Status> {
        let refuse = |item: &mut InFlight, code: u32| {
            item.error = code;
            Err(Status::Refused)
        };
        if self.kspace.base() == 0 {
            return refuse(item, CUDA_ERROR_NOT_SUPPORTED);
        }
        let func = match self.kspace.modules.get_mut(k.slot) {
            None => Err(CUDA_ERROR_NOT_FOUND),
            Some(m) => m.function(&k.func),
        };
        let f = match func {
            Ok(func) => {
                if k.shared > func.shared {
                    // SAFETY: a function of this context; the value is a
                    // byte count (≤ 1 MiB: audited by the device model).
                    let r = unsafe {
                        sys::cuFuncSetAttribute(
                            func.f,
                            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                            k.shared as i32,
                        )
                    };
                    if r != sys::CUresult::CUDA_SUCCESS {
                        return refuse(item, r as u32);
                    }
                    func.shared = k.shared;
                }
                func.f
            }
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
                k.shared,
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

/// Global `name` of module `m`: its address (in this context, where guest
/// kernels reach it) and size, or the driver's error.
fn global(m: &GuestModule, name: &str) -> Result<(u64, u64), u32> {
    let c = CString::new(name).map_err(|_| CUDA_ERROR_NOT_FOUND)?;
    let (mut addr, mut size) = (0, 0usize);
    // SAFETY: the module is loaded; `c` is NUL-terminated; valid out-pointers.
    let r = unsafe { sys::cuModuleGetGlobal_v2(&mut addr, &mut size, m.module.0, c.as_ptr()) };
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok((addr, size as u64))
    } else {
        Err(r as u32)
    }
}
