//! Why a capsule could not be loaded. Every variant names the capsule or file and carries the
//! typed cause: what the host itself found out is a value (an I/O error, a wasmtime error, a
//! refusal, a run-loop exit), never text made up for the occasion, and no message shows a
//! value's `Debug` form.

use std::path::PathBuf;

use capsule_bus::PrincipalId;
use capsule_security::{GrantError, ManifestError};

use crate::approval::Refusal;
use crate::lifecycle::LifecyclePhase;
use crate::outcome::RunExit;
use crate::scope::PrincipalRefusal;
use capsule_security::GraphError;

/// The astrid capsule ABI release this host implements; `[package] astrid-version`
/// requirements are checked against it.
pub const HOST_ABI_VERSION: semver::Version = semver::Version::new(0, 8, 0);

/// Largest component file accepted.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// Why a capsule could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component file cannot be used.
    #[error("{}: {problem}", file.display())]
    Component {
        /// The file as the manifest names it.
        file: PathBuf,
        /// What is wrong with it.
        #[source]
        problem: ComponentProblem,
    },
    /// The capsule requires a different host ABI.
    #[error(
        "capsule `{capsule}` requires astrid-version {required}; this host implements {HOST_ABI_VERSION}"
    )]
    HostVersion {
        /// The capsule.
        capsule: String,
        /// Its requirement.
        required: semver::VersionReq,
    },
    /// The bytes are not a valid component.
    #[error("capsule `{capsule}`: not a valid component: {source:#}")]
    Compile {
        /// The capsule.
        capsule: String,
        /// What the compiler reported.
        source: wasmtime::Error,
    },
    /// The component imports interfaces this host does not provide.
    #[error("capsule `{capsule}` imports what this host does not provide: {}", imports.join(", "))]
    MissingImports {
        /// The capsule.
        capsule: String,
        /// Every missing import, by name.
        imports: Vec<String>,
    },
    /// An entry point has the wrong type.
    #[error("capsule `{capsule}`: export `{export}` must be `{expected}`")]
    BadExport {
        /// The capsule.
        capsule: String,
        /// The export.
        export: &'static str,
        /// Its required type.
        expected: &'static str,
    },
    /// The linker rejected the component.
    #[error("capsule `{capsule}` cannot be linked: {source:#}")]
    Link {
        /// The capsule.
        capsule: String,
        /// What the linker reported.
        source: wasmtime::Error,
    },
    /// The owner principal may not act.
    #[error("capsule `{capsule}`: owner `{owner}` refused: {reason}")]
    OwnerRefused {
        /// The capsule.
        capsule: String,
        /// The owner.
        owner: PrincipalId,
        /// Why.
        #[source]
        reason: PrincipalRefusal,
    },
    /// A directory the capsule needs (its workspace, or a host directory its grants name)
    /// cannot be opened.
    #[error("capsule `{capsule}`: cannot mount {}: {source}", path.display())]
    Mount {
        /// The capsule.
        capsule: String,
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `astrid-install` or `astrid-upgrade` failed; the capsule was not loaded.
    #[error("capsule `{capsule}`: {} failed: {failure}", phase.name())]
    Lifecycle {
        /// The capsule.
        capsule: String,
        /// The call that failed.
        phase: LifecyclePhase,
        /// How it failed.
        #[source]
        failure: LifecycleFailure,
    },
    /// The host refused to start these capsules: requests not approved by the operator, or
    /// never grantable on this host. Every refused capsule of the operation is listed.
    #[error("{}", refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Refused {
        /// Each refused capsule and why.
        refusals: Vec<Refusal>,
    },
    /// The operator's stored grant for the capsule could not be read or written.
    #[error("capsule `{capsule}`: grant: {source}")]
    Grant {
        /// The capsule.
        capsule: String,
        /// The underlying error.
        source: GrantError,
    },
    /// The record of the version installed for the owner could not be read or written.
    #[error("capsule `{capsule}`: installed version record: {source}")]
    Installed {
        /// The capsule.
        capsule: String,
        /// The record's path and what went wrong with it.
        source: capsule_store::InstalledError,
    },
    /// A capsule of that name is already loaded.
    #[error("a capsule named `{0}` is already loaded")]
    AlreadyLoaded(String),
    /// The set of capsules cannot be ordered (missing import, cycle, duplicate).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A provider's run loop ended before it signalled ready, so its importer was not started.
    #[error(
        "capsule `{capsule}` was not started: its provider `{provider}` stopped before it was ready ({})",
        exit.as_ref().map_or_else(|| "no run loop".to_string(), ToString::to_string)
    )]
    ProviderStopped {
        /// The importer.
        capsule: String,
        /// The provider.
        provider: String,
        /// How the provider's run loop ended (`None`: it had none).
        exit: Option<RunExit>,
    },
    /// The host failed, not the capsule.
    #[error("host failure while loading `{capsule}`: {failure}")]
    Host {
        /// The capsule.
        capsule: String,
        /// What failed.
        #[source]
        failure: HostFailure,
    },
}

/// What is wrong with a component file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentProblem {
    /// It could not be read (or its directory resolved).
    #[error("cannot read component: {0}")]
    Read(#[source] std::io::Error),
    /// It resolves outside the capsule directory.
    #[error(
        "resolves to {}, outside the capsule directory {}",
        resolved.display(),
        dir.display()
    )]
    Outside {
        /// Where it resolves to.
        resolved: PathBuf,
        /// The capsule directory.
        dir: PathBuf,
    },
    /// It is not a regular file.
    #[error("is {0}, not a regular component file")]
    NotRegular(FileKind),
    /// It is larger than [`MAX_COMPONENT_BYTES`].
    #[error("component is {size} bytes; the limit is {MAX_COMPONENT_BYTES}")]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// It does not have the digest the manifest declares.
    #[error("component does not match the manifest's hash")]
    HashMismatch,
}

/// What a path that should be a component file is instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A named pipe.
    Fifo,
    /// A character or block device.
    Device,
    /// A Unix socket.
    Socket,
    /// Anything else that is not a regular file.
    Other,
}

impl FileKind {
    /// The kind of `t`, for a file type that is not a regular file.
    pub(crate) fn of(t: std::fs::FileType) -> Self {
        use std::os::unix::fs::FileTypeExt;
        if t.is_dir() {
            Self::Directory
        } else if t.is_fifo() {
            Self::Fifo
        } else if t.is_char_device() || t.is_block_device() {
            Self::Device
        } else if t.is_socket() {
            Self::Socket
        } else {
            Self::Other
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Directory => "a directory",
            Self::Fifo => "a FIFO",
            Self::Device => "a device",
            Self::Socket => "a socket",
            Self::Other => "not a regular file",
        })
    }
}

/// How an install or upgrade call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleFailure {
    /// The owner may not act, so the call never ran.
    #[error(transparent)]
    Refused(PrincipalRefusal),
    /// Its instance could not be created or its export found.
    #[error("{0:#}")]
    Start(wasmtime::Error),
    /// The guest failed: its own last words on stderr when it left any, and how the call
    /// ended.
    #[error("{0}")]
    Guest(String),
}

/// A failure of the host itself while loading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostFailure {
    /// The compile task did not complete.
    #[error("compile task failed: {0}")]
    CompileTask(#[source] tokio::task::JoinError),
    /// A granted directory had no resolved counterpart to mount.
    #[error("granted directory {} was never resolved", .0.display())]
    Unresolved(PathBuf),
}
