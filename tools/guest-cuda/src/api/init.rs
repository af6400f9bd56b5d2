//! Initialisation, versions, errors, `cuGetProcAddress`, the profiler.

use std::ffi::{c_char, c_void};

use crate::cabi;
use crate::cuda_fn;
use crate::driver::{self, with};
use crate::error::{describe, err};
use crate::types::*;

cuda_fn! {
    /// Open the vGPU (docs/cuda.md, "Finding the vGPU").
    fn cuInit(flags: u32) {
        if flags != 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        driver::init()
    }

    /// The engine's CUDA version once initialised (at most 13.0), else 13.0.
    fn cuDriverGetVersion(version: *mut i32) {
        let v = if driver::initialized() {
            with(|d| Ok(d.ident.driver_version()))?
        } else {
            DRIVER_VERSION
        };
        cabi::write(version, v)
    }

    fn cuGetErrorName(error: CUresult, out: *mut *const c_char) {
        match describe(error) {
            Some((name, _)) => cabi::write(out, name.as_ptr()),
            None => {
                cabi::write(out, std::ptr::null())?;
                err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    }

    fn cuGetErrorString(error: CUresult, out: *mut *const c_char) {
        match describe(error) {
            Some((_, text)) => cabi::write(out, text.as_ptr()),
            None => {
                cabi::write(out, std::ptr::null())?;
                err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    }

    /// CUDA 11.3's form, without the query result.
    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *const c_void, version: i32, flags: u64) {
        let (p, status) = crate::proc_address::get(cabi::cstr(symbol)?, version, flags);
        cabi::write(pfn, p)?;
        if status == CU_GET_PROC_ADDRESS_SUCCESS {
            Ok(())
        } else {
            err(CUDA_ERROR_NOT_FOUND)
        }
    }

    fn cuGetProcAddress_v2(
        symbol: *const c_char,
        pfn: *mut *const c_void,
        version: i32,
        flags: u64,
        status: *mut i32,
    ) {
        let (p, st) = crate::proc_address::get(cabi::cstr(symbol)?, version, flags);
        cabi::write(pfn, p)?;
        if !status.is_null() {
            cabi::write(status, st)?;
        }
        if st == CU_GET_PROC_ADDRESS_SUCCESS {
            Ok(())
        } else {
            err(CUDA_ERROR_NOT_FOUND)
        }
    }

    /// The profiler has nothing to start here.
    fn cuProfilerStart() {
        Ok(())
    }

    fn cuProfilerStop() {
        Ok(())
    }

    fn cuProfilerInitialize(config: *const c_char, output: *const c_char, mode: i32) {
        Ok(())
    }
}
