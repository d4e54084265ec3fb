//! `capsule-vfs`: confined filesystem mounts for capsules.
//!
//! This crate will own the cap-std based [`Mount`]s a capsule's file calls are resolved
//! against: each principal's `home://` and `/tmp/` mounts and each capsule's workspace
//! (`cwd://`), optionally as an overlay with `commit` and `rollback`. Its contract is that no
//! guest path — through `..`, an absolute path or a symlink — can ever leave its mount.
//! Until the storage issue lands it only defines the mount vocabulary.

/// The kinds of mount a guest path can be resolved against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mount {
    /// The capsule's workspace (`cwd://` and bare paths).
    Workspace,
    /// The invoking principal's home directory (`home://`).
    Home,
    /// The invoking principal's scratch directory (`/tmp/`).
    Tmp,
}
