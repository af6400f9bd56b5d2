//! Kernel launches (ABI 1.3: `PROGRAM` = `PROGRAM_MODULE` with `MODULE_HANDLE`,
//! `SHARED_MEM_BYTES`) and the occupancy calculator.
//!
//! A launch's parameters arrive as `void **kernelParams` (one pointer per parameter) or as
//! one buffer in `extra`; the function's parameter layout from `FUNC_INFO` turns the former
//! into the block CUDA lays out, which travels inline in the launch's segment.

use std::ffi::c_void;

use crate::device::attr;
use crate::driver::{with, Driver};
use crate::error::{err, CuError, Result};
use crate::stream::StreamKey;
use crate::types::*;

/// What a launch asks for.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared: u32,
    pub stream: StreamKey,
}

/// The parameter block of a launch of a function with `layout` from `params` or `extra`.
pub fn param_block(
    layout: &[(u32, u32)],
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<Vec<u8>> {
    let size = layout.iter().map(|&(o, s)| o + s).max().unwrap_or(0) as usize;
    if !params.is_null() {
        let mut block = vec![0u8; size];
        for (i, &(off, len)) in layout.iter().enumerate() {
            let src = crate::cabi::read_at(params as *const *mut c_void, i)?;
            let bytes = crate::cabi::bytes(src.cast(), len as usize)?;
            block[off as usize..(off + len) as usize].copy_from_slice(bytes);
        }
        return Ok(block);
    }
    if extra.is_null() {
        return if layout.is_empty() {
            Ok(Vec::new())
        } else {
            err(CUDA_ERROR_INVALID_VALUE)
        };
    }
    let (mut buf, mut len): (*const u8, Option<usize>) = (std::ptr::null(), None);
    for i in (0..).step_by(2) {
        let key = crate::cabi::read_at(extra as *const *mut c_void, i)? as usize;
        if key == CU_LAUNCH_PARAM_END {
            break;
        }
        let value = crate::cabi::read_at(extra as *const *mut c_void, i + 1)?;
        match key {
            CU_LAUNCH_PARAM_BUFFER_POINTER => buf = value.cast(),
            CU_LAUNCH_PARAM_BUFFER_SIZE => len = Some(crate::cabi::read(value as *const usize)?),
            _ => return err(CUDA_ERROR_INVALID_VALUE),
        }
        if i > 64 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    let len = len.ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
    if len > vgpu_guest::pushbuf::compute::MAX_PARAMS as usize || len < size {
        return err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(crate::cabi::bytes(buf, len)?.to_vec())
}

impl Driver {
    /// Check a launch of function `f` against the device's and the function's limits (so
    /// that the vGPU never refuses it), then submit it.
    pub fn launch(&mut self, f: usize, l: Launch, params: Vec<u8>) -> Result<()> {
        self.check_sticky()?;
        if !self.runs_kernels() {
            return err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let (handle, name, max_threads, fixed_shared, optin) = {
            let func = self.func(f)?;
            let module = self
                .modules
                .map
                .get(&func.module)
                .ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
            let optin = func
                .set_attrs
                .get(&CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
                .copied()
                .unwrap_or(
                    func.info.attrs[CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as usize],
                );
            (
                module.handle,
                func.name.clone(),
                func.info.attrs[CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK as usize],
                func.info.attrs[CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES as usize],
                optin,
            )
        };
        if l.grid.contains(&0) || l.block.contains(&0) {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let threads = l.block.iter().map(|&b| b as u64).product::<u64>();
        let max_dim = [
            self.ident.attribute(2)?,
            self.ident.attribute(3)?,
            self.ident.attribute(4)?,
        ];
        let max_grid = [
            self.ident.attribute(5)?,
            self.ident.attribute(6)?,
            self.ident.attribute(7)?,
        ];
        let over = |v: u32, m: i32| m > 0 && v as i64 > m as i64;
        if (max_threads > 0 && threads > max_threads as u64)
            || (0..3).any(|i| over(l.block[i], max_dim[i]) || over(l.grid[i], max_grid[i]))
        {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let default_shared = self.ident.attribute(attr::MAX_SHARED_MEMORY_PER_BLOCK)?;
        let limit = (optin.max(default_shared - fixed_shared)).max(0) as u32;
        if l.shared > limit && l.shared > 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        if params.len() > vgpu_guest::pushbuf::compute::MAX_PARAMS as usize {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let name = name.as_bytes().to_vec();
        self.submit(l.stream, |seg| {
            let name_va = seg.inline(&name)?;
            let params_va = seg.inline(&params)?;
            seg.pb.launch_module(
                handle,
                name_va,
                name.len() as u32,
                l.grid,
                l.block,
                l.shared,
                params_va,
                params.len() as u32,
            );
            Ok(())
        })?;
        Ok(())
    }

    /// Resident blocks per multiprocessor of function `f` with `block` threads and `shared`
    /// bytes of dynamic shared memory, from the function's registers and shared memory and
    /// the device's limits (as CUDA's occupancy calculator does, without its allocation
    /// granularities).
    pub fn occupancy(&self, f: usize, block: i32, shared: usize) -> Result<i32> {
        if block <= 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let func = self.func(f)?;
        let a = |i: i32| self.ident.attribute(i).unwrap_or(0).max(0) as i64;
        let warp = a(attr::WARP_SIZE).max(1);
        let warps = (block as i64 + warp - 1) / warp;
        let by_threads = a(39) / (warps * warp).max(1); // MAX_THREADS_PER_MULTIPROCESSOR
        let by_blocks = a(106); // MAX_BLOCKS_PER_MULTIPROCESSOR
        let regs = func.info.attrs[CU_FUNC_ATTRIBUTE_NUM_REGS as usize].max(0) as i64;
        let by_regs = if regs == 0 {
            i64::MAX
        } else {
            a(attr::MAX_REGISTERS_PER_MULTIPROCESSOR) / (regs * warps * warp).max(1)
        };
        let smem = func.info.attrs[CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES as usize].max(0) as i64
            + shared as i64;
        let by_smem = if smem == 0 {
            i64::MAX
        } else {
            a(attr::MAX_SHARED_MEMORY_PER_MULTIPROCESSOR) / smem
        };
        let n = by_threads
            .min(if by_blocks > 0 { by_blocks } else { i64::MAX })
            .min(by_regs)
            .min(by_smem);
        Ok(n.clamp(0, i32::MAX as i64) as i32)
    }
}

/// `cuLaunchKernel` and its kin: `f` with the parameters of `params` or `extra`.
pub fn launch(
    f: usize,
    l: Launch,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<()> {
    with(|d| {
        let block = param_block(&d.func(f)?.info.params, params, extra)?;
        d.launch(f, l, block)
    })
}
