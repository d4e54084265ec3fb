//! `capsule-vfs`: confined filesystem access for capsules.
//!
//! Contract: every path a guest gives is parsed into (mount, normalised relative path) and then
//! resolved by cap-std relative to that mount's directory handle, so `..`, absolute paths and
//! symlinks can never leave it. Mounts: the capsule's workspace (`cwd://` and bare paths,
//! optionally an [`Overlay`] with `commit`/`rollback`), the invoking principal's home
//! (`home://`) and scratch directory (`/tmp/`), and host directories granted by absolute path.
//! No entry in a mount gets deeper or longer than a guest path can name, and every walk, removal
//! and copy is iterative, bounded and cancellable ([`Ctl`]), so a guest cannot make the host
//! recurse, run out of descriptors or work without end. The crate has no WebAssembly
//! dependency.
//!
//! # Example
//!
//! Mount a workspace behind an overlay, resolve guest paths (one that tries to climb out is
//! refused), write through the overlay, and commit: the real directory changes only then.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use capsule_vfs::{Ctl, GuestPath, Mount, Overlay, Scheme, VfsError, Workspace, read_to_string};
//!
//! let tmp = tempfile::tempdir()?;
//! let (real, pending) = (tmp.path().join("workspace"), tmp.path().join("upper"));
//! let overlay = Overlay::new(Mount::create(&real)?, Mount::create(&pending)?);
//! let workspace = Workspace::Overlay(overlay);
//!
//! let path = GuestPath::parse("cwd://notes/../todo.txt")?;
//! assert_eq!(path.scheme, Scheme::Workspace);
//! assert_eq!(path.rel, Path::new("todo.txt"));
//! assert!(matches!(GuestPath::parse("../../etc/passwd"), Err(VfsError::BoundaryEscape(_))));
//!
//! let tree = workspace.tree();
//! tree.write(&path.rel, b"ship it", false, &Ctl::uncancellable())?;
//! assert_eq!(read_to_string(tree, &path.rel)?, "ship it");
//! assert!(!real.join("todo.txt").exists(), "pending until committed");
//!
//! workspace.commit()?;
//! assert_eq!(std::fs::read_to_string(real.join("todo.txt"))?, "ship it");
//! # Ok(()) }
//! ```

mod error;
mod hostfile;
mod layout;
mod mount;
mod overlay;
mod path;
mod walk;

pub use error::VfsError;
pub use layout::{
    HOST_ANCHORS, HOST_SUBTREES, LogFile, OverlayStamp, PrincipalDirs, PrincipalFiles, StateLayout,
    holds_host_anchor, home_usage_visit, is_host_only,
};
pub use mount::{FileKind, Mount, OpenMode, Stat, Tree, open_file_no_links};
pub use overlay::{Overlay, read_to_string};
pub use path::{GuestPath, MAX_GUEST_DEPTH, MAX_GUEST_PATH, Scheme};
pub use walk::{Ctl, MAX_WALK_ENTRIES, Usage, Visit};

/// A capsule's workspace: the real directory, or an overlay over it.
#[derive(Debug)]
pub enum Workspace {
    /// Writes go straight to the directory.
    Plain(Mount),
    /// Writes wait in an upper layer until committed.
    Overlay(Overlay),
}

impl Workspace {
    /// The tree guest operations run against.
    pub fn tree(&self) -> &dyn Tree {
        match self {
            Self::Plain(m) => m,
            Self::Overlay(o) => o,
        }
    }

    /// Applies pending overlay changes to the real workspace.
    pub fn commit(&self) -> Result<(), VfsError> {
        match self {
            Self::Plain(_) => Err(VfsError::NotOverlay),
            Self::Overlay(o) => o.commit(),
        }
    }

    /// Discards pending overlay changes.
    pub fn rollback(&self) -> Result<(), VfsError> {
        match self {
            Self::Plain(_) => Err(VfsError::NotOverlay),
            Self::Overlay(o) => o.rollback(),
        }
    }
}
