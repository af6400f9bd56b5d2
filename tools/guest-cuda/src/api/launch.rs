//! Kernel launches and occupancy.

use std::ffi::c_void;

use crate::cabi;
use crate::cuda_fn;
use crate::driver::with;
use crate::error::{err, Result};
use crate::launch::{launch, Launch};
use crate::stream::StreamKey;
use crate::types::*;

#[allow(clippy::too_many_arguments)]
fn classic(
    f: Handle,
    gx: u32,
    gy: u32,
    gz: u32,
    bx: u32,
    by: u32,
    bz: u32,
    shared: u32,
    s: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<()> {
    launch(
        f as usize,
        Launch {
            grid: [gx, gy, gz],
            block: [bx, by, bz],
            shared,
            stream: StreamKey::of(s),
        },
        params,
        extra,
    )
}

/// `cuLaunchKernelEx`: attributes that ask for what the vGPU cannot do (cooperative grids,
/// clusters) are refused; priorities and the rest are accepted as hints.
fn ex(
    config: *const CUlaunchConfig,
    f: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<()> {
    let c = cabi::read(config)?;
    for i in 0..c.num_attrs as usize {
        let a = cabi::read_at(c.attrs, i)?;
        let first = u32::from_le_bytes([a.value[0], a.value[1], a.value[2], a.value[3]]);
        match a.id {
            CU_LAUNCH_ATTRIBUTE_COOPERATIVE if first != 0 => return err(CUDA_ERROR_NOT_SUPPORTED),
            CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION => {
                let dims = [
                    first,
                    u32::from_le_bytes([a.value[4], a.value[5], a.value[6], a.value[7]]),
                    u32::from_le_bytes([a.value[8], a.value[9], a.value[10], a.value[11]]),
                ];
                if dims.iter().any(|&d| d > 1) {
                    return err(CUDA_ERROR_NOT_SUPPORTED);
                }
            }
            _ => {}
        }
    }
    launch(
        f as usize,
        Launch {
            grid: [c.grid_dim_x, c.grid_dim_y, c.grid_dim_z],
            block: [c.block_dim_x, c.block_dim_y, c.block_dim_z],
            shared: c.shared_mem_bytes,
            stream: StreamKey::of(c.h_stream),
        },
        params,
        extra,
    )
}

/// The block size with the most resident threads per multiprocessor (largest on ties), and
/// the grid that fills the device with it.
fn potential(
    min_grid: *mut i32,
    block: *mut i32,
    f: Handle,
    smem_of: Option<extern "C" fn(i32) -> usize>,
    smem: usize,
    limit: i32,
) -> Result<()> {
    let (best, grid) = with(|d| {
        let func_max = d.func_attribute(f as usize, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?;
        let warp = d.ident.attribute(crate::device::attr::WARP_SIZE)?.max(1);
        let sms = d
            .ident
            .attribute(crate::device::attr::MULTIPROCESSOR_COUNT)?
            .max(1);
        let cap = if limit > 0 {
            limit.min(func_max)
        } else {
            func_max
        };
        let (mut best, mut best_threads, mut best_blocks) = (0, -1i64, 0);
        let mut b = warp;
        while b <= cap {
            let s = smem_of.map_or(smem, |g| g(b));
            let n = d.occupancy(f as usize, b, s)?;
            let threads = n as i64 * b as i64;
            if threads >= best_threads && n > 0 {
                (best, best_threads, best_blocks) = (b, threads, n);
            }
            b += warp;
        }
        Ok((best, best_blocks * sms))
    })?;
    cabi::write(min_grid, grid)?;
    cabi::write(block, best)
}

cuda_fn! {
    fn cuLaunchKernel(f: Handle, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, s: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) {
        classic(f, gx, gy, gz, bx, by, bz, shared, s, params, extra)
    }
    fn cuLaunchKernel_ptsz(f: Handle, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, s: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) {
        classic(f, gx, gy, gz, bx, by, bz, shared, s, params, extra)
    }
    fn cuLaunchKernelEx(config: *const CUlaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) { ex(config, f, params, extra) }
    fn cuLaunchKernelEx_ptsz(config: *const CUlaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) { ex(config, f, params, extra) }

    fn cuOccupancyMaxActiveBlocksPerMultiprocessor(n: *mut i32, f: Handle, block: i32, smem: usize) {
        cabi::write(n, with(|d| d.occupancy(f as usize, block, smem))?)
    }
    fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(n: *mut i32, f: Handle, block: i32, smem: usize, flags: u32) {
        cabi::write(n, with(|d| d.occupancy(f as usize, block, smem))?)
    }
    fn cuOccupancyMaxPotentialBlockSize(min_grid: *mut i32, block: *mut i32, f: Handle, smem_of: Option<extern "C" fn(i32) -> usize>, smem: usize, limit: i32) {
        potential(min_grid, block, f, smem_of, smem, limit)
    }
    fn cuOccupancyMaxPotentialBlockSizeWithFlags(min_grid: *mut i32, block: *mut i32, f: Handle, smem_of: Option<extern "C" fn(i32) -> usize>, smem: usize, limit: i32, flags: u32) {
        potential(min_grid, block, f, smem_of, smem, limit)
    }
    fn cuOccupancyAvailableDynamicSMemPerBlock(out: *mut usize, f: Handle, blocks: i32, block: i32) {
        let v = with(|d| {
            let per_sm = d.ident.attribute(crate::device::attr::MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as i64;
            let fixed = d.func_attribute(f as usize, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)? as i64;
            if blocks <= 0 || block <= 0 {
                return err(CUDA_ERROR_INVALID_VALUE);
            }
            Ok((per_sm / blocks as i64 - fixed).max(0) as usize)
        })?;
        cabi::write(out, v)
    }
}
