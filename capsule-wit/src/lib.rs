//! `capsule-wit`: the guest ABI of capsules.
//!
//! This crate will own the vendored `astrid:*@1.0.0` WIT packages (identical names and
//! signatures to the ABI existing capsules are compiled against) and the wasmtime host
//! bindings generated from them. Its contract is that the ABI never drifts: a test fails if the
//! WIT stops parsing or differs from the reference copy.

/// Directory, relative to this crate, holding the WIT packages.
pub const WIT_DIR: &str = "wit";
