//! `astrid:fs/host@1.0.0`: every guest path is parsed into (mount, relative path), judged by the
//! capsule's `fs_read`/`fs_write` grants on its symlink-resolved form, and then executed by
//! cap-std inside that mount on the blocking pool. Home and `/tmp/` are the principal in
//! scope's. The host-managed parts of a home are out of reach: nothing at or below
//! `.local/log` or `.config/env` is reachable at all, and those directories, `.local`,
//! `.local/tmp`, `.config` and the home itself are never created, replaced, moved or removed
//! by a guest, whatever the spelling of the path. A hard link's source must be writable, so a
//! link never turns read access into write access. Every write is charged to the principal's
//! storage quota (shared with KV, see `quota.rs`) before it runs: one that does not fit is
//! refused with `quota` and changes nothing. Refusals by policy are audited; errors reach the
//! guest as codes without host paths or OS text, which go to the host log.
//! Limits: 16 open handles per instance, whole-file reads of 10 MiB, 4096 entries per readdir.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_security::{CapsulePolicy, FsRoot};
use capsule_vfs::{Ctl, GuestPath, Mount, Scheme, VfsError};
use capsule_wit::astrid::fs::host::ErrorCode;

use crate::error::{HostFailure, LoadError};
use crate::host::{Assembly, Capability, InstanceCx, View};
use crate::scope::PrincipalRefusal;
use capsule_store::KvStore;
use capsule_store::quota::QuotaError;

mod charge;
mod handle;
mod lazy;
mod locate;
mod paths;

use charge::{Charge, Job};
use lazy::LazyWorkspace;
use locate::{Located, Target, Touch, gate};

/// Most file handles one capsule instance may hold open.
pub const MAX_OPEN_HANDLES: usize = 16;
/// Largest whole-file read, and largest single `read-at`.
pub const MAX_READ_BYTES: u64 = 10 * 1024 * 1024;
/// Most entries one `fs-readdir` returns.
pub const MAX_READDIR_ENTRIES: usize = 4096;

/// What the guest sees of a failure the host cannot explain without its own paths or the
/// operating system's words.
const OPAQUE_FAILURE: &str = "I/O failure (details are in the host log)";

/// The `astrid:fs` capability.
pub(crate) struct FsHost;

/// Capsule-wide data of the filesystem capability.
#[derive(Debug)]
pub(crate) struct FsShared {
    policy: Arc<CapsulePolicy>,
    /// The KV database, which keeps each principal's file usage beside its KV usage.
    storage: Arc<KvStore>,
    /// The capsule's workspace (`cwd://`), plain or overlay, opened by its first use.
    pub(crate) workspace: LazyWorkspace,
    /// The overlay's upper directory, removed at unload.
    overlay_dir: Option<PathBuf>,
    /// Host directories granted by absolute path, longest prefix first.
    absolute: Vec<(PathBuf, Arc<Mount>)>,
    owner_home: Option<Arc<Mount>>,
    owner_tmp: Option<Arc<Mount>>,
}

/// The filesystem context of one Store.
#[derive(Debug)]
pub(crate) struct FsCtx {
    shared: Arc<FsShared>,
    /// Open file handles of this instance.
    handles: usize,
}

/// The view `astrid:fs` is implemented on.
type FsView<'a> = View<'a, FsCtx>;

runs_on_view!(FsHost);

impl Capability for FsHost {
    const INTERFACES: &'static [&'static str] = &["astrid:fs/host@1.0.0"];
    type Shared = Arc<FsShared>;
    type Ctx = FsCtx;

    link_bindings!(capsule_wit::astrid::fs::host);

    /// Prepares the capsule's mounts: its workspace (plain or overlay; created now, opened by
    /// its first use), the host directories its grants name, and its owner's home and tmp.
    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        let (config, name) = (cx.config, &cx.identity.name);
        let fail = |path: &Path, source: std::io::Error| LoadError::Mount {
            capsule: name.clone(),
            path: path.to_path_buf(),
            source,
        };
        let lower_dir = config
            .workspace_root
            .clone()
            .unwrap_or_else(|| config.state_dir.join("workspaces").join(name));
        let overlay_dir = config.overlay_workspace.then(|| {
            config
                .state_dir
                .join("overlays")
                .join(cx.identity.session.simple().to_string())
        });
        let workspace = LazyWorkspace::prepare(&lower_dir, overlay_dir.as_deref())
            .map_err(|(path, e)| fail(&path, e))?;
        let absolute = cx
            .policy
            .absolute_roots()
            .into_iter()
            .map(|root| {
                // The canonical directory checked against the host policy is what gets
                // mounted, opened without following any link, so a link swapped in after
                // the check fails the mount instead of redirecting it.
                let resolved = cx.mounts.get(root).ok_or_else(|| LoadError::Host {
                    capsule: name.clone(),
                    failure: HostFailure::Unresolved(root.to_path_buf()),
                })?;
                Mount::open_no_links(resolved)
                    .map(|m| (root.to_path_buf(), Arc::new(m)))
                    .map_err(|e| fail(root, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(FsShared {
            policy: Arc::clone(cx.policy),
            storage: Arc::clone(&cx.services.kv),
            workspace,
            overlay_dir,
            absolute,
            owner_home: cx.owner_files.home.clone(),
            owner_tmp: cx.owner_files.tmp.clone(),
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        FsCtx {
            shared: Arc::clone(shared),
            handles: 0,
        }
    }

    fn unloaded(shared: &Self::Shared) {
        if let Some(dir) = &shared.overlay_dir
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the overlay directory");
        }
    }
}

/// Why a filesystem call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FsError {
    /// The VFS refused or failed.
    #[error(transparent)]
    Vfs(#[from] VfsError),
    /// The manifest's grants do not allow it.
    #[error("capability denied: {0}")]
    Denied(String),
    /// The path is in, or would move or replace, a host-managed part of the home.
    #[error("`{0}` is managed by the host")]
    HostManaged(String),
    /// The principal's home or tmp could not be opened.
    #[error("the principal's {0} is unavailable")]
    Unavailable(&'static str),
    /// The instance holds [`MAX_OPEN_HANDLES`] handles already.
    #[error("at most {MAX_OPEN_HANDLES} open file handles per capsule instance")]
    HandleQuota,
    /// The handle was not opened for this kind of access.
    #[error("the handle was opened for {0}")]
    HandleMode(&'static str),
    /// The principal's storage quota would be exceeded.
    #[error("{0}")]
    Quota(String),
    /// The principal in scope may not store anything (its profile is refused).
    #[error("principal refused: {0}")]
    Refused(PrincipalRefusal),
    /// Storage accounting failed on the host's side.
    #[error("storage accounting failed: {0}")]
    Accounting(String),
    /// The capsule is unloading.
    #[error("the capsule is unloading")]
    Closed,
}

impl From<QuotaError> for FsError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Unmeasured(VfsError::Cancelled) => Self::Closed,
            QuotaError::Exceeded { .. } | QuotaError::Unmeasured(_) => Self::Quota(e.to_string()),
            QuotaError::Kv(_) => Self::Accounting(e.to_string()),
        }
    }
}

impl FsError {
    /// The WIT error code the guest sees.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::Vfs(e) => match e {
                VfsError::InvalidPath(_) => ErrorCode::InvalidPath,
                VfsError::BoundaryEscape(_) => ErrorCode::BoundaryEscape,
                VfsError::NotFound(_) => ErrorCode::NotFound,
                VfsError::Access(_) => ErrorCode::Access,
                VfsError::AlreadyExists(_) => ErrorCode::AlreadyExists,
                VfsError::IsDirectory(_) => ErrorCode::IsDirectory,
                VfsError::NotAFile(_) => ErrorCode::Access,
                VfsError::NotDirectory(_) => ErrorCode::NotDirectory,
                VfsError::NotEmpty(_) => ErrorCode::NotEmpty,
                VfsError::TooLarge { .. } => ErrorCode::TooLarge,
                VfsError::CrossMount(..) => ErrorCode::CrossVfs,
                VfsError::NoMount(_) => ErrorCode::CapabilityDenied,
                VfsError::Cancelled => ErrorCode::Closed,
                VfsError::NotOverlay => ErrorCode::Unknown(e.to_string()),
                VfsError::Io { .. } => ErrorCode::Unknown(OPAQUE_FAILURE.into()),
            },
            Self::Denied(_) | Self::HostManaged(_) | Self::Refused(_) => {
                ErrorCode::CapabilityDenied
            }
            Self::Unavailable(_) => ErrorCode::Unknown(self.to_string()),
            Self::HandleQuota | Self::Quota(_) => ErrorCode::Quota,
            Self::HandleMode(_) => ErrorCode::Access,
            Self::Accounting(_) => ErrorCode::Unknown(OPAQUE_FAILURE.into()),
            Self::Closed => ErrorCode::Closed,
        }
    }

    /// Whether policy refused the call (audited), as opposed to a plain failure.
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Denied(_)
                | Self::HostManaged(_)
                | Self::Quota(_)
                | Self::Refused(_)
                | Self::Vfs(VfsError::BoundaryEscape(_) | VfsError::NoMount(_))
        )
    }

    /// Whether the host's own detail was withheld from the guest (and belongs in the log).
    fn is_opaque(&self) -> bool {
        matches!(self, Self::Vfs(VfsError::Io { .. }) | Self::Accounting(_))
    }
}

/// The name of an error code as the WIT spells it.
fn code_name(code: &ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotFound => "not-found",
        ErrorCode::Access => "access",
        ErrorCode::CapabilityDenied => "capability-denied",
        ErrorCode::BoundaryEscape => "boundary-escape",
        ErrorCode::InvalidPath => "invalid-path",
        ErrorCode::WouldBlock => "would-block",
        ErrorCode::IsDirectory => "is-directory",
        ErrorCode::NotDirectory => "not-directory",
        ErrorCode::NotEmpty => "not-empty",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::Quota => "quota",
        ErrorCode::CrossVfs => "cross-vfs",
        ErrorCode::AlreadyExists => "already-exists",
        ErrorCode::Closed => "closed",
        ErrorCode::Unknown(_) => "unknown",
    }
}

impl FsView<'_> {
    fn locate(&self, path: &str) -> Result<Located, FsError> {
        let gp = GuestPath::parse(path)?;
        let shared = &self.ctx.shared;
        let scoped = self.core.scoped;
        let (target, gate, prefix, rel) = match gp.scheme {
            Scheme::Workspace => (
                Target::Workspace(shared.workspace.get()?),
                Some(FsRoot::Workspace),
                None,
                gp.rel.clone(),
            ),
            Scheme::Home => {
                let mount = scoped
                    .home(shared.owner_home.as_ref())
                    .ok_or(FsError::Unavailable("home"))?;
                (
                    Target::Mount(Arc::clone(mount)),
                    Some(FsRoot::Home),
                    None,
                    gp.rel.clone(),
                )
            }
            Scheme::Tmp => {
                let mount = scoped
                    .tmp(shared.owner_tmp.as_ref())
                    .ok_or(FsError::Unavailable("tmp directory"))?;
                (Target::Mount(Arc::clone(mount)), None, None, gp.rel.clone())
            }
            Scheme::Absolute => {
                let abs = Path::new("/").join(&gp.rel);
                let (prefix, mount) = shared
                    .absolute
                    .iter()
                    .find(|(prefix, _)| abs.starts_with(prefix))
                    .ok_or_else(|| {
                        FsError::Denied(format!("no fs grant covers `{}`", abs.display()))
                    })?;
                let rel = abs
                    .strip_prefix(prefix)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                (
                    Target::Mount(Arc::clone(mount)),
                    Some(FsRoot::Absolute(prefix.clone())),
                    Some(prefix.clone()),
                    rel,
                )
            }
        };
        Ok(Located {
            target,
            rel,
            gate,
            scheme: gp.scheme,
            prefix,
        })
    }

    /// Who is charged for what this call stores.
    fn charge(&self) -> Charge {
        let scoped = self.core.scoped;
        Charge {
            storage: Arc::clone(&self.ctx.shared.storage),
            principal: scoped.principal().clone(),
            quota: scoped
                .profile()
                .as_ref()
                .map(|p| p.quotas.max_storage_bytes)
                .map_err(Clone::clone),
            cancel: self.core.limits.shared.cancel.clone(),
        }
    }

    /// Audits a refusal or logs a failure whose detail the guest does not see.
    fn report(&self, op: &'static str, path: &str, e: &FsError) {
        let principal = self.core.scoped.principal().clone();
        let capsule = &self.core.scoped.identity.name;
        if e.is_refusal() {
            crate::host::audit::fs_refused(capsule, &principal, op, path, code_name(&e.code()), e);
        } else if e.is_opaque() {
            tracing::warn!(capsule = %capsule, %principal, op, path, error = %e, "filesystem call failed");
        }
    }

    /// Locates `paths`, then (on the blocking pool) gates each for how it is touched and runs
    /// `op`; refusals are audited as `op` on the first path.
    async fn run<T: Send + 'static>(
        &mut self,
        op_name: &'static str,
        paths: &[(&str, Touch)],
        op: impl FnOnce(&Job<'_>) -> Result<T, FsError> + Send + 'static,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        let first = paths.first().map_or("", |(p, _)| *p);
        let located: Result<Vec<(Located, Touch)>, FsError> = paths
            .iter()
            .map(|(p, touch)| self.locate(p).map(|l| (l, *touch)))
            .collect();
        let located = match located {
            Ok(l) => l,
            Err(e) => {
                self.report(op_name, first, &e);
                return Ok(Err(e.code()));
            }
        };
        if let [(a, _), (b, _)] = located.as_slice()
            && !a.same_mount(b)
        {
            let e = FsError::Vfs(VfsError::CrossMount(
                paths[0].0.to_string(),
                paths[1].0.to_string(),
            ));
            return Ok(Err(e.code()));
        }
        let shared = Arc::clone(&self.ctx.shared);
        let charge = self.charge();
        let work = move || {
            for (loc, touch) in &located {
                gate(&shared, loc, *touch)?;
            }
            let locs: Vec<Located> = located.into_iter().map(|(l, _)| l).collect();
            let cancel = charge.cancel.clone();
            let cancelled = move || cancel.is_cancelled();
            let job = Job {
                locs: &locs,
                charge: &charge,
                ctl: Ctl::new(&cancelled),
            };
            op(&job)
        };
        match self.core.limits.blocking(work).await? {
            None => Ok(Err(FsError::Closed.code())),
            Some(Err(panic)) => Err(wasmtime::Error::msg(format!(
                "filesystem worker failed: {panic}"
            ))),
            Some(Ok(Ok(v))) => Ok(Ok(v)),
            Some(Ok(Err(e))) => {
                self.report(op_name, first, &e);
                Ok(Err(e.code()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_detail_never_reaches_the_guest() {
        let io = FsError::Vfs(VfsError::from_io(
            Path::new("notes/a.txt"),
            std::io::Error::other("disk failure under /var/lib/capsules/home/bob"),
        ));
        let accounting = FsError::Accounting("redb: /var/lib/capsules/kv.redb is locked".into());
        for e in [io, accounting] {
            match e.code() {
                ErrorCode::Unknown(text) => {
                    assert_eq!(text, OPAQUE_FAILURE);
                    assert!(e.is_opaque(), "{e} is logged instead");
                }
                other => panic!("{e}: {other:?}"),
            }
        }
        assert_eq!(
            code_name(&FsError::Quota("over".into()).code()),
            "quota",
            "quota refusals carry their own code"
        );
        assert!(FsError::HostManaged("home://.local".into()).is_refusal());
    }
}
