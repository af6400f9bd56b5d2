//! The vGPU type catalogue: what kinds of vGPU each parent offers, and how
//! many fit.
//!
//! A type fixes a vGPU's framebuffer, its channel count, its PCI identity
//! and how many of it fit on one parent (which is also its fixed scheduling
//! share, `1 / max_instances`), in the style of NVIDIA's `-C` compute
//! profiles. A parent declares its capacity (framebuffer, vGPU slots) and
//! the types it offers. The control plane (sysfs tree, mdevctl, vgpuctl)
//! builds on this list; it comes from the `[catalog]` section of vgpud's
//! configuration file, with built-in defaults (docs/config.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

/// One vGPU type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuType {
    /// mdev type id: `<driver>-<name>`.
    pub id: String,
    /// Human name, NVIDIA style.
    pub name: String,
    pub framebuffer_bytes: u64,
    pub max_instances: u32,
    pub channels: u32,
    pub vendor_id: u16,
    pub device_id: u16,
}

impl VgpuType {
    /// The share `fixed_share` gives a vGPU of this type.
    pub fn fixed_share(&self) -> f64 {
        1.0 / self.max_instances.max(1) as f64
    }
}

const GIB: u64 = 1 << 30;
/// PCI vendor id of every vgpud vGPU.
pub const VENDOR_ID: u16 = 0x7667;
/// Largest channel count a type may give (the ABI's limit).
pub const MAX_CHANNELS: u32 = 64;

/// The built-in types, `vgpud-1c` … `vgpud-8c`.
pub fn default_types() -> Vec<VgpuType> {
    [(1u64, 8u32), (2, 4), (4, 2), (8, 1)]
        .into_iter()
        .map(|(gib, max)| VgpuType {
            id: format!("vgpud-{gib}c"),
            name: format!("VGPU-{gib}C"),
            framebuffer_bytes: gib * GIB,
            max_instances: max,
            channels: 16,
            vendor_id: VENDOR_ID,
            device_id: 0x1000 + gib as u16,
        })
        .collect()
}

/// Find a built-in type by id.
pub fn default_type(id: &str) -> Option<VgpuType> {
    default_types().into_iter().find(|t| t.id == id)
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
pub const DEFAULT_CAPACITY: ParentCapacity = ParentCapacity {
    framebuffer_bytes: 8 * GIB,
    max_vgpus: 8,
};

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
        let by_fb = (self.framebuffer_bytes.saturating_sub(used) / t.framebuffer_bytes.max(1))
            .min(u32::MAX as u64) as u32;
        let by_slots = self.max_vgpus.saturating_sub(existing.len() as u32);
        by_type.min(by_fb).min(by_slots)
    }
}

/// The engine behind a parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The cpu engine (runs every ABI operation on host threads).
    Cpu,
}

/// One parent as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentDef {
    pub id: String,
    pub engine: Engine,
    pub capacity: ParentCapacity,
    pub types: Vec<Arc<VgpuType>>,
}

/// Every parent and the types it offers.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    pub parents: Vec<ParentDef>,
}

/// The default parent's id.
pub const DEFAULT_PARENT: &str = "cpu0";

impl Default for Catalog {
    /// One cpu-engine parent `cpu0` with the default capacity and types.
    fn default() -> Self {
        Catalog {
            parents: vec![ParentDef {
                id: DEFAULT_PARENT.into(),
                engine: Engine::Cpu,
                capacity: DEFAULT_CAPACITY,
                types: default_types().into_iter().map(Arc::new).collect(),
            }],
        }
    }
}

/// A catalogue that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

#[derive(Deserialize, Default)]
struct FileDoc {
    #[serde(default)]
    catalog: Option<CatalogDoc>,
    // The rest of the file is the scheduling policy (scheduler::Config).
    #[serde(flatten)]
    _rest: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CatalogDoc {
    #[serde(default, rename = "type")]
    types: BTreeMap<String, TypeDoc>,
    #[serde(default, rename = "parent")]
    parents: BTreeMap<String, ParentDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeDoc {
    name: String,
    framebuffer: String,
    max_instances: u32,
    #[serde(default = "default_channels")]
    channels: u32,
    device_id: u16,
}

fn default_channels() -> u32 {
    16
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParentDoc {
    #[serde(default = "default_engine")]
    engine: String,
    framebuffer: String,
    max_vgpus: u32,
    types: Option<Vec<String>>,
}

fn default_engine() -> String {
    "cpu".into()
}

/// `"8GiB"`, `"512MiB"`: a size with a binary unit.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match unit.trim() {
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mul)
}

impl Catalog {
    /// The catalogue of the configuration file at `path` (its `[catalog]`
    /// section; the defaults when it has none).
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Catalog, CatalogError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            file: file.clone(),
            source,
        })?;
        Catalog::parse(&text, &file)
    }

    /// Parse configuration-file text; `file` names it in errors.
    ///
    /// Types under `[catalog.type."<id>"]` join (or replace, by id) the
    /// built-in ones. Parents under `[catalog.parent."<id>"]` replace the
    /// default parent; a parent without `types` offers every type.
    pub fn parse(text: &str, file: &str) -> Result<Catalog, CatalogError> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| CatalogError::Syntax {
            file: file.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let Some(cat) = doc.catalog else {
            return Ok(Catalog::default());
        };
        let invalid = |key: String, message: String| CatalogError::Invalid {
            file: file.into(),
            key,
            message,
        };
        let mut types: BTreeMap<String, Arc<VgpuType>> = default_types()
            .into_iter()
            .map(|t| (t.id.clone(), Arc::new(t)))
            .collect();
        for (id, t) in cat.types {
            let key = format!("catalog.type.\"{id}\"");
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    key,
                    "a type id is letters, digits, '-' and '_' (the kernel's <driver>-<name>)"
                        .into(),
                ));
            }
            let fb = parse_size(&t.framebuffer).ok_or_else(|| {
                invalid(
                    format!("{key}.framebuffer"),
                    format!("{:?} is not a size like \"4GiB\"", t.framebuffer),
                )
            })?;
            if fb == 0 {
                return Err(invalid(
                    format!("{key}.framebuffer"),
                    "must be above 0".into(),
                ));
            }
            if t.max_instances == 0 {
                return Err(invalid(
                    format!("{key}.max_instances"),
                    "must be at least 1".into(),
                ));
            }
            if t.channels == 0 || t.channels > MAX_CHANNELS {
                return Err(invalid(
                    format!("{key}.channels"),
                    format!("must be 1 ..= {MAX_CHANNELS}"),
                ));
            }
            if t.name.trim().is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty".into()));
            }
            let vt = VgpuType {
                id: id.clone(),
                name: t.name,
                framebuffer_bytes: fb,
                max_instances: t.max_instances,
                channels: t.channels,
                vendor_id: VENDOR_ID,
                device_id: t.device_id,
            };
            types.insert(id, Arc::new(vt));
        }
        let mut parents = Vec::new();
        for (id, p) in cat.parents {
            let key = format!("catalog.parent.\"{id}\"");
            if id.is_empty() || id.contains('/') {
                return Err(invalid(
                    key,
                    "a parent id must be a non-empty name without '/'".into(),
                ));
            }
            let engine = match p.engine.as_str() {
                "cpu" => Engine::Cpu,
                other => {
                    return Err(invalid(
                        format!("{key}.engine"),
                        format!("unknown engine {other:?} (expected cpu)"),
                    ))
                }
            };
            let fb = parse_size(&p.framebuffer).ok_or_else(|| {
                invalid(
                    format!("{key}.framebuffer"),
                    format!("{:?} is not a size like \"8GiB\"", p.framebuffer),
                )
            })?;
            if p.max_vgpus == 0 {
                return Err(invalid(
                    format!("{key}.max_vgpus"),
                    "must be at least 1".into(),
                ));
            }
            let offered: Vec<Arc<VgpuType>> = match &p.types {
                None => types.values().cloned().collect(),
                Some(ids) => ids
                    .iter()
                    .map(|t| {
                        types.get(t).cloned().ok_or_else(|| {
                            invalid(
                                format!("{key}.types"),
                                format!(
                                    "no type {t:?} (defined: {})",
                                    types.keys().cloned().collect::<Vec<_>>().join(", ")
                                ),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            if let Some(t) = offered.iter().find(|t| t.framebuffer_bytes > fb) {
                return Err(invalid(
                    format!("{key}.types"),
                    format!(
                        "{} needs {} MiB of framebuffer, more than the parent's {} MiB",
                        t.id,
                        t.framebuffer_bytes >> 20,
                        fb >> 20
                    ),
                ));
            }
            parents.push(ParentDef {
                id,
                engine,
                capacity: ParentCapacity {
                    framebuffer_bytes: fb,
                    max_vgpus: p.max_vgpus,
                },
                types: offered,
            });
        }
        if parents.is_empty() {
            let mut d = Catalog::default();
            d.parents[0].types = types.values().cloned().collect();
            return Ok(d);
        }
        Ok(Catalog { parents })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> VgpuType {
        default_type(id).unwrap()
    }

    #[test]
    fn default_catalogue_fills_an_8_gib_parent_exactly() {
        for t in default_types() {
            assert_eq!(
                t.framebuffer_bytes * t.max_instances as u64,
                8 * GIB,
                "{}",
                t.id
            );
            assert!(t.id.starts_with("vgpud-"));
        }
        assert_eq!(
            default_type("vgpud-4c").map(|t| t.name),
            Some("VGPU-4C".to_string())
        );
        assert_eq!(default_type("vgpud-8c").map(|t| t.device_id), Some(0x1008));
        assert!(default_type("nope").is_none());
    }

    #[test]
    fn available_instances_account_for_other_types() {
        let cap = DEFAULT_CAPACITY;
        let (c1, c2, c4, c8) = (t("vgpud-1c"), t("vgpud-2c"), t("vgpud-4c"), t("vgpud-8c"));
        assert_eq!(cap.available_instances(&c1, &[]), 8);
        assert_eq!(cap.available_instances(&c8, &[]), 1);
        let one4 = [&c4];
        assert_eq!(cap.available_instances(&c4, &one4), 1);
        assert_eq!(cap.available_instances(&c2, &one4), 2);
        assert_eq!(cap.available_instances(&c1, &one4), 4);
        assert_eq!(cap.available_instances(&c8, &one4), 0);
        let full = [&c2; 4];
        assert!(default_types()
            .iter()
            .all(|x| cap.available_instances(x, &full) == 0));
        let small = ParentCapacity {
            framebuffer_bytes: 64 * GIB,
            max_vgpus: 3,
        };
        assert_eq!(
            small.available_instances(&c1, &[&c1; 2]),
            1,
            "slots bound it"
        );
    }

    #[test]
    fn catalog_section_adds_types_and_parents() {
        let text = r#"
[parent."cpu0"]
policy = "fixed_share"

[catalog.type."vgpud-16c"]
name = "VGPU-16C"
framebuffer = "16GiB"
max_instances = 2
channels = 32
device_id = 0x1010

[catalog.parent."big0"]
framebuffer = "32GiB"
max_vgpus = 4
types = ["vgpud-16c", "vgpud-8c"]
"#;
        let c = Catalog::parse(text, "x.toml").unwrap();
        assert_eq!(c.parents.len(), 1);
        let p = &c.parents[0];
        assert_eq!(
            (
                p.id.as_str(),
                p.capacity.framebuffer_bytes,
                p.capacity.max_vgpus
            ),
            ("big0", 32 * GIB, 4)
        );
        assert_eq!(
            p.types.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["vgpud-16c", "vgpud-8c"]
        );
        assert_eq!(p.types[0].fixed_share(), 0.5);
        assert_eq!(p.types[0].channels, 32);
        // No [catalog]: the defaults; types only: cpu0 offers them too.
        assert_eq!(
            Catalog::parse("[default]\npolicy = \"weighted\"\n", "x").unwrap(),
            Catalog::default()
        );
        let only = Catalog::parse("[catalog.type.\"vgpud-half\"]\nname = \"VGPU-H\"\nframebuffer = \"512MiB\"\nmax_instances = 16\ndevice_id = 0x1100\n", "x").unwrap();
        assert_eq!(only.parents[0].types.len(), 5);
    }

    #[test]
    fn catalog_errors_name_the_file_and_key() {
        let cases = [
            ("[catalog.type.\"a\"]\nname = \"A\"\nframebuffer = \"4 bananas\"\nmax_instances = 1\ndevice_id = 1\n", "catalog.type.\"a\".framebuffer"),
            ("[catalog.type.\"a\"]\nname = \"A\"\nframebuffer = \"4GiB\"\nmax_instances = 0\ndevice_id = 1\n", "max_instances"),
            ("[catalog.type.\"a\"]\nname = \"A\"\nframebuffer = \"4GiB\"\nmax_instances = 1\nchannels = 99\ndevice_id = 1\n", "channels"),
            ("[catalog.parent.\"p\"]\nframebuffer = \"4GiB\"\nmax_vgpus = 2\ntypes = [\"vgpud-8c\"]\n", "needs 8192 MiB"),
            ("[catalog.parent.\"p\"]\nframebuffer = \"4GiB\"\nmax_vgpus = 2\ntypes = [\"nope\"]\n", "no type \"nope\""),
            ("[catalog.parent.\"p\"]\nengine = \"tpu\"\nframebuffer = \"4GiB\"\nmax_vgpus = 2\n", "unknown engine"),
            ("[catalog.parent.\"p\"]\nframebuffer = \"4GiB\"\nmax_vgpu = 2\n", "max_vgpu"),
            ("[catalog\n", "x.toml"),
        ];
        for (text, want) in cases {
            let e = Catalog::parse(text, "x.toml").unwrap_err().to_string();
            assert!(
                e.starts_with("x.toml") && e.contains(want),
                "{e:?} should contain {want:?}"
            );
        }
    }
}
