//! The invocation scope: which principal a host call acts for, and therefore whose quotas,
//! log file and env overlay it uses. A scope for the owner uses the load-time values; a scope
//! for any other principal carries that principal's own resources, so no accessor can fall
//! back to the owner's while someone else is in scope.

use std::collections::HashMap;
use std::sync::Arc;

use capsule_bus::{Attribution, Message, PrincipalId, Scope, TopicPattern};
use capsule_security::{PrincipalProfile, ProfileError};
use capsule_vfs::{Mount, OverlayStamp, StateLayout};
use uuid::Uuid;

use crate::homes::Homes;
use crate::logsink::{LogSink, unix_ms};
use crate::profile_cache::ProfileCache;

/// Who caused the current call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The principal attribution of the message or call being handled.
    pub(crate) attribution: Attribution,
    /// The capsule instance that published it (or the caller's own session).
    pub(crate) source: Uuid,
    /// When it was published, in milliseconds since the Unix epoch.
    pub(crate) timestamp_ms: u64,
    /// The hop count of the message that caused the call (0 when no message did): what the
    /// call publishes carries one more.
    pub(crate) hops: u8,
}

impl Caller {
    /// The caller behind a message: its attribution, source, time and hop count.
    pub(crate) fn of(msg: &Message) -> Self {
        Self {
            attribution: msg.attribution(),
            source: msg.source,
            timestamp_ms: msg.timestamp_ms,
            hops: msg.hops(),
        }
    }
}

/// Why a principal may not act.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalRefusal {
    /// Its profile says `enabled = false`.
    #[error("principal `{0}` is disabled")]
    Disabled(PrincipalId),
    /// Its profile exists but cannot be read or is malformed.
    #[error(transparent)]
    Profile(Arc<ProfileError>),
}

/// A principal's profile as resolved for a scope: usable, or refused with the reason.
pub(crate) type ProfileGrant = Result<Arc<PrincipalProfile>, PrincipalRefusal>;

/// Per-principal resources used when a principal other than the owner is in scope.
#[derive(Clone, Debug)]
pub(crate) struct Overlays {
    /// The principal's log file for this capsule (`None` if it could not be opened; records
    /// are then dropped with a host warning, never written to the owner's file).
    pub(crate) log: Option<LogSink>,
    /// The principal's env overlay for this capsule.
    pub(crate) env: Arc<HashMap<String, String>>,
    /// The principal's home (`home://`), `None` if it could not be opened.
    pub(crate) home: Option<Arc<Mount>>,
    /// The principal's scratch directory (`/tmp/`), `None` if it could not be opened.
    pub(crate) tmp: Option<Arc<Mount>>,
    /// The env overlay `env` was parsed from (`None`: there was none or it was unreadable).
    pub(crate) env_stamp: Option<OverlayStamp>,
}

impl Overlays {
    /// Whether the home or tmp these were opened with has since been moved, removed or
    /// replaced at its path: whatever was opened inside it then is no longer the
    /// principal's to use.
    pub(crate) fn dirs_moved(&self) -> bool {
        [&self.home, &self.tmp]
            .into_iter()
            .flatten()
            .any(|dir| !dir.still_at_root())
    }
}

/// The per-call context: installed before a call on behalf of a principal and removed after it.
#[derive(Clone, Debug)]
pub(crate) struct InvocationScope {
    pub(crate) principal: PrincipalId,
    pub(crate) caller: Caller,
    pub(crate) profile: ProfileGrant,
    /// `Some` exactly when `principal` is not the capsule's owner.
    pub(crate) overlays: Option<Overlays>,
    /// Installed by the host around a dispatched call; `recv` must not replace it.
    pub(crate) pinned: bool,
}

impl InvocationScope {
    /// Whether the principal in scope was only claimed (by an uplink), not established by the
    /// host. What the call publishes is then attributed as claimed too: a claim never becomes
    /// a verified identity by passing through a capsule.
    pub(crate) fn is_claimed(&self) -> bool {
        matches!(self.caller.attribution, Attribution::Claimed(_))
    }
}

/// The audit rule, the one place it is written: a pattern that covers the audit topic admits
/// only the owner's own entries unless the owner's profile holds the firehose grant. Runtime
/// subscriptions, handler bindings and the control socket's tails are all scoped by it.
pub fn audit_rule(pattern: &TopicPattern, owner: &PrincipalId, firehose: bool) -> Scope {
    if pattern.covers_audit_topic() && !firehose {
        Scope::Principal(owner.clone())
    } else {
        Scope::All
    }
}

/// Builds scopes for one capsule.
#[derive(Debug)]
pub(crate) struct ScopeFactory {
    pub(crate) owner: PrincipalId,
    pub(crate) capsule: String,
    pub(crate) session: Uuid,
    /// The principals' homes, shared with every other capsule.
    pub(crate) homes: Arc<Homes>,
    pub(crate) profiles: Arc<ProfileCache>,
}

impl ScopeFactory {
    /// A scope for a call caused by `caller`.
    pub(crate) fn build(&self, caller: Caller, pinned: bool) -> InvocationScope {
        self.build_reusing(caller, pinned, None)
    }

    /// A scope for a call caused by `caller`, taking the principal's resources from `cached`
    /// (what the same principal's last call on the same instance used) when they are still
    /// current: same principal, home and tmp open, env overlay unchanged. The profile is
    /// resolved afresh every time, so a changed quota applies to this call.
    pub(crate) fn build_reusing(
        &self,
        caller: Caller,
        pinned: bool,
        cached: Option<(PrincipalId, Overlays)>,
    ) -> InvocationScope {
        let principal = caller
            .attribution
            .principal()
            .cloned()
            .unwrap_or_else(|| self.owner.clone());
        let profile = self.profiles.resolve(&principal);
        let overlays = (principal != self.owner).then(|| {
            cached
                .filter(|(whose, o)| *whose == principal && self.still_current(o))
                .map_or_else(|| self.overlays_for(&principal), |(_, o)| o)
        });
        InvocationScope {
            principal,
            caller,
            profile,
            overlays,
            pinned,
        }
    }

    /// A scope for a message drained by the guest.
    pub(crate) fn for_message(&self, msg: &Message) -> InvocationScope {
        self.build(Caller::of(msg), false)
    }

    /// The caller reported when nothing is in scope: the capsule itself, for its owner.
    pub(crate) fn own_caller(&self) -> Caller {
        Caller {
            attribution: Attribution::Verified(self.owner.clone()),
            source: self.session,
            timestamp_ms: unix_ms(),
            hops: 0,
        }
    }

    /// Whether `overlays` can serve another call: the home and tmp were opened, are still the
    /// directories at their paths (an operator may have moved or replaced them) and the env
    /// overlay has the content read into it (one `stat` while there is none, else a re-read).
    /// A home that could not be opened is tried again.
    fn still_current(&self, overlays: &Overlays) -> bool {
        let (Some(home), Some(tmp)) = (&overlays.home, &overlays.tmp) else {
            return false;
        };
        home.still_at_root()
            && tmp.still_at_root()
            && StateLayout::env_overlay_unchanged(home, &self.capsule, overlays.env_stamp.as_ref())
    }

    fn overlays_for(&self, principal: &PrincipalId) -> Overlays {
        match PrincipalResources::open(&self.homes, principal, &self.capsule) {
            Some(r) => Overlays {
                log: r.log,
                env: Arc::new(r.env),
                home: Some(r.home),
                tmp: Some(r.tmp),
                env_stamp: r.env_stamp,
            },
            None => Overlays {
                log: None,
                env: Arc::new(HashMap::new()),
                home: None,
                tmp: None,
                env_stamp: None,
            },
        }
    }

    /// Installs the scope of a drained message, following the recv rules: never over a pinned
    /// scope; only the caller and the profile are refreshed when the principal is unchanged.
    pub(crate) fn install_for_message(&self, slot: &mut Option<InvocationScope>, msg: &Message) {
        if let Some(current) = slot.as_mut() {
            if current.pinned {
                return;
            }
            let principal = msg.principal().unwrap_or(&self.owner);
            if &current.principal == principal {
                current.caller = Caller::of(msg);
                // A principal disabled (or its profile broken) since its last message stops
                // acting now, not when another principal's message comes along. One cached
                // lookup (a stat) per drained envelope.
                current.profile = self.profiles.resolve(principal);
                return;
            }
        }
        *slot = Some(self.for_message(msg));
    }
}

/// A principal's home, tmp, capsule log and env overlay for one capsule.
pub(crate) struct PrincipalResources {
    pub(crate) home: Arc<Mount>,
    pub(crate) tmp: Arc<Mount>,
    /// Opened from `home` by the first record written.
    pub(crate) log: Option<LogSink>,
    pub(crate) env: HashMap<String, String>,
    /// The env overlay `env` was parsed from (`None`: none, or unreadable).
    pub(crate) env_stamp: Option<OverlayStamp>,
}

impl PrincipalResources {
    /// Takes the principal's shared home and tmp (opening them if no capsule holds them) and
    /// reads the env overlay; `None` (with a warning) if the home cannot be opened. An env
    /// overlay that cannot be read is reported and left out, never replaced by another
    /// principal's; so is a log that cannot be opened, when the first record comes.
    pub(crate) fn open(homes: &Homes, principal: &PrincipalId, capsule: &str) -> Option<Self> {
        let dirs = match homes.open(principal) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%principal, capsule, error = %e, "cannot open the principal's home");
                return None;
            }
        };
        let env_stamp = match StateLayout::env_overlay_stamp(&dirs.home, capsule) {
            Ok(stamp) => stamp,
            Err(e) => {
                tracing::warn!(%principal, capsule, error = %e, "cannot read the env overlay");
                None
            }
        };
        let env = env_stamp.as_ref().map_or_else(HashMap::new, |stamp| {
            parse_env_overlay(stamp.text(), principal, capsule)
        });
        Some(Self {
            log: Some(LogSink::lazy(Arc::clone(&dirs.home), capsule)),
            home: dirs.home,
            tmp: dirs.tmp,
            env,
            env_stamp,
        })
    }
}

/// Parses an env overlay: a JSON object whose values are strings (other values are kept as
/// their JSON text). Anything else is ignored with a warning.
fn parse_env_overlay(
    text: &str,
    principal: &PrincipalId,
    capsule: &str,
) -> HashMap<String, String> {
    match serde_json::from_str::<HashMap<String, serde_json::Value>>(text) {
        Ok(map) => map
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, s)
            })
            .collect(),
        Err(e) => {
            tracing::warn!(%principal, capsule, error = %e, "env overlay is not a JSON object; ignored");
            HashMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_rule_scopes_only_audit_patterns_without_the_firehose() {
        let owner = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        let p = |s: &str| TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let scoped = Scope::Principal(owner.clone());
        assert_eq!(audit_rule(&p("astrid.v1.audit.*"), &owner, false), scoped);
        assert_eq!(audit_rule(&p("astrid.*"), &owner, false), scoped);
        assert_eq!(
            audit_rule(&p("astrid.v1.audit.*"), &owner, true),
            Scope::All
        );
        assert_eq!(audit_rule(&p("probe.*"), &owner, false), Scope::All);
    }
}
