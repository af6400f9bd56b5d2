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

/// What one parent (physical GPU) can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentCapacity {
    /// Framebuffer the parent divides between its vGPUs.
    pub framebuffer_bytes: u64,
    /// vGPUs of any type the parent runs at once.
    pub max_vgpus: u32,
}

/// The default cpu-engine parent: 8 GiB of framebuffer (allocated lazily),
/// up to 8 vGPUs.
pub const DEFAULT_CAPACITY: ParentCapacity = ParentCapacity { framebuffer_bytes: 8 * GIB, max_vgpus: 8 };

impl ParentCapacity {
    /// `available_instances` of type `t` on a parent that already holds
    /// the vGPUs whose types are `existing`: the smallest of
    /// * the type's own limit, `max_instances` minus vGPUs of this type;
    /// * the framebuffer left after every existing vGPU of any type,
    ///   divided by this type's framebuffer;
    /// * the parent's vGPU slots left.
    ///
    /// This is the kernel's per-type rule (mbochs: free memory / type
    /// memory) with NVIDIA's per-type instance limit on top, so a parent
    /// with one 4 GiB vGPU offers one more `-4c`, two `-2c` and no `-8c`.
    pub fn available_instances(&self, t: &VgpuType, existing: &[&VgpuType]) -> u32 {
        let same = existing.iter().filter(|e| e.id == t.id).count() as u32;
        let used: u64 = existing.iter().map(|e| e.framebuffer_bytes).sum();
        let by_type = t.max_instances.saturating_sub(same);
        let by_fb = (self.framebuffer_bytes.saturating_sub(used) / t.framebuffer_bytes.max(1)).min(u32::MAX as u64) as u32;
        let by_slots = self.max_vgpus.saturating_sub(existing.len() as u32);
        by_type.min(by_fb).min(by_slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> &'static VgpuType {
        default_type(id).unwrap()
    }

    #[test]
    fn available_instances_account_for_other_types() {
        let cap = DEFAULT_CAPACITY;
        assert_eq!(cap.available_instances(t("vgpud-1c"), &[]), 8);
        assert_eq!(cap.available_instances(t("vgpud-8c"), &[]), 1);
        let one4 = [t("vgpud-4c")];
        assert_eq!(cap.available_instances(t("vgpud-4c"), &one4), 1);
        assert_eq!(cap.available_instances(t("vgpud-2c"), &one4), 2);
        assert_eq!(cap.available_instances(t("vgpud-1c"), &one4), 4);
        assert_eq!(cap.available_instances(t("vgpud-8c"), &one4), 0);
        let full = [t("vgpud-2c"); 4];
        assert!(DEFAULT_TYPES.iter().all(|x| cap.available_instances(x, &full) == 0));
        let small = ParentCapacity { framebuffer_bytes: 64 * GIB, max_vgpus: 3 };
        assert_eq!(small.available_instances(t("vgpud-1c"), &[t("vgpud-1c"); 2]), 1, "slots bound it");
    }

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
