//! The operator's decision about one capsule ([`Grant`]), how a manifest's requests compare
//! with it ([`PermissionDiff`]), and what a capsule may use under it (`requested ∩ granted`).

use std::collections::HashMap;
use std::path::PathBuf;

use capsule_ids::CapsuleName;

use super::request::Request;
use crate::grants::{EndpointGrant, FsGrant, FsRoot, HostGrant};
use crate::manifest::{Capabilities, Manifest, ManifestDigest};

/// The operator's recorded decision about one capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The capsule it belongs to.
    pub capsule: CapsuleName,
    /// The capsule version the decision was last made for.
    pub version: semver::Version,
    /// The manifest the decision was last made for.
    pub manifest: ManifestDigest,
    /// What the operator allowed.
    pub granted: Vec<Request>,
    /// What the operator refused; the capsule runs without it and is not asked about it again.
    pub denied: Vec<Request>,
}

/// How the requests of a manifest relate to a stored grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionDiff {
    /// Requested and not yet decided: these need the operator's approval.
    pub added: Vec<Request>,
    /// Requested and already granted.
    pub unchanged: Vec<Request>,
    /// Requested and refused by an earlier decision.
    pub denied: Vec<Request>,
    /// Granted earlier and no longer requested.
    pub removed: Vec<Request>,
}

impl PermissionDiff {
    /// Compares `requests` with the `previous` decision (none on first install).
    pub fn between(requests: &[Request], previous: Option<&Grant>) -> Self {
        let mut diff = Self::default();
        for r in requests {
            match previous {
                Some(g) if g.allows(r) => diff.unchanged.push(r.clone()),
                Some(g) if g.refuses(r) => diff.denied.push(r.clone()),
                _ => diff.added.push(r.clone()),
            }
        }
        if let Some(g) = previous {
            diff.removed = g
                .granted
                .iter()
                .filter(|held| !requests.iter().any(|r| held.covers(r)))
                .cloned()
                .collect();
        }
        diff
    }

    /// Whether every request is already decided.
    pub fn is_settled(&self) -> bool {
        self.added.is_empty()
    }
}

impl Grant {
    /// An empty decision for `manifest`.
    pub fn new(manifest: &Manifest) -> Self {
        Self {
            capsule: manifest.package.name.clone(),
            version: manifest.package.version.clone(),
            manifest: manifest.digest,
            granted: Vec::new(),
            denied: Vec::new(),
        }
    }

    /// Whether `request` is allowed by this grant.
    pub fn allows(&self, request: &Request) -> bool {
        self.granted.iter().any(|g| g.covers(request))
    }

    /// Whether `request` was refused by this grant (and not allowed).
    pub fn refuses(&self, request: &Request) -> bool {
        !self.allows(request) && self.denied.iter().any(|d| d.covers(request))
    }

    /// Adds `allowed` to the granted set, removing them from the denied set.
    pub fn allow(&mut self, allowed: impl IntoIterator<Item = Request>) {
        for r in allowed {
            self.denied.retain(|d| !r.covers(d));
            if !self.allows(&r) {
                self.granted.push(r);
            }
        }
        self.granted.sort();
    }

    /// Adds `refused` to the denied set.
    pub fn deny(&mut self, refused: impl IntoIterator<Item = Request>) {
        for r in refused {
            if !self.denied.contains(&r) {
                self.denied.push(r);
            }
        }
        self.denied.sort();
    }

    /// Removes every granted entry that covers `request`; whether any was removed.
    pub fn revoke(&mut self, request: &Request) -> bool {
        let before = self.granted.len();
        self.granted.retain(|g| !g.covers(request));
        self.granted.len() != before
    }

    /// The capabilities `manifest` may use under this grant: every ungated capability as
    /// written, and each gated one only where this grant allows it. A host directory counts
    /// by what it resolved to: `dirs` maps each directory as the manifest writes it to its
    /// canonical directory, and one missing from `dirs` is not allowed.
    pub fn effective(&self, manifest: &Manifest, dirs: &HashMap<PathBuf, PathBuf>) -> Capabilities {
        let caps = &manifest.capabilities;
        let fs = |items: &[String], write: bool| -> Vec<String> {
            items
                .iter()
                .filter(|s| match FsGrant::parse(s) {
                    Ok(FsGrant {
                        root: FsRoot::Absolute(p),
                        ..
                    }) => dirs.get(&p).is_some_and(|real| {
                        self.allows(&if write {
                            Request::FsWrite(real.clone())
                        } else {
                            Request::FsRead(real.clone())
                        })
                    }),
                    Ok(_) => true,
                    Err(_) => false,
                })
                .cloned()
                .collect()
        };
        let mut fs_read = fs(&caps.fs_read, false);
        // A write request the operator allowed only for reading still reads.
        for s in fs(&caps.fs_write, false) {
            if !fs_read.contains(&s) {
                fs_read.push(s);
            }
        }
        let keep = |items: &[String], make: &dyn Fn(&str) -> Option<Request>| -> Vec<String> {
            items
                .iter()
                .filter(|s| make(s).is_some_and(|r| self.allows(&r)))
                .cloned()
                .collect()
        };
        Capabilities {
            uplink: caps.uplink && self.allows(&Request::Uplink),
            net: keep(&caps.net, &|s| HostGrant::parse(s).ok().map(Request::Net)),
            net_connect: keep(&caps.net_connect, &|s| {
                EndpointGrant::parse(s).ok().map(Request::NetConnect)
            }),
            net_bind: keep(&caps.net_bind, &|s| {
                EndpointGrant::parse(s).ok().map(Request::NetBind)
            }),
            fs_write: fs(&caps.fs_write, true),
            fs_read,
            host_process: keep(&caps.host_process, &|s| Some(Request::Process(s.into()))),
            kv: caps.kv.clone(),
            identity: caps
                .identity
                .filter(|l| self.allows(&Request::Identity(*l))),
            allow_persistent: caps.allow_persistent && self.allows(&Request::Persistent),
            allow_prompt_injection: caps.allow_prompt_injection,
            bind_workers: caps.bind_workers,
        }
    }
}
