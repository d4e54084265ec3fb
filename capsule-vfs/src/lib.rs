//! `capsule-vfs`: confined filesystem access for capsules.
//!
//! Contract: every path a guest gives is parsed into (mount, normalised relative path) and then
//! resolved by cap-std relative to that mount's directory handle, so `..`, absolute paths and
//! symlinks can never leave it. Mounts: the capsule's workspace (`cwd://` and bare paths,
//! optionally an [`Overlay`] with `commit`/`rollback`), the invoking principal's home
//! (`home://`) and scratch directory (`/tmp/`), and host directories granted by absolute path.
//! The crate has no WebAssembly dependency.

mod error;
mod layout;
mod mount;
mod overlay;
mod path;

pub use error::VfsError;
pub use layout::{PrincipalFiles, StateLayout};
pub use mount::{FileKind, Mount, OpenMode, Stat, Tree, open_file_no_links};
pub use overlay::{Overlay, read_to_string};
pub use path::{GuestPath, MAX_GUEST_PATH, Scheme};

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
