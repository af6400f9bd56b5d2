//! Modules, libraries, kernels, functions, globals and links.

use std::ffi::{c_char, c_void};

use crate::cabi;
use crate::cuda_fn;
use crate::driver::with;
use crate::error::{err, CuError, Result};
use crate::module::{function, global, image, load, LogBuffers};
use crate::types::*;

use super::check_device;

fn load_image(
    pm: *mut Handle,
    p: *const c_void,
    logs: LogBuffers,
    values: *mut *mut c_void,
) -> Result<()> {
    with(|d| d.current())?;
    let bytes = image(p)?;
    let m = load(bytes, &logs, values)?;
    cabi::write(pm, m as Handle)
}

fn load_file(pm: *mut Handle, path: *const c_char) -> Result<usize> {
    let path = cabi::cstr(path)?.to_string_lossy().into_owned();
    let data = std::fs::read(&path).map_err(|_| CuError(CUDA_ERROR_FILE_NOT_FOUND))?;
    let mut data = data;
    if data.first() != Some(&0x7F) && data.first() != Some(&0x50) {
        data.push(0);
    }
    with(|d| d.current())?;
    let bytes = image(data.as_ptr().cast())?;
    let m = load(bytes, &LogBuffers::default(), std::ptr::null_mut())?;
    if !pm.is_null() {
        cabi::write(pm, m as Handle)?;
    }
    Ok(m)
}

fn get_global(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    m: usize,
    name: *const c_char,
) -> Result<()> {
    let (a, s) = global(m, cabi::cstr(name)?)?;
    if !dptr.is_null() {
        cabi::write(dptr, a)?;
    }
    if !bytes.is_null() {
        cabi::write(bytes, s as usize)?;
    }
    Ok(())
}

fn library(pl: *mut Handle, m: usize) -> Result<()> {
    let h = with(|d| {
        let h = d.handle();
        d.modules.libs.insert(h, m);
        Ok(h)
    })?;
    cabi::write(pl, h as Handle)
}

fn lib_module(l: Handle) -> Result<usize> {
    with(|d| {
        d.modules
            .libs
            .get(&(l as usize))
            .copied()
            .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))
    })
}

fn param_info(f: Handle, index: usize, offset: *mut usize, size: *mut usize) -> Result<()> {
    let (o, s) = with(|d| {
        d.func(f as usize)?
            .info
            .params
            .get(index)
            .copied()
            .ok_or(CuError(CUDA_ERROR_INVALID_VALUE))
    })?;
    if !offset.is_null() {
        cabi::write(offset, o as usize)?;
    }
    if !size.is_null() {
        cabi::write(size, s as usize)?;
    }
    Ok(())
}

fn link_add(l: Handle, kind: i32, data: Vec<u8>) -> Result<()> {
    with(|d| d.link_add(l as usize, kind, data))
}

fn link_create(n: u32, opts: *const i32, values: *mut *mut c_void, out: *mut Handle) -> Result<()> {
    LogBuffers::parse(n, opts, values)?;
    let h = with(|d| d.link_create())?;
    cabi::write(out, h as Handle)
}

fn link_add_data(l: Handle, kind: i32, data: *mut c_void, size: usize) -> Result<()> {
    let b = cabi::bytes(data.cast(), size)?.to_vec();
    link_add(l, kind, b)
}

fn link_add_file(l: Handle, kind: i32, path: *const c_char) -> Result<()> {
    let path = cabi::cstr(path)?.to_string_lossy().into_owned();
    let b = std::fs::read(path).map_err(|_| CuError(CUDA_ERROR_FILE_NOT_FOUND))?;
    link_add(l, kind, b)
}

cuda_fn! {
    fn cuModuleLoadData(pm: *mut Handle, p: *const c_void) {
        load_image(pm, p, LogBuffers::default(), std::ptr::null_mut())
    }
    fn cuModuleLoadDataEx(pm: *mut Handle, p: *const c_void, n: u32, opts: *const i32, values: *mut *mut c_void) {
        let logs = LogBuffers::parse(n, opts, values)?;
        load_image(pm, p, logs, values)
    }
    fn cuModuleLoadFatBinary(pm: *mut Handle, p: *const c_void) {
        load_image(pm, p, LogBuffers::default(), std::ptr::null_mut())
    }
    fn cuModuleLoad(pm: *mut Handle, path: *const c_char) {
        load_file(pm, path).map(|_| ())
    }
    fn cuModuleUnload(m: Handle) { with(|d| d.module_unload(m as usize)) }
    fn cuModuleGetFunction(pf: *mut Handle, m: Handle, name: *const c_char) {
        let f = function(m as usize, cabi::cstr(name)?)?;
        cabi::write(pf, f as Handle)
    }
    fn cuModuleGetGlobal(dptr: *mut u32, bytes: *mut u32, m: Handle, name: *const c_char) {
        let (a, s) = global(m as usize, cabi::cstr(name)?)?;
        if !dptr.is_null() { cabi::write(dptr, a as u32)?; }
        if !bytes.is_null() { cabi::write(bytes, s as u32)?; }
        Ok(())
    }
    fn cuModuleGetGlobal_v2(dptr: *mut CUdeviceptr, bytes: *mut usize, m: Handle, name: *const c_char) {
        get_global(dptr, bytes, m as usize, name)
    }
    /// Modules load when loaded: eager.
    fn cuModuleGetLoadingMode(mode: *mut i32) { cabi::write(mode, CU_MODULE_EAGER_LOADING) }

    fn cuLibraryLoadData(pl: *mut Handle, code: *const c_void, opts: *const i32, values: *mut *mut c_void, n: u32, lopts: *const i32, lvalues: *mut *mut c_void, ln: u32) {
        let logs = LogBuffers::parse(n, opts, values)?;
        with(|d| d.current())?;
        let m = load(image(code)?, &logs, values)?;
        library(pl, m)
    }
    fn cuLibraryLoadFromFile(pl: *mut Handle, path: *const c_char, opts: *const i32, values: *mut *mut c_void, n: u32, lopts: *const i32, lvalues: *mut *mut c_void, ln: u32) {
        let m = load_file(std::ptr::null_mut(), path)?;
        library(pl, m)
    }
    fn cuLibraryUnload(l: Handle) {
        let m = lib_module(l)?;
        with(|d| {
            d.modules.libs.remove(&(l as usize));
            d.module_unload(m)
        })
    }
    fn cuLibraryGetKernel(pk: *mut Handle, l: Handle, name: *const c_char) {
        let f = function(lib_module(l)?, cabi::cstr(name)?)?;
        cabi::write(pk, f as Handle)
    }
    fn cuLibraryGetModule(pm: *mut Handle, l: Handle) {
        cabi::write(pm, lib_module(l)? as Handle)
    }
    fn cuLibraryGetGlobal(dptr: *mut CUdeviceptr, bytes: *mut usize, l: Handle, name: *const c_char) {
        get_global(dptr, bytes, lib_module(l)?, name)
    }
    /// A `CUkernel` is its function's `CUfunction`.
    fn cuKernelGetFunction(pf: *mut Handle, k: Handle) {
        with(|d| d.func(k as usize).map(|_| ()))?;
        cabi::write(pf, k)
    }
    fn cuKernelGetLibrary(pl: *mut Handle, k: Handle) {
        let l = with(|d| {
            let m = d.func(k as usize)?.module;
            d.modules.libs.iter().find(|(_, lm)| **lm == m).map(|(h, _)| *h).ok_or(CuError(CUDA_ERROR_NOT_FOUND))
        })?;
        cabi::write(pl, l as Handle)
    }
    fn cuKernelGetAttribute(pi: *mut i32, a: i32, k: Handle, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(pi, with(|d| d.func_attribute(k as usize, a))?)
    }
    fn cuKernelSetAttribute(a: i32, v: i32, k: Handle, dev: CUdevice) {
        check_device(dev)?;
        with(|d| d.func_set_attribute(k as usize, a, v))
    }
    fn cuKernelSetCacheConfig(k: Handle, config: i32, dev: CUdevice) {
        check_device(dev)?;
        with(|d| d.func(k as usize).map(|_| ()))
    }
    /// A NULL kernel is an invalid value (the driver's answer), another unknown one an
    /// invalid handle.
    fn cuKernelGetName(name: *mut *const c_char, k: Handle) {
        if k.is_null() {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        cabi::write(name, with(|d| Ok(d.func(k as usize)?.name.as_ptr()))?)
    }
    fn cuKernelGetParamInfo(k: Handle, index: usize, offset: *mut usize, size: *mut usize) { param_info(k, index, offset, size) }

    fn cuFuncGetAttribute(pi: *mut i32, a: i32, f: Handle) {
        cabi::write(pi, with(|d| d.func_attribute(f as usize, a))?)
    }
    fn cuFuncSetAttribute(f: Handle, a: i32, v: i32) { with(|d| d.func_set_attribute(f as usize, a, v)) }
    fn cuFuncSetCacheConfig(f: Handle, config: i32) { with(|d| d.func(f as usize).map(|_| ())) }
    fn cuFuncSetSharedMemConfig(f: Handle, config: i32) { with(|d| d.func(f as usize).map(|_| ())) }
    fn cuFuncGetModule(pm: *mut Handle, f: Handle) {
        cabi::write(pm, with(|d| Ok(d.func(f as usize)?.module))? as Handle)
    }
    /// As `cuKernelGetName`.
    fn cuFuncGetName(name: *mut *const c_char, f: Handle) {
        if f.is_null() {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        cabi::write(name, with(|d| Ok(d.func(f as usize)?.name.as_ptr()))?)
    }
    fn cuFuncGetParamInfo(f: Handle, index: usize, offset: *mut usize, size: *mut usize) { param_info(f, index, offset, size) }
    /// Functions are loaded with their module: `CU_FUNCTION_LOADING_STATE_LOADED`.
    fn cuFuncIsLoaded(state: *mut i32, f: Handle) {
        with(|d| d.func(f as usize).map(|_| ()))?;
        cabi::write(state, 1)
    }
    fn cuFuncLoad(f: Handle) { with(|d| d.func(f as usize).map(|_| ())) }

    fn cuLinkCreate(n: u32, opts: *const i32, values: *mut *mut c_void, out: *mut Handle) { link_create(n, opts, values, out) }
    fn cuLinkCreate_v2(n: u32, opts: *const i32, values: *mut *mut c_void, out: *mut Handle) { link_create(n, opts, values, out) }
    fn cuLinkAddData(l: Handle, kind: i32, data: *mut c_void, size: usize, name: *const c_char, n: u32, opts: *const i32, values: *mut *mut c_void) { link_add_data(l, kind, data, size) }
    fn cuLinkAddData_v2(l: Handle, kind: i32, data: *mut c_void, size: usize, name: *const c_char, n: u32, opts: *const i32, values: *mut *mut c_void) { link_add_data(l, kind, data, size) }
    fn cuLinkAddFile(l: Handle, kind: i32, path: *const c_char, n: u32, opts: *const i32, values: *mut *mut c_void) { link_add_file(l, kind, path) }
    fn cuLinkAddFile_v2(l: Handle, kind: i32, path: *const c_char, n: u32, opts: *const i32, values: *mut *mut c_void) { link_add_file(l, kind, path) }
    fn cuLinkComplete(l: Handle, out: *mut *const c_void, size: *mut usize) {
        let (p, n) = with(|d| d.link_complete(l as usize))?;
        cabi::write(out, p.cast())?;
        cabi::write(size, n)
    }
    fn cuLinkDestroy(l: Handle) {
        with(|d| d.modules.links.remove(&(l as usize)).map(|_| ()).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE)))
    }
}
