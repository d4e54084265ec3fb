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

use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use capsule_bus::PrincipalId;
use capsule_security::{Decision, FsAccess, FsRoot};
use capsule_store::KvStore;
use capsule_store::quota::{Charged, ENTRY_BYTES, QuotaError, cost};
use capsule_vfs::{
    Ctl, FileKind, GuestPath, Mount, OpenMode, Scheme, Stat, Tree, Usage, VfsError, Workspace,
    holds_host_anchor, is_host_only,
};
use capsule_wit::astrid::fs::host::{
    Datetime, ErrorCode, FileHandle, FileStat, FileType, Host, HostFileHandle,
    OpenMode as WitOpenMode,
};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;

use crate::state::{FsShared, FsView};

/// Most file handles one capsule instance may hold open.
pub const MAX_OPEN_HANDLES: usize = 16;
/// Largest whole-file read, and largest single `read-at`.
pub const MAX_READ_BYTES: u64 = 10 * 1024 * 1024;
/// Most entries one `fs-readdir` returns.
pub const MAX_READDIR_ENTRIES: usize = 4096;

/// What the guest sees of a failure the host cannot explain without its own paths or the
/// operating system's words.
const OPAQUE_FAILURE: &str = "I/O failure (details are in the host log)";

/// Why a filesystem call failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
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
    Refused(String),
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
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Vfs(e) => match e {
                VfsError::InvalidPath(_) => ErrorCode::InvalidPath,
                VfsError::BoundaryEscape(_) => ErrorCode::BoundaryEscape,
                VfsError::NotFound(_) => ErrorCode::NotFound,
                VfsError::Access(_) => ErrorCode::Access,
                VfsError::AlreadyExists(_) => ErrorCode::AlreadyExists,
                VfsError::IsDirectory(_) => ErrorCode::IsDirectory,
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

/// How an operation uses one of its paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Touch {
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
enum Target {
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
struct Located {
    target: Target,
    rel: PathBuf,
    /// The grant root gates judge; `None` for the principal's own `/tmp/`.
    gate: Option<FsRoot>,
    scheme: Scheme,
    /// For absolute mounts, the granted prefix the mount is rooted at.
    prefix: Option<PathBuf>,
}

impl Located {
    fn same_mount(&self, other: &Located) -> bool {
        self.scheme == other.scheme && self.prefix == other.prefix
    }

    /// The canonical guest spelling of `rel` in this mount.
    fn guest_path(&self, rel: &Path) -> String {
        match &self.prefix {
            Some(prefix) => prefix.join(rel).display().to_string(),
            None => GuestPath {
                scheme: self.scheme.clone(),
                rel: rel.to_path_buf(),
            }
            .display(),
        }
    }

    fn tree(&self) -> &dyn Tree {
        self.target.tree()
    }

    /// Which part of the principal's storage a change here is charged to.
    fn charged(&self) -> Charged {
        match self.scheme {
            Scheme::Home | Scheme::Tmp => Charged::Home,
            Scheme::Workspace | Scheme::Absolute => Charged::Shared,
        }
    }
}

/// Checks `loc` against the host-managed parts of a home and the policy, on both the path as
/// given and its symlink-resolved form.
fn gate(shared: &FsShared, loc: &Located, touch: Touch) -> Result<(), FsError> {
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
fn entry(tree: &dyn Tree, rel: &Path) -> Option<Stat> {
    tree.stat(rel, false).ok()
}

/// Bytes of content charged for an entry.
fn content(st: &Stat) -> u64 {
    if st.kind == FileKind::File {
        st.size
    } else {
        0
    }
}

/// What removing the name at an entry frees: the name, and the content if no other name
/// keeps it.
fn held(st: &Stat) -> u64 {
    let bytes = if st.links <= 1 { content(st) } else { 0 };
    ENTRY_BYTES.saturating_add(bytes)
}

/// Whose storage one call charges, and how it can be stopped.
struct Charge {
    storage: Arc<KvStore>,
    principal: PrincipalId,
    /// The principal's `max_storage_bytes`, or why it may store nothing.
    quota: Result<u64, String>,
    cancel: CancellationToken,
}

impl Charge {
    /// Reserves `bytes` of growth in `tree`.
    fn reserve(&self, tree: Charged, bytes: u64, ctl: &Ctl<'_>) -> Result<(), FsError> {
        let quota = self
            .quota
            .as_ref()
            .map_err(|r| FsError::Refused(r.clone()))?;
        Ok(self
            .storage
            .reserve_files(&self.principal, tree, bytes, *quota, ctl)?)
    }

    fn release(&self, tree: Charged, bytes: u64) {
        self.storage.release_files(&self.principal, tree, bytes);
    }

    /// Runs `f` with `delta` bytes charged to `tree`: growth is reserved first (and given back
    /// if `f` fails), shrinkage is credited once `f` succeeded.
    fn around<T>(
        &self,
        tree: Charged,
        delta: i128,
        ctl: &Ctl<'_>,
        f: impl FnOnce() -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let grow = u64::try_from(delta.max(0)).unwrap_or(u64::MAX);
        let shrink = u64::try_from((-delta).max(0)).unwrap_or(u64::MAX);
        if grow > 0 {
            self.reserve(tree, grow, ctl)?;
        }
        match f() {
            Ok(v) => {
                if shrink > 0 {
                    self.release(tree, shrink);
                }
                Ok(v)
            }
            Err(e) => {
                if grow > 0 {
                    self.release(tree, grow);
                }
                Err(e)
            }
        }
    }

    /// Settles a reservation of `reserved` bytes against the growth that really happened.
    fn settle(&self, tree: Charged, reserved: u64, grew: u64) {
        if grew < reserved {
            self.release(tree, reserved - grew);
        } else if grew > reserved {
            self.storage
                .force_files(&self.principal, tree, grew - reserved);
        }
    }
}

/// What a filesystem operation works with on the blocking pool.
struct Job<'a> {
    locs: &'a [Located],
    charge: &'a Charge,
    ctl: Ctl<'a>,
}

impl Job<'_> {
    fn loc(&self, i: usize) -> &Located {
        &self.locs[i]
    }

    /// Runs `f` with `delta` bytes charged to the tree of path `i`.
    fn charged<T>(
        &self,
        i: usize,
        delta: i128,
        f: impl FnOnce() -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        self.charge
            .around(self.locs[i].charged(), delta, &self.ctl, f)
    }
}

fn datetime(t: Option<SystemTime>) -> Option<Datetime> {
    let t = t?;
    Some(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Datetime {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanoseconds: d.subsec_nanos(),
        },
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                Datetime {
                    seconds: -secs,
                    nanoseconds: 0,
                }
            } else {
                Datetime {
                    seconds: -secs - 1,
                    nanoseconds: 1_000_000_000 - d.subsec_nanos(),
                }
            }
        }
    })
}

fn file_stat(s: &Stat) -> FileStat {
    FileStat {
        size: s.size,
        kind: match s.kind {
            FileKind::Unknown => FileType::TypeUnknown,
            FileKind::File => FileType::Regular,
            FileKind::Directory => FileType::Directory,
            FileKind::Symlink => FileType::Symlink,
            FileKind::BlockDevice => FileType::BlockDevice,
            FileKind::CharDevice => FileType::CharacterDevice,
            FileKind::Fifo => FileType::Fifo,
            FileKind::Socket => FileType::Socket,
        },
        mode: s.mode,
        modified: datetime(s.modified),
        created: datetime(s.created),
        accessed: datetime(s.accessed),
    }
}

/// A handle-mode requirement: what the handle was opened for if it fails, and the check.
type ModeCheck = (&'static str, fn(OpenMode) -> bool);

/// An open file as kept in the resource table.
#[derive(Debug)]
pub(crate) struct FileEntry {
    file: Arc<std::fs::File>,
    mode: OpenMode,
    /// Whose storage growth through a writable handle is charged to, and in which tree: the
    /// principal in scope when it was opened, whoever is in scope later.
    charge: Option<(Arc<Charge>, Charged)>,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("principal", &self.principal)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

fn entry_handle(r: &Resource<FileHandle>) -> Resource<FileEntry> {
    Resource::new_borrow(r.rep())
}

impl FsView<'_> {
    fn locate(&self, path: &str) -> Result<Located, FsError> {
        let gp = GuestPath::parse(path)?;
        let shared = &self.fs.shared;
        let scoped = self.scoped();
        let (target, gate, prefix, rel) = match gp.scheme {
            Scheme::Workspace => (
                Target::Workspace(Arc::clone(&shared.workspace)),
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
        let scoped = self.scoped();
        Charge {
            storage: Arc::clone(&self.fs.shared.storage),
            principal: scoped.principal().clone(),
            quota: scoped
                .profile()
                .as_ref()
                .map(|p| p.quotas.max_storage_bytes)
                .map_err(|reason| reason.to_string()),
            cancel: self.limits.shared.cancel.clone(),
        }
    }

    /// Audits a refusal or logs a failure whose detail the guest does not see.
    fn report(&self, op: &'static str, path: &str, e: &FsError) {
        let principal = self.scoped().principal().clone();
        let capsule = &self.identity.name;
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
        let shared = Arc::clone(&self.fs.shared);
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
        match self.limits.shared.blocking(work).await {
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

    /// Runs `op` on an open handle's file on the blocking pool.
    async fn with_file<T: Send + 'static>(
        &mut self,
        op_name: &'static str,
        handle: &Resource<FileHandle>,
        need: Option<ModeCheck>,
        op: impl FnOnce(&std::fs::File, Option<&(Arc<Charge>, Charged)>) -> Result<T, FsError>
        + Send
        + 'static,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        let entry = self.table.get(&entry_handle(handle))?;
        if let Some((what, allowed)) = need
            && !allowed(entry.mode)
        {
            return Ok(Err(FsError::HandleMode(what).code()));
        }
        let file = Arc::clone(&entry.file);
        let charge = entry.charge.clone();
        match self
            .limits
            .shared
            .blocking(move || op(&file, charge.as_ref()))
            .await
        {
            None => Ok(Err(FsError::Closed.code())),
            Some(Err(panic)) => Err(wasmtime::Error::msg(format!(
                "filesystem worker failed: {panic}"
            ))),
            Some(Ok(Ok(v))) => Ok(Ok(v)),
            Some(Ok(Err(e))) => {
                self.report(op_name, "<handle>", &e);
                Ok(Err(e.code()))
            }
        }
    }
}

fn readable(m: OpenMode) -> bool {
    matches!(m, OpenMode::Read | OpenMode::ReadWrite)
}

fn writable(m: OpenMode) -> bool {
    !matches!(m, OpenMode::Read)
}

fn handle_io(e: std::io::Error) -> FsError {
    FsError::Vfs(VfsError::from_io(Path::new("<handle>"), e))
}

/// Grows or shrinks an open file, charging the growth first: `change` runs only if the
/// growth from `len` to `target` fits the quota, and the charge is settled on what the file
/// really became.
fn resize_charged<T>(
    file: &std::fs::File,
    charge: Option<&(Arc<Charge>, Charged)>,
    target: impl FnOnce(u64) -> u64,
    change: impl FnOnce() -> std::io::Result<T>,
) -> Result<T, FsError> {
    let Some((charge, tree)) = charge else {
        return change().map_err(handle_io);
    };
    let before = file.metadata().map_err(handle_io)?.len();
    let grow = target(before).saturating_sub(before);
    let cancel = charge.cancel.clone();
    let cancelled = move || cancel.is_cancelled();
    if grow > 0 {
        charge.reserve(*tree, grow, &Ctl::new(&cancelled))?;
    }
    let result = change().map_err(handle_io);
    let after = file.metadata().map_or(before + grow, |m| m.len());
    charge.settle(*tree, grow, after.saturating_sub(before));
    if after < before {
        charge.release(*tree, before - after);
    }
    result
}

impl Host for FsView<'_> {
    async fn fs_open(
        &mut self,
        path: String,
        mode: WitOpenMode,
    ) -> wasmtime::Result<Result<Resource<FileHandle>, ErrorCode>> {
        if self.fs.handles >= MAX_OPEN_HANDLES {
            return Ok(Err(FsError::HandleQuota.code()));
        }
        let mode = match mode {
            WitOpenMode::Read => OpenMode::Read,
            WitOpenMode::Write => OpenMode::Write,
            WitOpenMode::Append => OpenMode::Append,
            WitOpenMode::ReadWrite => OpenMode::ReadWrite,
        };
        let touch = if mode == OpenMode::Read {
            Touch::Read
        } else {
            Touch::Replace
        };
        let charge = Arc::new(self.charge());
        let for_handle = Arc::clone(&charge);
        let opened = self
            .run("open", &[(&path, touch)], move |j| {
                let (loc, ctl) = (j.loc(0), &j.ctl);
                let old = entry(loc.tree(), &loc.rel);
                let delta: i128 = match (mode, &old) {
                    (OpenMode::Read, _) => 0,
                    (_, None) => i128::from(ENTRY_BYTES),
                    (OpenMode::Write, Some(st)) => -i128::from(content(st)),
                    (_, Some(_)) => 0,
                };
                let file = j.charged(0, delta, || Ok(loc.tree().open(&loc.rel, mode, ctl)?))?;
                Ok((file, (mode != OpenMode::Read).then(|| loc.charged())))
            })
            .await?;
        Ok(match opened {
            Ok((file, charged)) => {
                let entry = self.table.push(FileEntry {
                    file: Arc::new(file),
                    mode,
                    charge: charged.map(|tree| (for_handle, tree)),
                })?;
                self.fs.handles += 1;
                Ok(Resource::new_own(entry.rep()))
            }
            Err(e) => Err(e),
        })
    }

    async fn fs_exists(&mut self, path: String) -> wasmtime::Result<Result<bool, ErrorCode>> {
        self.run("exists", &[(&path, Touch::Read)], |j| {
            Ok(j.loc(0).tree().exists(&j.loc(0).rel)?)
        })
        .await
    }

    async fn fs_mkdir(&mut self, path: String) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run("mkdir", &[(&path, Touch::Replace)], |j| {
            let loc = j.loc(0);
            let delta = if loc.tree().exists(&loc.rel)? {
                0
            } else {
                i128::from(ENTRY_BYTES)
            };
            j.charged(0, delta, || Ok(loc.tree().create_dir(&loc.rel, false)?))
        })
        .await
    }

    async fn fs_mkdir_all(&mut self, path: String) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run("mkdir-all", &[(&path, Touch::Replace)], |j| {
            let loc = j.loc(0);
            let mut missing = 0i128;
            for dir in loc.rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
                if loc.tree().exists(dir)? {
                    break;
                }
                missing += 1;
            }
            j.charged(0, missing * i128::from(ENTRY_BYTES), || {
                Ok(loc.tree().create_dir(&loc.rel, true)?)
            })
        })
        .await
    }

    async fn fs_readdir(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<Vec<String>, ErrorCode>> {
        self.run("readdir", &[(&path, Touch::Read)], |j| {
            Ok(j.loc(0)
                .tree()
                .read_dir(&j.loc(0).rel, MAX_READDIR_ENTRIES)?)
        })
        .await
    }

    async fn fs_stat(&mut self, path: String) -> wasmtime::Result<Result<FileStat, ErrorCode>> {
        self.run("stat", &[(&path, Touch::Read)], |j| {
            Ok(file_stat(&j.loc(0).tree().stat(&j.loc(0).rel, true)?))
        })
        .await
    }

    async fn fs_stat_symlink(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<FileStat, ErrorCode>> {
        self.run("stat-symlink", &[(&path, Touch::Read)], |j| {
            Ok(file_stat(&j.loc(0).tree().stat(&j.loc(0).rel, false)?))
        })
        .await
    }

    async fn fs_unlink(&mut self, path: String) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run("unlink", &[(&path, Touch::Replace)], |j| {
            let loc = j.loc(0);
            let freed = entry(loc.tree(), &loc.rel).map_or(0, |st| held(&st));
            j.charged(0, -i128::from(freed), || {
                Ok(loc.tree().remove_file(&loc.rel)?)
            })
        })
        .await
    }

    async fn read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        self.run("read", &[(&path, Touch::Read)], |j| {
            Ok(j.loc(0).tree().read(&j.loc(0).rel, MAX_READ_BYTES)?)
        })
        .await
    }

    async fn write_file(
        &mut self,
        path: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run("write", &[(&path, Touch::Replace)], move |j| {
            let loc = j.loc(0);
            let new = content.len() as i128;
            let delta = match entry(loc.tree(), &loc.rel) {
                None => new + i128::from(ENTRY_BYTES),
                Some(st) => new - i128::from(self::content(&st)),
            };
            j.charged(0, delta, || {
                Ok(loc.tree().write(&loc.rel, &content, false, &j.ctl)?)
            })
        })
        .await
    }

    async fn fs_append(
        &mut self,
        path: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run("append", &[(&path, Touch::Replace)], move |j| {
            let loc = j.loc(0);
            let mut delta = content.len() as i128;
            if entry(loc.tree(), &loc.rel).is_none() {
                delta += i128::from(ENTRY_BYTES);
            }
            j.charged(0, delta, || {
                Ok(loc.tree().write(&loc.rel, &content, true, &j.ctl)?)
            })
        })
        .await
    }

    async fn fs_copy(
        &mut self,
        src: String,
        dst: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(
            "copy",
            &[(&src, Touch::Read), (&dst, Touch::Replace)],
            |j| {
                let (from, to) = (j.loc(0), j.loc(1));
                let size = from.tree().stat(&from.rel, true)?.size;
                let delta = i128::from(size)
                    - entry(to.tree(), &to.rel)
                        .map_or(-i128::from(ENTRY_BYTES), |st| i128::from(content(&st)));
                j.charged(1, delta, || {
                    Ok(from.tree().copy(&from.rel, &to.rel, &j.ctl)?)
                })
            },
        )
        .await
    }

    async fn fs_rename(
        &mut self,
        src: String,
        dst: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(
            "rename",
            &[(&src, Touch::Replace), (&dst, Touch::Replace)],
            |j| {
                let (from, to) = (j.loc(0), j.loc(1));
                // A rename over another entry frees that entry, unless both names are one file.
                let same = |a: &Stat, b: &Stat| a.file_id == b.file_id;
                let freed = match (entry(from.tree(), &from.rel), entry(to.tree(), &to.rel)) {
                    (Some(a), Some(b)) if !same(&a, &b) => held(&b),
                    _ => 0,
                };
                j.charged(1, -i128::from(freed), || {
                    Ok(from.tree().rename(&from.rel, &to.rel, &j.ctl)?)
                })
            },
        )
        .await
    }

    async fn fs_remove_dir_all(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<u64, ErrorCode>> {
        self.run("remove-dir-all", &[(&path, Touch::Replace)], |j| {
            let loc = j.loc(0);
            let mut done = Usage::default();
            let removed = loc.tree().remove_dir_all(&loc.rel, &j.ctl, &mut done);
            // What went is credited even when the removal stopped early.
            j.charge.release(loc.charged(), cost(&done));
            removed?;
            Ok(done.entries)
        })
        .await
    }

    async fn fs_canonicalize(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        self.run("canonicalize", &[(&path, Touch::Read)], |j| {
            let canonical = j.loc(0).tree().canonicalize(&j.loc(0).rel)?;
            Ok(j.loc(0).guest_path(&canonical))
        })
        .await
    }

    async fn fs_read_link(&mut self, path: String) -> wasmtime::Result<Result<String, ErrorCode>> {
        self.run("read-link", &[(&path, Touch::Read)], |j| {
            Ok(j.loc(0)
                .tree()
                .read_link(&j.loc(0).rel)?
                .display()
                .to_string())
        })
        .await
    }

    async fn fs_hard_link(
        &mut self,
        src: String,
        link_path: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        // The source must be writable: through the new name it could be written.
        self.run(
            "hard-link",
            &[(&src, Touch::Expose), (&link_path, Touch::Replace)],
            |j| {
                let (from, to) = (j.loc(0), j.loc(1));
                j.charged(1, i128::from(ENTRY_BYTES), || {
                    Ok(from.tree().hard_link(&from.rel, &to.rel, &j.ctl)?)
                })
            },
        )
        .await
    }
}

impl HostFileHandle for FsView<'_> {
    async fn read_at(
        &mut self,
        self_: Resource<FileHandle>,
        offset: u64,
        max_bytes: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        let want = u64::from(max_bytes).min(MAX_READ_BYTES);
        self.with_file(
            "read-at",
            &self_,
            Some(("writing", readable)),
            move |f, _| {
                let mut buf = Vec::new();
                let mut reader = OffsetReader { file: f, offset };
                (&mut reader)
                    .take(want)
                    .read_to_end(&mut buf)
                    .map_err(handle_io)?;
                Ok(buf)
            },
        )
        .await
    }

    async fn write_at(
        &mut self,
        self_: Resource<FileHandle>,
        offset: u64,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, ErrorCode>> {
        let append = self.table.get(&entry_handle(&self_))?.mode == OpenMode::Append;
        self.with_file(
            "write-at",
            &self_,
            Some(("reading", writable)),
            move |f, charge| {
                let len = data.len() as u64;
                let end = |before: u64| {
                    if append {
                        before.saturating_add(len)
                    } else {
                        offset.saturating_add(len).max(before)
                    }
                };
                resize_charged(f, charge, end, || {
                    if append {
                        std::io::Write::write_all(&mut &*f, &data)?;
                    } else {
                        f.write_all_at(&data, offset)?;
                    }
                    Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
                })
            },
        )
        .await
    }

    async fn sync_data(
        &mut self,
        self_: Resource<FileHandle>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with_file("sync-data", &self_, None, |f, _| {
            f.sync_data().map_err(handle_io)
        })
        .await
    }

    async fn sync_all(
        &mut self,
        self_: Resource<FileHandle>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with_file("sync-all", &self_, None, |f, _| {
            f.sync_all().map_err(handle_io)
        })
        .await
    }

    async fn stat(
        &mut self,
        self_: Resource<FileHandle>,
    ) -> wasmtime::Result<Result<FileStat, ErrorCode>> {
        self.with_file("stat", &self_, None, |f, _| {
            f.metadata()
                .map(|m| file_stat(&Stat::from(m)))
                .map_err(handle_io)
        })
        .await
    }

    async fn set_len(
        &mut self,
        self_: Resource<FileHandle>,
        size: u64,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with_file(
            "set-len",
            &self_,
            Some(("reading", writable)),
            move |f, charge| resize_charged(f, charge, |_| size, || f.set_len(size)),
        )
        .await
    }

    async fn drop(&mut self, rep: Resource<FileHandle>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<FileEntry>::new_own(rep.rep()))?;
        self.fs.handles = self.fs.handles.saturating_sub(1);
        Ok(())
    }
}

/// Positional reads as a `Read`, advancing its own offset.
struct OffsetReader<'f> {
    file: &'f std::fs::File,
    offset: u64,
}

impl std::io::Read for OffsetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
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
