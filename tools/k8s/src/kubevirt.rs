//! KubeVirt: the domain rewrite that puts a vgpud vGPU into a KubeVirt VM,
//! served as a KubeVirt 1.9 domain hook (Plugins, `DomainHookService`).
//!
//! KubeVirt takes a mediated device from an external device plugin by the
//! UUIDs in `MDEV_PCI_RESOURCE_<RESOURCE>` and writes, per device, a
//! `<hostdev type='mdev' mode='subsystem' model='vfio-pci'>` whose
//! `<source><address uuid=…/>` is the UUID and whose alias is
//! `ua-gpu-<name>` (a `gpus` entry) or `ua-hostdevice-<name>` (a
//! `hostDevices` entry). libvirt knows no vfio-user device, and no vGPU
//! of vgpud has a sysfs node, so that element cannot stay. The rewrite
//! replaces each such element of a vgpud resource with what
//! `vgpuctl libvirt-xml` gives a libvirt VM: QEMU's `vfio-user-pci` on
//! the vGPU's socket (in `<qemu:commandline>`), and guest RAM that QEMU can
//! hand to vgpud (`<memoryBacking>` with a shared memfd). With
//! `guest_iommu` (the VMI annotation `vgpud.io/guest-iommu: "true"`) it
//! also gives the guest an IOMMU (intel, caching mode) and the IOAPIC
//! that needs, for guests that drive the vGPU with vfio-pci.

use std::path::{Path, PathBuf};

use quick_xml::events::{BytesEnd, BytesStart, Event};
use quick_xml::{Reader, Writer};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::names::DOMAIN;
use crate::proto::kubevirt as pb;
use crate::socket_dir::{CONTAINER_DIR, SOCKET_NAME};
use crate::Error;

/// libvirt's namespace for QEMU pass-through elements.
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// The VMI annotation that asks for a guest IOMMU.
pub const GUEST_IOMMU_ANNOTATION: &str = "vgpud.io/guest-iommu";

/// Which mdev host devices are vgpud's, and how to rewrite them.
#[derive(Clone, Debug)]
pub struct Rewrite {
    /// The aliases of the VMI's devices of a `vgpud.io/` resource; `None`:
    /// every mdev host device (no VMI at hand).
    pub aliases: Option<Vec<String>>,
    /// Where the vGPUs' directories are, as QEMU sees them.
    pub socket_dir: PathBuf,
    pub guest_iommu: bool,
}

impl Rewrite {
    /// What a VMI (as JSON) asks for: its `gpus` and `hostDevices` whose
    /// `deviceName` is a `vgpud.io/` resource, and the IOMMU annotation.
    pub fn for_vmi(vmi: &Value, socket_dir: &Path) -> Rewrite {
        let devices = &vmi["spec"]["domain"]["devices"];
        let mut aliases = Vec::new();
        for (list, prefix) in [("gpus", "ua-gpu-"), ("hostDevices", "ua-hostdevice-")] {
            for d in devices[list].as_array().into_iter().flatten() {
                let ours = d["deviceName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{DOMAIN}/")));
                if let (true, Some(name)) = (ours, d["name"].as_str()) {
                    aliases.push(format!("{prefix}{name}"));
                }
            }
        }
        Rewrite {
            aliases: Some(aliases),
            socket_dir: socket_dir.to_path_buf(),
            guest_iommu: vmi["metadata"]["annotations"][GUEST_IOMMU_ANNOTATION] == "true",
        }
    }

    fn wants(&self, alias: Option<&str>) -> bool {
        match &self.aliases {
            None => true,
            Some(list) => alias.is_some_and(|a| list.iter().any(|l| l == a)),
        }
    }
}

/// A `<hostdev type='mdev'>` found in the domain.
#[derive(Clone, Debug, PartialEq)]
struct Mdev {
    uuid: Option<String>,
    alias: Option<String>,
}

fn xml_err(e: impl std::fmt::Display) -> Error {
    Error::Domain(e.to_string())
}

fn attr(e: &BytesStart, name: &[u8]) -> Result<Option<String>, Error> {
    for a in e.attributes() {
        let a = a.map_err(xml_err)?;
        if a.key.as_ref() == name {
            return Ok(Some(a.unescape_value().map_err(xml_err)?.into_owned()));
        }
    }
    Ok(None)
}

/// What the first pass learns.
#[derive(Default)]
struct Scan {
    mdevs: Vec<Mdev>,
    memory_backing: bool,
    commandline: bool,
    features: bool,
    ioapic: bool,
    iommu: bool,
    qemu_ns: Option<String>,
}

fn scan(xml: &str) -> Result<Scan, Error> {
    let mut r = Reader::from_str(xml);
    let mut s = Scan::default();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Mdev> = None;
    loop {
        let ev = r.read_event().map_err(xml_err)?;
        let (e, empty) = match &ev {
            Event::Start(e) => (Some(e), false),
            Event::Empty(e) => (Some(e), true),
            Event::End(_) => {
                if path.pop().as_deref() == Some(b"hostdev") {
                    if let Some(m) = current.take() {
                        s.mdevs.push(m);
                    }
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let Some(e) = e else { continue };
        let name = e.name().as_ref().to_vec();
        let parent = path.last().map(|p| p.as_slice());
        match (parent, name.as_slice()) {
            (None, b"domain") => s.qemu_ns = attr(e, b"xmlns:qemu")?,
            (Some(b"domain"), b"memoryBacking") => s.memory_backing = true,
            (Some(b"domain"), b"qemu:commandline") => s.commandline = true,
            (Some(b"domain"), b"features") => s.features = true,
            (Some(b"features"), b"ioapic") => s.ioapic = true,
            (Some(b"devices"), b"iommu") => s.iommu = true,
            (Some(b"devices"), b"hostdev") if attr(e, b"type")?.as_deref() == Some("mdev") => {
                let m = Mdev {
                    uuid: None,
                    alias: None,
                };
                if empty {
                    s.mdevs.push(m);
                } else {
                    current = Some(m);
                }
            }
            (Some(b"source"), b"address")
                if path.len() >= 2 && path[path.len() - 2] == b"hostdev" =>
            {
                if let Some(m) = current.as_mut() {
                    m.uuid = attr(e, b"uuid")?;
                }
            }
            (Some(b"hostdev"), b"alias") => {
                if let Some(m) = current.as_mut() {
                    m.alias = attr(e, b"name")?;
                }
            }
            _ => {}
        }
        if !empty {
            path.push(name);
        }
    }
    Ok(s)
}

/// The QEMU arguments for one vGPU.
fn device_args(m: &Mdev, uuid: &uuid::Uuid, socket_dir: &Path) -> Vec<String> {
    let u = uuid.hyphenated().to_string();
    let id = m
        .alias
        .clone()
        .filter(|a| {
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        })
        .unwrap_or_else(|| format!("vgpud-{}", &u[..8]));
    let dev = serde_json::json!({
        "driver": "vfio-user-pci",
        "id": id,
        "socket": {"type": "unix", "path": socket_dir.join(&u).join(SOCKET_NAME)},
    });
    vec!["-device".into(), dev.to_string()]
}

fn empty(name: &str, attrs: &[(&str, &str)]) -> Event<'static> {
    let mut e = BytesStart::new(name.to_string());
    for (k, v) in attrs {
        e.push_attribute((*k, *v));
    }
    Event::Empty(e)
}

/// Rewrite a domain: the vgpud vGPUs among its mdev host devices become
/// `vfio-user-pci` devices. Returns the new domain and the vGPUs' UUIDs;
/// a domain with none is returned unchanged.
pub fn rewrite_domain(xml: &str, how: &Rewrite) -> Result<(String, Vec<String>), Error> {
    let s = scan(xml)?;
    if s.qemu_ns.as_deref().is_some_and(|ns| ns != QEMU_NS) {
        return Err(Error::Domain(
            "the prefix qemu: is bound to another namespace".into(),
        ));
    }
    // Which of the mdev host devices (by order) go, and their arguments.
    let mut drop = Vec::new();
    let mut args = Vec::new();
    let mut uuids = Vec::new();
    for m in &s.mdevs {
        let go = how.wants(m.alias.as_deref());
        if go {
            let text = m.uuid.as_deref().unwrap_or("");
            let u = uuid::Uuid::try_parse(text)
                .map_err(|_| Error::Domain(format!("mdev host device with UUID {text:?}")))?;
            args.extend(device_args(m, &u, &how.socket_dir));
            uuids.push(u.hyphenated().to_string());
        }
        drop.push(go);
    }
    if uuids.is_empty() {
        return Ok((xml.to_string(), uuids));
    }
    let iommu = how.guest_iommu;
    let mut r = Reader::from_str(xml);
    let mut w = Writer::new(Vec::new());
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut mdev_index = 0usize;
    let mut skip_depth: Option<usize> = None;
    let mut mb = (false, false); // memoryBacking: source, access seen
    let write = |w: &mut Writer<Vec<u8>>, ev: Event| w.write_event(ev).map_err(xml_err);
    let cmdline_args = |w: &mut Writer<Vec<u8>>| -> Result<(), Error> {
        for a in &args {
            write(w, empty("qemu:arg", &[("value", a)]))?;
        }
        Ok(())
    };
    loop {
        let ev = r.read_event().map_err(xml_err)?;
        if let Some(d) = skip_depth {
            match &ev {
                Event::Start(_) => path.push(Vec::new()),
                Event::End(_) => {
                    path.pop();
                    if path.len() == d {
                        skip_depth = None;
                    }
                }
                Event::Eof => return Err(Error::Domain("unterminated hostdev".into())),
                _ => {}
            }
            continue;
        }
        match ev {
            Event::Eof => break,
            Event::Start(e) if is_mdev(&path, &e) => {
                let go = drop.get(mdev_index).copied().unwrap_or(false);
                mdev_index += 1;
                if go {
                    skip_depth = Some(path.len());
                } else {
                    write(&mut w, Event::Start(e))?;
                }
                path.push(b"hostdev".to_vec());
            }
            Event::Empty(e) if is_mdev(&path, &e) => {
                let go = drop.get(mdev_index).copied().unwrap_or(false);
                mdev_index += 1;
                if !go {
                    write(&mut w, Event::Empty(e))?;
                }
            }
            Event::Start(e) => {
                let name = e.name().as_ref().to_vec();
                if path.is_empty() && name == b"domain" && s.qemu_ns.is_none() {
                    let mut e = e.into_owned();
                    e.push_attribute(("xmlns:qemu", QEMU_NS));
                    write(&mut w, Event::Start(e))?;
                } else if path.last().map(|p| p.as_slice()) == Some(b"memoryBacking")
                    && name == b"source"
                {
                    write(
                        &mut w,
                        Event::Start(
                            BytesStart::new("source").with_attributes([("type", "memfd")]),
                        ),
                    )?;
                    mb.0 = true;
                } else if path.last().map(|p| p.as_slice()) == Some(b"memoryBacking")
                    && name == b"access"
                {
                    write(
                        &mut w,
                        Event::Start(
                            BytesStart::new("access").with_attributes([("mode", "shared")]),
                        ),
                    )?;
                    mb.1 = true;
                } else {
                    write(&mut w, Event::Start(e))?;
                }
                path.push(name);
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_vec();
                let parent = path.last().map(|p| p.as_slice());
                if parent == Some(b"memoryBacking") && name == b"source" {
                    write(&mut w, empty("source", &[("type", "memfd")]))?;
                    mb.0 = true;
                } else if parent == Some(b"memoryBacking") && name == b"access" {
                    write(&mut w, empty("access", &[("mode", "shared")]))?;
                    mb.1 = true;
                } else if path.is_empty() && name == b"domain" {
                    return Err(Error::Domain("an empty domain".into()));
                } else {
                    write(&mut w, Event::Empty(e))?;
                }
            }
            Event::End(e) => {
                let name = path.pop().unwrap_or_default();
                let parent = path.last().map(|p| p.as_slice());
                match (parent, name.as_slice()) {
                    (Some(b"domain"), b"memoryBacking") => {
                        if !mb.0 {
                            write(&mut w, empty("source", &[("type", "memfd")]))?;
                        }
                        if !mb.1 {
                            write(&mut w, empty("access", &[("mode", "shared")]))?;
                        }
                    }
                    (Some(b"domain"), b"qemu:commandline") => cmdline_args(&mut w)?,
                    (Some(b"domain"), b"features") if iommu && !s.ioapic => {
                        write(&mut w, empty("ioapic", &[("driver", "qemu")]))?;
                    }
                    (Some(b"domain"), b"devices") if iommu && !s.iommu => {
                        write(
                            &mut w,
                            Event::Start(
                                BytesStart::new("iommu").with_attributes([("model", "intel")]),
                            ),
                        )?;
                        write(&mut w, empty("driver", &[("caching_mode", "on")]))?;
                        write(&mut w, Event::End(BytesEnd::new("iommu")))?;
                    }
                    (None, b"domain") => {
                        if !s.memory_backing {
                            write(&mut w, Event::Start(BytesStart::new("memoryBacking")))?;
                            write(&mut w, empty("source", &[("type", "memfd")]))?;
                            write(&mut w, empty("access", &[("mode", "shared")]))?;
                            write(&mut w, Event::End(BytesEnd::new("memoryBacking")))?;
                        }
                        if iommu && !s.features {
                            write(&mut w, Event::Start(BytesStart::new("features")))?;
                            write(&mut w, empty("ioapic", &[("driver", "qemu")]))?;
                            write(&mut w, Event::End(BytesEnd::new("features")))?;
                        }
                        if !s.commandline {
                            write(&mut w, Event::Start(BytesStart::new("qemu:commandline")))?;
                            cmdline_args(&mut w)?;
                            write(&mut w, Event::End(BytesEnd::new("qemu:commandline")))?;
                        }
                    }
                    _ => {}
                }
                write(&mut w, Event::End(e))?;
            }
            other => write(&mut w, other)?,
        }
    }
    let out = String::from_utf8(w.into_inner()).map_err(xml_err)?;
    Ok((out, uuids))
}

/// Whether `e`, read at `path`, is a mediated host device.
fn is_mdev(path: &[Vec<u8>], e: &BytesStart) -> bool {
    path.last().map(|p| p.as_slice()) == Some(b"devices")
        && e.name().as_ref() == b"hostdev"
        && attr(e, b"type").ok().flatten().as_deref() == Some("mdev")
}

/// The domain hook service: `MutateDomain` rewrites the domain for the VMI
/// it comes with.
pub struct DomainHook {
    pub socket_dir: PathBuf,
}

impl DomainHook {
    pub fn new() -> DomainHook {
        DomainHook {
            socket_dir: PathBuf::from(CONTAINER_DIR),
        }
    }
}

impl Default for DomainHook {
    fn default() -> DomainHook {
        DomainHook::new()
    }
}

#[tonic::async_trait]
impl pb::domain_hook_service_server::DomainHookService for DomainHook {
    async fn mutate_domain(
        &self,
        req: Request<pb::MutateDomainRequest>,
    ) -> Result<Response<pb::MutateDomainResponse>, Status> {
        let r = req.into_inner();
        if r.domain_type != "libvirt" {
            return Err(Status::invalid_argument(format!(
                "domain type {:?}: only libvirt domains are known",
                r.domain_type
            )));
        }
        let vmi: Value = serde_json::from_slice(&r.vmi)
            .map_err(|e| Status::invalid_argument(format!("VMI: {e}")))?;
        let xml = std::str::from_utf8(&r.domain)
            .map_err(|e| Status::invalid_argument(format!("domain: {e}")))?;
        let how = Rewrite::for_vmi(&vmi, &self.socket_dir);
        let (domain, uuids) =
            rewrite_domain(xml, &how).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let vmi_name = vmi["metadata"]["name"].as_str().unwrap_or("?");
        tracing::info!(vmi = vmi_name, vgpus = ?uuids, "domain rewritten");
        Ok(Response::new(pb::MutateDomainResponse {
            domain: domain.into_bytes(),
        }))
    }
}
