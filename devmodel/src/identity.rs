//! What a vGPU's engine is, as CUDA describes a device: the device-info block of ABI 1.3
//! (`mmio::devinfo`). A GPU engine reports the physical GPU's; the cpu engine reports the
//! documented synthetic identity below, and each vGPU replaces the UUID with its own.

use mmio::devinfo::DeviceInfo;

/// `CUdevice_attribute` values of the cpu engine's synthetic device, by attribute number.
///
/// It is a compute-capability-9.0 device with sm_90's per-block and per-multiprocessor
/// limits, so that CUDA programs that pick a compilation target or size their launches from
/// the attributes do what they would on such a GPU. Guest kernels do not run on it (`CAPS.PTX`
/// = 0): the clock rates, bus width and cache sizes are nominal. Its multiprocessors are the
/// engine's worker threads. Attributes a driver decides itself (mapped and managed memory,
/// compute mode, PCI location) are left 0.
const CPU_ATTRIBUTES: &[(usize, i32)] = &[
    (1, 1024),       // MAX_THREADS_PER_BLOCK
    (2, 1024),       // MAX_BLOCK_DIM_X
    (3, 1024),       // MAX_BLOCK_DIM_Y
    (4, 64),         // MAX_BLOCK_DIM_Z
    (5, i32::MAX),   // MAX_GRID_DIM_X
    (6, 65535),      // MAX_GRID_DIM_Y
    (7, 65535),      // MAX_GRID_DIM_Z
    (8, 49152),      // MAX_SHARED_MEMORY_PER_BLOCK
    (9, 65536),      // TOTAL_CONSTANT_MEMORY
    (10, 32),        // WARP_SIZE
    (11, i32::MAX),  // MAX_PITCH
    (12, 65536),     // MAX_REGISTERS_PER_BLOCK
    (13, 1_000_000), // CLOCK_RATE (kHz, nominal)
    (14, 512),       // TEXTURE_ALIGNMENT
    (15, 1),         // GPU_OVERLAP
    (31, 1),         // CONCURRENT_KERNELS (channels run side by side)
    (36, 1_000_000), // MEMORY_CLOCK_RATE (kHz, nominal)
    (37, 64),        // GLOBAL_MEMORY_BUS_WIDTH (nominal)
    (39, 2048),      // MAX_THREADS_PER_MULTIPROCESSOR
    (40, 1),         // ASYNC_ENGINE_COUNT: the copy engine
    (41, 1),         // UNIFIED_ADDRESSING
    (75, 9),         // COMPUTE_CAPABILITY_MAJOR
    (76, 0),         // COMPUTE_CAPABILITY_MINOR
    (78, 1),         // STREAM_PRIORITIES_SUPPORTED
    (79, 1),         // GLOBAL_L1_CACHE_SUPPORTED
    (80, 1),         // LOCAL_L1_CACHE_SUPPORTED
    (81, 233_472),   // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    (82, 65536),     // MAX_REGISTERS_PER_MULTIPROCESSOR
    (87, 32),        // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO (nominal)
    (97, 232_448),   // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    (106, 32),       // MAX_BLOCKS_PER_MULTIPROCESSOR
    (110, 1024),     // RESERVED_SHARED_MEMORY_PER_BLOCK
];

/// The last `CUdevice_attribute` of CUDA 13.0, plus one.
pub const ATTRIBUTES: usize = 148;

/// The cpu engine's device with `workers` worker threads.
pub fn cpu_engine(workers: usize) -> DeviceInfo {
    let mut attributes = vec![0i32; ATTRIBUTES];
    for &(a, v) in CPU_ATTRIBUTES {
        attributes[a] = v;
    }
    attributes[16] = workers.clamp(1, 1024) as i32; // MULTIPROCESSOR_COUNT
    DeviceInfo {
        cuda_version: 0,
        uuid: [0; 16],
        name: "vgpud cpu engine".into(),
        attributes,
    }
}

/// The 16 bytes of a UUID written `8-4-4-4-12` in hex (a vGPU's name when the daemon
/// created it).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_device_is_compute_capability_9_with_a_multiprocessor_a_worker() {
        let d = cpu_engine(3);
        assert_eq!((d.attributes[75], d.attributes[76]), (9, 0));
        assert_eq!(d.attributes[16], 3);
        assert_eq!(d.attributes[10], 32);
        assert_eq!(d.attributes[19], 0, "no mapped host memory");
        assert_eq!(d.attributes.len(), ATTRIBUTES);
    }

    #[test]
    fn uuids_parse_only_in_their_canonical_form() {
        let u = parse_uuid("6f1e3c2a-0b4d-4c8e-9a51-3d2f7b8e1c01").unwrap();
        assert_eq!(u[0], 0x6f);
        assert_eq!(u[15], 0x01);
        assert!(parse_uuid("cuda-c").is_none());
        assert!(parse_uuid("6f1e3c2a0b4d4c8e9a513d2f7b8e1c01xxxx").is_none());
        assert!(parse_uuid("zz1e3c2a-0b4d-4c8e-9a51-3d2f7b8e1c01").is_none());
    }
}
