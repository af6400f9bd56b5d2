//! Contexts: the primary context, created contexts, the current-context stack, limits and
//! configuration.

use crate::cabi;
use crate::context::{current_handle, pop, push, set_current};
use crate::cuda_fn;
use crate::driver::with;
use crate::error::{err, Result};
use crate::stream::synchronize_all;
use crate::types::*;

use super::check_device;

fn create(pctx: *mut Handle, flags: u32, dev: CUdevice) -> Result<()> {
    check_device(dev)?;
    let h = with(|d| d.ctx_create(flags))?;
    cabi::write(pctx, h as Handle)
}

/// Pop the current context off the stack, into `pctx` where it is not null.
fn pop_into(pctx: *mut Handle) -> Result<()> {
    with(|_| Ok(()))?;
    let h = pop();
    if h == 0 {
        return err(CUDA_ERROR_INVALID_CONTEXT);
    }
    if !pctx.is_null() {
        cabi::write(pctx, h as Handle)?;
    }
    Ok(())
}

cuda_fn! {
    fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) {
        check_device(dev)?;
        let h = with(|d| d.primary_retain())?;
        cabi::write(pctx, h as Handle)
    }

    fn cuDevicePrimaryCtxRelease(dev: CUdevice) {
        check_device(dev)?;
        with(|d| d.primary_release())
    }

    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) {
        check_device(dev)?;
        with(|d| d.primary_release())
    }

    fn cuDevicePrimaryCtxReset(dev: CUdevice) {
        check_device(dev)?;
        with(|d| d.primary_reset())
    }

    fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) {
        check_device(dev)?;
        with(|d| d.primary_reset())
    }

    fn cuDevicePrimaryCtxGetState(flags: *mut u32, active: *mut i32, dev: CUdevice) {
        check_device(dev)?;
        let (f, a) = with(|d| Ok((d.ctx.primary_flags, d.ctx.primary_refs > 0)))?;
        cabi::write(flags, f)?;
        cabi::write(active, i32::from(a))
    }

    fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: u32) {
        check_device(dev)?;
        with(|d| {
            d.ctx.primary_flags = flags;
            Ok(())
        })
    }

    fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: u32) {
        check_device(dev)?;
        with(|d| {
            d.ctx.primary_flags = flags;
            Ok(())
        })
    }

    fn cuCtxCreate(pctx: *mut Handle, flags: u32, dev: CUdevice) {
        create(pctx, flags, dev)
    }

    fn cuCtxCreate_v2(pctx: *mut Handle, flags: u32, dev: CUdevice) {
        create(pctx, flags, dev)
    }

    /// Execution-affinity parameters are not supported (no SM partitioning).
    fn cuCtxCreate_v3(pctx: *mut Handle, params: *mut u8, num: i32, flags: u32, dev: CUdevice) {
        if num > 0 && !params.is_null() {
            return err(CUDA_ERROR_NOT_SUPPORTED);
        }
        create(pctx, flags, dev)
    }

    /// `CUctxCreateParams` asking for execution affinity or a CIG context is not supported.
    fn cuCtxCreate_v4(pctx: *mut Handle, params: *const [usize; 3], flags: u32, dev: CUdevice) {
        if !params.is_null() {
            let p = cabi::read(params)?;
            if p[0] != 0 || p[2] != 0 {
                return err(CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        create(pctx, flags, dev)
    }

    fn cuCtxDestroy(ctx: Handle) {
        with(|d| d.ctx_destroy(ctx as usize))
    }

    fn cuCtxDestroy_v2(ctx: Handle) {
        with(|d| d.ctx_destroy(ctx as usize))
    }

    fn cuCtxPushCurrent(ctx: Handle) {
        with(|d| d.context(ctx as usize).map(push))
    }

    fn cuCtxPushCurrent_v2(ctx: Handle) {
        with(|d| d.context(ctx as usize).map(push))
    }

    fn cuCtxPopCurrent(pctx: *mut Handle) {
        pop_into(pctx)
    }

    fn cuCtxPopCurrent_v2(pctx: *mut Handle) {
        pop_into(pctx)
    }

    fn cuCtxSetCurrent(ctx: Handle) {
        if ctx.is_null() {
            with(|_| Ok(()))?;
            set_current(0);
            return Ok(());
        }
        with(|d| d.context(ctx as usize).map(set_current))
    }

    fn cuCtxGetCurrent(pctx: *mut Handle) {
        with(|_| Ok(()))?;
        let h = current_handle();
        let valid = with(|d| Ok(d.ctx.map.contains_key(&h)))?;
        cabi::write(pctx, if valid { h as Handle } else { std::ptr::null_mut() })
    }

    fn cuCtxGetDevice(device: *mut CUdevice) {
        with(|d| d.current())?;
        cabi::write(device, 0)
    }

    fn cuCtxGetDevice_v2(device: *mut CUdevice, ctx: Handle) {
        with(|d| d.context(ctx as usize))?;
        cabi::write(device, 0)
    }

    fn cuCtxGetFlags(flags: *mut u32) {
        cabi::write(flags, with(|d| Ok(d.ctx_mut(0)?.flags))?)
    }

    fn cuCtxSetFlags(flags: u32) {
        with(|d| {
            d.ctx_mut(0)?.flags = flags;
            Ok(())
        })
    }

    fn cuCtxGetId(ctx: Handle, id: *mut u64) {
        cabi::write(id, with(|d| Ok(d.ctx_mut(ctx as usize)?.id))?)
    }

    fn cuCtxSynchronize() {
        with(|d| d.current())?;
        synchronize_all()
    }

    fn cuCtxGetApiVersion(ctx: Handle, version: *mut u32) {
        with(|d| d.context(ctx as usize))?;
        cabi::write(version, 3020)
    }

    fn cuCtxGetLimit(value: *mut usize, limit: i32) {
        cabi::write(value, with(|d| d.limit(limit, None))?)
    }

    fn cuCtxSetLimit(limit: i32, value: usize) {
        with(|d| d.limit(limit, Some(value)).map(|_| ()))
    }

    fn cuCtxGetCacheConfig(config: *mut i32) {
        cabi::write(config, with(|d| Ok(d.ctx_mut(0)?.cache_config))?)
    }

    fn cuCtxSetCacheConfig(config: i32) {
        with(|d| {
            d.ctx_mut(0)?.cache_config = config;
            Ok(())
        })
    }

    fn cuCtxGetSharedMemConfig(config: *mut i32) {
        cabi::write(config, with(|d| Ok(d.ctx_mut(0)?.shared_mem_config))?)
    }

    fn cuCtxSetSharedMemConfig(config: i32) {
        with(|d| {
            d.ctx_mut(0)?.shared_mem_config = config;
            Ok(())
        })
    }

    /// Stream priorities are accepted (0 least, -5 greatest) but the vGPU's channels have
    /// none.
    fn cuCtxGetStreamPriorityRange(least: *mut i32, greatest: *mut i32) {
        with(|d| d.current())?;
        if !least.is_null() {
            cabi::write(least, 0)?;
        }
        if !greatest.is_null() {
            cabi::write(greatest, -5)?;
        }
        Ok(())
    }

    fn cuCtxResetPersistingL2Cache() {
        with(|d| d.current()).map(|_| ())
    }
}
