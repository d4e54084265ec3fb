//! `capsule-security`: what a capsule and a principal are allowed to do.
//!
//! This crate will own the `CapsulePolicy` parsed once from a manifest's `[capabilities]`,
//! `[publish]` and `[subscribe]` tables, the gates that answer "may principal P in capsule C do
//! X?" with a reason on denial, and principal profiles with their quotas. Its contract is
//! fail-closed: anything not granted is denied, and a malformed input is an error, never a
//! silent default. It has no WebAssembly dependency.

/// The outcome of a capability gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The action is permitted.
    Allowed,
    /// The action is refused, with the reason shown to operators and logs.
    Denied(String),
}
