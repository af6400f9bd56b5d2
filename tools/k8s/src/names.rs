//! The names Kubernetes, KubeVirt and CDI give vgpud's things, and the
//! rules those names follow.

/// The domain vgpud's resources, driver and CDI kind live under.
pub const DOMAIN: &str = "vgpud.io";
/// The CDI kind of a vGPU: devices `vgpud.io/vgpu=<uuid>`.
pub const CDI_KIND: &str = "vgpud.io/vgpu";

/// The extended resource a vGPU type is offered as: `vgpud.io/<type>`.
pub fn resource_name(type_id: &str) -> String {
    format!("{DOMAIN}/{type_id}")
}

/// The fully qualified CDI device name of a vGPU.
pub fn cdi_device(uuid: &str) -> String {
    format!("{CDI_KIND}={uuid}")
}

/// The variable KubeVirt reads a mediated device resource's UUIDs from:
/// `MDEV_PCI_RESOURCE_` and the resource name upper-cased with `/` and `.`
/// made `_` (KubeVirt's `util.ResourceNameToEnvVar` with
/// `v1.MDevResourcePrefix`): `vgpud.io/vgpud-4c` gives
/// `MDEV_PCI_RESOURCE_VGPUD_IO_VGPUD-4C`.
pub fn kubevirt_mdev_env(resource: &str) -> String {
    format!(
        "MDEV_PCI_RESOURCE_{}",
        resource.to_uppercase().replace(['/', '.'], "_")
    )
}

/// The variable a container given a vGPU by CDI finds its socket in:
/// `VGPUD_SOCKET_` and the UUID upper-cased with `-` made `_`.
pub fn socket_env(uuid: &str) -> String {
    format!("VGPUD_SOCKET_{}", uuid.to_uppercase().replace('-', "_"))
}

/// Whether `name` may be the name part of an extended resource (a
/// qualified name's name: at most 63 characters of `[A-Za-z0-9_.-]`,
/// beginning and ending alphanumeric), as the kubelet's
/// `IsExtendedResourceName` requires of `vgpud.io/<type>`.
pub fn is_resource_name_part(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `text` as a DNS label (RFC 1123: at most 63 lower-case alphanumerics or
/// `-`, alphanumeric at both ends), as device, pool and counter names must
/// be: lower-cased, anything else made `-`, `None` when nothing is left.
pub fn dns_label(text: &str) -> Option<String> {
    let s: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    let s = &s[..s.len().min(63)];
    let s = s.trim_end_matches('-');
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubevirt_kubernetes_and_cdi() {
        assert_eq!(resource_name("vgpud-4c"), "vgpud.io/vgpud-4c");
        assert_eq!(
            kubevirt_mdev_env("vgpud.io/vgpud-4c"),
            "MDEV_PCI_RESOURCE_VGPUD_IO_VGPUD-4C"
        );
        // KubeVirt's own example: nvidia.com/GRID_T4-1Q.
        assert_eq!(
            kubevirt_mdev_env("nvidia.com/GRID_T4-1Q"),
            "MDEV_PCI_RESOURCE_NVIDIA_COM_GRID_T4-1Q"
        );
        assert_eq!(
            cdi_device("5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60"),
            "vgpud.io/vgpu=5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60"
        );
        assert_eq!(
            socket_env("5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60"),
            "VGPUD_SOCKET_5D2E6F1A_7B3C_4D8E_9F0A_1B2C3D4E5F60"
        );
        assert!(is_resource_name_part("vgpud-4c"));
        assert!(is_resource_name_part("emulated-15c"));
        assert!(!is_resource_name_part("-4c"));
        assert!(!is_resource_name_part("a/b"));
        assert!(!is_resource_name_part(&"a".repeat(64)));
        assert_eq!(dns_label("cpu0"), Some("cpu0".into()));
        assert_eq!(dns_label("GPU_0.x"), Some("gpu-0-x".into()));
        assert_eq!(dns_label("--"), None);
        assert_eq!(dns_label(&"a".repeat(80)).map(|s| s.len()), Some(63));
    }
}
