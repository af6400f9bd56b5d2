//! `[workers]`: who the worker processes of a GPU parent run as, and
//! whether they are confined (docs/config.md, docs/reliability.md). Names
//! are resolved by the daemon.

use scheduler::config::{Document, Val, WORKERS};
use scheduler::Result;
use toml::de::DeValue;

use crate::sockets::{origin_text, principal, Principal, Setting};

/// The user workers run as unless `[workers] user` says otherwise (created
/// with the service: `dist/vgpud.sysusers`); where it does not exist, the
/// daemon falls back to [`FALLBACK_ID`].
pub const DEFAULT_USER: &str = "vgpud-worker";
/// `nobody`/`nogroup`: the user and group of a daemon whose system has no
/// [`DEFAULT_USER`] and whose file names none.
pub const FALLBACK_ID: u32 = 65534;

/// `[workers]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Absent: [`DEFAULT_USER`], else [`FALLBACK_ID`].
    pub user: Option<Setting<Principal>>,
    /// Absent: the user's primary group (or its id, for an id with no
    /// user entry).
    pub group: Option<Setting<Principal>>,
    /// `false` runs workers with the daemon's privileges (to measure what
    /// the sandbox costs); never in production.
    pub sandbox: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            user: None,
            group: None,
            sandbox: true,
        }
    }
}

impl WorkerConfig {
    /// `[workers]` of a parsed configuration file (the default when absent).
    pub fn from_document(doc: &Document<'_>) -> Result<WorkerConfig> {
        let mut out = WorkerConfig::default();
        let Some(section) = doc.section(WORKERS) else {
            return Ok(out);
        };
        let t = doc.table(section, WORKERS)?;
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("{WORKERS}.{name}");
            let origin = origin_text(doc, &doc.origin(&v.span(), &key));
            match name {
                "user" => {
                    out.user = Some(Setting {
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
                "sandbox" => out.sandbox = boolean(doc, v, &key)?,
                _ => {
                    return Err(doc.error(
                        k.span(),
                        &key,
                        "unknown key (expected user, group or sandbox)",
                    ))
                }
            }
        }
        Ok(out)
    }
}

fn boolean(doc: &Document<'_>, v: &Val<'_>, key: &str) -> Result<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(doc.error(
            v.span(),
            key,
            format!("expected true or false, found {}", other.type_str()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkerConfig> {
        WorkerConfig::from_document(&Document::parse(text, "x.toml")?)
    }

    #[test]
    fn workers_section() {
        assert_eq!(parse("").unwrap(), WorkerConfig::default());
        let w = parse("[workers]\nuser = \"gpu-jail\"\ngroup = 4242\nsandbox = false\n").unwrap();
        assert_eq!(w.user.unwrap().value, Principal::Name("gpu-jail".into()));
        let g = w.group.unwrap();
        assert_eq!(
            (g.value, g.origin.as_str()),
            (Principal::Id(4242), "x.toml:3:9: workers.group")
        );
        assert!(!w.sandbox);
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(e("[workers]\nsandbox = \"no\"\n").contains("expected true or false"));
        assert!(
            e("[workers]\nusr = \"x\"\n").contains("unknown key (expected user, group or sandbox)")
        );
        assert!(e("[workers]\nuser = \"\"\n").contains("empty name"));
    }
}
