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
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use scheduler::config::{Document, Val, CATALOG};
use scheduler::Result;
use toml::de::{DeTable, DeValue};

pub mod sockets;
pub mod workers;
pub use sockets::SocketConfig;
pub use workers::WorkerConfig;

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
    /// Framebuffer the parent divides between its vGPUs (a GPU derived
    /// from its memory: all of it, the reserves below included).
    pub framebuffer_bytes: u64,
    /// vGPUs of any type the parent runs at once.
    pub max_vgpus: u32,
    /// Memory each vGPU takes beside its framebuffer: on a GPU, its CUDA
    /// context ([`CUDA_CONTEXT_RESERVE`]); 0 where the catalogue gives the
    /// framebuffer to divide.
    pub reserve_per_vgpu: u64,
}

/// The default cpu-engine parent: 8 GiB of framebuffer (allocated lazily),
/// up to 8 vGPUs.
pub const DEFAULT_CAPACITY: ParentCapacity = ParentCapacity {
    framebuffer_bytes: 8 * GIB,
    max_vgpus: 8,
    reserve_per_vgpu: 0,
};

impl ParentCapacity {
    /// The framebuffer left on a parent that holds the vGPUs whose types
    /// are `existing`, each with its reserve.
    pub fn free_framebuffer(&self, existing: &[&VgpuType]) -> u64 {
        let used = existing
            .iter()
            .map(|e| e.framebuffer_bytes.saturating_add(self.reserve_per_vgpu))
            .fold(0, u64::saturating_add);
        self.framebuffer_bytes.saturating_sub(used)
    }

    /// `available_instances` of type `t` on a parent that already holds
    /// the vGPUs whose types are `existing`: the smallest of
    /// * the type's own limit, `max_instances` minus vGPUs of this type;
    /// * the framebuffer left after every existing vGPU of any type (each
    ///   with its reserve), divided by this type's framebuffer and reserve;
    /// * the parent's vGPU slots left.
    ///
    /// This is the kernel's per-type rule (mbochs: free memory / type
    /// memory) with NVIDIA's per-type instance limit on top, so a parent
    /// with one 4 GiB vGPU offers one more `-4c`, two `-2c` and no `-8c`.
    pub fn available_instances(&self, t: &VgpuType, existing: &[&VgpuType]) -> u32 {
        let same = existing.iter().filter(|e| e.id == t.id).count() as u32;
        let by_type = t.max_instances.saturating_sub(same);
        let each = t.framebuffer_bytes.saturating_add(self.reserve_per_vgpu);
        let by_fb = (self.free_framebuffer(existing) / each.max(1)).min(u32::MAX as u64) as u32;
        let by_slots = self.max_vgpus.saturating_sub(existing.len() as u32);
        by_type.min(by_fb).min(by_slots)
    }
}

/// The engine behind a parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The cpu engine (runs every ABI operation on host threads).
    Cpu,
    /// An NVIDIA GPU through CUDA (device ordinal): each vGPU's work in a
    /// worker process of its own, stopped when an item runs longer than
    /// `kernel_timeout_ms` (a kernel that far outlives its slice).
    Cuda {
        device: CudaDevice,
        kernel_timeout_ms: u32,
    },
}

/// Which GPU a cuda parent is: by CUDA ordinal, or by UUID (as
/// `nvidia-smi -L` prints it, `GPU-xxxxxxxx-…`), which stays the same GPU
/// whatever order the devices are enumerated in; or every GPU the host
/// shows (`device = "all"`), one parent each, which the daemon makes at
/// start (docs/config.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaDevice {
    Ordinal(u32),
    Uuid([u8; 16]),
    All,
}

impl CudaDevice {
    /// `GPU-6f6e1c…` or the bare 32 hex digits, dashes anywhere.
    pub fn parse_uuid(s: &str) -> Option<CudaDevice> {
        let hex: Vec<u8> = s
            .strip_prefix("GPU-")
            .unwrap_or(s)
            .bytes()
            .filter(|&b| b != b'-')
            .collect();
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digits = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(digits, 16).ok()?;
        }
        Some(CudaDevice::Uuid(out))
    }

    /// The worker's command-line arguments naming this GPU (`None` for
    /// [`CudaDevice::All`], which names no one GPU).
    pub fn worker_args(&self) -> Option<[String; 2]> {
        match self {
            CudaDevice::Ordinal(n) => Some(["--device".into(), n.to_string()]),
            CudaDevice::Uuid(u) => Some([
                "--device-uuid".into(),
                u.iter().map(|b| format!("{b:02x}")).collect(),
            ]),
            CudaDevice::All => None,
        }
    }
}

impl std::fmt::Display for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaDevice::Ordinal(n) => write!(f, "{n}"),
            CudaDevice::All => f.write_str("all"),
            CudaDevice::Uuid(u) => {
                let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
                write!(
                    f,
                    "GPU-{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                )
            }
        }
    }
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Cpu => "cpu",
            Engine::Cuda { .. } => "cuda",
        }
    }
}

/// How long an item may run on a GPU before its worker is stopped, unless
/// `kernel_timeout` says otherwise (pieces are about 1 ms).
pub const DEFAULT_KERNEL_TIMEOUT_MS: u32 = 2_000;

/// Device memory kept back per vGPU on a GPU for its CUDA context (the
/// worker's own allocations, kernels and stacks).
pub const CUDA_CONTEXT_RESERVE: u64 = GIB;

/// The types a GPU of `memory_bytes` offers, in NVIDIA's style: the whole
/// GPU, 1/2, 1/4 and 1/8 of its framebuffer (after a context's reserve per
/// vGPU), each with as many instances as fit; and the parent's capacity.
/// `name` is the GPU's (`NVIDIA H200` gives types `h200-139c` …).
pub fn gpu_types(name: &str, memory_bytes: u64) -> (ParentCapacity, Vec<VgpuType>) {
    let model: String = name
        .trim_start_matches("NVIDIA")
        .split_whitespace()
        .next()
        .unwrap_or("gpu")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    let model = if model.is_empty() {
        "gpu".into()
    } else {
        model
    };
    let types = [1u32, 2, 4, 8]
        .into_iter()
        .filter_map(|d| {
            let fb = memory_bytes.saturating_sub(d as u64 * CUDA_CONTEXT_RESERVE) / d as u64;
            let gib = fb / GIB;
            (gib > 0).then(|| VgpuType {
                id: format!("{model}-{gib}c"),
                name: format!("{}-{gib}C", model.to_ascii_uppercase()),
                framebuffer_bytes: gib * GIB,
                max_instances: d,
                channels: DEFAULT_CHANNELS,
                vendor_id: VENDOR_ID,
                device_id: 0x1100 + d as u16,
            })
        })
        .collect::<Vec<_>>();
    // Each vGPU takes its framebuffer and a context's reserve out of the
    // GPU's memory: every type's `max_instances` fit, each with its reserve.
    let capacity = ParentCapacity {
        framebuffer_bytes: memory_bytes,
        max_vgpus: 8,
        reserve_per_vgpu: CUDA_CONTEXT_RESERVE,
    };
    (capacity, types)
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
    /// Where a vGPU created without a parent goes.
    pub placement: Placement,
}

/// Where `create` puts a vGPU when the request names no parent
/// (`[catalog] placement`): among the parents that offer its type and
/// have an instance of it left (docs/config.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// On the parent with the fewest vGPUs (breadth first): each vGPU gets
    /// the most of a GPU, and a fault's stall reaches the fewest
    /// neighbours. The default.
    #[default]
    Spread,
    /// On the parent with the most vGPUs that still has room (depth
    /// first): whole GPUs stay free for large types.
    Pack,
}

impl Placement {
    /// `"spread"`, `"pack"`.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Spread => "spread",
            Placement::Pack => "pack",
        }
    }

    /// The rule of this name.
    pub fn from_name(name: &str) -> Option<Placement> {
        [Placement::Spread, Placement::Pack]
            .into_iter()
            .find(|p| p.name() == name)
    }
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
            placement: Placement::default(),
        }
    }
}

/// vGPU types offered when a `[catalog.type."<id>"]` has no `channels`.
const DEFAULT_CHANNELS: u32 = 16;

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

/// vgpud's configuration file (docs/config.md): the scheduling policy, the
/// type catalogue and the vGPU sockets' ownership, taken from one parse of
/// the file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigFile {
    /// Every section but `[catalog]`.
    pub policy: scheduler::Config,
    /// `[catalog]`.
    pub catalog: Catalog,
    /// `[sockets]`.
    pub sockets: SocketConfig,
    /// `[workers]`.
    pub workers: WorkerConfig,
}

impl ConfigFile {
    /// Reads and parses the configuration file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<ConfigFile> {
        let (text, file) = scheduler::config::read(path.as_ref())?;
        ConfigFile::parse(&text, &file)
    }

    /// Parses configuration-file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<ConfigFile> {
        let doc = Document::parse(text, file)?;
        Ok(ConfigFile {
            policy: scheduler::Config::from_document(&doc)?,
            catalog: Catalog::from_document(&doc)?,
            sockets: SocketConfig::from_document(&doc)?,
            workers: WorkerConfig::from_document(&doc)?,
        })
    }
}

impl Catalog {
    /// The catalogue of the configuration file at `path` (its `[catalog]`
    /// section; the defaults when it has none).
    pub fn load(path: impl AsRef<Path>) -> Result<Catalog> {
        let (text, file) = scheduler::config::read(path.as_ref())?;
        Catalog::parse(&text, &file)
    }

    /// Parse configuration-file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Catalog> {
        Catalog::from_document(&Document::parse(text, file)?)
    }

    /// The catalogue of a parsed configuration file.
    ///
    /// Types under `[catalog.type."<id>"]` join (or replace, by id) the
    /// built-in ones. Parents under `[catalog.parent."<id>"]` replace the
    /// default parent; a parent without `types` offers every type. Errors
    /// give the file, line, column and dotted key of the value at fault.
    pub fn from_document(doc: &Document<'_>) -> Result<Catalog> {
        let Some(section) = doc.section(CATALOG) else {
            return Ok(Catalog::default());
        };
        let cat = fields(doc, section, CATALOG, &["type", "parent", "placement"])?;
        let placement = match cat.get("placement") {
            None => Placement::default(),
            Some(v) => {
                let name = doc.string(v, "catalog.placement")?;
                Placement::from_name(name).ok_or_else(|| {
                    doc.error(
                        v.span(),
                        "catalog.placement",
                        format!("unknown placement {name:?} (expected spread or pack)"),
                    )
                })?
            }
        };
        let mut types: BTreeMap<String, Arc<VgpuType>> = default_types()
            .into_iter()
            .map(|t| (t.id.clone(), Arc::new(t)))
            .collect();
        if let Some(v) = cat.get("type") {
            for (k, t) in doc.table(v, "catalog.type")?.iter() {
                let id = k.get_ref().as_ref();
                let vt = vgpu_type(doc, id, k.span(), t)?;
                types.insert(id.to_string(), Arc::new(vt));
            }
        }
        let mut parents = Vec::new();
        if let Some(v) = cat.get("parent") {
            for (k, p) in doc.table(v, "catalog.parent")?.iter() {
                let id = k.get_ref().as_ref();
                parents.push(parent(doc, id, k.span(), p, &types)?);
            }
        }
        if parents.is_empty() {
            let mut d = Catalog::default();
            d.parents[0].types = types.values().cloned().collect();
            d.placement = placement;
            return Ok(d);
        }
        Ok(Catalog { parents, placement })
    }
}

/// `[catalog.type."<id>"]`.
fn vgpu_type(doc: &Document<'_>, id: &str, id_span: Range<usize>, v: &Val<'_>) -> Result<VgpuType> {
    let key = format!("catalog.type.\"{id}\"");
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(doc.error(
            id_span,
            &key,
            "a type id is letters, digits, '-' and '_' (the kernel's <driver>-<name>)",
        ));
    }
    const KEYS: &[&str] = &[
        "name",
        "framebuffer",
        "max_instances",
        "channels",
        "device_id",
    ];
    let t = fields(doc, v, &key, KEYS)?;
    let at = |name: &str| format!("{key}.{name}");
    let name = doc.string(required(doc, t, v, &key, "name")?, &at("name"))?;
    let fb_v = required(doc, t, v, &key, "framebuffer")?;
    let fb_text = doc.string(fb_v, &at("framebuffer"))?;
    let max_v = required(doc, t, v, &key, "max_instances")?;
    let max_instances = unsigned(doc, max_v, &at("max_instances"), u32::MAX)?;
    let channels_v = t.get("channels");
    let channels: u32 = match channels_v {
        Some(c) => unsigned(doc, c, &at("channels"), u32::MAX)?,
        None => DEFAULT_CHANNELS,
    };
    let device_v = required(doc, t, v, &key, "device_id")?;
    let device_id = unsigned(doc, device_v, &at("device_id"), u16::MAX.into())? as u16;
    let fb = parse_size(fb_text).ok_or_else(|| {
        doc.error(
            fb_v.span(),
            &at("framebuffer"),
            format!("{fb_text:?} is not a size like \"4GiB\""),
        )
    })?;
    if fb == 0 {
        return Err(doc.error(fb_v.span(), &at("framebuffer"), "must be above 0"));
    }
    if max_instances == 0 {
        return Err(doc.error(max_v.span(), &at("max_instances"), "must be at least 1"));
    }
    if channels == 0 || channels > MAX_CHANNELS {
        let span = channels_v.map_or(v.span(), |c| c.span());
        return Err(doc.error(
            span,
            &at("channels"),
            format!("must be 1 ..= {MAX_CHANNELS}"),
        ));
    }
    if name.trim().is_empty() {
        let span = t.get("name").map_or(v.span(), |n| n.span());
        return Err(doc.error(span, &at("name"), "must not be empty"));
    }
    Ok(VgpuType {
        id: id.to_string(),
        name: name.to_string(),
        framebuffer_bytes: fb,
        max_instances,
        channels,
        vendor_id: VENDOR_ID,
        device_id,
    })
}

/// `[catalog.parent."<id>"]`, offering types of `types`.
fn parent(
    doc: &Document<'_>,
    id: &str,
    id_span: Range<usize>,
    v: &Val<'_>,
    types: &BTreeMap<String, Arc<VgpuType>>,
) -> Result<ParentDef> {
    let key = format!("catalog.parent.\"{id}\"");
    if id.is_empty() || id.contains('/') {
        return Err(doc.error(
            id_span,
            &key,
            "a parent id must be a non-empty name without '/'",
        ));
    }
    let p = fields(
        doc,
        v,
        &key,
        &[
            "engine",
            "device",
            "kernel_timeout",
            "framebuffer",
            "max_vgpus",
            "types",
        ],
    )?;
    let at = |name: &str| format!("{key}.{name}");
    let device = match p.get("device") {
        Some(d) => Some((device(doc, d, &at("device"))?, d.span())),
        None => None,
    };
    let engine = engine(doc, p, &key, device.as_ref().map(|d| d.0))?;
    if let (Engine::Cpu, Some((_, span))) = (engine, &device) {
        return Err(doc.error(
            span.clone(),
            &at("device"),
            "only a cuda parent has a device",
        ));
    }
    if let (Engine::Cpu, Some(t)) = (engine, p.get("kernel_timeout")) {
        return Err(doc.error(
            t.span(),
            &at("kernel_timeout"),
            "only a cuda parent has a kernel timeout",
        ));
    }
    // A GPU's capacity and types come from the GPU itself unless given
    // (the daemon asks it at start: gpu_types).
    if let Engine::Cuda { .. } = engine {
        if p.get("framebuffer").is_none() && p.get("types").is_none() {
            let max_vgpus = match p.get("max_vgpus") {
                Some(m) => unsigned(doc, m, &at("max_vgpus"), u32::MAX)?.max(1),
                None => 8,
            };
            return Ok(ParentDef {
                id: id.to_string(),
                engine,
                capacity: ParentCapacity {
                    framebuffer_bytes: 0,
                    max_vgpus,
                    reserve_per_vgpu: 0,
                },
                types: Vec::new(),
            });
        }
    }
    let fb_v = required(doc, p, v, &key, "framebuffer")?;
    let fb_text = doc.string(fb_v, &at("framebuffer"))?;
    let max_v = required(doc, p, v, &key, "max_vgpus")?;
    let max_vgpus = unsigned(doc, max_v, &at("max_vgpus"), u32::MAX)?;
    let fb = parse_size(fb_text).ok_or_else(|| {
        doc.error(
            fb_v.span(),
            &at("framebuffer"),
            format!("{fb_text:?} is not a size like \"8GiB\""),
        )
    })?;
    if max_vgpus == 0 {
        return Err(doc.error(max_v.span(), &at("max_vgpus"), "must be at least 1"));
    }
    let types_v = p.get("types");
    let offered: Vec<Arc<VgpuType>> = match types_v {
        None => types.values().cloned().collect(),
        Some(list) => offered_types(doc, list, &at("types"), types)?,
    };
    if let Some(t) = offered.iter().find(|t| t.framebuffer_bytes > fb) {
        return Err(doc.error(
            types_v.map_or(fb_v.span(), |t| t.span()),
            &at("types"),
            format!(
                "{} needs {} MiB of framebuffer, more than the parent's {} MiB",
                t.id,
                t.framebuffer_bytes >> 20,
                fb >> 20
            ),
        ));
    }
    Ok(ParentDef {
        id: id.to_string(),
        engine,
        capacity: ParentCapacity {
            framebuffer_bytes: fb,
            max_vgpus,
            reserve_per_vgpu: 0,
        },
        types: offered,
    })
}

/// A parent's `device`: a CUDA ordinal, a GPU UUID as `nvidia-smi -L`
/// prints it, or `"all"`.
fn device(doc: &Document<'_>, d: &Val<'_>, key: &str) -> Result<CudaDevice> {
    match d.get_ref() {
        DeValue::String(s) if s.as_ref() == "all" => Ok(CudaDevice::All),
        DeValue::String(s) => CudaDevice::parse_uuid(s).ok_or_else(|| {
            doc.error(
                d.span(),
                key,
                format!(
                    "{s:?} is neither \"all\" nor a GPU UUID like \"GPU-6f6e1c2a-…\" (32 hex digits)"
                ),
            )
        }),
        _ => Ok(CudaDevice::Ordinal(unsigned(doc, d, key, 255)?)),
    }
}

/// A parent's `engine` (default `cpu`), with a GPU's device and kernel
/// timeout.
fn engine(
    doc: &Document<'_>,
    p: &DeTable<'_>,
    key: &str,
    device: Option<CudaDevice>,
) -> Result<Engine> {
    let at = |name: &str| format!("{key}.{name}");
    let Some(e) = p.get("engine") else {
        return Ok(Engine::Cpu);
    };
    match doc.string(e, &at("engine"))? {
        "cpu" => Ok(Engine::Cpu),
        "cuda" => Ok(Engine::Cuda {
            device: device.unwrap_or(CudaDevice::Ordinal(0)),
            kernel_timeout_ms: match p.get("kernel_timeout") {
                None => DEFAULT_KERNEL_TIMEOUT_MS,
                Some(t) => {
                    let ms = doc.duration(t, &at("kernel_timeout"))? / 1_000_000;
                    if !(10..=600_000).contains(&ms) {
                        return Err(doc.error(
                            t.span(),
                            &at("kernel_timeout"),
                            "is outside 10ms ..= 10min",
                        ));
                    }
                    ms as u32
                }
            },
        }),
        other => Err(doc.error(
            e.span(),
            &at("engine"),
            format!("unknown engine {other:?} (expected cpu or cuda)"),
        )),
    }
}

/// A parent's `types`: ids of types `types` defines.
fn offered_types(
    doc: &Document<'_>,
    list: &Val<'_>,
    key: &str,
    types: &BTreeMap<String, Arc<VgpuType>>,
) -> Result<Vec<Arc<VgpuType>>> {
    let DeValue::Array(items) = list.get_ref() else {
        return Err(doc.error(
            list.span(),
            key,
            format!(
                "expected an array of type ids, found {}",
                list.get_ref().type_str()
            ),
        ));
    };
    let mut offered = Vec::new();
    for item in items.iter() {
        let t = doc.string(item, key)?;
        let vt = types.get(t).cloned().ok_or_else(|| {
            doc.error(
                item.span(),
                key,
                format!(
                    "no type {t:?} (defined: {})",
                    types.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        offered.push(vt);
    }
    Ok(offered)
}

/// `v` as a table whose keys are all in `allowed`.
fn fields<'v, 'i>(
    doc: &Document<'_>,
    v: &'v Val<'i>,
    key: &str,
    allowed: &[&str],
) -> Result<&'v DeTable<'i>> {
    let t = doc.table(v, key)?;
    for (k, _) in t.iter() {
        let name = k.get_ref().as_ref();
        if !allowed.contains(&name) {
            let expected = match allowed {
                [one] => one.to_string(),
                [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
                [] => "none".into(),
            };
            return Err(doc.error(
                k.span(),
                &format!("{key}.{name}"),
                format!("unknown key (expected {expected})"),
            ));
        }
    }
    Ok(t)
}

/// The value of `name` in table `t` (the value `at` of `key`), which must be there.
fn required<'v, 'i>(
    doc: &Document<'_>,
    t: &'v DeTable<'i>,
    at: &Val<'_>,
    key: &str,
    name: &str,
) -> Result<&'v Val<'i>> {
    t.get(name)
        .ok_or_else(|| doc.error(at.span(), &format!("{key}.{name}"), "missing key"))
}

/// `v` as an integer in `0 ..= max`.
fn unsigned(doc: &Document<'_>, v: &Val<'_>, key: &str, max: u32) -> Result<u32> {
    let n = doc.integer(v, key)?;
    u32::try_from(n)
        .ok()
        .filter(|&x| x <= max)
        .ok_or_else(|| doc.error(v.span(), key, format!("{n} is outside 0 ..= {max}")))
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
            reserve_per_vgpu: 0,
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

    #[test]
    fn catalog_errors_give_line_column_and_key() {
        let text = "[default]\npolicy = \"weighted\"\n\n[catalog.type.\"a\"]\nname = \"A\"\nframebuffer = \"4GiB\"\nmax_instances = 1\nchannels = 99\ndevice_id = 1\n";
        let e = Catalog::parse(text, "x.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "x.toml:8:12: catalog.type.\"a\".channels: must be 1 ..= 64"
        );
        let e = Catalog::parse("[catalog]\ntypo = 1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.toml:2:1: catalog.typo: unknown key (expected type, parent or placement)"
        );
        let e = Catalog::parse("[catalog.type.t]\nname = \"T\"\nframebuffer = \"1GiB\"\nmax_instances = 2\ndevice_id = 70000\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "x.toml:5:13: catalog.type.\"t\".device_id: 70000 is outside 0 ..= 65535"
            ),
            "{e}"
        );
    }

    #[test]
    fn one_parse_gives_the_policy_and_the_catalogue() {
        let text = "[parent.big0]\npolicy = \"fixed_share\"\n\n[catalog.parent.big0]\nframebuffer = \"16GiB\"\nmax_vgpus = 4\n";
        let f = ConfigFile::parse(text, "x.toml").unwrap();
        assert_eq!(
            f.policy.parent_policy("big0").kind,
            scheduler::PolicyKind::FixedShare
        );
        assert_eq!(f.catalog.parents[0].id, "big0");
        assert_eq!(f.catalog, Catalog::parse(text, "x.toml").unwrap());
        assert_eq!(f.policy, scheduler::Config::parse(text, "x.toml").unwrap());
        // The policy part is checked first; a bad section fails the whole file.
        let e = ConfigFile::parse("[polcy]\n[catalog.parent.p]\nframebuffer = 1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:1:2: polcy: unknown section"), "{e}");
        let e = ConfigFile::parse(
            "[catalog.parent.p]\nframebuffer = 1\nmax_vgpus = 1\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "x.toml:2:15: catalog.parent.\"p\".framebuffer: expected a string, found an integer"
        );
    }

    #[test]
    fn every_gpu_and_the_placement_rule() {
        // One section for every GPU the host shows: the daemon makes a
        // parent of each at start.
        let text = "[catalog]\nplacement = \"pack\"\n\n[catalog.parent.\"gpus\"]\nengine = \"cuda\"\ndevice = \"all\"\n";
        let c = Catalog::parse(text, "x.toml").unwrap();
        assert_eq!(c.placement, Placement::Pack);
        assert_eq!(c.parents.len(), 1);
        assert_eq!(
            c.parents[0].engine,
            Engine::Cuda {
                device: CudaDevice::All,
                kernel_timeout_ms: DEFAULT_KERNEL_TIMEOUT_MS
            }
        );
        assert_eq!(CudaDevice::All.to_string(), "all");
        assert_eq!(CudaDevice::All.worker_args(), None);
        // Spread unless said; the rule holds with the default parent too.
        assert_eq!(Catalog::default().placement, Placement::Spread);
        let c = Catalog::parse("[catalog]\nplacement = \"spread\"\n", "x.toml").unwrap();
        assert_eq!(c.placement, Placement::Spread);
        assert_eq!(c.parents[0].id, DEFAULT_PARENT);
        let c = Catalog::parse("[catalog]\nplacement = \"pack\"\n", "x.toml").unwrap();
        assert_eq!(c.placement, Placement::Pack);
        let e = Catalog::parse("[catalog]\nplacement = \"random\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.toml:2:13: catalog.placement: unknown placement \"random\" (expected spread or pack)"
        );
        let e = Catalog::parse(
            "[catalog.parent.g]\nengine = \"cuda\"\ndevice = \"every\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("catalog.parent.\"g\".device") && e.contains("neither \"all\""),
            "{e}"
        );
    }

    #[test]
    fn a_gpu_parent_takes_its_types_from_the_gpu() {
        // Declared without framebuffer and types: left for the daemon to
        // derive from the GPU it asks.
        let text = "[catalog.parent.\"gpu0\"]\nengine = \"cuda\"\ndevice = 1\n";
        let c = Catalog::parse(text, "x.toml").unwrap();
        let p = &c.parents[0];
        assert_eq!(
            p.engine,
            Engine::Cuda {
                device: CudaDevice::Ordinal(1),
                kernel_timeout_ms: DEFAULT_KERNEL_TIMEOUT_MS
            }
        );
        // By UUID, as nvidia-smi -L prints it.
        let t = "[catalog.parent.\"g\"]\nengine = \"cuda\"\ndevice = \"GPU-6f6e1c2a-3b4d-5e6f-7a8b-9c0d1e2f3a4b\"\n";
        let c = Catalog::parse(t, "x.toml").unwrap();
        let Engine::Cuda { device, .. } = c.parents[0].engine else {
            panic!("a cuda parent")
        };
        assert_eq!(
            device.to_string(),
            "GPU-6f6e1c2a-3b4d-5e6f-7a8b-9c0d1e2f3a4b"
        );
        assert_eq!(
            device.worker_args().map(|a| a[1].clone()).as_deref(),
            Some("6f6e1c2a3b4d5e6f7a8b9c0d1e2f3a4b")
        );
        let t = "[catalog.parent.\"g\"]\nengine = \"cuda\"\ndevice = \"GPU-12\"\n";
        let e = Catalog::parse(t, "x.toml").unwrap_err().to_string();
        assert!(e.contains("nor a GPU UUID"), "{e}");
        let t = "[catalog.parent.\"g\"]\nengine = \"cuda\"\nkernel_timeout = \"250ms\"\n";
        let c = Catalog::parse(t, "x.toml").unwrap();
        assert!(matches!(
            c.parents[0].engine,
            Engine::Cuda {
                kernel_timeout_ms: 250,
                ..
            }
        ));
        let t = "[catalog.parent.\"g\"]\nengine = \"cuda\"\nkernel_timeout = \"1ms\"\n";
        let e = Catalog::parse(t, "x.toml").unwrap_err().to_string();
        assert!(e.contains("kernel_timeout"), "{e}");
        assert!(p.types.is_empty());
        assert_eq!(p.capacity.framebuffer_bytes, 0);
        // What an H200 (143,771 MiB) offers: the whole GPU, 1/2, 1/4, 1/8,
        // a context's reserve per vGPU taken out first.
        let (cap, types) = gpu_types("NVIDIA H200", 143_771 << 20);
        let got: Vec<(&str, u64, u32)> = types
            .iter()
            .map(|t| (t.id.as_str(), t.framebuffer_bytes >> 30, t.max_instances))
            .collect();
        assert_eq!(
            got,
            [
                ("h200-139c", 139, 1),
                ("h200-69c", 69, 2),
                ("h200-34c", 34, 4),
                ("h200-16c", 16, 8)
            ]
        );
        assert_eq!(cap.max_vgpus, 8);
        // Eight of the smallest fit in the capacity, with their reserves.
        assert!(8 * types[3].framebuffer_bytes <= cap.framebuffer_bytes);
        // Every type's max_instances fit on the empty GPU, each with its
        // context's reserve; no more than that.
        for t in &types {
            assert_eq!(cap.available_instances(t, &[]), t.max_instances, "{}", t.id);
            let full = vec![t; t.max_instances as usize];
            let used = t.max_instances as u64 * (t.framebuffer_bytes + CUDA_CONTEXT_RESERVE);
            assert!(used <= 143_771 << 20, "{}", t.id);
            assert_eq!(cap.available_instances(t, &full), 0, "{}", t.id);
        }
        // Mixed: one half-GPU vGPU leaves room for one more half, or for
        // three eighths (3 × 17 GiB of the 70 GiB left), not four.
        assert_eq!(cap.available_instances(&types[1], &[&types[1]]), 1);
        assert_eq!(cap.available_instances(&types[3], &[&types[1]]), 4);
        assert_eq!(
            cap.available_instances(&types[3], &[&types[1], &types[3]]),
            3
        );
        // A device on a cpu parent is a mistake, said with its key.
        let bad = "[catalog.parent.\"p\"]\ndevice = 0\nframebuffer = \"4GiB\"\nmax_vgpus = 2\n";
        let e = Catalog::parse(bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("catalog.parent.\"p\".device"), "{e}");
    }
}
