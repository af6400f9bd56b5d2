//! The scheduling policy file (TOML), documented in `docs/config.md`.
//!
//! ```toml
//! [default]                      # every parent not listed below
//! policy = "best_effort"
//!
//! [parent."0000:65:00.0"]        # one physical GPU, by the id the daemon uses
//! policy = "fixed_share"         # best_effort | equal_share | fixed_share | weighted
//! timeslice = "2ms"              # 1ms ..= 30ms; absent: NVIDIA's default by density
//! averaging_factor = 33          # 1 ..= 60
//! window = "66ms"                # absent: averaging_factor x timeslice
//!
//! [type."vgpu-4c"]               # every vGPU of a type
//! weight = 2
//!
//! [vgpu."aa618089-8b16-4d01-a136-25a0f3c73123"]   # one vGPU, by mdev UUID
//! cap = 0.25
//! reservation = 0.1
//! class = "latency"              # normal | latency
//! ```
//!
//! The policy is one part of vgpud's configuration file; the type catalogue
//! (`[catalog]`, `mdev_types::Catalog`) is the other. The file is parsed once, into a
//! [`Document`] that keeps the position of every key and value; [`Config::from_document`]
//! takes the policy from it and `mdev_types::Catalog::from_document` the catalogue, and
//! both report errors through it.
//!
//! Every error names the file, the 1-based line and column, and the dotted key. Loading
//! never panics, whatever the input.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::policy::{
    LatencyClass, ParentPolicy, PolicyKind, VgpuParams, MAX_AVERAGING_FACTOR, MAX_TIMESLICE,
    MAX_WEIGHT, MIN_TIMESLICE,
};
use crate::{Error, Nanos, Result};

/// Where a value came from, for errors found after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub line: usize,
    pub column: usize,
    pub key: String,
}

/// The policy of one parent (or of `[default]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ParentConfig {
    pub policy: ParentPolicy,
}

/// Per-type or per-vGPU overrides; absent fields fall through (vGPU → type → default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VgpuOverride {
    pub weight: Option<u32>,
    pub cap: Option<f64>,
    pub reservation: Option<f64>,
    pub class: Option<LatencyClass>,
    /// How long a semaphore acquire of the vGPU may wait before its channel
    /// faults (`SEMAPHORE_TIMEOUT`); absent: the device's default, 10 s.
    pub acquire_timeout: Option<Nanos>,
    /// Where `reservation` was set (to report a reservation above the cap).
    pub reservation_origin: Option<Origin>,
}

/// A loaded policy file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file name used in errors.
    pub file: String,
    /// `[default]`: parents not listed.
    pub default: ParentConfig,
    /// `[parent."<id>"]`.
    pub parents: BTreeMap<String, ParentConfig>,
    /// `[type."<name>"]`.
    pub types: BTreeMap<String, VgpuOverride>,
    /// `[vgpu."<uuid>"]`, UUIDs lower-cased.
    pub vgpus: BTreeMap<String, VgpuOverride>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: String::new(),
            default: ParentConfig {
                policy: ParentPolicy::default(),
            },
            parents: BTreeMap::new(),
            types: BTreeMap::new(),
            vgpus: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads and parses a policy file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Config> {
        let (text, file) = read(path.as_ref())?;
        Config::parse(&text, &file)
    }

    /// Parses policy-file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config> {
        Config::from_document(&Document::parse(text, file)?)
    }

    /// The policy of a parsed configuration file: every section but `[catalog]` and
    /// `[sockets]`.
    pub fn from_document(doc: &Document<'_>) -> Result<Config> {
        let mut cfg = Config {
            file: doc.file.clone(),
            ..Config::default()
        };
        for (k, v) in doc.root.iter() {
            let name = k.get_ref().as_ref();
            match name {
                "default" => cfg.default = doc.parent(v, "default")?,
                "parent" | "type" | "vgpu" => {
                    let t = doc.table(v, name)?;
                    for (ik, iv) in t.iter() {
                        let id = ik.get_ref().as_ref();
                        let path = format!("{name}.{}", quote(id));
                        if id.is_empty() {
                            return Err(doc.error(ik.span(), &path, "empty name"));
                        }
                        match name {
                            "parent" => {
                                cfg.parents.insert(id.to_string(), doc.parent(iv, &path)?);
                            }
                            "type" => {
                                cfg.types.insert(id.to_string(), doc.vgpu(iv, &path)?);
                            }
                            _ => {
                                if !is_uuid(id) {
                                    return Err(doc.error(
                                        ik.span(),
                                        &path,
                                        format!("'{id}' is not a UUID"),
                                    ));
                                }
                                let lc = id.to_ascii_lowercase();
                                if cfg.vgpus.contains_key(&lc) {
                                    return Err(doc.error(ik.span(), &path, "UUID listed twice"));
                                }
                                cfg.vgpus.insert(lc, doc.vgpu(iv, &path)?);
                            }
                        }
                    }
                }
                // The type catalogue's section (mdev_types::Catalog::from_document),
                // the sockets' ownership (mdev_types::SocketConfig::from_document) and
                // the workers' sandbox (mdev_types::WorkerConfig::from_document).
                CATALOG | SOCKETS | WORKERS => {}
                _ => return Err(doc.error(
                    k.span(),
                    name,
                    "unknown section (expected default, parent, type, vgpu, catalog, sockets or workers)",
                )),
            }
        }
        Ok(cfg)
    }

    /// The policy of a parent: its own section, else `[default]`.
    pub fn parent_policy(&self, parent: &str) -> ParentPolicy {
        self.parents.get(parent).unwrap_or(&self.default).policy
    }

    /// How long a semaphore acquire of one vGPU may wait (`acquire_timeout`,
    /// `[vgpu]` over `[type]`); `None`: the device's default.
    pub fn acquire_timeout(&self, uuid: &str, type_name: &str) -> Option<Nanos> {
        [
            self.vgpus.get(&uuid.to_ascii_lowercase()),
            self.types.get(type_name),
        ]
        .into_iter()
        .flatten()
        .find_map(|o| o.acquire_timeout)
    }

    /// The parameters of one vGPU: `[vgpu]` over `[type]` over built-in defaults
    /// (weight 1, no cap, no reservation, normal class). `max_instances` comes from
    /// the type catalog and gives `fixed_share = 1/max_instances`.
    pub fn vgpu_params(
        &self,
        uuid: &str,
        type_name: &str,
        max_instances: u32,
    ) -> Result<VgpuParams> {
        let mut p = VgpuParams::for_type(max_instances);
        let mut resv_origin = None;
        for o in [
            self.types.get(type_name),
            self.vgpus.get(&uuid.to_ascii_lowercase()),
        ]
        .into_iter()
        .flatten()
        {
            p.weight = o.weight.unwrap_or(p.weight);
            p.cap = o.cap.or(p.cap);
            if o.reservation.is_some() {
                p.reservation = o.reservation;
                resv_origin = o.reservation_origin.clone();
            }
            p.class = o.class.unwrap_or(p.class);
        }
        if let (Some(c), Some(r)) = (p.cap, p.reservation) {
            if r > c {
                let o = resv_origin.unwrap_or(Origin {
                    line: 0,
                    column: 0,
                    key: "reservation".into(),
                });
                return Err(Error::Config {
                    file: self.file.clone(),
                    line: o.line,
                    column: o.column,
                    key: o.key,
                    message: format!(
                        "reservation {r} is above the cap {c} of vGPU {uuid} (type {type_name})"
                    ),
                });
            }
        }
        p.validate()?;
        Ok(p)
    }
}

/// The name of the type catalogue's section.
pub const CATALOG: &str = "catalog";
/// The name of the section with the vGPU sockets' owner, group and mode.
pub const SOCKETS: &str = "sockets";
/// The name of the section with the GPU workers' user, group and sandbox.
pub const WORKERS: &str = "workers";

/// Reads a configuration file: its text and its name for errors.
pub fn read(path: &std::path::Path) -> Result<(String, String)> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(source) => Err(Error::Io { file, source }),
    }
}

/// vgpud's configuration file, parsed once: the TOML tree with the position of every
/// key and value, from which the policy ([`Config::from_document`]) and the type
/// catalogue (`mdev_types::Catalog::from_document`) are taken. Its accessors check a
/// value's type and give errors as `file:line:column: key: message`.
pub struct Document<'a> {
    text: &'a str,
    file: String,
    root: DeTable<'a>,
}

/// A value in a [`Document`], with its position.
pub type Val<'i> = Spanned<DeValue<'i>>;

impl<'a> Document<'a> {
    /// Parses `text`; `file` names it in errors (a syntax error's key is `-`).
    pub fn parse(text: &'a str, file: &str) -> Result<Document<'a>> {
        let mut doc = Document {
            text,
            file: file.to_string(),
            root: DeTable::new(),
        };
        let root = DeTable::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            doc.error(span, "-", e.message().trim())
        })?;
        doc.root = root.into_inner();
        Ok(doc)
    }

    /// The file's name, as errors give it.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// A top-level section (`catalog`), if the file has it.
    pub fn section(&self, name: &str) -> Option<&Val<'a>> {
        self.root.get(name)
    }

    /// Where `span` is, for an error found later.
    pub fn origin(&self, span: &Range<usize>, key: &str) -> Origin {
        let start = span.start.min(self.text.len());
        // back up to a char boundary
        let mut s = start;
        while s > 0 && !self.text.is_char_boundary(s) {
            s -= 1;
        }
        let before = &self.text[..s];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Origin {
            line,
            column,
            key: key.to_string(),
        }
    }

    /// An error at `span`, for the dotted `key`.
    pub fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> Error {
        let o = self.origin(&span, key);
        let message = message.into();
        Error::Config {
            file: self.file.to_string(),
            line: o.line,
            column: o.column,
            key: o.key,
            message,
        }
    }

    /// `v` as a table.
    pub fn table<'v, 'i>(&self, v: &'v Val<'i>, key: &str) -> Result<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Ok(t),
            other => Err(self.error(
                v.span(),
                key,
                format!("expected a table, found {}", kind(other)),
            )),
        }
    }

    fn parent(&self, v: &Val<'_>, path: &str) -> Result<ParentConfig> {
        let t = self.table(v, path)?;
        let mut policy = ParentPolicy::default();
        let mut window_span = None;
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("{path}.{}", quote(name));
            match name {
                "policy" => {
                    let s = self.string(v, &key)?;
                    policy.kind = PolicyKind::from_name(s).ok_or_else(|| {
                        self.error(
                            v.span(),
                            &key,
                            format!("unknown policy '{s}' (expected best_effort, equal_share, fixed_share or weighted)"),
                        )
                    })?;
                }
                "timeslice" => {
                    let d = self.duration(v, &key)?;
                    if !(MIN_TIMESLICE..=MAX_TIMESLICE).contains(&d) {
                        return Err(self.error(
                            v.span(),
                            &key,
                            format!("{} is outside 1ms ..= 30ms", fmt_ns(d)),
                        ));
                    }
                    policy.timeslice = Some(d);
                }
                "window" => {
                    let d = self.duration(v, &key)?;
                    if !(MIN_TIMESLICE..=3_600 * crate::SEC).contains(&d) {
                        return Err(self.error(
                            v.span(),
                            &key,
                            format!("{} is outside 1ms ..= 1h", fmt_ns(d)),
                        ));
                    }
                    policy.window = Some(d);
                    window_span = Some((v.span(), key));
                }
                "averaging_factor" => {
                    let n = self.integer(v, &key)?;
                    if !(1..=MAX_AVERAGING_FACTOR as i64).contains(&n) {
                        return Err(self.error(v.span(), &key, format!("{n} is outside 1 ..= 60")));
                    }
                    policy.averaging_factor = n as u32;
                }
                _ => {
                    return Err(self.error(
                        k.span(),
                        &key,
                        "unknown key (expected policy, timeslice, window or averaging_factor)",
                    ))
                }
            }
        }
        if let (Some(w), Some(ts), Some((span, key))) =
            (policy.window, policy.timeslice, window_span)
        {
            if w < ts {
                return Err(self.error(
                    span,
                    &key,
                    format!(
                        "window {} is shorter than the timeslice {}",
                        fmt_ns(w),
                        fmt_ns(ts)
                    ),
                ));
            }
        }
        Ok(ParentConfig { policy })
    }

    fn vgpu(&self, v: &Val<'_>, path: &str) -> Result<VgpuOverride> {
        let t = self.table(v, path)?;
        let mut o = VgpuOverride::default();
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("{path}.{}", quote(name));
            match name {
                "weight" => {
                    let n = self.integer(v, &key)?;
                    if !(1..=MAX_WEIGHT as i64).contains(&n) {
                        return Err(self.error(
                            v.span(),
                            &key,
                            format!("{n} is outside 1 ..= {MAX_WEIGHT}"),
                        ));
                    }
                    o.weight = Some(n as u32);
                }
                "cap" | "reservation" => {
                    let f = self.fraction(v, &key)?;
                    if name == "cap" {
                        o.cap = Some(f);
                    } else {
                        o.reservation = Some(f);
                        o.reservation_origin = Some(self.origin(&v.span(), &key));
                    }
                }
                "acquire_timeout" => {
                    let d = self.duration(v, &key)?;
                    if !(crate::MS..=3_600 * crate::SEC).contains(&d) {
                        return Err(self.error(
                            v.span(),
                            &key,
                            format!("{} is outside 1ms ..= 1h", fmt_ns(d)),
                        ));
                    }
                    o.acquire_timeout = Some(d);
                }
                "class" => {
                    o.class = Some(match self.string(v, &key)? {
                        "normal" => LatencyClass::Normal,
                        "latency" => LatencyClass::Latency,
                        s => {
                            return Err(self.error(
                                v.span(),
                                &key,
                                format!("unknown class '{s}' (expected normal or latency)"),
                            ))
                        }
                    });
                }
                _ => {
                    return Err(self.error(
                        k.span(),
                        &key,
                        "unknown key (expected weight, cap, reservation, class or acquire_timeout)",
                    ))
                }
            }
        }
        if let (Some(c), Some(r), Some(origin)) = (o.cap, o.reservation, &o.reservation_origin) {
            if r > c {
                return Err(Error::Config {
                    file: self.file.to_string(),
                    line: origin.line,
                    column: origin.column,
                    key: origin.key.clone(),
                    message: format!("reservation {r} is above the cap {c}"),
                });
            }
        }
        Ok(o)
    }

    /// `v` as a string.
    pub fn string<'v>(&self, v: &'v Val<'_>, key: &str) -> Result<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            other => Err(self.error(
                v.span(),
                key,
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    /// `v` as an integer (any radix TOML allows).
    pub fn integer(&self, v: &Val<'_>, key: &str) -> Result<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => {
                let digits: String = i.as_str().chars().filter(|&c| c != '_').collect();
                i64::from_str_radix(&digits, i.radix()).map_err(|_| {
                    self.error(
                        v.span(),
                        key,
                        format!("integer {} out of range", i.as_str()),
                    )
                })
            }
            other => Err(self.error(
                v.span(),
                key,
                format!("expected an integer, found {}", kind(other)),
            )),
        }
    }

    /// A share: a float or integer in (0, 1], or a percentage string such as "25%".
    fn fraction(&self, v: &Val<'_>, key: &str) -> Result<f64> {
        let f = match v.get_ref() {
            DeValue::Float(f) => {
                let s: String = f.as_str().chars().filter(|&c| c != '_').collect();
                s.parse::<f64>()
                    .map_err(|_| self.error(v.span(), key, format!("bad number {}", f.as_str())))?
            }
            DeValue::Integer(_) => self.integer(v, key)? as f64,
            DeValue::String(s) => {
                match s.trim().strip_suffix('%') {
                    Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0).map_err(|_| {
                        self.error(v.span(), key, format!("'{s}' is not a percentage"))
                    })?,
                    None => {
                        return Err(self.error(
                            v.span(),
                            key,
                            format!("'{s}' is not a share (use 0.25 or \"25%\")"),
                        ))
                    }
                }
            }
            other => {
                return Err(self.error(
                    v.span(),
                    key,
                    format!("expected a share in (0, 1], found {}", kind(other)),
                ))
            }
        };
        if !(f > 0.0 && f <= 1.0) {
            return Err(self.error(v.span(), key, format!("share {f} is outside (0, 1]")));
        }
        Ok(f)
    }

    /// A duration string: a number and a unit (`ns`, `us`, `ms`, `s`), e.g. "1.5ms".
    pub fn duration(&self, v: &Val<'_>, key: &str) -> Result<Nanos> {
        let s = match v.get_ref() {
            DeValue::String(s) => s.as_ref(),
            DeValue::Integer(_) | DeValue::Float(_) => {
                return Err(self.error(
                    v.span(),
                    key,
                    "a duration needs a unit, e.g. \"2ms\" or \"500us\"",
                ))
            }
            other => {
                return Err(self.error(
                    v.span(),
                    key,
                    format!("expected a duration string, found {}", kind(other)),
                ))
            }
        };
        parse_duration(s).ok_or_else(|| {
            self.error(
                v.span(),
                key,
                format!("'{s}' is not a duration (a number and ns, us, ms or s)"),
            )
        })
    }
}

/// Parses "2ms", "500us", "1.5 ms", "1s", "250000ns".
pub fn parse_duration(s: &str) -> Option<Nanos> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?;
    let (num, unit) = s.split_at(split);
    let mult: f64 = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let n: f64 = num.trim().parse().ok()?;
    let ns = n * mult;
    if !ns.is_finite() || !(0.0..=1e18).contains(&ns) {
        return None;
    }
    Some(ns.round() as Nanos)
}

fn fmt_ns(ns: Nanos) -> String {
    if (ns / 1_000_000) * 1_000_000 == ns {
        format!("{}ms", ns / 1_000_000)
    } else if (ns / 1_000) * 1_000 == ns {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn quote(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MS;

    const GOOD: &str = r#"
[default]
policy = "best_effort"

[parent."0000:65:00.0"]
policy = "fixed_share"
timeslice = "3ms"
averaging_factor = 10

[parent.gpu1]
policy = "weighted"
window = "100ms"

[type."vgpu-4c"]
weight = 2
cap = "50%"

[vgpu."AA618089-8b16-4d01-a136-25a0f3c73123"]
reservation = 0.25
class = "latency"
"#;

    #[test]
    fn parses_and_resolves() {
        let c = Config::parse(GOOD, "sched.toml").unwrap();
        let p = c.parent_policy("0000:65:00.0");
        assert_eq!(p.kind, PolicyKind::FixedShare);
        assert_eq!(p.timeslice, Some(3 * MS));
        assert_eq!(p.averaging_factor, 10);
        assert_eq!(c.parent_policy("gpu1").window, Some(100 * MS));
        assert_eq!(c.parent_policy("other").kind, PolicyKind::BestEffort);
        let v = c
            .vgpu_params("aa618089-8b16-4d01-a136-25a0f3c73123", "vgpu-4c", 4)
            .unwrap();
        assert_eq!(v.weight, 2);
        assert_eq!(v.cap, Some(0.5));
        assert_eq!(v.reservation, Some(0.25));
        assert_eq!(v.class, LatencyClass::Latency);
        assert_eq!(v.fixed_share, 0.25);
        let d = c
            .vgpu_params("00000000-0000-0000-0000-000000000000", "other", 2)
            .unwrap();
        assert_eq!(d, VgpuParams::for_type(2));
    }

    fn err(text: &str) -> (usize, usize, String, String) {
        match Config::parse(text, "f.toml") {
            Err(Error::Config {
                file,
                line,
                column,
                key,
                message,
            }) => {
                assert_eq!(file, "f.toml");
                (line, column, key, message)
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        let (l, c, k, m) = err("[parent.a]\npolicy = \"fixed_share\"\ntimeslice = \"31ms\"\n");
        assert_eq!((l, c, k.as_str()), (3, 13, "parent.a.timeslice"), "{m}");
        let (l, _, k, _) = err("[parent.a]\npolicy = \"fair\"\n");
        assert_eq!((l, k.as_str()), (2, "parent.a.policy"));
        let (l, c, k, _) = err("\n[type.t]\nwieght = 3\n");
        assert_eq!((l, c, k.as_str()), (3, 1, "type.t.wieght"));
        let (l, _, k, _) = err("[vgpu.\"not-a-uuid\"]\nweight = 1\n");
        assert_eq!((l, k.as_str()), (1, "vgpu.not-a-uuid"));
        let (l, _, k, m) = err("[type.t]\ncap = 0.2\nreservation = 0.3\n");
        assert_eq!((l, k.as_str()), (3, "type.t.reservation"), "{m}");
        let (l, _, k, _) = err("[parent.a]\ntimeslice = 2\n");
        assert_eq!((l, k.as_str()), (2, "parent.a.timeslice"));
        let (l, _, k, _) = err("[parent.a]\npolicy = \n");
        assert_eq!((l, k.as_str()), (2, "-"));
        let (l, _, k, _) = err("[parent.a]\naveraging_factor = 61\n");
        assert_eq!((l, k.as_str()), (2, "parent.a.averaging_factor"));
        let (l, _, k, _) = err("[vgpu.\"aa618089-8b16-4d01-a136-25a0f3c73123\"]\ncap = 1.5\n");
        assert_eq!(
            (l, k.as_str()),
            (2, "vgpu.aa618089-8b16-4d01-a136-25a0f3c73123.cap")
        );
        let (l, _, k, _) = err("[sched]\n");
        assert_eq!((l, k.as_str()), (1, "sched"));
    }

    #[test]
    fn merged_reservation_above_cap_is_reported_at_its_line() {
        let c = Config::parse(
            "[type.t]\ncap = 0.2\n[vgpu.\"aa618089-8b16-4d01-a136-25a0f3c73123\"]\nreservation = 0.5\n",
            "f.toml",
        )
        .unwrap();
        match c.vgpu_params("aa618089-8b16-4d01-a136-25a0f3c73123", "t", 4) {
            Err(Error::Config { line: 4, key, .. }) => assert!(key.ends_with(".reservation")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn acquire_timeout_per_type_and_vgpu() {
        let c = Config::parse(
            "[type.\"t\"]\nacquire_timeout = \"250ms\"\n\n[vgpu.\"AA618089-8B16-4D01-A136-25A0F3C73123\"]\nacquire_timeout = \"2s\"\n",
            "f.toml",
        )
        .unwrap();
        let u = "aa618089-8b16-4d01-a136-25a0f3c73123";
        assert_eq!(c.acquire_timeout(u, "t"), Some(2 * crate::SEC));
        assert_eq!(c.acquire_timeout("other", "t"), Some(250 * crate::MS));
        assert_eq!(c.acquire_timeout("other", "u"), None);
        let (l, _, k, m) = err("[type.t]\nacquire_timeout = \"7200s\"\n");
        assert_eq!((l, k.as_str()), (2, "type.t.acquire_timeout"));
        assert!(m.contains("outside 1ms ..= 1h"), "{m}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2ms"), Some(2 * MS));
        assert_eq!(parse_duration("1.5 ms"), Some(1_500_000));
        assert_eq!(parse_duration("500us"), Some(500_000));
        assert_eq!(parse_duration("1s"), Some(1_000_000_000));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("-1ms"), None);
        assert_eq!(parse_duration("1e300s"), None);
        assert_eq!(parse_duration("NaNms"), None);
    }
}
