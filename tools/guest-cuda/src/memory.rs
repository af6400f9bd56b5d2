//! Memory: device allocations, pinned and registered host memory, and what a pointer is.
//!
//! A `CUdeviceptr` is the address kernels dereference: `PTX_VA_BASE` + the vGPU VA of the
//! byte (ABI §7.1; on a backend without PTX, [`crate::driver::DEFAULT_POINTER_BASE`]).
//! Kernels reach only VRAM mapped in whole 2 MiB chunks, so device memory comes from such
//! chunks ([`vgpu_guest::Device::alloc_for_kernels`]): an allocation of more than
//! [`POOL_MAX`] bytes gets chunks of its own, smaller ones share pooled chunks, 256-byte
//! aligned as CUDA's are. The process reserves the whole pointer window at `cuInit`, so no
//! host pointer equals a device pointer.
//!
//! Pinned host memory (`cuMemHostAlloc`) is DMA memory of the vGPU, mapped into its VA space:
//! copies from and to it go straight to the copy engine. Registered memory
//! (`cuMemHostRegister`) is remembered as such, but over vfio-user the vGPU cannot reach an
//! arbitrary host mapping, so copies through it are staged like pageable memory's.

use std::collections::BTreeMap;

use vgpu_guest::alloc::RangeAllocator;
use vgpu_guest::{Buffer, Placement};

use crate::driver::Driver;
use crate::error::{err, CuError, Result};
use crate::types::*;

/// Pooled allocations are at most this large; larger ones get chunks of their own.
pub const POOL_MAX: u64 = 1 << 20;
/// The size of a pool chunk and of the GPU's large page.
pub const CHUNK: u64 = 2 << 20;
/// Alignment of every device allocation.
pub const ALIGN: u64 = 256;

/// One device allocation.
#[derive(Debug)]
pub struct Alloc {
    pub len: u64,
    pub ctx: usize,
    backing: Backing,
}

#[derive(Debug)]
enum Backing {
    Own(Buffer),
    /// Inside the pool chunk at this VA.
    Pooled {
        chunk: u64,
    },
}

/// A pool chunk: 2 MiB of kernel-reachable VRAM shared by small allocations.
#[derive(Debug)]
struct Chunk {
    buf: Buffer,
    /// Offsets in the chunk.
    free: RangeAllocator,
    used: u32,
}

/// Pinned host memory: DMA memory mapped for the vGPU.
#[derive(Debug)]
pub struct Pinned {
    pub buf: Buffer,
    pub len: u64,
    pub flags: u32,
    pub ctx: usize,
}

/// A registered host range.
#[derive(Clone, Copy, Debug)]
pub struct Registered {
    pub len: u64,
    pub flags: u32,
    pub ctx: usize,
}

/// Where a byte the API names lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Device memory at this vGPU VA.
    Device { va: u64 },
    /// Pinned host memory: its vGPU VA and CPU address.
    Pinned { va: u64 },
    /// Any other host memory (pageable or registered): reached through staging.
    Host,
}

/// The memory of the process.
#[derive(Debug, Default)]
pub struct Memory {
    /// Device allocations by first device pointer.
    pub allocs: BTreeMap<u64, Alloc>,
    chunks: BTreeMap<u64, Chunk>,
    /// Pinned host allocations by CPU address.
    pub pinned: BTreeMap<usize, Pinned>,
    pub registered: BTreeMap<usize, Registered>,
}

/// The entry of `map` whose range `[start, start + len)` holds `p`.
fn containing<T>(map: &BTreeMap<u64, T>, p: u64, len: impl Fn(&T) -> u64) -> Option<(u64, &T)> {
    map.range(..=p)
        .next_back()
        .filter(|(s, a)| p - **s < len(a).max(1))
        .map(|(s, a)| (*s, a))
}

impl Driver {
    /// `cuMemAlloc`: `len` bytes of device memory.
    pub fn mem_alloc(&mut self, len: u64) -> Result<CUdeviceptr> {
        let ctx = self.current()?;
        self.check_sticky()?;
        if len == 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let (va, backing) = if len > POOL_MAX {
            let buf = self
                .dev
                .alloc_for_kernels(len)
                .map_err(|_| CuError(CUDA_ERROR_OUT_OF_MEMORY))?;
            (buf.va(), Backing::Own(buf))
        } else {
            let need = len.div_ceil(ALIGN) * ALIGN;
            let found = self
                .mem
                .chunks
                .iter_mut()
                .find_map(|(&cva, c)| c.free.alloc(need, ALIGN).map(|off| (cva, off, c)));
            let (cva, off) = match found {
                Some((cva, off, c)) => {
                    c.used += 1;
                    (cva, off)
                }
                None => {
                    let buf = self
                        .dev
                        .alloc_for_kernels(CHUNK)
                        .map_err(|_| CuError(CUDA_ERROR_OUT_OF_MEMORY))?;
                    let cva = buf.va();
                    let mut free = RangeAllocator::new(0, CHUNK);
                    let off = free.alloc(need, ALIGN).ok_or(CuError(CUDA_ERROR_UNKNOWN))?;
                    self.mem.chunks.insert(cva, Chunk { buf, free, used: 1 });
                    (cva, off)
                }
            };
            (cva + off, Backing::Pooled { chunk: cva })
        };
        let p = self.base + va;
        self.mem.allocs.insert(p, Alloc { len, ctx, backing });
        Ok(p)
    }

    /// `cuMemFree`: the caller has waited for the work queued before.
    pub fn mem_free(&mut self, p: CUdeviceptr) -> Result<()> {
        let a = self
            .mem
            .allocs
            .remove(&p)
            .ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        self.drop_alloc(p, a)
    }

    fn drop_alloc(&mut self, p: CUdeviceptr, a: Alloc) -> Result<()> {
        match a.backing {
            Backing::Own(buf) => self.dev.free(buf)?,
            Backing::Pooled { chunk } => {
                let c = self
                    .mem
                    .chunks
                    .get_mut(&chunk)
                    .ok_or(CuError(CUDA_ERROR_UNKNOWN))?;
                let off = p - self.base - chunk;
                c.free.free(off, a.len.div_ceil(ALIGN) * ALIGN);
                c.used -= 1;
                // Keep one empty chunk for the next small allocation.
                if c.used == 0 && self.mem.chunks.values().filter(|c| c.used == 0).count() > 1 {
                    if let Some(c) = self.mem.chunks.remove(&chunk) {
                        self.dev.free(c.buf)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The device allocation holding `p`: its start and length.
    pub fn alloc_of(&self, p: CUdeviceptr) -> Option<(u64, u64)> {
        containing(&self.mem.allocs, p, |a| a.len).map(|(s, a)| (s, a.len))
    }

    /// `cuMemGetInfo`: free and total VRAM of the vGPU (an empty pool chunk kept for the
    /// next small allocation counts as free).
    pub fn mem_info(&self) -> (u64, u64) {
        let cached: u64 = self
            .mem
            .chunks
            .values()
            .filter(|c| c.used == 0)
            .map(|c| c.buf.mapped_len())
            .sum();
        (
            self.dev.vram_free() + cached,
            self.dev.identity().vram_bytes,
        )
    }

    /// `cuMemHostAlloc`: pinned host memory; its CPU address.
    pub fn host_alloc(&mut self, len: u64, flags: u32) -> Result<usize> {
        let ctx = self.current()?;
        if len == 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        if flags & CU_MEMHOSTALLOC_DEVICEMAP != 0 {
            // Kernels cannot reach system memory (ABI §7.1): no mapped host memory.
            return err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let buf = self
            .dev
            .alloc(Placement::Sysmem, len)
            .map_err(|_| CuError(CUDA_ERROR_OUT_OF_MEMORY))?;
        let addr = buf.host()?.as_ptr() as usize;
        self.mem.pinned.insert(
            addr,
            Pinned {
                buf,
                len,
                flags,
                ctx,
            },
        );
        Ok(addr)
    }

    /// `cuMemFreeHost`.
    pub fn host_free(&mut self, addr: usize) -> Result<()> {
        let p = self
            .mem
            .pinned
            .remove(&addr)
            .ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        self.dev.free(p.buf)?;
        Ok(())
    }

    /// The pinned allocation holding CPU address `addr`.
    pub fn pinned_of(&self, addr: usize) -> Option<(usize, &Pinned)> {
        self.mem
            .pinned
            .range(..=addr)
            .next_back()
            .filter(|(s, p)| ((addr - **s) as u64) < p.len)
            .map(|(s, p)| (*s, p))
    }

    /// The registered range holding CPU address `addr`.
    pub fn registered_of(&self, addr: usize) -> Option<(usize, Registered)> {
        self.mem
            .registered
            .range(..=addr)
            .next_back()
            .filter(|(s, r)| ((addr - **s) as u64) < r.len)
            .map(|(s, r)| (*s, *r))
    }

    /// `cuMemHostRegister`.
    pub fn host_register(&mut self, addr: usize, len: u64, flags: u32) -> Result<()> {
        let ctx = self.current()?;
        if addr == 0 || len == 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        if flags & (CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_IOMEMORY) != 0 {
            return err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let end = addr as u64 + len;
        let overlaps = self
            .mem
            .registered
            .range(..end as usize)
            .next_back()
            .is_some_and(|(s, r)| *s as u64 + r.len > addr as u64)
            || self.pinned_of(addr).is_some();
        if overlaps {
            return err(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
        }
        self.mem
            .registered
            .insert(addr, Registered { len, flags, ctx });
        Ok(())
    }

    /// `cuMemHostUnregister`.
    pub fn host_unregister(&mut self, addr: usize) -> Result<()> {
        self.mem
            .registered
            .remove(&addr)
            .map(|_| ())
            .ok_or(CuError(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED))
    }

    /// Where `len` bytes at API address `p` live; device and pinned ranges must lie inside
    /// one allocation (`CUDA_ERROR_INVALID_VALUE`).
    pub fn place(&self, p: u64, len: u64) -> Result<Place> {
        if let Some(va) = self.va_of(p) {
            let (start, alen) = self.alloc_of(p).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
            if p + len > start + alen {
                return err(CUDA_ERROR_INVALID_VALUE);
            }
            return Ok(Place::Device { va });
        }
        if let Some((start, pin)) = self.pinned_of(p as usize) {
            let off = p - start as u64;
            if off + len > pin.len {
                return Ok(Place::Host);
            }
            return Ok(Place::Pinned {
                va: pin.buf.va() + off,
            });
        }
        Ok(Place::Host)
    }

    /// Free everything context `ctx` allocated.
    pub fn mem_release(&mut self, ctx: usize) -> Result<()> {
        let dev: Vec<u64> = self
            .mem
            .allocs
            .iter()
            .filter(|(_, a)| a.ctx == ctx)
            .map(|(p, _)| *p)
            .collect();
        for p in dev {
            self.mem_free(p)?;
        }
        let host: Vec<usize> = self
            .mem
            .pinned
            .iter()
            .filter(|(_, a)| a.ctx == ctx)
            .map(|(p, _)| *p)
            .collect();
        for h in host {
            self.host_free(h)?;
        }
        self.mem.registered.retain(|_, r| r.ctx != ctx);
        Ok(())
    }
}
