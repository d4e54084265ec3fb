//! `capsule-vfs`: confined filesystem access for capsules.
//!
//! Contract: every path a guest or a principal's name can influence is resolved by cap-std
//! relative to a directory handle, so `..`, absolute paths and symlinks can never leave it.
//! The crate will own the `home://`, `/tmp/` and workspace mounts; today it owns the state
//! directory layout and the per-principal files the host writes on a capsule's behalf (log
//! files). It has no WebAssembly dependency.

mod layout;

pub use layout::StateLayout;
