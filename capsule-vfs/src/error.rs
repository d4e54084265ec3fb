//! Why a filesystem operation failed. Every variant is a fact the host maps to a WIT error code;
//! I/O errors are classified once, here, and an escape attempt is never reported as a mere
//! permission problem.

use std::io;
use std::path::Path;

/// A failed VFS operation.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The path is malformed (NUL, unknown scheme, too long).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// The path leads outside its mount (`..`, or a symlink pointing out).
    #[error("path escapes its mount: {0}")]
    BoundaryEscape(String),
    /// Nothing exists at the path.
    #[error("not found: {0}")]
    NotFound(String),
    /// The operating system refused access.
    #[error("access denied: {0}")]
    Access(String),
    /// Something already exists at the path.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A directory was found where a file was needed.
    #[error("is a directory: {0}")]
    IsDirectory(String),
    /// A file was found where a directory was needed.
    #[error("not a directory: {0}")]
    NotDirectory(String),
    /// Neither a regular file nor a directory (a FIFO, socket or device): the host never
    /// opens one for a guest, so nobody can park a host thread on it.
    #[error("not a regular file: {0}")]
    NotAFile(String),
    /// The directory still has entries.
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    /// A size or count limit was exceeded.
    #[error("{what} is {size}; the limit is {limit}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// Its size or count.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Two paths of one operation are on different mounts.
    #[error("`{0}` and `{1}` are on different mounts")]
    CrossMount(String, String),
    /// No mount serves the path (an absolute path without a grant).
    #[error("no mount serves `{0}`")]
    NoMount(String),
    /// The workspace is not an overlay, so it has nothing to commit or roll back.
    #[error("the workspace is not an overlay")]
    NotOverlay,
    /// The operation was stopped before it finished (the capsule is unloading).
    #[error("the operation was cancelled")]
    Cancelled,
    /// Any other I/O failure.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

const ELOOP: i32 = 40;
const ENAMETOOLONG: i32 = 36;

impl VfsError {
    /// Classifies an I/O error raised while operating on `path`.
    pub fn from_io(path: &Path, e: io::Error) -> Self {
        let p = path.display().to_string();
        if e.to_string().contains("outside of the filesystem") {
            return Self::BoundaryEscape(p);
        }
        match e.kind() {
            io::ErrorKind::NotFound => Self::NotFound(p),
            io::ErrorKind::PermissionDenied => Self::Access(p),
            io::ErrorKind::AlreadyExists => Self::AlreadyExists(p),
            io::ErrorKind::IsADirectory => Self::IsDirectory(p),
            io::ErrorKind::NotADirectory => Self::NotDirectory(p),
            io::ErrorKind::DirectoryNotEmpty => Self::NotEmpty(p),
            _ if e.raw_os_error() == Some(ELOOP) => {
                Self::Access(format!("{p} (symlink not followed)"))
            }
            _ if e.raw_os_error() == Some(ENAMETOOLONG) => {
                Self::InvalidPath(format!("{p} (a name or the path is too long)"))
            }
            _ => Self::Io { path: p, source: e },
        }
    }
}
