//! Where a guest path lands and whether the call may touch it there: the path is located in
//! exactly one mount, then judged (as given and symlink-resolved) against the host-managed
//! parts of a home and the capsule's grants, for how the call uses it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_security::{Decision, FsAccess, FsRoot};
use capsule_vfs::{
    FileKind, GuestPath, Mount, Scheme, Stat, Tree, Workspace, holds_host_anchor, is_host_only,
};

use super::{FsError, FsShared};
use capsule_store::quota::{Charged, ENTRY_BYTES};

/// How an operation uses one of its paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Touch {
    /// Reads what is there.
    Read,
    /// Leaves the entry in place but makes it writable under another name (a link's source).
    Expose,
    /// Creates, writes, replaces, moves or removes the entry.
    Replace,
}

impl Touch {
    fn access(self) -> FsAccess {
        match self {
            Self::Read => FsAccess::Read,
            Self::Expose | Self::Replace => FsAccess::Write,
        }
    }
}

/// The tree a located path lives in.
#[derive(Clone, Debug)]
pub(super) enum Target {
    Workspace(Arc<Workspace>),
    Mount(Arc<Mount>),
}

impl Target {
    fn tree(&self) -> &dyn Tree {
        match self {
            Self::Workspace(w) => w.tree(),
            Self::Mount(m) => m.as_ref(),
        }
    }
}

/// A guest path resolved to its mount.
#[derive(Clone, Debug)]
pub(super) struct Located {
    pub(super) target: Target,
    pub(super) rel: PathBuf,
    /// The grant root gates judge; `None` for the principal's own `/tmp/`.
    pub(super) gate: Option<FsRoot>,
    pub(super) scheme: Scheme,
    /// For absolute mounts, the granted prefix the mount is rooted at.
    pub(super) prefix: Option<PathBuf>,
}

impl Located {
    pub(super) fn same_mount(&self, other: &Located) -> bool {
        self.scheme == other.scheme && self.prefix == other.prefix
    }

    /// The canonical guest spelling of `rel` in this mount.
    pub(super) fn guest_path(&self, rel: &Path) -> String {
        match &self.prefix {
            Some(prefix) => prefix.join(rel).display().to_string(),
            None => GuestPath {
                scheme: self.scheme.clone(),
                rel: rel.to_path_buf(),
            }
            .display(),
        }
    }

    pub(super) fn tree(&self) -> &dyn Tree {
        self.target.tree()
    }

    /// Which part of the principal's storage a change here is charged to.
    pub(super) fn charged(&self) -> Charged {
        match self.scheme {
            Scheme::Home | Scheme::Tmp => Charged::Home,
            Scheme::Workspace | Scheme::Absolute => Charged::Shared,
        }
    }
}

/// Checks `loc` against the host-managed parts of a home and the policy, on both the path as
/// given and its symlink-resolved form.
pub(super) fn gate(shared: &FsShared, loc: &Located, touch: Touch) -> Result<(), FsError> {
    let resolved = loc.tree().resolve_for_gate(&loc.rel)?;
    if loc.scheme == Scheme::Home {
        let managed = is_host_only(&loc.rel)
            || is_host_only(&resolved)
            || (touch != Touch::Read
                && (holds_host_anchor(&loc.rel) || holds_host_anchor(&resolved)));
        if managed {
            return Err(FsError::HostManaged(loc.guest_path(&loc.rel)));
        }
    }
    match &loc.gate {
        None => Ok(()),
        Some(root) => match shared.policy.may_fs(touch.access(), root, &resolved) {
            Decision::Allowed => Ok(()),
            Decision::Denied(reason) => Err(FsError::Denied(reason)),
        },
    }
}

/// The stat of the entry at `rel` itself (a symlink is not followed), if there is one.
pub(super) fn entry(tree: &dyn Tree, rel: &Path) -> Option<Stat> {
    tree.stat(rel, false).ok()
}

/// Bytes of content charged for an entry.
pub(super) fn content(st: &Stat) -> u64 {
    if st.kind == FileKind::File {
        st.size
    } else {
        0
    }
}

/// What removing the name at an entry frees: the name, and the content if no other name
/// keeps it.
pub(super) fn held(st: &Stat) -> u64 {
    let bytes = if st.links <= 1 { content(st) } else { 0 };
    ENTRY_BYTES.saturating_add(bytes)
}
