//! The vGPU type catalogue: what kinds of vGPU a parent offers.
//!
//! A type fixes a vGPU's framebuffer, its channel count, its PCI identity
//! and how many of it fit on one parent (which is also its fixed scheduling
//! share, `1 / max_instances`), in the style of NVIDIA's `-C` compute
//! profiles. The control plane (sysfs tree, mdevctl) builds on this list.

/// One vGPU type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuType {
    /// mdev type id: `<driver>-<name>`.
    pub id: &'static str,
    /// Human name, NVIDIA style.
    pub name: &'static str,
    pub framebuffer_bytes: u64,
    pub max_instances: u32,
    pub channels: u32,
    pub vendor_id: u16,
    pub device_id: u16,
}

const GIB: u64 = 1 << 30;

/// The default catalogue on the default cpu-engine parent (8 GiB).
pub const DEFAULT_TYPES: &[VgpuType] = &[
    VgpuType { id: "vgpud-1c", name: "VGPU-1C", framebuffer_bytes: GIB, max_instances: 8, channels: 16, vendor_id: 0x7667, device_id: 0x1001 },
    VgpuType { id: "vgpud-2c", name: "VGPU-2C", framebuffer_bytes: 2 * GIB, max_instances: 4, channels: 16, vendor_id: 0x7667, device_id: 0x1002 },
    VgpuType { id: "vgpud-4c", name: "VGPU-4C", framebuffer_bytes: 4 * GIB, max_instances: 2, channels: 16, vendor_id: 0x7667, device_id: 0x1004 },
    VgpuType { id: "vgpud-8c", name: "VGPU-8C", framebuffer_bytes: 8 * GIB, max_instances: 1, channels: 16, vendor_id: 0x7667, device_id: 0x1008 },
];

/// Find a default type by id.
pub fn default_type(id: &str) -> Option<&'static VgpuType> {
    DEFAULT_TYPES.iter().find(|t| t.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalogue_fills_an_8_gib_parent_exactly() {
        for t in DEFAULT_TYPES {
            assert_eq!(t.framebuffer_bytes * t.max_instances as u64, 8 * GIB, "{}", t.id);
            assert!(t.id.starts_with("vgpud-"));
        }
        assert_eq!(default_type("vgpud-4c").map(|t| t.name), Some("VGPU-4C"));
        assert!(default_type("nope").is_none());
    }
}
