//! The grant as stored on disk: human-readable TOML with `[granted]` and `[denied]` tables
//! keyed by capability, parsed back with errors that name the key.

use std::path::Path;

use capsule_bus::TopicPattern;
use capsule_ids::CapsuleName;
use toml::{Table, Value};

use super::decision::Grant;
use super::request::Request;
use super::store::GrantError;
use crate::grants::{EndpointGrant, FsGrant, FsRoot, HostGrant};
use crate::manifest::{IdentityLevel, ManifestDigest};

impl Grant {
    /// The grant as the TOML text stored on disk.
    pub fn to_toml(&self) -> String {
        let mut root = Table::new();
        root.insert("capsule".into(), Value::from(self.capsule.as_str()));
        root.insert("version".into(), Value::from(self.version.to_string()));
        root.insert("manifest".into(), Value::from(self.manifest.to_string()));
        for (key, items) in [("granted", &self.granted), ("denied", &self.denied)] {
            if !items.is_empty() {
                root.insert(key.into(), Value::Table(section(items)));
            }
        }
        format!(
            "# The operator's decision about capsule `{}`: what it may use beyond its own\n\
             # confinement. Change it with `capsule grant` and `capsule revoke`.\n{root}",
            self.capsule
        )
    }

    /// Parses a stored grant; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, GrantError> {
        let bad = |key: &str, reason: String| GrantError::Malformed {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let root: Table = text
            .parse::<Table>()
            .map_err(|e| bad("", e.message().trim().to_string()))?;
        for key in root.keys() {
            if !["capsule", "version", "manifest", "granted", "denied"].contains(&key.as_str()) {
                return Err(bad(key, "unknown key".into()));
            }
        }
        let text_of = |key: &str| -> Result<&str, GrantError> {
            root.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(key, "missing, or not a string".into()))
        };
        let capsule =
            CapsuleName::parse(text_of("capsule")?).map_err(|e| bad("capsule", e.to_string()))?;
        let version = semver::Version::parse(text_of("version")?)
            .map_err(|e| bad("version", format!("not a semver version ({e})")))?;
        let manifest = ManifestDigest::parse(text_of("manifest")?)
            .ok_or_else(|| bad("manifest", "expected \"sha256:<64 hex digits>\"".into()))?;
        let list = |key: &str| -> Result<Vec<Request>, GrantError> {
            match root.get(key) {
                None => Ok(Vec::new()),
                Some(Value::Table(t)) => parse_section(t, key).map_err(|(k, r)| bad(&k, r)),
                Some(_) => Err(bad(key, "expected a table".into())),
            }
        };
        let mut granted = list("granted")?;
        let mut denied = list("denied")?;
        granted.sort();
        denied.sort();
        Ok(Self {
            capsule,
            version,
            manifest,
            granted,
            denied,
        })
    }
}

/// Renders requests as a table keyed by capability name.
fn section(requests: &[Request]) -> Table {
    let mut t = Table::new();
    for r in requests {
        let item = match r {
            Request::FsRead(p) | Request::FsWrite(p) => p.display().to_string(),
            Request::Handler(p) | Request::Subscribe(p) => p.as_str().to_string(),
            Request::Net(h) => h.to_string(),
            Request::NetConnect(e) | Request::NetBind(e) => e.to_string(),
            Request::Process(c) => c.clone(),
            Request::Uplink | Request::Persistent => {
                t.insert(r.capability().to_string(), Value::Boolean(true));
                continue;
            }
            Request::Identity(l) => {
                t.insert(r.capability().to_string(), Value::from(l.as_str()));
                continue;
            }
        };
        if let Value::Array(items) = t
            .entry(r.capability().to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            items.push(Value::from(item));
        }
    }
    t
}

/// Parses a `[granted]` or `[denied]` table; errors carry (key path, reason).
fn parse_section(t: &Table, path: &str) -> Result<Vec<Request>, (String, String)> {
    let mut out = Vec::new();
    for (key, v) in t {
        let at = format!("{path}.{key}");
        let items = || -> Result<Vec<&str>, (String, String)> {
            v.as_array()
                .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| (at.clone(), "expected an array of strings".into()))
        };
        let flag = || -> Result<bool, (String, String)> {
            v.as_bool()
                .ok_or_else(|| (at.clone(), "expected a boolean".into()))
        };
        let each = |make: &dyn Fn(&str) -> Result<Request, String>| {
            items()?
                .into_iter()
                .enumerate()
                .map(|(i, s)| make(s).map_err(|r| (format!("{at}[{i}]"), r)))
                .collect::<Result<Vec<_>, _>>()
        };
        let absolute = |s: &str| match FsGrant::parse(s)? {
            FsGrant {
                root: FsRoot::Absolute(p),
                ..
            } => Ok(p),
            _ => Err(format!("`{s}` is not an absolute host directory")),
        };
        match key.as_str() {
            "fs_read" => out.extend(each(&|s| absolute(s).map(Request::FsRead))?),
            "fs_write" => out.extend(each(&|s| absolute(s).map(Request::FsWrite))?),
            "handlers" => out.extend(each(&|s| {
                TopicPattern::parse(s)
                    .map(Request::Handler)
                    .map_err(|e| e.to_string())
            })?),
            "subscriptions" => out.extend(each(&|s| {
                TopicPattern::parse(s)
                    .map(Request::Subscribe)
                    .map_err(|e| e.to_string())
            })?),
            "net" => out.extend(each(&|s| HostGrant::parse(s).map(Request::Net))?),
            "net_connect" => {
                out.extend(each(&|s| EndpointGrant::parse(s).map(Request::NetConnect))?);
            }
            "net_bind" => out.extend(each(&|s| EndpointGrant::parse(s).map(Request::NetBind))?),
            "host_process" => out.extend(each(&|s| {
                if s.is_empty() || s.contains('\0') {
                    Err("a command must be a non-empty name or path".into())
                } else {
                    Ok(Request::Process(s.to_string()))
                }
            })?),
            "uplink" => {
                if flag()? {
                    out.push(Request::Uplink);
                }
            }
            "allow_persistent" => {
                if flag()? {
                    out.push(Request::Persistent);
                }
            }
            "identity" => {
                let level = v
                    .as_str()
                    .and_then(IdentityLevel::parse)
                    .ok_or_else(|| (at.clone(), "expected resolve, link or admin".into()))?;
                out.push(Request::Identity(level));
            }
            _ => return Err((at, "unknown capability".into())),
        }
    }
    Ok(out)
}
