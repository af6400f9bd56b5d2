//! `[sockets]`: the owner, group and mode of each vGPU's vfio-user socket
//! (docs/config.md). QEMU under libvirt runs as an unprivileged user (Debian:
//! `libvirt-qemu`) and must be able to connect to the socket; the daemon
//! applies these at every create. Names are resolved by the daemon, which
//! reports an unknown one with the position kept here.

use scheduler::config::{Document, Origin, Val, SOCKETS};
use scheduler::{Error, Result};
use toml::de::DeValue;

/// A user or a group: a name, or a numeric id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Name(String),
    Id(u32),
}

impl Principal {
    /// A command-line value: a name, or a number when it is all digits.
    pub fn from_arg(s: &str) -> Option<Principal> {
        if s.is_empty() {
            None
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok().map(Principal::Id)
        } else {
            Some(Principal::Name(s.to_string()))
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Name(n) => write!(f, "'{n}'"),
            Principal::Id(i) => write!(f, "{i}"),
        }
    }
}

/// One value and where it was set: `file:line:column: key` for the
/// configuration file, or the command-line option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    /// `x.toml:3:9: sockets.group`, or `--socket-group`.
    pub origin: String,
}

impl<T> Setting<T> {
    /// An error about this value, at its origin.
    pub fn error(&self, message: impl std::fmt::Display) -> String {
        format!("{}: {message}", self.origin)
    }
}

/// `[sockets]`; every key is optional (absent: the daemon's own user and
/// group, and the mode its umask gives).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketConfig {
    pub owner: Option<Setting<Principal>>,
    pub group: Option<Setting<Principal>>,
    /// Permission bits, `0 ..= 0o777`.
    pub mode: Option<Setting<u32>>,
}

impl SocketConfig {
    /// `[sockets]` of a parsed configuration file (the default when absent).
    pub fn from_document(doc: &Document<'_>) -> Result<SocketConfig> {
        let mut out = SocketConfig::default();
        let Some(section) = doc.section(SOCKETS) else {
            return Ok(out);
        };
        let t = doc.table(section, SOCKETS)?;
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("{SOCKETS}.{name}");
            let origin = origin_text(doc, &doc.origin(&v.span(), &key));
            match name {
                "owner" => {
                    out.owner = Some(Setting {
                        value: principal(doc, v, &key)?,
                        origin,
                    })
                }
                "group" => {
                    out.group = Some(Setting {
                        value: principal(doc, v, &key)?,
                        origin,
                    })
                }
                "mode" => {
                    out.mode = Some(Setting {
                        value: mode(doc, v, &key)?,
                        origin,
                    })
                }
                _ => {
                    return Err(doc.error(
                        k.span(),
                        &key,
                        "unknown key (expected owner, group or mode)",
                    ))
                }
            }
        }
        Ok(out)
    }

    /// These settings with each one `other` has replacing this one's (the
    /// command line over the file).
    pub fn overridden_by(&self, other: &SocketConfig) -> SocketConfig {
        SocketConfig {
            owner: other.owner.clone().or_else(|| self.owner.clone()),
            group: other.group.clone().or_else(|| self.group.clone()),
            mode: other.mode.clone().or_else(|| self.mode.clone()),
        }
    }
}

pub(crate) fn origin_text(doc: &Document<'_>, o: &Origin) -> String {
    format!("{}:{}:{}: {}", doc.file(), o.line, o.column, o.key)
}

/// A user or group: a string is a name, an integer an id.
pub(crate) fn principal(doc: &Document<'_>, v: &Val<'_>, key: &str) -> Result<Principal> {
    match v.get_ref() {
        DeValue::String(s) if s.is_empty() => Err(doc.error(v.span(), key, "empty name")),
        DeValue::String(s) => Ok(Principal::Name(s.to_string())),
        DeValue::Integer(_) => {
            let i = doc.integer(v, key)?;
            u32::try_from(i)
                .ok()
                .filter(|&i| i != u32::MAX)
                .map(Principal::Id)
                .ok_or_else(|| doc.error(v.span(), key, format!("id {i} is out of range")))
        }
        _ => Err(doc.error(
            v.span(),
            key,
            "expected a name (a string) or a numeric id (an integer)",
        )),
    }
}

/// Permission bits written in octal: `"0660"`, `"660"` or `0o660`. A decimal
/// integer is refused: `660` would be a different mode from the one meant.
fn mode(doc: &Document<'_>, v: &Val<'_>, key: &str) -> Result<u32> {
    let bad = |m: String| -> Error { doc.error(v.span(), key, m) };
    match v.get_ref() {
        DeValue::String(s) => parse_mode(s).ok_or_else(|| {
            bad(format!(
                "'{s}' is not a mode (octal permission bits, 0 ..= 0777, e.g. \"0660\")"
            ))
        }),
        DeValue::Integer(i) if i.radix() == 8 => {
            let n = doc.integer(v, key)?;
            u32::try_from(n)
                .ok()
                .filter(|&m| m <= 0o777)
                .ok_or_else(|| bad(format!("{:#o} is outside 0 ..= 0o777", n)))
        }
        DeValue::Integer(i) => Err(bad(format!(
            "{} is not written in octal: write \"0{}\" or 0o{}",
            i.as_str(),
            i.as_str(),
            i.as_str()
        ))),
        _ => Err(bad(
            "expected a mode: a string such as \"0660\", or 0o660".into()
        )),
    }
}

/// Octal permission bits, `0 ..= 0o777`: `"0660"`, `"660"`, `"0o660"`.
pub fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|&m| m <= 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SocketConfig> {
        SocketConfig::from_document(&Document::parse(text, "x.toml")?)
    }

    #[test]
    fn sockets_section() {
        let s = parse("[sockets]\nowner = \"root\"\ngroup = \"libvirt-qemu\"\nmode = \"0660\"\n")
            .unwrap();
        assert_eq!(s.owner.unwrap().value, Principal::Name("root".into()));
        let g = s.group.unwrap();
        assert_eq!(g.value, Principal::Name("libvirt-qemu".into()));
        assert_eq!(g.origin, "x.toml:3:9: sockets.group");
        assert_eq!(s.mode.unwrap().value, 0o660);
        let s = parse("[sockets]\ngroup = 64055\nmode = 0o640\n").unwrap();
        assert_eq!(s.group.unwrap().value, Principal::Id(64055));
        assert_eq!(s.mode.unwrap().value, 0o640);
        assert_eq!(parse("").unwrap(), SocketConfig::default());
    }

    #[test]
    fn sockets_errors_name_the_line() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert_eq!(
            e("[sockets]\nmode = 660\n"),
            "x.toml:2:8: sockets.mode: 660 is not written in octal: write \"0660\" or 0o660"
        );
        assert!(e("[sockets]\nmode = \"0999\"\n").starts_with("x.toml:2:8: sockets.mode: '0999'"));
        assert!(e("[sockets]\nmode = 0o1777\n").contains("outside"));
        assert!(e("[sockets]\ngruop = \"kvm\"\n")
            .starts_with("x.toml:2:1: sockets.gruop: unknown key (expected owner, group or mode)"));
        assert!(e("[sockets]\nowner = \"\"\n").contains("empty name"));
        assert!(e("[sockets]\nowner = -1\n").contains("out of range"));
        assert!(e("[sockets]\nowner = true\n").contains("expected a name"));
    }

    #[test]
    fn modes_and_overrides() {
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("660"), Some(0o660));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("0"), Some(0));
        for bad in ["", "8", "01000", "0x1ff", "rw", "0o", "00660"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
        assert_eq!(Principal::from_arg("64055"), Some(Principal::Id(64055)));
        assert_eq!(
            Principal::from_arg("kvm"),
            Some(Principal::Name("kvm".into()))
        );
        assert_eq!(Principal::from_arg(""), None);
        let file = parse("[sockets]\ngroup = \"kvm\"\nmode = \"0660\"\n").unwrap();
        let cli = SocketConfig {
            group: Some(Setting {
                value: Principal::Name("libvirt-qemu".into()),
                origin: "--socket-group".into(),
            }),
            ..SocketConfig::default()
        };
        let m = file.overridden_by(&cli);
        assert_eq!(m.group.unwrap().origin, "--socket-group");
        assert_eq!(m.mode.unwrap().value, 0o660);
    }
}
