//! CDI specs (the Container Device Interface, spec version 0.5.0, the one
//! Debian's podman 4.3 reads): one device per vGPU, `vgpud.io/vgpu=<uuid>`,
//! whose edits mount the vGPU's directory ([`crate::socket_dir`]) and name
//! its socket in `VGPUD_SOCKET_<UUID>`. A runtime that knows CDI applies
//! them when a device plugin or DRA driver names the device, or when asked
//! directly (`podman run --device vgpud.io/vgpu=<uuid>`).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::names::{socket_env, CDI_KIND};
use crate::socket_dir::{container_dir, container_socket, host_dir};
use crate::Error;

/// The CDI spec version written.
pub const CDI_VERSION: &str = "0.5.0";

/// One spec file of vgpud's vGPUs.
#[derive(Clone, Debug)]
pub struct CdiSpec {
    path: PathBuf,
    run_dir: PathBuf,
}

impl CdiSpec {
    /// The spec `<dir>/vgpud.io-<name>.json` of vGPUs served from `run_dir`.
    pub fn new(dir: &Path, name: &str, run_dir: &Path) -> CdiSpec {
        CdiSpec {
            path: dir.join(format!("vgpud.io-{name}.json")),
            run_dir: run_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The spec for these vGPUs, as JSON.
    pub fn render(&self, uuids: &[String]) -> serde_json::Value {
        let devices: Vec<_> = uuids
            .iter()
            .map(|u| {
                json!({
                    "name": u,
                    "containerEdits": {
                        "env": [format!("{}={}", socket_env(u), container_socket(u))],
                        "mounts": [{
                            "hostPath": host_dir(&self.run_dir, u),
                            "containerPath": container_dir(u),
                            "options": ["bind", "rw"],
                        }],
                    },
                })
            })
            .collect();
        json!({"cdiVersion": CDI_VERSION, "kind": CDI_KIND, "devices": devices})
    }

    /// Write the spec (whole: a runtime never reads half a file); with no
    /// vGPUs, remove it (a CDI spec must list a device).
    pub fn write(&self, uuids: &[String]) -> Result<(), Error> {
        if uuids.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::file(&self.path, e))
                }
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text =
            serde_json::to_vec_pretty(&self.render(uuids)).map_err(|source| Error::Json {
                what: "CDI spec".into(),
                source,
            })?;
        std::fs::write(&tmp, text).map_err(|e| Error::file(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::file(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_mounts_each_vgpus_directory_and_names_its_socket() {
        let s = CdiSpec::new(
            Path::new("/var/run/cdi"),
            "device-plugin",
            Path::new("/run/vgpud"),
        );
        assert_eq!(
            s.path(),
            Path::new("/var/run/cdi/vgpud.io-device-plugin.json")
        );
        let u = "5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60".to_string();
        let j = s.render(std::slice::from_ref(&u));
        assert_eq!(j["cdiVersion"], "0.5.0");
        assert_eq!(j["kind"], "vgpud.io/vgpu");
        let d = &j["devices"][0];
        assert_eq!(d["name"], u.as_str());
        assert_eq!(
            d["containerEdits"]["env"][0],
            format!("VGPUD_SOCKET_5D2E6F1A_7B3C_4D8E_9F0A_1B2C3D4E5F60=/var/run/vgpud/{u}/vfio-user.sock")
        );
        let m = &d["containerEdits"]["mounts"][0];
        assert_eq!(m["hostPath"], format!("/run/vgpud/k8s/{u}"));
        assert_eq!(m["containerPath"], format!("/var/run/vgpud/{u}"));
    }
}
