//! Install and upgrade. The version of each capsule installed for each owner is remembered
//! by [`capsule_store::InstalledVersions`]; a first load runs `astrid-install`, a load with a
//! different version runs `astrid-upgrade`, and the record is written only after the guest's
//! lifecycle call succeeded. During these calls, and only then, a capsule may ask its
//! operator for values through `astrid:elicit`; the questions go to a pluggable [`Elicitor`].

use capsule_bus::PrincipalId;
use futures::future::BoxFuture;

/// The lifecycle call in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecyclePhase {
    /// First installation.
    Install,
    /// Upgrade from the recorded version.
    Upgrade {
        /// The version installed before.
        from: semver::Version,
    },
}

impl LifecyclePhase {
    /// `install` or `upgrade`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Upgrade { .. } => "upgrade",
        }
    }
}

/// What kind of answer a prompt wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElicitKind {
    /// Free text.
    Text,
    /// A credential: the answer goes straight to the secret store.
    Secret,
    /// One of the offered options.
    Select,
    /// A list of values.
    Array,
}

/// A question a capsule asks its operator during install or upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElicitPrompt {
    /// The asking capsule.
    pub capsule: String,
    /// The principal it is being installed for.
    pub principal: PrincipalId,
    /// What kind of answer is wanted.
    pub kind: ElicitKind,
    /// The configuration key the answer is for.
    pub key: String,
    /// The question, in the capsule's words.
    pub description: String,
    /// The choices, for `Select`.
    pub options: Option<Vec<String>>,
    /// The suggested answer.
    pub default: Option<String>,
}

impl ElicitPrompt {
    /// `capsule`, being installed for `principal`, asks `description` for `key`; no options,
    /// no default.
    pub fn new(
        capsule: impl Into<String>,
        principal: PrincipalId,
        kind: ElicitKind,
        key: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            capsule: capsule.into(),
            principal,
            kind,
            key: key.into(),
            description: description.into(),
            options: None,
            default: None,
        }
    }
}

/// An operator's answer.
#[derive(Clone, PartialEq, Eq)]
pub enum ElicitAnswer {
    /// One value (`Text`, `Select`).
    Value(String),
    /// Several values (`Array`).
    Values(Vec<String>),
    /// A secret (`Secret`); never logged.
    Secret(Vec<u8>),
}

impl std::fmt::Debug for ElicitAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(v) => f.debug_tuple("Value").field(v).finish(),
            Self::Values(v) => f.debug_tuple("Values").field(v).finish(),
            Self::Secret(_) => f.write_str("Secret(<redacted>)"),
        }
    }
}

/// Why no answer came.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElicitRefusal {
    /// The operator declined.
    #[error("the operator cancelled")]
    Cancelled,
    /// Nobody can be asked.
    #[error("nobody can answer: {0}")]
    Unavailable(String),
}

/// Answers a capsule's questions during install and upgrade (a terminal, a UI, a test).
pub trait Elicitor: Send + Sync + 'static {
    /// Asks `prompt`; resolves with the answer or a refusal.
    fn elicit(
        &self,
        prompt: ElicitPrompt,
    ) -> BoxFuture<'static, Result<ElicitAnswer, ElicitRefusal>>;
}

/// Decides which lifecycle call (if any) a load needs.
pub(crate) fn phase_for(
    recorded: Option<semver::Version>,
    current: &semver::Version,
) -> Option<LifecyclePhase> {
    match recorded {
        None => Some(LifecyclePhase::Install),
        Some(v) if &v != current => Some(LifecyclePhase::Upgrade { from: v }),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn phases_follow_the_record() {
        assert_eq!(phase_for(None, &v("1.0.0")), Some(LifecyclePhase::Install));
        assert_eq!(phase_for(Some(v("1.0.0")), &v("1.0.0")), None);
        assert_eq!(
            phase_for(Some(v("1.0.0")), &v("1.1.0")),
            Some(LifecyclePhase::Upgrade { from: v("1.0.0") })
        );
    }
}
