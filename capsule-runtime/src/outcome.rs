//! How guest calls end, as the host and embedders see it: what `astrid-hook-trigger` answered
//! and the [`Verdict`] read from it once, why a handler call failed, and how a run loop ended.
//! Every other module that needs these depends on this one, never on the capsule that produced
//! them.

use capsule_bus::PrincipalId;
use wasmtime::component::{ComponentType, Lift, Lower};

use crate::limits::Interrupt;

/// What `astrid-hook-trigger` returned.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct HookResponse {
    /// `continue`, `final`, `deny` or `abort` (or whatever the guest chose).
    pub action: String,
    /// Optional data: a replacement payload for `continue`, a reason for `deny`/`abort`.
    pub data: Option<String>,
}

/// What a handler's answer means for the rest of its chain, read once from
/// [`HookResponse::action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on; `data`, when present, replaces the payload for the next level.
    Continue,
    /// Stop the chain: the message is handled.
    Final,
    /// Stop the chain and refuse the message (audited).
    Deny,
    /// Stop the chain because the handler gave up (audited like a denial).
    Abort,
    /// Anything else: logged, and treated as `continue` without data.
    Unknown,
}

impl Verdict {
    /// The verdict `action` spells.
    pub(crate) fn parse(action: &str) -> Self {
        match action {
            "continue" => Self::Continue,
            "final" => Self::Final,
            "deny" => Self::Deny,
            "abort" => Self::Abort,
            _ => Self::Unknown,
        }
    }

    /// The verdict's WIT spelling (`unknown` for anything the host does not know).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Final => "final",
            Self::Deny => "deny",
            Self::Abort => "abort",
            Self::Unknown => "unknown",
        }
    }
}

impl HookResponse {
    /// What the answer means for the chain.
    pub(crate) fn verdict(&self) -> Verdict {
        Verdict::parse(&self.action)
    }
}

/// How a capsule's run loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunExit {
    /// `run` returned.
    Returned,
    /// The host stopped it at an epoch boundary.
    Interrupted(Interrupt),
    /// The guest trapped.
    Trapped(String),
    /// The run instance could not be created.
    Failed(String),
}

impl std::fmt::Display for RunExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Returned => f.write_str("run returned"),
            Self::Interrupted(i) => write!(f, "interrupted: {i}"),
            Self::Trapped(why) => write!(f, "trapped: {why}"),
            Self::Failed(why) => write!(f, "could not start: {why}"),
        }
    }
}

/// Why a handler call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The capsule exports no `astrid-hook-trigger`.
    #[error("capsule `{0}` has no astrid-hook-trigger export")]
    NoHook(String),
    /// The capsule is unloading or unloaded.
    #[error("capsule `{0}` is unloaded")]
    Unloaded(String),
    /// The principal may not act (malformed profile, or disabled).
    #[error("principal `{principal}` refused: {reason}")]
    PrincipalRefused {
        /// The principal.
        principal: PrincipalId,
        /// Why.
        reason: crate::scope::PrincipalRefusal,
    },
    /// A fresh instance could not be created.
    #[error("cannot instantiate capsule `{capsule}`: {source:#}")]
    Instantiate {
        /// The capsule.
        capsule: String,
        /// What wasmtime reported.
        source: wasmtime::Error,
    },
    /// The host stopped the call (deadline, unload).
    #[error("call interrupted: {0}")]
    Interrupted(Interrupt),
    /// The guest trapped; its instance was discarded.
    #[error("guest trapped: {0}")]
    Trapped(String),
    /// The principal's call queue for this capsule is full; the call was dropped.
    #[error("capsule `{capsule}`: call queue of `{principal}` is full; call dropped")]
    QueueFull {
        /// The capsule.
        capsule: String,
        /// The principal.
        principal: PrincipalId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_the_wit_spelling_only() {
        assert_eq!(Verdict::parse("continue"), Verdict::Continue);
        assert_eq!(Verdict::parse("final"), Verdict::Final);
        assert_eq!(Verdict::parse("deny"), Verdict::Deny);
        assert_eq!(Verdict::parse("abort"), Verdict::Abort);
        for other in ["Deny", "deny ", "", "stop"] {
            assert_eq!(Verdict::parse(other), Verdict::Unknown, "{other:?}");
        }
        for known in ["continue", "final", "deny", "abort"] {
            assert_eq!(Verdict::parse(known).as_str(), known);
        }
    }
}
