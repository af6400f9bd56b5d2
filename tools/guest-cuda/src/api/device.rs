//! Devices: one per vGPU.

use std::ffi::c_char;

use super::check_device;
use crate::cabi;
use crate::cuda_fn;
use crate::device::attr;
use crate::driver::with;
use crate::error::err;
use crate::types::*;

cuda_fn! {
    fn cuDeviceGetCount(count: *mut i32) {
        with(|_| Ok(()))?;
        cabi::write(count, 1)
    }

    fn cuDeviceGet(device: *mut CUdevice, ordinal: i32) {
        check_device(ordinal)?;
        cabi::write(device, 0)
    }

    fn cuDeviceGetName(name: *mut c_char, len: i32, dev: CUdevice) {
        check_device(dev)?;
        let n = with(|d| Ok(d.ident.name.clone()))?;
        cabi::write_str(name, len, &n)
    }

    fn cuDeviceGetUuid(uuid: *mut CUuuid, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(uuid, CUuuid { bytes: with(|d| Ok(d.ident.uuid))? })
    }

    fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(uuid, CUuuid { bytes: with(|d| Ok(d.ident.uuid))? })
    }

    /// The vGPU's framebuffer.
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(bytes, with(|d| Ok(d.ident.vram_bytes as usize))?)
    }

    fn cuDeviceTotalMem(bytes: *mut u32, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(bytes, with(|d| Ok(d.ident.vram_bytes.min(u32::MAX as u64) as u32))?)
    }

    fn cuDeviceGetAttribute(value: *mut i32, attrib: i32, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(value, with(|d| d.ident.attribute(attrib))?)
    }

    fn cuDeviceComputeCapability(major: *mut i32, minor: *mut i32, dev: CUdevice) {
        check_device(dev)?;
        let (ma, mi) = with(|d| Ok(d.ident.compute_capability()))?;
        cabi::write(major, ma)?;
        cabi::write(minor, mi)
    }

    fn cuDeviceGetProperties(prop: *mut CUdevprop, dev: CUdevice) {
        check_device(dev)?;
        let p = with(|d| {
            let a = |i| d.ident.attribute(i).unwrap_or(0);
            Ok(CUdevprop {
                max_threads_per_block: a(attr::MAX_THREADS_PER_BLOCK),
                max_threads_dim: [a(2), a(3), a(4)],
                max_grid_size: [a(5), a(6), a(7)],
                shared_mem_per_block: a(attr::MAX_SHARED_MEMORY_PER_BLOCK),
                total_constant_memory: a(attr::TOTAL_CONSTANT_MEMORY),
                simd_width: a(attr::WARP_SIZE),
                mem_pitch: a(11),
                regs_per_block: a(attr::MAX_REGISTERS_PER_BLOCK),
                clock_rate: a(attr::CLOCK_RATE),
                texture_align: a(14),
            })
        })?;
        cabi::write(prop, p)
    }

    fn cuDeviceGetPCIBusId(bus_id: *mut c_char, len: i32, dev: CUdevice) {
        check_device(dev)?;
        let s = with(|d| Ok(d.ident.pci_bus_id()))?;
        cabi::write_str(bus_id, len, &s)
    }

    fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, bus_id: *const c_char) {
        let want = crate::device::parse_bus_id(&cabi::cstr(bus_id)?.to_string_lossy());
        let mine = with(|d| Ok(d.ident.pci))?;
        if want == Some(mine) {
            cabi::write(dev, 0)
        } else {
            err(CUDA_ERROR_INVALID_DEVICE)
        }
    }

    /// One device: no peers.
    fn cuDeviceCanAccessPeer(can: *mut i32, dev: CUdevice, peer: CUdevice) {
        check_device(dev)?;
        check_device(peer)?;
        cabi::write(can, 0)
    }

    fn cuDeviceGetP2PAttribute(value: *mut i32, attrib: i32, src: CUdevice, dst: CUdevice) {
        check_device(src)?;
        check_device(dst)?;
        err(CUDA_ERROR_INVALID_DEVICE)
    }

    fn cuDeviceGetTexture1DLinearMaxWidth(max: *mut usize, format: i32, channels: u32, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(max, 1 << 27)
    }

    fn cuDeviceGetExecAffinitySupport(value: *mut i32, kind: i32, dev: CUdevice) {
        check_device(dev)?;
        cabi::write(value, 0)
    }
}
