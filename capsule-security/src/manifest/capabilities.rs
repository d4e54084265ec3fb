//! The `[capabilities]` table: every capability is fail-closed (absent = not held), and a
//! name this host does not know is an error naming it.

use toml::Table;

use super::reader::{ManifestError, Reader};
use crate::grants::{EndpointGrant, FsGrant, HostGrant};
use crate::process_grant::ProcessGrant;

/// Identity operations, ordered: a higher level implies the lower ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityLevel {
    /// Read-only lookups.
    Resolve,
    /// Create and delete links.
    Link,
    /// Create users.
    Admin,
}

impl IdentityLevel {
    /// Parses `resolve`, `link` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "resolve" => Some(Self::Resolve),
            "link" => Some(Self::Link),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The level as the manifest writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Link => "link",
            Self::Admin => "admin",
        }
    }
}

/// Capability names that hold a list of grants.
const LIST_CAPS: &[&str] = &[
    "net",
    "net_connect",
    "net_bind",
    "fs_read",
    "fs_write",
    "host_process",
    "kv",
];

/// Capability names that are switched on by `true`.
const FLAG_CAPS: &[&str] = &[
    "uplink",
    "allow_persistent",
    "allow_prompt_injection",
    "bind_workers",
];

/// Every capability name this host knows, sorted.
pub const KNOWN_CAPABILITIES: &[&str] = &[
    "allow_persistent",
    "allow_prompt_injection",
    "bind_workers",
    "fs_read",
    "fs_write",
    "host_process",
    "identity",
    "kv",
    "net",
    "net_bind",
    "net_connect",
    "uplink",
];

/// What a capsule's manifest asks for. Grants of principals (profiles) are separate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// May register uplinks and publish on behalf of external users (`publish-as`).
    pub uplink: bool,
    /// Outbound HTTP host allowlist.
    pub net: Vec<String>,
    /// Outbound TCP `host:port` allowlist.
    pub net_connect: Vec<String>,
    /// Listener addresses.
    pub net_bind: Vec<String>,
    /// Readable path grants.
    pub fs_read: Vec<String>,
    /// Writable path grants.
    pub fs_write: Vec<String>,
    /// Host commands the capsule may run.
    pub host_process: Vec<String>,
    /// Declared KV scopes (informational: KV is always namespaced per capsule and principal).
    pub kv: Vec<String>,
    /// Identity operations, if any.
    pub identity: Option<IdentityLevel>,
    /// May keep background processes across restarts.
    pub allow_persistent: bool,
    /// May shape prompts of other capsules (informational here).
    pub allow_prompt_injection: bool,
    /// May bind worker pools (informational here).
    pub bind_workers: bool,
}

impl Capabilities {
    pub(crate) fn parse(r: &Reader<'_>, t: &Table, path: &str) -> Result<Self, ManifestError> {
        let mut caps = Self::default();
        for (name, v) in t {
            r.keep(caps.parse_one(r, path, name, v));
        }
        Ok(caps)
    }

    /// Reads one capability into `self`.
    fn parse_one(
        &mut self,
        r: &Reader<'_>,
        path: &str,
        name: &str,
        v: &toml::Value,
    ) -> Result<(), ManifestError> {
        let caps = self;
        {
            let key = format!("{path}.{name}");
            if LIST_CAPS.contains(&name) {
                let list = r.strings(v, &key)?;
                for (i, item) in list.iter().enumerate() {
                    let checked = match name {
                        "fs_read" | "fs_write" => FsGrant::parse(item).map(drop),
                        "net" => HostGrant::parse(item).map(drop),
                        "net_connect" | "net_bind" => EndpointGrant::parse(item).map(drop),
                        "host_process" => ProcessGrant::parse(item).map(drop),
                        _ => Ok(()),
                    };
                    checked.map_err(|reason| r.invalid(format!("{key}[{i}]"), reason))?;
                }
                *caps
                    .list_mut(name)
                    .ok_or_else(|| r.invalid(&key, "unknown capability"))? = list;
            } else if FLAG_CAPS.contains(&name) {
                let on = r.bool(v, &key)?;
                *caps
                    .flag_mut(name)
                    .ok_or_else(|| r.invalid(&key, "unknown capability"))? = on;
            } else if name == "identity" {
                let values = if v.is_str() {
                    vec![r.string(v, &key)?]
                } else {
                    r.strings(v, &key)?
                };
                for value in values {
                    let level = IdentityLevel::parse(&value).ok_or_else(|| {
                        r.invalid(
                            &key,
                            format!(
                                "unknown identity level {value:?} (expected resolve, link or admin)"
                            ),
                        )
                    })?;
                    caps.identity = caps.identity.max(Some(level));
                }
            } else {
                return Err(r.invalid(
                    key,
                    format!(
                        "unknown capability (known: {})",
                        KNOWN_CAPABILITIES.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn list_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        Some(match name {
            "net" => &mut self.net,
            "net_connect" => &mut self.net_connect,
            "net_bind" => &mut self.net_bind,
            "fs_read" => &mut self.fs_read,
            "fs_write" => &mut self.fs_write,
            "host_process" => &mut self.host_process,
            "kv" => &mut self.kv,
            _ => return None,
        })
    }

    fn flag_mut(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "uplink" => &mut self.uplink,
            "allow_persistent" => &mut self.allow_persistent,
            "allow_prompt_injection" => &mut self.allow_prompt_injection,
            "bind_workers" => &mut self.bind_workers,
            _ => return None,
        })
    }

    fn list(&self, name: &str) -> Option<&Vec<String>> {
        Some(match name {
            "net" => &self.net,
            "net_connect" => &self.net_connect,
            "net_bind" => &self.net_bind,
            "fs_read" => &self.fs_read,
            "fs_write" => &self.fs_write,
            "host_process" => &self.host_process,
            "kv" => &self.kv,
            _ => return None,
        })
    }

    fn flag(&self, name: &str) -> Option<bool> {
        Some(match name {
            "uplink" => self.uplink,
            "allow_persistent" => self.allow_persistent,
            "allow_prompt_injection" => self.allow_prompt_injection,
            "bind_workers" => self.bind_workers,
            _ => return None,
        })
    }

    /// Adds a component's own capabilities: lists are joined, flags and levels take the
    /// stronger value.
    pub fn merge(&mut self, other: Capabilities) {
        for name in LIST_CAPS {
            if let (Some(mine), Some(theirs)) = (self.list_mut(name), other.list(name)) {
                for item in theirs {
                    if !mine.contains(item) {
                        mine.push(item.clone());
                    }
                }
            }
        }
        for name in FLAG_CAPS {
            if let (Some(mine), Some(theirs)) = (self.flag_mut(name), other.flag(name)) {
                *mine |= theirs;
            }
        }
        self.identity = self.identity.max(other.identity);
    }

    /// Whether the capability `name` is held: a non-empty list, a set flag, or any identity
    /// level. Unknown names are not held.
    pub fn has(&self, name: &str) -> bool {
        if let Some(list) = self.list(name) {
            return !list.is_empty();
        }
        if let Some(flag) = self.flag(name) {
            return flag;
        }
        name == "identity" && self.identity.is_some()
    }

    /// The names of every held capability, sorted.
    pub fn held_names(&self) -> Vec<String> {
        KNOWN_CAPABILITIES
            .iter()
            .filter(|n| self.has(n))
            .map(|n| (*n).to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_exactly_lists_flags_and_identity() {
        let mut all: Vec<&str> = LIST_CAPS.iter().chain(FLAG_CAPS).copied().collect();
        all.push("identity");
        all.sort_unstable();
        assert_eq!(all, KNOWN_CAPABILITIES);
    }

    #[test]
    fn held_names_follow_has() {
        let caps = Capabilities {
            uplink: true,
            fs_read: vec!["home://x".into()],
            identity: Some(IdentityLevel::Link),
            ..Capabilities::default()
        };
        assert_eq!(caps.held_names(), vec!["fs_read", "identity", "uplink"]);
        assert!(!caps.has("net"));
        assert!(!caps.has("nonsense"));
        assert!(Capabilities::default().held_names().is_empty());
    }

    #[test]
    fn merge_joins_and_strengthens() {
        let mut a = Capabilities {
            net: vec!["a.example".into()],
            identity: Some(IdentityLevel::Resolve),
            ..Capabilities::default()
        };
        a.merge(Capabilities {
            net: vec!["a.example".into(), "b.example".into()],
            uplink: true,
            identity: Some(IdentityLevel::Admin),
            ..Capabilities::default()
        });
        assert_eq!(a.net, vec!["a.example", "b.example"]);
        assert!(a.uplink);
        assert_eq!(a.identity, Some(IdentityLevel::Admin));
    }
}
