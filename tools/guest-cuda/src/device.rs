//! The device: what the vGPU says it is (ABI 1.3's device-info block: the engine's name, UUID,
//! CUDA version and every `cuDeviceGetAttribute` value), with the attributes this driver
//! decides itself set to what it does (docs/cuda.md, "Device attributes").

use vgpu_guest::Device;

use crate::error::{err, Result};
use crate::types::*;

/// `CUdevice_attribute` numbers this driver sets itself.
pub mod attr {
    pub const MAX_THREADS_PER_BLOCK: i32 = 1;
    pub const MAX_SHARED_MEMORY_PER_BLOCK: i32 = 8;
    pub const TOTAL_CONSTANT_MEMORY: i32 = 9;
    pub const WARP_SIZE: i32 = 10;
    pub const MAX_REGISTERS_PER_BLOCK: i32 = 12;
    pub const CLOCK_RATE: i32 = 13;
    pub const MULTIPROCESSOR_COUNT: i32 = 16;
    pub const KERNEL_EXEC_TIMEOUT: i32 = 17;
    pub const INTEGRATED: i32 = 18;
    pub const CAN_MAP_HOST_MEMORY: i32 = 19;
    pub const COMPUTE_MODE: i32 = 20;
    pub const PCI_BUS_ID: i32 = 33;
    pub const PCI_DEVICE_ID: i32 = 34;
    pub const TCC_DRIVER: i32 = 35;
    pub const UNIFIED_ADDRESSING: i32 = 41;
    pub const PCI_DOMAIN_ID: i32 = 50;
    pub const COMPUTE_CAPABILITY_MAJOR: i32 = 75;
    pub const COMPUTE_CAPABILITY_MINOR: i32 = 76;
    pub const MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: i32 = 81;
    pub const MAX_REGISTERS_PER_MULTIPROCESSOR: i32 = 82;
    pub const MANAGED_MEMORY: i32 = 83;
    pub const MULTI_GPU_BOARD: i32 = 84;
    pub const HOST_NATIVE_ATOMIC_SUPPORTED: i32 = 86;
    pub const PAGEABLE_MEMORY_ACCESS: i32 = 88;
    pub const CONCURRENT_MANAGED_ACCESS: i32 = 89;
    pub const COMPUTE_PREEMPTION_SUPPORTED: i32 = 90;
    pub const CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: i32 = 91;
    pub const CAN_USE_STREAM_MEM_OPS_V1: i32 = 92;
    pub const CAN_USE_64_BIT_STREAM_MEM_OPS_V1: i32 = 93;
    pub const CAN_USE_STREAM_WAIT_VALUE_NOR_V1: i32 = 94;
    pub const COOPERATIVE_LAUNCH: i32 = 95;
    pub const COOPERATIVE_MULTI_DEVICE_LAUNCH: i32 = 96;
    pub const MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: i32 = 97;
    pub const CAN_FLUSH_REMOTE_WRITES: i32 = 98;
    pub const HOST_REGISTER_SUPPORTED: i32 = 99;
    pub const PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES: i32 = 100;
    pub const DIRECT_MANAGED_MEM_ACCESS_FROM_HOST: i32 = 101;
    pub const VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: i32 = 102;
    pub const HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: i32 = 103;
    pub const HANDLE_TYPE_WIN32_HANDLE_SUPPORTED: i32 = 104;
    pub const HANDLE_TYPE_WIN32_KMT_HANDLE_SUPPORTED: i32 = 105;
    pub const GENERIC_COMPRESSION_SUPPORTED: i32 = 107;
    pub const GPU_DIRECT_RDMA_SUPPORTED: i32 = 116;
    pub const GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS: i32 = 117;
    pub const GPU_DIRECT_RDMA_WRITES_ORDERING: i32 = 118;
    pub const MEMORY_POOLS_SUPPORTED: i32 = 115;
    pub const MEMPOOL_SUPPORTED_HANDLE_TYPES: i32 = 119;
    pub const CLUSTER_LAUNCH: i32 = 120;
    pub const DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED: i32 = 121;
    pub const CAN_USE_64_BIT_STREAM_MEM_OPS: i32 = 122;
    pub const CAN_USE_STREAM_WAIT_VALUE_NOR: i32 = 123;
    pub const DMA_BUF_SUPPORTED: i32 = 124;
    pub const IPC_EVENT_SUPPORTED: i32 = 125;
    pub const MEM_SYNC_DOMAIN_COUNT: i32 = 126;
    pub const MPS_ENABLED: i32 = 133;
    pub const HOST_NUMA_ID: i32 = 134;
    pub const GPU_PCI_DEVICE_ID: i32 = 136;
    pub const GPU_PCI_SUBSYSTEM_ID: i32 = 137;
    pub const HOST_NUMA_MULTINODE_IPC_SUPPORTED: i32 = 143;
    pub const HOST_MEMORY_POOLS_SUPPORTED: i32 = 144;
    pub const HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: i32 = 145;
    pub const HOST_ALLOC_DMA_BUF_SUPPORTED: i32 = 146;
    /// One past the last attribute of CUDA 13.0.
    pub const MAX: i32 = 148;
}

/// A PCI address as `cuDeviceGetByPCIBusId` takes it (`domain:bus:device.function` or
/// `bus:device.function`, hexadecimal): (domain, bus, device).
pub fn parse_bus_id(s: &str) -> Option<(u32, u32, u32)> {
    let (rest, _function) = s.trim().rsplit_once('.')?;
    let hex = |p: &str| u32::from_str_radix(p, 16).ok();
    match rest.split(':').collect::<Vec<_>>()[..] {
        [d, b, v] => Some((hex(d)?, hex(b)?, hex(v)?)),
        [b, v] => Some((0, hex(b)?, hex(v)?)),
        _ => None,
    }
}

/// `CU_COMPUTEMODE_EXCLUSIVE_PROCESS`: one process owns the vGPU.
const COMPUTEMODE_EXCLUSIVE_PROCESS: i32 = 3;

/// The device as this driver reports it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub uuid: [u8; 16],
    /// The engine's CUDA version (0: none known).
    pub cuda_version: u32,
    /// By attribute number; index 0 unused.
    pub attributes: Vec<i32>,
    pub vram_bytes: u64,
    /// PCI domain, bus and device of the vGPU in this (guest) system (0s over vfio-user).
    pub pci: (u32, u32, u32),
}

impl Identity {
    /// Read the device-info block, then set what this driver decides. `pci` is the vGPU's
    /// PCI address in this system, when it has one.
    pub fn read(dev: &mut Device, pci: (u32, u32, u32)) -> Result<Identity> {
        let info = dev.device_info()?.unwrap_or_default();
        let ident = dev.identity().clone();
        let mut attributes = info.attributes;
        attributes.resize(attr::MAX as usize, 0);
        let name = if info.name.is_empty() {
            "vgpud vGPU".to_string()
        } else {
            info.name
        };
        let mut id = Identity {
            name,
            uuid: info.uuid,
            cuda_version: info.cuda_version,
            attributes,
            vram_bytes: ident.vram_bytes,
            pci,
        };
        id.decide(ident.ptx());
        Ok(id)
    }

    fn set(&mut self, a: i32, v: i32) {
        if let Some(x) = self.attributes.get_mut(a as usize) {
            *x = v;
        }
    }

    /// The attributes that say what this driver and the vGPU do, whatever the GPU under
    /// them does: no mapped, managed or pageable host memory for kernels (ABI §7.1), one
    /// process at a time, a kernel time limit, no cooperative or cluster launches, no memory
    /// pools, IPC, virtual memory management or stream memory operations, and UVA (the
    /// pointer window is reserved in the process).
    fn decide(&mut self, ptx: bool) {
        use attr::*;
        for a in [
            CAN_MAP_HOST_MEMORY,
            MANAGED_MEMORY,
            CONCURRENT_MANAGED_ACCESS,
            PAGEABLE_MEMORY_ACCESS,
            PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES,
            DIRECT_MANAGED_MEM_ACCESS_FROM_HOST,
            HOST_NATIVE_ATOMIC_SUPPORTED,
            CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM,
            INTEGRATED,
            MULTI_GPU_BOARD,
            TCC_DRIVER,
            COOPERATIVE_LAUNCH,
            COOPERATIVE_MULTI_DEVICE_LAUNCH,
            CLUSTER_LAUNCH,
            CAN_FLUSH_REMOTE_WRITES,
            VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
            HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
            HANDLE_TYPE_WIN32_HANDLE_SUPPORTED,
            HANDLE_TYPE_WIN32_KMT_HANDLE_SUPPORTED,
            GENERIC_COMPRESSION_SUPPORTED,
            MEMORY_POOLS_SUPPORTED,
            MEMPOOL_SUPPORTED_HANDLE_TYPES,
            GPU_DIRECT_RDMA_SUPPORTED,
            GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS,
            GPU_DIRECT_RDMA_WRITES_ORDERING,
            DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED,
            CAN_USE_STREAM_MEM_OPS_V1,
            CAN_USE_64_BIT_STREAM_MEM_OPS_V1,
            CAN_USE_STREAM_WAIT_VALUE_NOR_V1,
            CAN_USE_64_BIT_STREAM_MEM_OPS,
            CAN_USE_STREAM_WAIT_VALUE_NOR,
            DMA_BUF_SUPPORTED,
            IPC_EVENT_SUPPORTED,
            MPS_ENABLED,
            HOST_NUMA_MULTINODE_IPC_SUPPORTED,
            HOST_MEMORY_POOLS_SUPPORTED,
            HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
            HOST_ALLOC_DMA_BUF_SUPPORTED,
        ] {
            self.set(a, 0);
        }
        self.set(HOST_NUMA_ID, -1);
        self.set(UNIFIED_ADDRESSING, 1);
        self.set(HOST_REGISTER_SUPPORTED, 1);
        self.set(KERNEL_EXEC_TIMEOUT, i32::from(ptx));
        self.set(COMPUTE_MODE, COMPUTEMODE_EXCLUSIVE_PROCESS);
        let (dom, bus, devn) = self.pci;
        self.set(PCI_DOMAIN_ID, dom as i32);
        self.set(PCI_BUS_ID, bus as i32);
        self.set(PCI_DEVICE_ID, devn as i32);
        if self.attributes.get(WARP_SIZE as usize) == Some(&0) {
            // No device-info block (a device before ABI 1.3): the least a caller needs.
            self.set(WARP_SIZE, 32);
            self.set(MAX_THREADS_PER_BLOCK, 1024);
            self.set(MULTIPROCESSOR_COUNT, 1);
        }
    }

    /// `cuDeviceGetAttribute`.
    pub fn attribute(&self, a: i32) -> Result<i32> {
        if a <= 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        match self.attributes.get(a as usize) {
            Some(&v) => Ok(v),
            None => err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    /// The compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        (
            self.attributes
                .get(attr::COMPUTE_CAPABILITY_MAJOR as usize)
                .copied()
                .unwrap_or(0),
            self.attributes
                .get(attr::COMPUTE_CAPABILITY_MINOR as usize)
                .copied()
                .unwrap_or(0),
        )
    }

    /// `cuDeviceGetPCIBusId`'s string.
    pub fn pci_bus_id(&self) -> String {
        let (dom, bus, dev) = self.pci;
        format!("{dom:08X}:{bus:02X}:{dev:02X}.0")
    }

    /// The driver version `cuDriverGetVersion` reports: the engine's CUDA version, at most
    /// the API version of this library.
    pub fn driver_version(&self) -> i32 {
        match self.cuda_version {
            0 => DRIVER_VERSION,
            v => (v as i32).min(DRIVER_VERSION),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_parse_in_both_forms() {
        assert_eq!(parse_bus_id("0000:00:04.0"), Some((0, 0, 4)));
        assert_eq!(parse_bus_id("00:1f.0"), Some((0, 0, 0x1f)));
        assert_eq!(parse_bus_id("0001:3B:00.0"), Some((1, 0x3b, 0)));
        assert_eq!(parse_bus_id("nonsense"), None);
    }
}
