//! `CapsulePolicy`: what one capsule may do, built once from its manifest. Every gate is
//! fail-closed and names the reason when it says no.

use std::path::Path;

use capsule_bus::{Topic, TopicPattern};

use crate::grant::Grant;
use crate::grants::{EndpointGrant, FsGrant, FsRoot, HostGrant};
use crate::manifest::{Capabilities, IdentityLevel, Manifest};

/// The answer of a gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The action is permitted.
    Allowed,
    /// The action is refused, with the reason shown to operators and logs.
    Denied(String),
}

impl Decision {
    /// Whether the action is permitted.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed)
    }
}

/// Whether a filesystem operation reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsAccess {
    /// Reading data or metadata.
    Read,
    /// Creating, changing or removing.
    Write,
}

/// A capsule's grants, derived from its manifest.
#[derive(Clone, Debug, Default)]
pub struct CapsulePolicy {
    publish_acl: Vec<TopicPattern>,
    subscribe_acl: Vec<TopicPattern>,
    capabilities: Capabilities,
    fs_read: Vec<FsGrant>,
    fs_write: Vec<FsGrant>,
    net: Vec<HostGrant>,
    net_connect: Vec<EndpointGrant>,
    net_bind: Vec<EndpointGrant>,
}

/// Parses grants, dropping (fail-closed) any that do not parse; manifests parsed by
/// [`Manifest::parse`] never contain such grants.
fn parse_all<T>(items: &[String], parse: impl Fn(&str) -> Result<T, String>) -> Vec<T> {
    items
        .iter()
        .filter_map(|s| match parse(s) {
            Ok(g) => Some(g),
            Err(reason) => {
                tracing::warn!(grant = %s, %reason, "ignoring an invalid capability grant");
                None
            }
        })
        .collect()
}

impl CapsulePolicy {
    /// The policy of `manifest` under the operator's `grant`: its ACLs as written except
    /// subscribe entries reaching beyond its own topics that were not granted, and of its
    /// capabilities only `requested ∩ granted` (see [`Grant::effective`]; `dirs` maps each
    /// host directory as written to the canonical directory the grant is about).
    pub fn granted(
        manifest: &Manifest,
        grant: &Grant,
        dirs: &std::collections::HashMap<std::path::PathBuf, std::path::PathBuf>,
    ) -> Self {
        // A subscribe entry reaching beyond the capsule's own topics is in the ACL only when
        // granted (a handler entry's load fails without its grant, so it is kept here).
        let subscribe = manifest
            .subscribe
            .iter()
            .filter(|s| {
                s.handler.is_some()
                    || !crate::grant::spans_namespaces(&s.pattern)
                    || grant.allows(&crate::grant::Request::Subscribe(s.pattern.clone()))
            })
            .map(|s| s.pattern.clone())
            .collect();
        Self::new(
            manifest.publish.iter().map(|p| p.pattern.clone()).collect(),
            subscribe,
            grant.effective(manifest, dirs),
        )
    }

    /// A policy from explicit parts (for embedders that do not use `Capsule.toml`).
    pub fn new(
        publish_acl: Vec<TopicPattern>,
        subscribe_acl: Vec<TopicPattern>,
        capabilities: Capabilities,
    ) -> Self {
        Self {
            publish_acl,
            subscribe_acl,
            fs_read: parse_all(&capabilities.fs_read, FsGrant::parse),
            fs_write: parse_all(&capabilities.fs_write, FsGrant::parse),
            net: parse_all(&capabilities.net, HostGrant::parse),
            net_connect: parse_all(&capabilities.net_connect, EndpointGrant::parse),
            net_bind: parse_all(&capabilities.net_bind, EndpointGrant::parse),
            capabilities,
        }
    }

    /// The absolute host directories the filesystem grants name, each once, longest first
    /// (each becomes a mount of its own).
    pub fn absolute_roots(&self) -> Vec<&Path> {
        let mut roots: Vec<&Path> = self
            .fs_read
            .iter()
            .chain(&self.fs_write)
            .filter_map(|g| match &g.root {
                FsRoot::Absolute(p) => Some(p.as_path()),
                FsRoot::Workspace | FsRoot::Home => None,
            })
            .collect();
        // Ties are broken by name so that equal roots end up adjacent for `dedup`.
        roots.sort_by(|a, b| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then_with(|| a.cmp(b))
        });
        roots.dedup();
        roots
    }

    /// Whether `path` (normalised, symlinks resolved, relative to `root`) may be accessed.
    /// A write grant also allows reading the same subtree.
    pub fn may_fs(&self, access: FsAccess, root: &FsRoot, path: &Path) -> Decision {
        let writable = self.fs_write.iter().any(|g| g.covers(root, path));
        let readable = writable || self.fs_read.iter().any(|g| g.covers(root, path));
        let allowed = match access {
            FsAccess::Read => readable,
            FsAccess::Write => writable,
        };
        if allowed {
            return Decision::Allowed;
        }
        let (cap, grants) = match access {
            FsAccess::Read => ("fs_read", &self.fs_read),
            FsAccess::Write => ("fs_write", &self.fs_write),
        };
        let shown = FsGrant {
            root: root.clone(),
            subtree: path.to_path_buf(),
        };
        Decision::Denied(if grants.is_empty() {
            format!("the manifest grants no `{cap}`")
        } else {
            format!("no `{cap}` grant covers `{shown}`")
        })
    }

    /// Whether an HTTP request to `host` is allowed by `net`.
    pub fn may_http(&self, host: &str) -> Decision {
        if self.net.iter().any(|g| g.allows(host)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("`{host}` is not in the `net` allowlist"))
        }
    }

    /// Whether a request to `scheme://host:port` is allowed by `net` (scheme and port of
    /// each grant included).
    pub fn may_http_url(&self, scheme: &str, host: &str, port: u16) -> Decision {
        if self.net.iter().any(|g| g.allows_url(scheme, host, port)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!(
                "`{scheme}://{host}:{port}` is not in the `net` allowlist"
            ))
        }
    }

    /// Whether a TCP connection to `host:port` is allowed by `net_connect`.
    pub fn may_connect(&self, host: &str, port: u16) -> Decision {
        if self.net_connect.iter().any(|g| g.allows_tcp(host, port)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("`{host}:{port}` is not in `net_connect`"))
        }
    }

    /// Whether binding `host:port` is allowed by `net_bind`.
    pub fn may_bind(&self, host: &str, port: u16) -> Decision {
        if self.net_bind.iter().any(|g| g.allows_tcp(host, port)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("`{host}:{port}` is not in `net_bind`"))
        }
    }

    /// Whether binding the Unix socket `path` (empty = the capsule's own) is allowed.
    pub fn may_bind_unix(&self, path: &str) -> Decision {
        if self.net_bind.iter().any(|g| g.allows_unix(path)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("`unix:{path}` is not in `net_bind`"))
        }
    }

    /// Whether running the host command `cmd` is allowed by `host_process`.
    pub fn may_spawn(&self, cmd: &str) -> Decision {
        if self.capabilities.host_process.iter().any(|c| c == cmd) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("`{cmd}` is not in `host_process`"))
        }
    }

    /// Whether identity operations of `level` are allowed (a higher grant implies lower ones).
    pub fn may_identity(&self, level: IdentityLevel) -> Decision {
        match self.capabilities.identity {
            Some(granted) if granted >= level => Decision::Allowed,
            Some(granted) => {
                Decision::Denied(format!("identity is granted at {granted:?}, not {level:?}"))
            }
            None => Decision::Denied("the manifest grants no `identity`".into()),
        }
    }

    /// The manifest's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The `[publish]` patterns.
    pub fn publish_acl(&self) -> &[TopicPattern] {
        &self.publish_acl
    }

    /// The `[subscribe]` patterns.
    pub fn subscribe_acl(&self) -> &[TopicPattern] {
        &self.subscribe_acl
    }

    /// Whether publishing to `topic` is allowed by some `[publish]` pattern (empty = deny all).
    pub fn may_publish(&self, topic: &Topic) -> Decision {
        if self.publish_acl.is_empty() {
            return Decision::Denied("the manifest declares no [publish] topics".into());
        }
        if self.publish_acl.iter().any(|p| p.matches(topic)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("no [publish] pattern matches `{topic}`"))
        }
    }

    /// Whether subscribing to `pattern` is allowed: some `[subscribe]` pattern must cover every
    /// topic `pattern` can match (empty = deny all).
    pub fn may_subscribe(&self, pattern: &TopicPattern) -> Decision {
        if self.subscribe_acl.is_empty() {
            return Decision::Denied("the manifest declares no [subscribe] topics".into());
        }
        if self.subscribe_acl.iter().any(|acl| acl.covers(pattern)) {
            Decision::Allowed
        } else {
            Decision::Denied(format!("no [subscribe] pattern covers `{pattern}`"))
        }
    }

    /// Whether the capsule may use `publish-as` and the uplink interface.
    pub fn may_act_as_uplink(&self) -> Decision {
        if self.capabilities.uplink {
            Decision::Allowed
        } else {
            Decision::Denied("the manifest does not grant `uplink = true`".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(v: &[&str]) -> Vec<TopicPattern> {
        v.iter()
            .map(|s| TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn empty_acls_deny_everything() {
        let p = CapsulePolicy::default();
        assert!(!p.may_publish(&topic("a")).is_allowed());
        assert!(!p.may_subscribe(&pats(&["a"])[0]).is_allowed());
        assert!(!p.may_act_as_uplink().is_allowed());
    }

    #[test]
    fn publish_uses_the_matcher() {
        let p = CapsulePolicy::new(pats(&["chat.*", "x.*.z"]), vec![], Capabilities::default());
        assert!(p.may_publish(&topic("chat.a.b")).is_allowed());
        assert!(p.may_publish(&topic("x.y.z")).is_allowed());
        assert!(!p.may_publish(&topic("chat")).is_allowed());
        assert!(!p.may_publish(&topic("x.y.z.w")).is_allowed());
    }

    #[test]
    fn fs_gates_follow_grants_and_write_implies_read() {
        let caps = Capabilities {
            fs_read: vec!["home://notes".into(), "/usr/share/dict".into()],
            fs_write: vec!["cwd://out".into()],
            ..Capabilities::default()
        };
        let p = CapsulePolicy::new(vec![], vec![], caps);
        let ok = |a, root: FsRoot, path: &str| p.may_fs(a, &root, Path::new(path)).is_allowed();
        assert!(ok(FsAccess::Read, FsRoot::Home, "notes/a.txt"));
        assert!(!ok(FsAccess::Write, FsRoot::Home, "notes/a.txt"));
        assert!(!ok(FsAccess::Read, FsRoot::Home, "other.txt"));
        assert!(ok(FsAccess::Write, FsRoot::Workspace, "out/x"));
        assert!(ok(FsAccess::Read, FsRoot::Workspace, "out/x"));
        assert!(!ok(FsAccess::Read, FsRoot::Workspace, "src/x"));
        assert!(ok(
            FsAccess::Read,
            FsRoot::Absolute("/usr/share/dict".into()),
            "words"
        ));
        assert_eq!(p.absolute_roots(), vec![Path::new("/usr/share/dict")]);
        assert!(matches!(
            CapsulePolicy::default().may_fs(FsAccess::Read, &FsRoot::Workspace, Path::new("a")),
            Decision::Denied(r) if r.contains("no `fs_read`")
        ));
    }

    #[test]
    fn absolute_roots_are_listed_once() {
        let caps = Capabilities {
            fs_read: vec!["/srv".into(), "/opt".into(), "/usr/share/dict".into()],
            fs_write: vec!["/srv".into()],
            ..Capabilities::default()
        };
        let p = CapsulePolicy::new(vec![], vec![], caps);
        assert_eq!(
            p.absolute_roots(),
            vec![
                Path::new("/usr/share/dict"),
                Path::new("/opt"),
                Path::new("/srv")
            ]
        );
    }

    #[test]
    fn net_process_and_identity_gates() {
        let caps = Capabilities {
            net: vec!["api.example.com".into()],
            net_connect: vec!["db.local:5432".into()],
            net_bind: vec!["127.0.0.1:*".into(), "unix:".into()],
            host_process: vec!["git".into()],
            identity: Some(IdentityLevel::Link),
            ..Capabilities::default()
        };
        let p = CapsulePolicy::new(vec![], vec![], caps);
        assert!(p.may_http("v2.api.example.com").is_allowed());
        assert!(!p.may_http("example.com").is_allowed());
        assert!(p.may_connect("db.local", 5432).is_allowed());
        assert!(!p.may_connect("db.local", 22).is_allowed());
        assert!(p.may_bind("127.0.0.1", 9000).is_allowed());
        assert!(p.may_bind_unix("").is_allowed());
        assert!(!p.may_bind_unix("/tmp/x.sock").is_allowed());
        assert!(p.may_spawn("git").is_allowed());
        assert!(!p.may_spawn("bash").is_allowed());
        assert!(p.may_identity(IdentityLevel::Resolve).is_allowed());
        assert!(p.may_identity(IdentityLevel::Link).is_allowed());
        assert!(!p.may_identity(IdentityLevel::Admin).is_allowed());
    }

    #[test]
    fn subscribe_needs_coverage() {
        let p = CapsulePolicy::new(vec![], pats(&["a.*", "b.c"]), Capabilities::default());
        let ok = |s: &str| p.may_subscribe(&pats(&[s])[0]).is_allowed();
        assert!(ok("a.b.*"));
        assert!(ok("a.b"));
        assert!(ok("b.c"));
        assert!(!ok("a"));
        assert!(!ok("b.*"));
        assert!(!ok("*"));
    }
}
