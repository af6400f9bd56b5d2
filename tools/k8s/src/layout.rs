//! The node layout file: the vGPUs this node offers to the device plugin,
//! created in vgpud ahead of any pod, and the NUMA node of each parent.
//!
//! ```toml
//! [parent.gpu0]
//! numa_node = 1
//!
//! [[vgpu]]
//! uuid = "5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60"
//! type = "emulated-3c"
//! parent = "gpu0"        # optional: the first parent with room
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::names::is_resource_name_part;
use crate::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    parent: BTreeMap<String, ParentEntry>,
    #[serde(default)]
    vgpu: Vec<VgpuEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParentEntry {
    numa_node: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VgpuEntry {
    uuid: String,
    #[serde(rename = "type")]
    type_id: String,
    parent: Option<String>,
}

/// One pre-created vGPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutVgpu {
    /// Lower-case, hyphenated: the device plugin's device ID.
    pub uuid: String,
    pub type_id: String,
    pub parent: Option<String>,
    /// Its parent's NUMA node, if the layout names one.
    pub numa_node: Option<i64>,
}

/// The node's vGPUs, in file order.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub vgpus: Vec<LayoutVgpu>,
}

impl Layout {
    pub fn load(path: &Path) -> Result<Layout, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        Layout::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Layout, Error> {
        let bad = |what: String| Error::Layout {
            path: path.to_path_buf(),
            what,
        };
        let f: File = toml::from_str(text).map_err(|source| Error::LayoutSyntax {
            path: path.to_path_buf(),
            source,
        })?;
        let mut seen = BTreeSet::new();
        let mut vgpus = Vec::new();
        for v in f.vgpu {
            let uuid = uuid::Uuid::try_parse(&v.uuid)
                .map_err(|_| bad(format!("{:?} is not a UUID", v.uuid)))?
                .hyphenated()
                .to_string();
            if !seen.insert(uuid.clone()) {
                return Err(bad(format!("vGPU {uuid} is listed twice")));
            }
            if !is_resource_name_part(&v.type_id) {
                return Err(bad(format!(
                    "type {:?} cannot name a resource (vgpud.io/<type>)",
                    v.type_id
                )));
            }
            let numa_node = v
                .parent
                .as_ref()
                .and_then(|p| f.parent.get(p))
                .and_then(|e| e.numa_node);
            if numa_node.is_some_and(|n| n < 0) {
                return Err(bad(format!("negative NUMA node for vGPU {uuid}")));
            }
            vgpus.push(LayoutVgpu {
                uuid,
                type_id: v.type_id,
                parent: v.parent,
                numa_node,
            });
        }
        Ok(Layout { vgpus })
    }

    /// The types in the layout, each once, in first-seen order.
    pub fn types(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in &self.vgpus {
            if !out.contains(&v.type_id) {
                out.push(v.type_id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Layout, Error> {
        Layout::parse(Path::new("layout.toml"), text)
    }

    #[test]
    fn a_layout_lists_vgpus_with_their_parents_numa_node() {
        let l = parse(
            "[parent.gpu0]\nnuma_node = 1\n\
             [[vgpu]]\nuuid = \"5D2E6F1A-7B3C-4D8E-9F0A-1B2C3D4E5F60\"\ntype = \"vgpud-2c\"\nparent = \"gpu0\"\n\
             [[vgpu]]\nuuid = \"6d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60\"\ntype = \"vgpud-1c\"\n",
        )
        .unwrap();
        assert_eq!(l.vgpus.len(), 2);
        assert_eq!(l.vgpus[0].uuid, "5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60");
        assert_eq!(l.vgpus[0].numa_node, Some(1));
        assert_eq!(l.vgpus[1].parent, None);
        assert_eq!(l.vgpus[1].numa_node, None);
        assert_eq!(l.types(), ["vgpud-2c", "vgpud-1c"]);
    }

    #[test]
    fn a_layout_that_cannot_be_right_is_refused_with_the_reason() {
        let u = "5d2e6f1a-7b3c-4d8e-9f0a-1b2c3d4e5f60";
        let twice = format!(
            "[[vgpu]]\nuuid = \"{u}\"\ntype = \"a\"\n[[vgpu]]\nuuid = \"{u}\"\ntype = \"b\"\n"
        );
        for (text, says) in [
            ("[[vgpu]]\nuuid = \"x\"\ntype = \"a\"\n", "not a UUID"),
            (twice.as_str(), "listed twice"),
            (
                &format!("[[vgpu]]\nuuid = \"{u}\"\ntype = \"a/b\"\n") as &str,
                "cannot name a resource",
            ),
            (
                "[[vgpu]]\nuuid = \"x\"\ntype = \"a\"\ncolour = 1\n",
                "colour",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
