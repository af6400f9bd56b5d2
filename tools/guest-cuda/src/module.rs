//! Modules, libraries, functions, globals and links (ABI 1.3 §5.4).
//!
//! An image (PTX text, a cubin or a fatbin, told apart by its first bytes) goes to the vGPU
//! unchanged with `MODULE_LOAD` under a module handle of the vGPU; the engine compiles or
//! loads it (PTX JIT, cubin and fatbin as the GPU's driver takes them) in the vGPU's own
//! worker. The library learns a function's parameter layout and attributes with `FUNC_INFO`
//! and a global's address and size with `MODULE_GLOBAL`, and unloads with `MODULE_UNLOAD`.
//! Loads and queries go to the control channel and are waited for: a module or function
//! handle the API returns refers to something the vGPU has.
//!
//! A library (`cuLibrary*`, which cuda.core uses) is a module loaded at once; its kernels are
//! its module's functions, and a `CUkernel` is the `CUfunction` of the same function.
//! A link (`cuLink*`) bundles one input: the image it completes to is that input.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CStr, CString};

use vgpu_guest::pushbuf::compute;

use crate::copy::{staging, STAGING};
use crate::driver::{wait, with, Driver, Table};
use crate::error::{err, CuError, Result};
use crate::types::*;

/// Where in the staging buffer a module image, its log and a query's answer go.
const LOG_AT: u64 = 8 << 20;
const LOG_BYTES: u32 = 64 << 10;
const ANSWER_AT: u64 = 12 << 20;

/// A function's parameters (offset, size) and attributes, as `FUNC_INFO` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuncInfo {
    pub params: Vec<(u32, u32)>,
    pub attrs: [i32; compute::FUNC_ATTRIBUTES],
}

impl FuncInfo {
    /// Decode a `FUNC_INFO` answer: the status (a CUDA error number) or the info.
    pub fn decode(b: &[u8]) -> std::result::Result<FuncInfo, CUresult> {
        let u32_at = |o: usize| -> u32 {
            b.get(o..o + 4)
                .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let status = u32_at(0);
        if status != 0 {
            return Err(i32::try_from(status).unwrap_or(CUDA_ERROR_UNKNOWN));
        }
        let count = u32_at(4);
        if count > compute::MAX_FUNC_PARAMS {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        let mut attrs = [0i32; compute::FUNC_ATTRIBUTES];
        for (i, a) in attrs.iter_mut().enumerate() {
            *a = u32_at(compute::FUNC_INFO_ATTRS + 4 * i) as i32;
        }
        let params = (0..count as usize)
            .map(|i| {
                let o = compute::FUNC_INFO_PARAMS + 8 * i;
                (u32_at(o), u32_at(o + 4))
            })
            .collect::<Vec<_>>();
        if params
            .iter()
            .any(|&(o, s)| o as u64 + s as u64 > compute::MAX_PARAMS as u64)
        {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        Ok(FuncInfo { params, attrs })
    }

    /// The size of the parameter block.
    pub fn params_size(&self) -> u32 {
        self.params.iter().map(|&(o, s)| o + s).max().unwrap_or(0)
    }
}

/// A loaded module.
#[derive(Debug)]
pub struct Module {
    pub ctx: usize,
    /// The vGPU's module handle.
    pub handle: u32,
    pub funcs: HashMap<CString, usize>,
    /// Globals by name: address and size.
    pub globals: HashMap<CString, (u64, u64)>,
}

/// A function (also a `CUkernel`).
#[derive(Debug)]
pub struct Function {
    pub module: usize,
    pub name: CString,
    pub info: FuncInfo,
    /// `cuFuncSetAttribute` values (e.g. the dynamic shared memory opt-in).
    pub set_attrs: HashMap<i32, i32>,
}

/// A link in progress.
#[derive(Debug, Default)]
pub struct Link {
    inputs: Vec<Vec<u8>>,
    out: Vec<u8>,
}

/// The modules of the process.
#[derive(Debug, Default)]
pub struct Modules {
    pub map: Table<Module>,
    pub funcs: Table<Function>,
    /// Libraries: their module.
    pub libs: Table<usize>,
    pub links: Table<Link>,
    /// Globals of loaded modules by address: size.
    pub globals: BTreeMap<u64, u64>,
    free: Vec<u32>,
    next: u32,
}

impl Modules {
    fn take_handle(&mut self) -> Result<u32> {
        if let Some(h) = self.free.pop() {
            return Ok(h);
        }
        if self.next >= compute::MAX_MODULES {
            return err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// The global holding `p`, if any: (start, size).
    pub fn global_of(&self, p: u64) -> Option<(u64, u64)> {
        self.globals
            .range(..=p)
            .next_back()
            .filter(|(s, len)| p - **s < (**len).max(1))
            .map(|(s, l)| (*s, *l))
    }
}

// ---- images -----------------------------------------------------------------------

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const FATBIN_WRAPPER_MAGIC: u32 = 0x4662_43B1;

fn u16_at(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn u32_at(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u32_at(b, o) | u32_at(b, o + 4) << 32
}

/// Whether the image at `p` starts with a fatbin or fatbin-wrapper magic, read byte by byte
/// so that a short PTX text is never read past its NUL.
fn magic4(p: *const c_void) -> Result<bool> {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = crate::cabi::read_at(p.cast::<u8>(), i)?;
        if *x == 0 {
            return Ok(false);
        }
    }
    let m = u32::from_le_bytes(b);
    Ok(m == FATBIN_MAGIC || m == FATBIN_WRAPPER_MAGIC)
}

/// The bytes of the image at `p`: a cubin (ELF: up to the end of its last header table or
/// section), a fatbin (its header's size), a fatbin wrapper (the fatbin it points at), or
/// PTX text (up to its NUL, which is not included).
pub fn image<'a>(p: *const c_void) -> Result<&'a [u8]> {
    let first = crate::cabi::bytes(p.cast(), 1)?;
    let max = compute::MAX_MODULE_BYTES as u64;
    let sized = |len: u64| -> Result<&'a [u8]> {
        if len == 0 || len > max {
            return err(CUDA_ERROR_INVALID_IMAGE);
        }
        crate::cabi::bytes(p.cast(), len as usize)
    };
    match first[0] {
        0x7F => {
            let h = crate::cabi::bytes(p.cast(), 64)?;
            if h[..4] != ELF_MAGIC || h[4] != 2 {
                return err(CUDA_ERROR_INVALID_IMAGE);
            }
            let (phoff, shoff) = (u64_at(h, 0x20), u64_at(h, 0x28));
            let (phent, phnum) = (u16_at(h, 0x36), u16_at(h, 0x38));
            let (shent, shnum) = (u16_at(h, 0x3A), u16_at(h, 0x3C));
            let mut end = 64u64
                .max(phoff.saturating_add(phent * phnum))
                .max(shoff.saturating_add(shent * shnum));
            if end > max || shent < 64 && shnum > 0 || phent < 56 && phnum > 0 {
                return err(CUDA_ERROR_INVALID_IMAGE);
            }
            let all = crate::cabi::bytes(p.cast(), end as usize)?;
            for i in 0..shnum {
                let s = (shoff + i * shent) as usize;
                let (kind, off, size) = (
                    u32_at(all, s + 4),
                    u64_at(all, s + 0x18),
                    u64_at(all, s + 0x20),
                );
                if kind != 8 {
                    // Not SHT_NOBITS: the section's bytes are in the file.
                    end = end.max(off.saturating_add(size));
                }
            }
            for i in 0..phnum {
                let s = (phoff + i * phent) as usize;
                end = end.max(u64_at(all, s + 8).saturating_add(u64_at(all, s + 0x20)));
            }
            sized(end)
        }
        0x50 | 0xB1 if magic4(p)? => {
            let h = crate::cabi::bytes(p.cast(), 16)?;
            match u32_at(h, 0) as u32 {
                FATBIN_MAGIC => sized(u16_at(h, 6).saturating_add(u64_at(h, 8))),
                FATBIN_WRAPPER_MAGIC => image(u64_at(h, 8) as *const c_void),
                _ => err(CUDA_ERROR_INVALID_IMAGE),
            }
        }
        _ => {
            let text = crate::cabi::cstr(p.cast())?.to_bytes();
            if text.is_empty() || text.len() as u64 > max {
                return err(CUDA_ERROR_INVALID_IMAGE);
            }
            Ok(text)
        }
    }
}

// ---- JIT options ----------------------------------------------------------------

/// The log buffers a caller passed with JIT options.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogBuffers {
    info: Option<(*mut u8, usize, usize)>,
    error: Option<(*mut u8, usize, usize)>,
}

impl LogBuffers {
    /// Read `n` options and their values (the log buffers and their sizes; the rest are
    /// hints this driver leaves to the engine's defaults).
    pub fn parse(n: u32, options: *const i32, values: *mut *mut c_void) -> Result<LogBuffers> {
        let mut lb = LogBuffers::default();
        let (mut info, mut info_len, mut info_at) = (std::ptr::null_mut::<u8>(), 0usize, 0usize);
        let (mut error, mut error_len, mut error_at) = (std::ptr::null_mut::<u8>(), 0usize, 0usize);
        for i in 0..n as usize {
            let o = crate::cabi::read_at(options, i)?;
            let v = crate::cabi::read_at(values as *const *mut c_void, i)?;
            match o {
                CU_JIT_INFO_LOG_BUFFER => info = v.cast(),
                CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES => (info_len, info_at) = (v as usize, i),
                CU_JIT_ERROR_LOG_BUFFER => error = v.cast(),
                CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES => (error_len, error_at) = (v as usize, i),
                _ => {}
            }
        }
        if !info.is_null() && info_len > 0 {
            lb.info = Some((info, info_len, info_at));
        }
        if !error.is_null() && error_len > 0 {
            lb.error = Some((error, error_len, error_at));
        }
        Ok(lb)
    }

    /// Write `log` to the info (success) or error (failure) buffer, NUL-terminated, and its
    /// length to the size option's value.
    fn deliver(&self, ok: bool, log: &str, values: *mut *mut c_void) -> Result<()> {
        let Some((buf, len, at)) = (if ok { self.info } else { self.error }) else {
            return Ok(());
        };
        let out = crate::cabi::bytes_mut(buf, len)?;
        let n = log.len().min(len - 1);
        out[..n].copy_from_slice(&log.as_bytes()[..n]);
        out[n] = 0;
        if !values.is_null() {
            // SAFETY: `values` holds at least `at + 1` entries (`parse` read entry `at`), and
            // the API defines the size option's entry as written back with the log's length.
            unsafe { values.add(at).write_unaligned((n + 1) as *mut c_void) };
        }
        Ok(())
    }
}

// ---- loading ----------------------------------------------------------------------

/// Load `bytes` as a module of the current context: its handle. `logs` receive the engine's
/// log.
pub fn load(bytes: &[u8], logs: &LogBuffers, values: *mut *mut c_void) -> Result<usize> {
    let _one = STAGING.lock().unwrap_or_else(|p| p.into_inner());
    let (fence, handle, ctx) = with(|d| {
        let ctx = d.current()?;
        d.check_sticky()?;
        let handle = d.modules.take_handle()?;
        let st = staging(d)?;
        let va = st.va();
        st.host()?.write(0, bytes)?;
        st.host()?.fill(LOG_AT as usize, LOG_BYTES as usize, 0)?;
        let control = d.control_channel();
        let r = d.submit_on(control, &[], |seg| {
            seg.pb
                .module_load_logged(handle, va, bytes.len() as u32, va + LOG_AT, LOG_BYTES);
            Ok(())
        });
        match r {
            Ok(f) => Ok((f, handle, ctx)),
            Err(e) => {
                d.modules.free.push(handle);
                Err(e)
            }
        }
    })?;
    let r = wait(&[fence]);
    let log = with(|d| {
        let mut b = vec![0u8; LOG_BYTES as usize];
        staging(d)?.host()?.read(LOG_AT as usize, &mut b)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    })?;
    logs.deliver(r.is_ok(), &log, values)?;
    with(|d| match r {
        Ok(()) => {
            let h = d.handle();
            d.modules.map.insert(
                h,
                Module {
                    ctx,
                    handle,
                    funcs: HashMap::new(),
                    globals: HashMap::new(),
                },
            );
            Ok(h)
        }
        Err(e) => {
            crate::log(format_args!("module load failed ({}): {log}", e.0));
            d.modules.free.push(handle);
            Err(e)
        }
    })
}

/// A `FUNC_INFO` (`function`) or `MODULE_GLOBAL` query of `name` in module `m`: the
/// answer's bytes.
fn query(m: usize, name: &CStr, function: bool) -> Result<Vec<u8>> {
    let name = name.to_bytes();
    if name.is_empty() || name.len() > compute::MAX_FUNC_NAME as usize {
        return err(CUDA_ERROR_NOT_FOUND);
    }
    let len = if function {
        compute::FUNC_INFO_BYTES
    } else {
        compute::GLOBAL_INFO_BYTES
    };
    let _one = STAGING.lock().unwrap_or_else(|p| p.into_inner());
    let fence = with(|d| {
        d.check_sticky()?;
        let handle = d
            .modules
            .map
            .get(&m)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?
            .handle;
        let st = staging(d)?;
        let va = st.va() + ANSWER_AT;
        st.host()?.fill(ANSWER_AT as usize, len as usize, 0)?;
        let control = d.control_channel();
        d.submit_on(control, &[], |seg| {
            let name_va = seg.inline(name)?;
            seg.pb
                .module_query(function, handle, name_va, name.len() as u32, va);
            Ok(())
        })
    })?;
    wait(&[fence])?;
    with(|d| {
        let mut b = vec![0u8; len as usize];
        staging(d)?.host()?.read(ANSWER_AT as usize, &mut b)?;
        Ok(b)
    })
}

/// What module `m` already knows of a name (`look` finds it), without
/// asking the device; a module that is not loaded is an invalid handle.
fn already_known<T>(m: usize, look: impl FnOnce(&Module) -> Option<T>) -> Result<Option<T>> {
    with(|d| {
        let module = d
            .modules
            .map
            .get(&m)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        Ok(look(module))
    })
}

/// `cuModuleGetFunction`: the function `name` of module `m`.
pub fn function(m: usize, name: &CStr) -> Result<usize> {
    let known = already_known(m, |module| module.funcs.get(name).copied())?;
    if let Some(f) = known {
        return Ok(f);
    }
    let answer = query(m, name, true)?;
    let info = FuncInfo::decode(&answer).map_err(CuError)?;
    with(|d| {
        let h = d.handle();
        d.modules.funcs.insert(
            h,
            Function {
                module: m,
                name: name.to_owned(),
                info,
                set_attrs: HashMap::new(),
            },
        );
        d.modules
            .map
            .get_mut(&m)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?
            .funcs
            .insert(name.to_owned(), h);
        Ok(h)
    })
}

/// `cuModuleGetGlobal`: the address and size of global `name` of module `m`.
pub fn global(m: usize, name: &CStr) -> Result<(u64, u64)> {
    let known = already_known(m, |module| module.globals.get(name).copied())?;
    if let Some(g) = known {
        return Ok(g);
    }
    let b = query(m, name, false)?;
    let status = u32_at(&b, 0);
    if status != 0 {
        return err(i32::try_from(status).unwrap_or(CUDA_ERROR_UNKNOWN));
    }
    let (addr, size) = (u64_at(&b, 8), u64_at(&b, 16));
    with(|d| {
        d.modules
            .map
            .get_mut(&m)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?
            .globals
            .insert(name.to_owned(), (addr, size));
        d.modules.globals.insert(addr, size);
        Ok((addr, size))
    })
}

impl Driver {
    /// `cuModuleUnload`: after every channel's work so far.
    pub fn module_unload(&mut self, m: usize) -> Result<()> {
        let module = self
            .modules
            .map
            .remove(&m)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        self.modules.funcs.retain(|_, f| f.module != m);
        for (addr, _) in module.globals.values() {
            self.modules.globals.remove(addr);
        }
        self.modules.libs.retain(|_, lm| *lm != m);
        if self.sticky.is_none() {
            let waits: Vec<(u64, u32)> = self
                .outstanding()?
                .into_iter()
                .filter_map(|f| {
                    self.chans
                        .get(f.channel as usize)
                        .and_then(|c| c.as_ref())
                        .map(|c| (c.ch.fence_va(), f.value))
                })
                .collect();
            let control = self.control_channel();
            let waits: Vec<(u64, u32)> = waits
                .into_iter()
                .filter(|(va, _)| {
                    self.chans
                        .get(control as usize)
                        .and_then(|c| c.as_ref())
                        .is_none_or(|c| c.ch.fence_va() != *va)
                })
                .collect();
            self.submit_on(control, &waits, |seg| {
                seg.pb.module_unload(module.handle);
                Ok(())
            })?;
        }
        self.modules.free.push(module.handle);
        Ok(())
    }

    /// Unload the modules of context `ctx`.
    pub fn modules_release(&mut self, ctx: usize) -> Result<()> {
        let mine: Vec<usize> = self
            .modules
            .map
            .iter()
            .filter(|(_, m)| m.ctx == ctx)
            .map(|(h, _)| *h)
            .collect();
        for m in mine {
            self.module_unload(m)?;
        }
        Ok(())
    }

    /// The function of handle `f` (a `CUfunction` or a `CUkernel`).
    pub fn func(&self, f: usize) -> Result<&Function> {
        self.modules
            .funcs
            .get(&f)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))
    }

    /// `cuFuncGetAttribute`.
    pub fn func_attribute(&self, f: usize, a: i32) -> Result<i32> {
        let func = self.func(f)?;
        if let Some(v) = func.set_attrs.get(&a) {
            return Ok(*v);
        }
        usize::try_from(a)
            .ok()
            .and_then(|i| func.info.attrs.get(i))
            .copied()
            .ok_or(CuError(CUDA_ERROR_INVALID_VALUE))
    }

    /// `cuFuncSetAttribute`: the dynamic shared memory opt-in (up to the device's opt-in
    /// maximum less the function's static shared memory) and the carve-out hint.
    pub fn func_set_attribute(&mut self, f: usize, a: i32, v: i32) -> Result<()> {
        let optin = self
            .ident
            .attribute(crate::device::attr::MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let func = self
            .modules
            .funcs
            .get_mut(&f)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        match a {
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
                let fixed = func.info.attrs[CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES as usize];
                if v < 0 || v.saturating_add(fixed) > optin {
                    return err(CUDA_ERROR_INVALID_VALUE);
                }
            }
            CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => {
                if !(-1..=100).contains(&v) {
                    return err(CUDA_ERROR_INVALID_VALUE);
                }
            }
            _ => return err(CUDA_ERROR_INVALID_VALUE),
        }
        func.set_attrs.insert(a, v);
        Ok(())
    }

    /// `cuLinkCreate`.
    pub fn link_create(&mut self) -> Result<usize> {
        self.current()?;
        let h = self.handle();
        self.modules.links.insert(h, Link::default());
        Ok(h)
    }

    /// `cuLinkAddData`.
    pub fn link_add(&mut self, l: usize, kind: i32, data: Vec<u8>) -> Result<()> {
        let link = self
            .modules
            .links
            .get_mut(&l)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        match kind {
            CU_JIT_INPUT_CUBIN | CU_JIT_INPUT_PTX | CU_JIT_INPUT_FATBINARY => {
                link.inputs.push(data);
                Ok(())
            }
            // Objects and libraries need a device linker in the vGPU (not in ABI 1.3).
            CU_JIT_INPUT_OBJECT | CU_JIT_INPUT_LIBRARY => err(CUDA_ERROR_NOT_SUPPORTED),
            _ => err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    /// `cuLinkComplete`: the one input is the image (more need a linker in the vGPU).
    pub fn link_complete(&mut self, l: usize) -> Result<(*const u8, usize)> {
        let link = self
            .modules
            .links
            .get_mut(&l)
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        if link.inputs.len() != 1 {
            return err(if link.inputs.is_empty() {
                CUDA_ERROR_INVALID_VALUE
            } else {
                CUDA_ERROR_NOT_SUPPORTED
            });
        }
        link.out = link.inputs[0].clone();
        if link.out.last() != Some(&0) {
            // PTX text keeps its NUL, so that the image reads back as the text it was.
            link.out.push(0);
        }
        Ok((link.out.as_ptr(), link.out.len()))
    }
}
