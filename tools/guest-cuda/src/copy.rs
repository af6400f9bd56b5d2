//! Copies and memsets, in every direction, at byte granularity.
//!
//! Device memory and pinned host memory are both in the vGPU's VA space: a copy between any
//! two of them is one COPY command on the stream's channel. Pageable host memory goes through
//! the segment itself when it is small (the bytes travel inline, and the call returns at
//! once) or through a staging buffer of DMA memory, piece by piece, the call waiting for each
//! piece. A memset is a COPY `MEMSET` over the 4-byte-aligned middle and, for ragged edges,
//! small copies from the pattern's bytes carried inline (the copy engine's memset needs
//! 4-byte alignment, ABI §5.3).

use std::sync::Mutex;

use vgpu_guest::pushbuf::copy::MAX_BYTES as COPY_MAX;
use vgpu_guest::{Buffer, Fence, Placement, Segment};

use crate::driver::{wait, with, Driver};
use crate::error::{err, CuError, Result};
use crate::memory::Place;
use crate::stream::StreamKey;
use crate::types::*;

/// Host data up to this size travels inline in its segment.
pub const INLINE_MAX: usize = 8 * 1024;
/// The staging buffer: pageable copies move through it this many bytes at a time.
pub const STAGING_BYTES: u64 = 16 << 20;

/// One copy through the staging buffer at a time.
pub(crate) static STAGING: Mutex<()> = Mutex::new(());

/// The staging buffer, built on first use.
pub(crate) fn staging(d: &mut Driver) -> Result<&Buffer> {
    if d.staging.is_none() {
        d.staging = Some(d.dev.alloc(Placement::Sysmem, STAGING_BYTES)?);
    }
    d.staging.as_ref().ok_or(CuError(CUDA_ERROR_UNKNOWN))
}

/// Append copies of `len` bytes from VA `src` to VA `dst`, in launches of at most 1 GiB.
pub fn copy_cmds(seg: &mut Segment<'_>, src: u64, dst: u64, len: u64) {
    let mut off = 0;
    while off < len {
        let n = (len - off).min(COPY_MAX);
        seg.pb.copy_1d(src + off, dst + off, n as u32);
        off += n;
    }
}

/// `len` bytes from API address `src` to API address `dst` on stream `s`. `sync`: the call
/// returns when the destination holds the bytes (the synchronous copies, and any copy to
/// pageable memory).
pub fn copy(dst: u64, src: u64, len: u64, s: StreamKey, sync: bool) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (dp, sp) = with(|d| {
        d.check_sticky()?;
        d.streams.route(s)?;
        Ok((d.place(dst, len)?, d.place(src, len)?))
    })?;
    match (dp, sp) {
        (Place::Host, Place::Host) => {
            // Both in this process: ordered after the stream's work, as a copy would be.
            crate::stream::synchronize(s)?;
            let from = crate::cabi::bytes(src as *const u8, len as usize)?.to_vec();
            crate::cabi::bytes_mut(dst as *mut u8, len as usize)?.copy_from_slice(&from);
            Ok(())
        }
        (Place::Host, from) => download(dst, vaddr(from), len, s),
        (to, Place::Host) => upload(vaddr(to), src, len, s, sync),
        (to, from) => {
            let f = with(|d| {
                d.submit(s, |seg| {
                    copy_cmds(seg, vaddr(from), vaddr(to), len);
                    Ok(())
                })
            })?;
            if sync {
                wait(&[f])?;
            }
            Ok(())
        }
    }
}

fn vaddr(p: Place) -> u64 {
    match p {
        Place::Device { va } | Place::Pinned { va } => va,
        Place::Host => 0,
    }
}

/// Host bytes at `src` to VA `dst`.
fn upload(dst: u64, src: u64, len: u64, s: StreamKey, sync: bool) -> Result<()> {
    let data = crate::cabi::bytes(src as *const u8, len as usize)?;
    if data.len() <= INLINE_MAX {
        let f = with(|d| {
            d.submit(s, |seg| {
                let va = seg.inline(data)?;
                seg.pb.copy_1d(va, dst, data.len() as u32);
                Ok(())
            })
        })?;
        if sync {
            wait(&[f])?;
        }
        return Ok(());
    }
    let _one = STAGING.lock().unwrap_or_else(|p| p.into_inner());
    for (i, piece) in data.chunks(STAGING_BYTES as usize).enumerate() {
        let at = dst + (i as u64) * STAGING_BYTES;
        let f = with(|d| {
            let st = staging(d)?;
            st.host()?.write(0, piece)?;
            let va = st.va();
            d.submit(s, |seg| {
                copy_cmds(seg, va, at, piece.len() as u64);
                Ok(())
            })
        })?;
        wait(&[f])?;
    }
    Ok(())
}

/// VA `src` to host bytes at `dst`: the call waits for the stream's work and the copy.
fn download(dst: u64, src: u64, len: u64, s: StreamKey) -> Result<()> {
    let out = crate::cabi::bytes_mut(dst as *mut u8, len as usize)?;
    let _one = STAGING.lock().unwrap_or_else(|p| p.into_inner());
    for (i, piece) in out.chunks_mut(STAGING_BYTES as usize).enumerate() {
        let from = src + (i as u64) * STAGING_BYTES;
        let n = piece.len() as u64;
        let f: Fence = with(|d| {
            let va = staging(d)?.va();
            d.submit(s, |seg| {
                copy_cmds(seg, from, va, n);
                Ok(())
            })
        })?;
        wait(&[f])?;
        with(|d| staging(d)?.host()?.read(0, piece).map_err(CuError::from))?;
    }
    Ok(())
}

/// The byte at address `x` of a memset whose 32-bit pattern is `pattern`.
fn pattern_bytes(pattern: u32, from: u64, n: usize) -> Vec<u8> {
    let p = pattern.to_le_bytes();
    (0..n)
        .map(|i| p[((from + i as u64) % 4) as usize])
        .collect()
}

/// Append a memset of `bytes` at VA `va` with `pattern` (repeated from 4-byte-aligned
/// addresses): the aligned middle by the copy engine's memset, the edges by copies of the
/// pattern's bytes.
pub fn memset_cmds(seg: &mut Segment<'_>, va: u64, pattern: u32, bytes: u64) -> Result<()> {
    let head = ((4 - va % 4) % 4).min(bytes);
    if head > 0 {
        let src = seg.inline(&pattern_bytes(pattern, va, head as usize))?;
        seg.pb.copy_1d(src, va, head as u32);
    }
    let mid_start = va + head;
    let mid = (bytes - head) / 4 * 4;
    let mut off = 0;
    while off < mid {
        let n = (mid - off).min(COPY_MAX);
        seg.pb.memset_1d(mid_start + off, pattern, n as u32);
        off += n;
    }
    let tail = bytes - head - mid;
    if tail > 0 {
        let at = mid_start + mid;
        let src = seg.inline(&pattern_bytes(pattern, at, tail as usize))?;
        seg.pb.copy_1d(src, at, tail as u32);
    }
    Ok(())
}

/// The 32-bit pattern of a memset of `elem`-byte elements of `value`.
pub fn pattern_of(value: u32, elem: u32) -> u32 {
    match elem {
        1 => (value & 0xFF) * 0x0101_0101,
        2 => (value & 0xFFFF) * 0x0001_0001,
        _ => value,
    }
}

/// `cuMemsetD8/D16/D32`: `count` elements of `elem` bytes at `dst`.
pub fn memset(dst: u64, value: u32, elem: u32, count: u64, s: StreamKey, sync: bool) -> Result<()> {
    if !dst.is_multiple_of(elem as u64) {
        return err(CUDA_ERROR_INVALID_VALUE);
    }
    let bytes = count
        .checked_mul(elem as u64)
        .ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
    memset_2d(dst, bytes, value, elem, bytes, 1, s, sync)
}

/// `cuMemsetD2D8/16/32`: `height` rows of `width` elements, `pitch` bytes apart.
#[allow(clippy::too_many_arguments)]
pub fn memset_2d(
    dst: u64,
    pitch: u64,
    value: u32,
    elem: u32,
    width_bytes: u64,
    height: u64,
    s: StreamKey,
    sync: bool,
) -> Result<()> {
    if width_bytes == 0 || height == 0 {
        return Ok(());
    }
    if height > 1 && pitch < width_bytes {
        return err(CUDA_ERROR_INVALID_VALUE);
    }
    let span = pitch * (height - 1) + width_bytes;
    let pattern = pattern_of(value, elem);
    let f = with(|d| {
        let va = match d.place(dst, span)? {
            Place::Device { va } | Place::Pinned { va } => va,
            Place::Host => return err(CUDA_ERROR_INVALID_VALUE),
        };
        d.submit(s, |seg| {
            for row in 0..height {
                memset_cmds(seg, va + row * pitch, pattern, width_bytes)?;
            }
            Ok(())
        })
    })?;
    if sync {
        wait(&[f])?;
    }
    Ok(())
}

/// `cuMemcpy2D` (and its async form): row by row, each row a copy of the kinds above.
pub fn copy_2d(p: &CudaMemcpy2D, s: StreamKey, sync: bool) -> Result<()> {
    let end = |mt: u32, host: usize, dev: u64, x: usize, y: usize, pitch: usize| -> Result<u64> {
        let base = match mt {
            CU_MEMORYTYPE_HOST => host as u64,
            CU_MEMORYTYPE_DEVICE | CU_MEMORYTYPE_UNIFIED => dev,
            _ => return err(CUDA_ERROR_NOT_SUPPORTED),
        };
        Ok(base + (y * pitch + x) as u64)
    };
    if p.width_in_bytes == 0 || p.height == 0 {
        return Ok(());
    }
    if (p.height > 1) && (p.src_pitch < p.width_in_bytes || p.dst_pitch < p.width_in_bytes) {
        return err(CUDA_ERROR_INVALID_VALUE);
    }
    let src0 = end(
        p.src_memory_type,
        p.src_host as usize,
        p.src_device,
        p.src_x_in_bytes,
        p.src_y,
        p.src_pitch,
    )?;
    let dst0 = end(
        p.dst_memory_type,
        p.dst_host as usize,
        p.dst_device,
        p.dst_x_in_bytes,
        p.dst_y,
        p.dst_pitch,
    )?;
    let w = p.width_in_bytes as u64;
    let (sp, dp) = (p.src_pitch as u64, p.dst_pitch as u64);
    let rows = p.height as u64;
    let (src_place, dst_place) = with(|d| {
        Ok((
            d.place(src0, sp * (rows - 1) + w)?,
            d.place(dst0, dp * (rows - 1) + w)?,
        ))
    })?;
    let fits = sp <= u32::MAX as u64 && dp <= u32::MAX as u64 && w * rows <= COPY_MAX;
    if src_place != Place::Host && dst_place != Place::Host && fits {
        // One 2D copy on the engine.
        let f = with(|d| {
            d.submit(s, |seg| {
                seg.pb.copy_2d(
                    vaddr(src_place),
                    sp as u32,
                    vaddr(dst_place),
                    dp as u32,
                    w as u32,
                    rows as u32,
                );
                Ok(())
            })
        })?;
        if sync {
            wait(&[f])?;
        }
        return Ok(());
    }
    for row in 0..rows {
        copy(
            dst0 + row * dp,
            src0 + row * sp,
            w,
            s,
            sync || dst_place == Place::Host,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_repeat_from_aligned_addresses() {
        assert_eq!(pattern_of(0xAB, 1), 0xABAB_ABAB);
        assert_eq!(pattern_of(0x1234, 2), 0x1234_1234);
        assert_eq!(pattern_of(0xDEAD_BEEF, 4), 0xDEAD_BEEF);
        // A 16-bit element at an address 2 mod 4 starts with its own low byte.
        assert_eq!(pattern_bytes(pattern_of(0x1234, 2), 6, 2), vec![0x34, 0x12]);
        assert_eq!(pattern_bytes(0x0403_0201, 1, 3), vec![2, 3, 4]);
        assert_eq!(pattern_bytes(0x0403_0201, 8, 1), vec![1]);
    }
}
