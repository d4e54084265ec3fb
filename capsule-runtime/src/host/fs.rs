//! `astrid:fs/host@1.0.0`: every guest path is parsed into (mount, relative path), judged by the
//! capsule's `fs_read`/`fs_write` grants on its symlink-resolved form, and then executed by
//! cap-std inside that mount on the blocking pool. Home and `/tmp/` are the principal in
//! scope's; the host-managed parts of a home (log files, env overlays) are never reachable.
//! Limits: 16 open handles per instance, whole-file reads of 10 MiB, 4096 entries per readdir.

use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use capsule_security::{Decision, FsAccess, FsRoot};
use capsule_vfs::{
    Ctl, FileKind, GuestPath, Mount, OpenMode, Scheme, Stat, Tree, Usage, VfsError, Workspace,
};
use capsule_wit::astrid::fs::host::{
    Datetime, ErrorCode, FileHandle, FileStat, FileType, Host, HostFileHandle,
    OpenMode as WitOpenMode,
};
use wasmtime::component::Resource;

use crate::state::{FsShared, FsView};

/// Most file handles one capsule instance may hold open.
pub const MAX_OPEN_HANDLES: usize = 16;
/// Largest whole-file read, and largest single `read-at`.
pub const MAX_READ_BYTES: u64 = 10 * 1024 * 1024;
/// Most entries one `fs-readdir` returns.
pub const MAX_READDIR_ENTRIES: usize = 4096;

/// Home subtrees the host manages on the principal's behalf; guests never reach them.
const HOST_MANAGED: &[&str] = &[".local/log", ".config/env"];

/// Why a filesystem call failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The VFS refused or failed.
    #[error(transparent)]
    Vfs(#[from] VfsError),
    /// The manifest's grants do not allow it.
    #[error("capability denied: {0}")]
    Denied(String),
    /// The path is in a host-managed part of the home.
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
    /// The capsule is unloading.
    #[error("the capsule is unloading")]
    Closed,
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
                VfsError::NotOverlay | VfsError::Io { .. } => ErrorCode::Unknown(e.to_string()),
            },
            Self::Denied(_) | Self::HostManaged(_) => ErrorCode::CapabilityDenied,
            Self::Unavailable(_) => ErrorCode::Unknown(self.to_string()),
            Self::HandleQuota => ErrorCode::Quota,
            Self::HandleMode(_) => ErrorCode::Access,
            Self::Closed => ErrorCode::Closed,
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
}

fn host_managed(rel: &Path) -> bool {
    HOST_MANAGED.iter().any(|m| rel.starts_with(m))
}

/// Checks `loc` against the policy on its symlink-resolved path.
fn gate(shared: &FsShared, loc: &Located, access: FsAccess) -> Result<(), FsError> {
    let resolved = loc.target.tree().resolve_for_gate(&loc.rel)?;
    if loc.scheme == Scheme::Home && (host_managed(&loc.rel) || host_managed(&resolved)) {
        return Err(FsError::HostManaged(loc.guest_path(&loc.rel)));
    }
    match &loc.gate {
        None => Ok(()),
        Some(root) => match shared.policy.may_fs(access, root, &resolved) {
            Decision::Allowed => Ok(()),
            Decision::Denied(reason) => Err(FsError::Denied(reason)),
        },
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

    /// Locates `paths`, then (on the blocking pool) gates each with its access and runs `op`.
    async fn run<T: Send + 'static>(
        &mut self,
        paths: &[(&str, FsAccess)],
        op: impl FnOnce(&[Located]) -> Result<T, FsError> + Send + 'static,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        let located: Result<Vec<(Located, FsAccess)>, FsError> = paths
            .iter()
            .map(|(p, access)| self.locate(p).map(|l| (l, *access)))
            .collect();
        let located = match located {
            Ok(l) => l,
            Err(e) => return Ok(Err(e.code())),
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
        let work = move || {
            for (loc, access) in &located {
                gate(&shared, loc, *access)?;
            }
            let locs: Vec<Located> = located.into_iter().map(|(l, _)| l).collect();
            op(&locs)
        };
        match self.limits.shared.blocking(work).await {
            None => Ok(Err(FsError::Closed.code())),
            Some(Err(panic)) => Err(wasmtime::Error::msg(format!(
                "filesystem worker failed: {panic}"
            ))),
            Some(Ok(result)) => Ok(result.map_err(|e| e.code())),
        }
    }

    /// Runs `op` on an open handle's file on the blocking pool.
    async fn with_file<T: Send + 'static>(
        &mut self,
        handle: &Resource<FileHandle>,
        need: Option<ModeCheck>,
        op: impl FnOnce(&std::fs::File) -> std::io::Result<T> + Send + 'static,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        let entry = self.table.get(&entry_handle(handle))?;
        if let Some((what, allowed)) = need
            && !allowed(entry.mode)
        {
            return Ok(Err(FsError::HandleMode(what).code()));
        }
        let file = Arc::clone(&entry.file);
        match self.limits.shared.blocking(move || op(&file)).await {
            None => Ok(Err(FsError::Closed.code())),
            Some(Err(panic)) => Err(wasmtime::Error::msg(format!(
                "filesystem worker failed: {panic}"
            ))),
            Some(Ok(result)) => Ok(result
                .map_err(|e| FsError::Vfs(VfsError::from_io(Path::new("<handle>"), e)).code())),
        }
    }
}

fn readable(m: OpenMode) -> bool {
    matches!(m, OpenMode::Read | OpenMode::ReadWrite)
}

fn writable(m: OpenMode) -> bool {
    !matches!(m, OpenMode::Read)
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
        let access = if mode == OpenMode::Read {
            FsAccess::Read
        } else {
            FsAccess::Write
        };
        let opened = self
            .run(&[(&path, access)], move |l| {
                Ok(l[0]
                    .target
                    .tree()
                    .open(&l[0].rel, mode, &Ctl::uncancellable())?)
            })
            .await?;
        Ok(match opened {
            Ok(file) => {
                let entry = self.table.push(FileEntry {
                    file: Arc::new(file),
                    mode,
                })?;
                self.fs.handles += 1;
                Ok(Resource::new_own(entry.rep()))
            }
            Err(e) => Err(e),
        })
    }

    async fn fs_exists(&mut self, path: String) -> wasmtime::Result<Result<bool, ErrorCode>> {
        self.run(&[(&path, FsAccess::Read)], |l| {
            Ok(l[0].target.tree().exists(&l[0].rel)?)
        })
        .await
    }

    async fn fs_mkdir(&mut self, path: String) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(&[(&path, FsAccess::Write)], |l| {
            Ok(l[0].target.tree().create_dir(&l[0].rel, false)?)
        })
        .await
    }

    async fn fs_mkdir_all(&mut self, path: String) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(&[(&path, FsAccess::Write)], |l| {
            Ok(l[0].target.tree().create_dir(&l[0].rel, true)?)
        })
        .await
    }

    async fn fs_readdir(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<Vec<String>, ErrorCode>> {
        self.run(&[(&path, FsAccess::Read)], |l| {
            Ok(l[0]
                .target
                .tree()
                .read_dir(&l[0].rel, MAX_READDIR_ENTRIES)?)
        })
        .await
    }

    async fn fs_stat(&mut self, path: String) -> wasmtime::Result<Result<FileStat, ErrorCode>> {
        self.run(&[(&path, FsAccess::Read)], |l| {
            Ok(file_stat(&l[0].target.tree().stat(&l[0].rel, true)?))
        })
        .await
    }

    async fn fs_stat_symlink(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<FileStat, ErrorCode>> {
        self.run(&[(&path, FsAccess::Read)], |l| {
            Ok(file_stat(&l[0].target.tree().stat(&l[0].rel, false)?))
        })
        .await
    }

    async fn fs_unlink(&mut self, path: String) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(&[(&path, FsAccess::Write)], |l| {
            Ok(l[0].target.tree().remove_file(&l[0].rel)?)
        })
        .await
    }

    async fn read_file(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        self.run(&[(&path, FsAccess::Read)], |l| {
            Ok(l[0].target.tree().read(&l[0].rel, MAX_READ_BYTES)?)
        })
        .await
    }

    async fn write_file(
        &mut self,
        path: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(&[(&path, FsAccess::Write)], move |l| {
            Ok(l[0]
                .target
                .tree()
                .write(&l[0].rel, &content, false, &Ctl::uncancellable())?)
        })
        .await
    }

    async fn fs_append(
        &mut self,
        path: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(&[(&path, FsAccess::Write)], move |l| {
            Ok(l[0]
                .target
                .tree()
                .write(&l[0].rel, &content, true, &Ctl::uncancellable())?)
        })
        .await
    }

    async fn fs_copy(
        &mut self,
        src: String,
        dst: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(&[(&src, FsAccess::Read), (&dst, FsAccess::Write)], |l| {
            Ok(l[0]
                .target
                .tree()
                .copy(&l[0].rel, &l[1].rel, &Ctl::uncancellable())?)
        })
        .await
    }

    async fn fs_rename(
        &mut self,
        src: String,
        dst: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(&[(&src, FsAccess::Write), (&dst, FsAccess::Write)], |l| {
            Ok(l[0]
                .target
                .tree()
                .rename(&l[0].rel, &l[1].rel, &Ctl::uncancellable())?)
        })
        .await
    }

    async fn fs_remove_dir_all(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<u64, ErrorCode>> {
        self.run(&[(&path, FsAccess::Write)], |l| {
            let mut done = Usage::default();
            l[0].target
                .tree()
                .remove_dir_all(&l[0].rel, &Ctl::uncancellable(), &mut done)?;
            Ok(done.entries)
        })
        .await
    }

    async fn fs_canonicalize(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        self.run(&[(&path, FsAccess::Read)], |l| {
            let canonical = l[0].target.tree().canonicalize(&l[0].rel)?;
            Ok(l[0].guest_path(&canonical))
        })
        .await
    }

    async fn fs_read_link(&mut self, path: String) -> wasmtime::Result<Result<String, ErrorCode>> {
        self.run(&[(&path, FsAccess::Read)], |l| {
            Ok(l[0]
                .target
                .tree()
                .read_link(&l[0].rel)?
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
        self.run(
            &[(&src, FsAccess::Read), (&link_path, FsAccess::Write)],
            |l| {
                Ok(l[0]
                    .target
                    .tree()
                    .hard_link(&l[0].rel, &l[1].rel, &Ctl::uncancellable())?)
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
        self.with_file(&self_, Some(("writing", readable)), move |f| {
            let mut buf = Vec::new();
            let mut reader = OffsetReader { file: f, offset };
            (&mut reader).take(want).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
    }

    async fn write_at(
        &mut self,
        self_: Resource<FileHandle>,
        offset: u64,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, ErrorCode>> {
        let append = self.table.get(&entry_handle(&self_))?.mode == OpenMode::Append;
        self.with_file(&self_, Some(("reading", writable)), move |f| {
            if append {
                std::io::Write::write_all(&mut &*f, &data)?;
            } else {
                f.write_all_at(&data, offset)?;
            }
            Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn sync_data(
        &mut self,
        self_: Resource<FileHandle>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with_file(&self_, None, |f| f.sync_data()).await
    }

    async fn sync_all(
        &mut self,
        self_: Resource<FileHandle>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with_file(&self_, None, |f| f.sync_all()).await
    }

    async fn stat(
        &mut self,
        self_: Resource<FileHandle>,
    ) -> wasmtime::Result<Result<FileStat, ErrorCode>> {
        self.with_file(&self_, None, |f| {
            f.metadata().map(|m| file_stat(&Stat::from(m)))
        })
        .await
    }

    async fn set_len(
        &mut self,
        self_: Resource<FileHandle>,
        size: u64,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with_file(&self_, Some(("reading", writable)), move |f| {
            f.set_len(size)
        })
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
