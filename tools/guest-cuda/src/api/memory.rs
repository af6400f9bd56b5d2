//! Memory: device allocations, pinned and registered host memory, pointer attributes,
//! copies and memsets (every `_v2`, `_ptds` and `_ptsz` form).

use std::ffi::c_void;

use crate::cabi;
use crate::copy::{copy, copy_2d, memset, memset_2d};
use crate::cuda_fn;
use crate::driver::{wait, with};
use crate::error::{err, CuError, Result};
use crate::stream::StreamKey;
use crate::types::*;

const LEGACY: StreamKey = StreamKey::Legacy;

fn alloc(dptr: *mut CUdeviceptr, bytes: usize) -> Result<()> {
    let p = with(|d| d.mem_alloc(bytes as u64))?;
    cabi::write(dptr, p)
}

/// `cuMemFree`: the device's work so far may use the memory, so it finishes first.
fn free(p: CUdeviceptr) -> Result<()> {
    if p == 0 {
        return Ok(());
    }
    let pending = with(|d| {
        d.alloc_of(p)
            .filter(|(s, _)| *s == p)
            .ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        if d.sticky.is_some() {
            return Ok(Vec::new());
        }
        d.outstanding()
    })?;
    let r = wait(&pending);
    with(|d| d.mem_free(p))?;
    r
}

fn info(free: *mut usize, total: *mut usize) -> Result<()> {
    let (f, t) = with(|d| {
        d.current()?;
        Ok(d.mem_info())
    })?;
    cabi::write(free, f as usize)?;
    cabi::write(total, t as usize)
}

fn range(base: *mut CUdeviceptr, size: *mut usize, p: CUdeviceptr) -> Result<()> {
    let (s, l) = with(|d| d.alloc_of(p).ok_or(CuError(CUDA_ERROR_NOT_FOUND)))?;
    if !base.is_null() {
        cabi::write(base, s)?;
    }
    if !size.is_null() {
        cabi::write(size, l as usize)?;
    }
    Ok(())
}

fn pitch_alloc(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: u32,
) -> Result<()> {
    if width == 0 || height == 0 || ![4, 8, 16].contains(&elem) {
        return err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = width.div_ceil(512) * 512;
    alloc(dptr, p * height)?;
    cabi::write(pitch, p)
}

fn host_alloc(pp: *mut *mut c_void, bytes: usize, flags: u32) -> Result<()> {
    let a = with(|d| d.host_alloc(bytes as u64, flags))?;
    cabi::write(pp, a as *mut c_void)
}

fn host_free(p: *mut c_void) -> Result<()> {
    let pending = with(|d| {
        d.pinned_of(p as usize)
            .filter(|(s, _)| *s == p as usize)
            .ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        if d.sticky.is_some() {
            return Ok(Vec::new());
        }
        d.outstanding()
    })?;
    let r = wait(&pending);
    with(|d| d.host_free(p as usize))?;
    r
}

/// A device pointer's stream-ordered allocation: allocated now, which orders it before
/// everything the stream does later.
fn alloc_async(dptr: *mut CUdeviceptr, bytes: usize, s: Handle) -> Result<()> {
    with(|d| d.streams.route(StreamKey::of(s)))?;
    alloc(dptr, bytes)
}

/// A stream-ordered free: after the stream's work so far.
fn free_async(p: CUdeviceptr, s: Handle) -> Result<()> {
    let last = with(|d| d.streams.last(StreamKey::of(s)))?;
    if let Some(f) = last {
        wait(&[f])?;
    }
    free(p)
}

fn attribute(attr: i32, data: *mut c_void, p: CUdeviceptr) -> Result<()> {
    with(|d| {
        let ctx = d.current()?;
        let device = d.va_of(p).and_then(|_| d.alloc_of(p));
        let pinned = d.pinned_of(p as usize).map(|(s, a)| (s as u64, a.len));
        let (start, len, kind) = match (device, pinned) {
            (Some((s, l)), _) => (s, l, CU_MEMORYTYPE_DEVICE),
            (None, Some((s, l))) => (s, l, CU_MEMORYTYPE_HOST),
            (None, None) => {
                return match attr {
                    CU_POINTER_ATTRIBUTE_IS_MANAGED | CU_POINTER_ATTRIBUTE_MAPPED => {
                        cabi::write(data.cast::<i32>(), 0)
                    }
                    _ => err(CUDA_ERROR_INVALID_VALUE),
                };
            }
        };
        let w64 = |v: u64| cabi::write(data.cast::<u64>(), v);
        let w32 = |v: u32| cabi::write(data.cast::<u32>(), v);
        match attr {
            CU_POINTER_ATTRIBUTE_CONTEXT => cabi::write(data.cast::<Handle>(), ctx as Handle),
            CU_POINTER_ATTRIBUTE_MEMORY_TYPE => w32(kind),
            CU_POINTER_ATTRIBUTE_DEVICE_POINTER if kind == CU_MEMORYTYPE_DEVICE => w64(p),
            CU_POINTER_ATTRIBUTE_HOST_POINTER if kind == CU_MEMORYTYPE_HOST => w64(p),
            CU_POINTER_ATTRIBUTE_DEVICE_POINTER | CU_POINTER_ATTRIBUTE_HOST_POINTER => {
                err(CUDA_ERROR_INVALID_VALUE)
            }
            CU_POINTER_ATTRIBUTE_SYNC_MEMOPS => w32(1),
            CU_POINTER_ATTRIBUTE_BUFFER_ID | CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID => w64(start),
            CU_POINTER_ATTRIBUTE_IS_MANAGED
            | CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE
            | CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE
            | CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE => w32(0),
            CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => w32(0),
            CU_POINTER_ATTRIBUTE_RANGE_START_ADDR | CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR => {
                w64(start)
            }
            CU_POINTER_ATTRIBUTE_RANGE_SIZE | CU_POINTER_ATTRIBUTE_MAPPING_SIZE => w64(len),
            CU_POINTER_ATTRIBUTE_MAPPED => w32(1),
            CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES => w64(0),
            // CU_POINTER_ATTRIBUTE_ACCESS_FLAGS_PROT_READWRITE.
            CU_POINTER_ATTRIBUTE_ACCESS_FLAGS => w32(3),
            CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE => {
                cabi::write(data.cast::<Handle>(), std::ptr::null_mut())
            }
            _ => err(CUDA_ERROR_INVALID_VALUE),
        }
    })
}

fn h2d(dst: CUdeviceptr, src: *const c_void, n: usize, s: StreamKey, sync: bool) -> Result<()> {
    copy(dst, src as u64, n as u64, s, sync)
}
fn d2h(dst: *mut c_void, src: CUdeviceptr, n: usize, s: StreamKey) -> Result<()> {
    copy(dst as u64, src, n as u64, s, true)
}
fn d2d(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: StreamKey, sync: bool) -> Result<()> {
    copy(dst, src, n as u64, s, sync)
}
fn st(s: Handle) -> StreamKey {
    StreamKey::of(s)
}
fn read2d(p: *const CudaMemcpy2D) -> Result<CudaMemcpy2D> {
    cabi::read(p)
}

cuda_fn! {
    fn cuMemAlloc(dptr: *mut CUdeviceptr, bytes: usize) { alloc(dptr, bytes) }
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) { alloc(dptr, bytes) }
    fn cuMemAllocPitch(dptr: *mut CUdeviceptr, pitch: *mut usize, w: usize, h: usize, elem: u32) { pitch_alloc(dptr, pitch, w, h, elem) }
    fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, w: usize, h: usize, elem: u32) { pitch_alloc(dptr, pitch, w, h, elem) }
    fn cuMemFree(p: CUdeviceptr) { free(p) }
    fn cuMemFree_v2(p: CUdeviceptr) { free(p) }
    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytes: usize, s: Handle) { alloc_async(dptr, bytes, s) }
    fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytes: usize, s: Handle) { alloc_async(dptr, bytes, s) }
    fn cuMemFreeAsync(p: CUdeviceptr, s: Handle) { free_async(p, s) }
    fn cuMemFreeAsync_ptsz(p: CUdeviceptr, s: Handle) { free_async(p, s) }
    fn cuMemGetInfo(free: *mut usize, total: *mut usize) { info(free, total) }
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) { info(free, total) }
    fn cuMemGetAddressRange(base: *mut CUdeviceptr, size: *mut usize, p: CUdeviceptr) { range(base, size, p) }
    fn cuMemGetAddressRange_v2(base: *mut CUdeviceptr, size: *mut usize, p: CUdeviceptr) { range(base, size, p) }

    fn cuMemAllocHost(pp: *mut *mut c_void, bytes: usize) { host_alloc(pp, bytes, 0) }
    fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytes: usize) { host_alloc(pp, bytes, 0) }
    fn cuMemHostAlloc(pp: *mut *mut c_void, bytes: usize, flags: u32) { host_alloc(pp, bytes, flags) }
    fn cuMemFreeHost(p: *mut c_void) { host_free(p) }
    fn cuMemHostGetFlags(flags: *mut u32, p: *mut c_void) {
        let f = with(|d| d.pinned_of(p as usize).map(|(_, a)| a.flags).ok_or(CuError(CUDA_ERROR_INVALID_VALUE)))?;
        cabi::write(flags, f)
    }
    /// Kernels cannot reach system memory (ABI §7.1).
    fn cuMemHostGetDevicePointer(dptr: *mut CUdeviceptr, p: *mut c_void, flags: u32) { err(CUDA_ERROR_NOT_SUPPORTED) }
    fn cuMemHostGetDevicePointer_v2(dptr: *mut CUdeviceptr, p: *mut c_void, flags: u32) { err(CUDA_ERROR_NOT_SUPPORTED) }
    fn cuMemHostRegister(p: *mut c_void, bytes: usize, flags: u32) { with(|d| d.host_register(p as usize, bytes as u64, flags)) }
    fn cuMemHostRegister_v2(p: *mut c_void, bytes: usize, flags: u32) { with(|d| d.host_register(p as usize, bytes as u64, flags)) }
    fn cuMemHostUnregister(p: *mut c_void) { with(|d| d.host_unregister(p as usize)) }

    fn cuPointerGetAttribute(data: *mut c_void, attr: i32, p: CUdeviceptr) { attribute(attr, data, p) }
    fn cuPointerGetAttributes(n: u32, attrs: *const i32, data: *mut *mut c_void, p: CUdeviceptr) {
        for i in 0..n as usize {
            let a = cabi::read_at(attrs, i)?;
            let out = cabi::read_at(data as *const *mut c_void, i)?;
            if attribute(a, out, p).is_err() {
                // Attributes that do not apply to the pointer read as zero, as CUDA's do.
                match a {
                    CU_POINTER_ATTRIBUTE_CONTEXT | CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE => {
                        cabi::write(out.cast::<Handle>(), std::ptr::null_mut())?
                    }
                    CU_POINTER_ATTRIBUTE_DEVICE_POINTER
                    | CU_POINTER_ATTRIBUTE_HOST_POINTER
                    | CU_POINTER_ATTRIBUTE_BUFFER_ID
                    | CU_POINTER_ATTRIBUTE_RANGE_START_ADDR
                    | CU_POINTER_ATTRIBUTE_RANGE_SIZE => cabi::write(out.cast::<u64>(), 0)?,
                    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => cabi::write(out.cast::<i32>(), -2)?,
                    _ => cabi::write(out.cast::<u32>(), 0)?,
                }
            }
        }
        Ok(())
    }
    fn cuPointerSetAttribute(value: *const c_void, attr: i32, p: CUdeviceptr) {
        if attr == CU_POINTER_ATTRIBUTE_SYNC_MEMOPS { Ok(()) } else { err(CUDA_ERROR_INVALID_VALUE) }
    }

    fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, src, n as u64, LEGACY, true) }
    fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, src, n as u64, LEGACY, true) }
    fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: Handle) { copy(dst, src, n as u64, st(s), false) }
    fn cuMemcpyAsync_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: Handle) { copy(dst, src, n as u64, st(s), false) }
    fn cuMemcpyPeer(dst: CUdeviceptr, dc: Handle, src: CUdeviceptr, sc: Handle, n: usize) { copy(dst, src, n as u64, LEGACY, true) }
    fn cuMemcpyPeer_ptds(dst: CUdeviceptr, dc: Handle, src: CUdeviceptr, sc: Handle, n: usize) { copy(dst, src, n as u64, LEGACY, true) }
    fn cuMemcpyPeerAsync(dst: CUdeviceptr, dc: Handle, src: CUdeviceptr, sc: Handle, n: usize, s: Handle) { copy(dst, src, n as u64, st(s), false) }
    fn cuMemcpyPeerAsync_ptsz(dst: CUdeviceptr, dc: Handle, src: CUdeviceptr, sc: Handle, n: usize, s: Handle) { copy(dst, src, n as u64, st(s), false) }

    fn cuMemcpyHtoD(dst: u32, src: *const c_void, n: u32) { h2d(dst as u64, src, n as usize, LEGACY, true) }
    fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) { h2d(dst, src, n, LEGACY, true) }
    fn cuMemcpyHtoD_v2_ptds(dst: CUdeviceptr, src: *const c_void, n: usize) { h2d(dst, src, n, LEGACY, true) }
    fn cuMemcpyHtoDAsync(dst: u32, src: *const c_void, n: u32, s: Handle) { h2d(dst as u64, src, n as usize, st(s), false) }
    fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, s: Handle) { h2d(dst, src, n, st(s), false) }
    fn cuMemcpyHtoDAsync_v2_ptsz(dst: CUdeviceptr, src: *const c_void, n: usize, s: Handle) { h2d(dst, src, n, st(s), false) }
    fn cuMemcpyDtoH(dst: *mut c_void, src: u32, n: u32) { d2h(dst, src as u64, n as usize, LEGACY) }
    fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) { d2h(dst, src, n, LEGACY) }
    fn cuMemcpyDtoH_v2_ptds(dst: *mut c_void, src: CUdeviceptr, n: usize) { d2h(dst, src, n, LEGACY) }
    /// To pinned memory the copy is asynchronous; to pageable memory it waits, as CUDA's does.
    fn cuMemcpyDtoHAsync(dst: *mut c_void, src: u32, n: u32, s: Handle) { copy(dst as u64, src as u64, n as u64, st(s), false) }
    fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, s: Handle) { copy(dst as u64, src, n as u64, st(s), false) }
    fn cuMemcpyDtoHAsync_v2_ptsz(dst: *mut c_void, src: CUdeviceptr, n: usize, s: Handle) { copy(dst as u64, src, n as u64, st(s), false) }
    fn cuMemcpyDtoD(dst: u32, src: u32, n: u32) { d2d(dst as u64, src as u64, n as usize, LEGACY, false) }
    fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { d2d(dst, src, n, LEGACY, false) }
    fn cuMemcpyDtoD_v2_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { d2d(dst, src, n, LEGACY, false) }
    fn cuMemcpyDtoDAsync(dst: u32, src: u32, n: u32, s: Handle) { d2d(dst as u64, src as u64, n as usize, st(s), false) }
    fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: Handle) { d2d(dst, src, n, st(s), false) }
    fn cuMemcpyDtoDAsync_v2_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: Handle) { d2d(dst, src, n, st(s), false) }

    fn cuMemcpy2D_v2(p: *const CudaMemcpy2D) { copy_2d(&read2d(p)?, LEGACY, true) }
    fn cuMemcpy2D_v2_ptds(p: *const CudaMemcpy2D) { copy_2d(&read2d(p)?, LEGACY, true) }
    fn cuMemcpy2DUnaligned_v2(p: *const CudaMemcpy2D) { copy_2d(&read2d(p)?, LEGACY, true) }
    fn cuMemcpy2DUnaligned_v2_ptds(p: *const CudaMemcpy2D) { copy_2d(&read2d(p)?, LEGACY, true) }
    fn cuMemcpy2DAsync_v2(p: *const CudaMemcpy2D, s: Handle) { copy_2d(&read2d(p)?, st(s), false) }
    fn cuMemcpy2DAsync_v2_ptsz(p: *const CudaMemcpy2D, s: Handle) { copy_2d(&read2d(p)?, st(s), false) }

    fn cuMemsetD8(dst: u32, v: u8, n: u32) { memset(dst as u64, v as u32, 1, n as u64, LEGACY, false) }
    fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) { memset(dst, v as u32, 1, n as u64, LEGACY, false) }
    fn cuMemsetD8_v2_ptds(dst: CUdeviceptr, v: u8, n: usize) { memset(dst, v as u32, 1, n as u64, LEGACY, false) }
    fn cuMemsetD16(dst: u32, v: u16, n: u32) { memset(dst as u64, v as u32, 2, n as u64, LEGACY, false) }
    fn cuMemsetD16_v2(dst: CUdeviceptr, v: u16, n: usize) { memset(dst, v as u32, 2, n as u64, LEGACY, false) }
    fn cuMemsetD16_v2_ptds(dst: CUdeviceptr, v: u16, n: usize) { memset(dst, v as u32, 2, n as u64, LEGACY, false) }
    fn cuMemsetD32(dst: u32, v: u32, n: u32) { memset(dst as u64, v, 4, n as u64, LEGACY, false) }
    fn cuMemsetD32_v2(dst: CUdeviceptr, v: u32, n: usize) { memset(dst, v, 4, n as u64, LEGACY, false) }
    fn cuMemsetD32_v2_ptds(dst: CUdeviceptr, v: u32, n: usize) { memset(dst, v, 4, n as u64, LEGACY, false) }
    fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: Handle) { memset(dst, v as u32, 1, n as u64, st(s), false) }
    fn cuMemsetD8Async_ptsz(dst: CUdeviceptr, v: u8, n: usize, s: Handle) { memset(dst, v as u32, 1, n as u64, st(s), false) }
    fn cuMemsetD16Async(dst: CUdeviceptr, v: u16, n: usize, s: Handle) { memset(dst, v as u32, 2, n as u64, st(s), false) }
    fn cuMemsetD16Async_ptsz(dst: CUdeviceptr, v: u16, n: usize, s: Handle) { memset(dst, v as u32, 2, n as u64, st(s), false) }
    fn cuMemsetD32Async(dst: CUdeviceptr, v: u32, n: usize, s: Handle) { memset(dst, v, 4, n as u64, st(s), false) }
    fn cuMemsetD32Async_ptsz(dst: CUdeviceptr, v: u32, n: usize, s: Handle) { memset(dst, v, 4, n as u64, st(s), false) }
    fn cuMemsetD2D8_v2(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize) { memset_2d(dst, pitch as u64, v as u32, 1, w as u64, h as u64, LEGACY, false) }
    fn cuMemsetD2D8_v2_ptds(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize) { memset_2d(dst, pitch as u64, v as u32, 1, w as u64, h as u64, LEGACY, false) }
    fn cuMemsetD2D16_v2(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize) { memset_2d(dst, pitch as u64, v as u32, 2, 2 * w as u64, h as u64, LEGACY, false) }
    fn cuMemsetD2D16_v2_ptds(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize) { memset_2d(dst, pitch as u64, v as u32, 2, 2 * w as u64, h as u64, LEGACY, false) }
    fn cuMemsetD2D32_v2(dst: CUdeviceptr, pitch: usize, v: u32, w: usize, h: usize) { memset_2d(dst, pitch as u64, v, 4, 4 * w as u64, h as u64, LEGACY, false) }
    fn cuMemsetD2D32_v2_ptds(dst: CUdeviceptr, pitch: usize, v: u32, w: usize, h: usize) { memset_2d(dst, pitch as u64, v, 4, 4 * w as u64, h as u64, LEGACY, false) }
    fn cuMemsetD2D8Async(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize, s: Handle) { memset_2d(dst, pitch as u64, v as u32, 1, w as u64, h as u64, st(s), false) }
    fn cuMemsetD2D8Async_ptsz(dst: CUdeviceptr, pitch: usize, v: u8, w: usize, h: usize, s: Handle) { memset_2d(dst, pitch as u64, v as u32, 1, w as u64, h as u64, st(s), false) }
    fn cuMemsetD2D16Async(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize, s: Handle) { memset_2d(dst, pitch as u64, v as u32, 2, 2 * w as u64, h as u64, st(s), false) }
    fn cuMemsetD2D16Async_ptsz(dst: CUdeviceptr, pitch: usize, v: u16, w: usize, h: usize, s: Handle) { memset_2d(dst, pitch as u64, v as u32, 2, 2 * w as u64, h as u64, st(s), false) }
    fn cuMemsetD2D32Async(dst: CUdeviceptr, pitch: usize, v: u32, w: usize, h: usize, s: Handle) { memset_2d(dst, pitch as u64, v, 4, 4 * w as u64, h as u64, st(s), false) }
    fn cuMemsetD2D32Async_ptsz(dst: CUdeviceptr, pitch: usize, v: u32, w: usize, h: usize, s: Handle) { memset_2d(dst, pitch as u64, v, 4, 4 * w as u64, h as u64, st(s), false) }
}
