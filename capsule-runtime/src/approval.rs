//! Operator approval at load: a capsule's manifest requests, the operator grants. Before a
//! capsule starts, every request is checked against the host policy (some roots are never
//! grantable, whatever anyone says), compared with the stored grant, and what is still
//! undecided goes to the [`Approver`]. Without an approver, or when it declines, the load
//! fails naming every pending capability and nothing is recorded. A capsule then runs with
//! `requested ∩ granted`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capsule_security::{
    Forbidden, Grant, GrantStore, HostPolicy, Manifest, PermissionDiff, Request, Resolved,
};
use futures::future::BoxFuture;

/// What the operator is asked about one capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApprovalRequest {
    /// The capsule.
    pub capsule: String,
    /// The version being loaded.
    pub version: semver::Version,
    /// The manifest's one-line description, as the capsule author wrote it (untrusted text).
    pub description: Option<String>,
    /// The version the stored decision was made for, if there is one.
    pub previous_version: Option<semver::Version>,
    /// The requests against the stored decision; `diff.added` is what needs an answer.
    pub diff: PermissionDiff,
    /// What the capsule may use without a grant (IPC ACLs, KV, home, tmp, its workspace).
    pub ungated: Vec<String>,
}

impl ApprovalRequest {
    /// A request about `capsule` at `version` with `diff` against the stored decision; no
    /// description, no previous version, nothing listed as ungated.
    pub fn new(capsule: impl Into<String>, version: semver::Version, diff: PermissionDiff) -> Self {
        Self {
            capsule: capsule.into(),
            version,
            description: None,
            previous_version: None,
            diff,
            ungated: Vec::new(),
        }
    }
}

/// The operator's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// Allow these of the pending requests; the other pending ones are refused and recorded
    /// as such (the capsule runs without them, and is not asked about them again). A refused
    /// handler binding still fails the load: a capsule cannot run half-bound.
    Grant(Vec<Request>),
    /// Decide nothing: the load fails and nothing is recorded.
    Decline,
}

impl Approval {
    /// Allows everything `request` asks for.
    pub fn all(request: &ApprovalRequest) -> Self {
        Self::Grant(request.diff.added.clone())
    }
}

/// Decides about capability requests the stored grant does not cover (a terminal, a UI, a
/// policy engine, a test).
pub trait Approver: Send + Sync + 'static {
    /// Answers `request`.
    fn approve(&self, request: ApprovalRequest) -> BoxFuture<'static, Approval>;
}

/// Why the host would not let a capsule start with what it requested.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// These requests are waiting for the operator's approval.
    NotApproved(Vec<Request>),
    /// These requests can never be granted on this host.
    Forbidden(Vec<Forbidden>),
}

/// One capsule the host refused to start, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The capsule.
    pub capsule: String,
    /// Why.
    pub reason: RefusalReason,
}

impl Refusal {
    /// `capsule` refused for `reason`.
    pub fn new(capsule: impl Into<String>, reason: RefusalReason) -> Self {
        Self {
            capsule: capsule.into(),
            reason,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            RefusalReason::NotApproved(pending) => write!(
                f,
                "capsule `{}` is waiting for the operator's approval of: {} \
                 (approve with `capsule grant <its directory> --all`, or answer on a terminal)",
                self.capsule,
                pending
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            RefusalReason::Forbidden(all) => {
                write!(f, "capsule `{}`: ", self.capsule)?;
                for (i, e) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

/// The outcome of deciding about one capsule's requests.
#[derive(Clone, Debug)]
pub(crate) struct Decided {
    /// The decision in force (stored, or to be stored once the load succeeds).
    pub(crate) grant: Grant,
    /// Whether `grant` differs from what is stored and must be written after the load.
    pub(crate) record: bool,
    /// Each granted host directory, as the manifest writes it, mapped to the canonical
    /// directory the grant is about and the host mounts.
    pub(crate) mounts: HashMap<PathBuf, PathBuf>,
}

/// Why deciding failed.
#[derive(Debug)]
pub(crate) enum DecideError {
    /// The capsule was refused.
    Refused(Refusal),
    /// The stored grant could not be read.
    Store(capsule_security::GrantError),
}

/// Where decisions come from: the host policy, the stored grants and the approver.
pub(crate) struct Decider<'a> {
    pub(crate) policy: &'a HostPolicy,
    pub(crate) store: &'a GrantStore,
    pub(crate) approver: Option<Arc<dyn Approver>>,
    pub(crate) timeout: Duration,
}

impl Decider<'_> {
    /// Decides about `manifest`'s requests. `known` is a decision made earlier in the same
    /// operation and not stored yet; otherwise the stored grant is the starting point.
    pub(crate) async fn decide(
        &self,
        manifest: &Manifest,
        known: Option<&Grant>,
    ) -> Result<Decided, DecideError> {
        // A decision made earlier in the operation belongs to the capsule it was made for: a
        // directory whose manifest was replaced since by another capsule's starts afresh.
        let known = known.filter(|g| g.capsule == manifest.package.name);
        let capsule = manifest.package.name.as_str().to_string();
        let refused = |reason| {
            DecideError::Refused(Refusal {
                capsule: capsule.clone(),
                reason,
            })
        };
        // Decided on the directories the requests resolve to: a grant of `/srv/data` then
        // never covers a link inside it that leads elsewhere, and a grant recorded for a link
        // does not follow the link when it is re-pointed.
        let Resolved {
            requests,
            dirs: mut mounts,
            forbidden,
        } = self.policy.resolve(&capsule_security::requests(manifest));
        if !forbidden.is_empty() {
            return Err(refused(RefusalReason::Forbidden(forbidden)));
        }
        let stored = self
            .store
            .load(&manifest.package.name)
            .map_err(DecideError::Store)?;
        let base = known.or(stored.as_ref());
        let diff = PermissionDiff::between(&requests, base);
        let mut grant = base.cloned().unwrap_or_else(|| Grant::new(manifest));
        if !diff.is_settled() {
            let answer = match &self.approver {
                None => Approval::Decline,
                Some(approver) => {
                    let request = ApprovalRequest {
                        capsule: capsule.clone(),
                        version: manifest.package.version.clone(),
                        description: manifest.package.description.clone(),
                        previous_version: base.map(|g| g.version.clone()),
                        diff: diff.clone(),
                        ungated: capsule_security::ungated_summary(manifest),
                    };
                    tokio::time::timeout(self.timeout, approver.approve(request))
                        .await
                        .unwrap_or(Approval::Decline)
                }
            };
            let Approval::Grant(allowed) = answer else {
                return Err(refused(RefusalReason::NotApproved(diff.added)));
            };
            // Only what was asked can be allowed here; anything else is ignored.
            let (allowed, refused_now): (Vec<Request>, Vec<Request>) = diff
                .added
                .iter()
                .cloned()
                .partition(|r| allowed.iter().any(|a| a.covers(r)));
            if allowed.is_empty() {
                return Err(refused(RefusalReason::NotApproved(diff.added)));
            }
            grant.allow(allowed);
            grant.deny(refused_now);
            grant.version = manifest.package.version.clone();
            grant.manifest = manifest.digest;
        }
        let unbound: Vec<Request> = requests
            .iter()
            .filter(|r| matches!(r, Request::Handler(_)) && !grant.allows(r))
            .cloned()
            .collect();
        if !unbound.is_empty() {
            return Err(refused(RefusalReason::NotApproved(unbound)));
        }
        mounts.retain(|_, real| {
            grant.allows(&Request::FsRead(real.clone()))
                || grant.allows(&Request::FsWrite(real.clone()))
        });
        let decided_anything = !grant.granted.is_empty() || !grant.denied.is_empty();
        Ok(Decided {
            record: stored.as_ref() != Some(&grant) && (stored.is_some() || decided_anything),
            grant,
            mounts,
        })
    }
}
