//! A `Mount` is a cap-std directory handle: every path is resolved by cap-std relative to it, so
//! no `..`, absolute path or symlink can leave it. `Tree` is the set of operations both a plain
//! mount and the overlay workspace provide. What a mount creates is private to the host user
//! (files 0600, directories 0700, whatever the umask) or, once the mount is given to a
//! principal's own user ([`Mount::give_to`]), to that user; such a mount uses a file with a
//! second name only if it is that user's. No entry below a mount gets a path longer than a
//! guest path may be, so every walk of a mount stays bounded.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use cap_std::ambient_authority;
use cap_std::fs::{
    Dir, DirBuilder, DirBuilderExt, FileTypeExt, Metadata, MetadataExt, OpenOptions, OpenOptionsExt,
};

use crate::error::VfsError;
use crate::walk::{self, Ctl, Usage, Visit};

/// Opens the directory at `path` (absolute, without `.` or `..`) one component at a time,
/// without following a symbolic link anywhere on the way.
fn open_dir_no_links(path: &Path) -> std::io::Result<Dir> {
    use cap_fs_ext::DirExt;
    let not_plain = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not an absolute path without `.` or `..`",
                path.display()
            ),
        )
    };
    let mut components = path.components();
    if components.next() != Some(std::path::Component::RootDir) {
        return Err(not_plain());
    }
    let mut dir = Dir::open_ambient_dir("/", ambient_authority())?;
    for c in components {
        let std::path::Component::Normal(part) = c else {
            return Err(not_plain());
        };
        dir = dir.open_dir_nofollow(part)?;
    }
    Ok(dir)
}

/// Opens the file at `path` (absolute, without `.` or `..`) for reading without following a
/// symbolic link in any component and without blocking on a FIFO or device swapped in: the
/// file opened is the one at the path a check resolved.
pub fn open_file_no_links(path: &Path) -> std::io::Result<std::fs::File> {
    use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsSyncExt};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        ));
    };
    let mut opts = OpenOptions::new();
    opts.read(true).follow(FollowSymlinks::No).nonblock(true);
    Ok(open_dir_no_links(parent)?
        .open_with(name, &opts)?
        .into_std())
}

/// The kind of a filesystem object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Something else.
    Unknown,
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (only reported without following it).
    Symlink,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// Metadata of a filesystem object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Kind.
    pub kind: FileKind,
    /// Unix permission bits.
    pub mode: u32,
    /// Names (hard links) the object has.
    pub links: u64,
    /// Device and inode: equal for two names of one object.
    pub file_id: (u64, u64),
    /// Last modification.
    pub modified: Option<SystemTime>,
    /// Creation, when the platform records it.
    pub created: Option<SystemTime>,
    /// Last access.
    pub accessed: Option<SystemTime>,
}

impl From<std::fs::Metadata> for Stat {
    /// The stat of a file already open through a mount (its handle's metadata).
    fn from(m: std::fs::Metadata) -> Self {
        Self::from_metadata(&Metadata::from_just_metadata(m))
    }
}

impl Stat {
    fn from_metadata(m: &Metadata) -> Self {
        let t = m.file_type();
        let kind = if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_dir() {
            FileKind::Directory
        } else if t.is_file() {
            FileKind::File
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Unknown
        };
        Self {
            size: m.len(),
            kind,
            mode: m.mode(),
            links: m.nlink(),
            file_id: (m.dev(), m.ino()),
            modified: m.modified().ok().map(|t| t.into_std()),
            created: m.created().ok().map(|t| t.into_std()),
            accessed: m.accessed().ok().map(|t| t.into_std()),
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }
}

/// How a file handle is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read an existing file.
    Read,
    /// Create or truncate, then write.
    Write,
    /// Create if missing, append.
    Append,
    /// Create if missing, read and write without truncating.
    ReadWrite,
}

/// Dangling symlinks `Tree::resolve_for_gate` follows before it gives up.
const MAX_GATE_LINKS: usize = 40;

/// The operations a mounted tree provides; paths are normalised and relative to its root.
pub trait Tree: Send + Sync + std::fmt::Debug {
    /// Metadata, following a final symlink or not.
    fn stat(&self, p: &Path, follow: bool) -> Result<Stat, VfsError>;
    /// Whether something exists at `p` (a dangling symlink counts).
    fn exists(&self, p: &Path) -> Result<bool, VfsError>;
    /// The whole content of a file of at most `limit` bytes.
    fn read(&self, p: &Path, limit: u64) -> Result<Vec<u8>, VfsError>;
    /// Creates or replaces (or appends to) a file.
    fn write(&self, p: &Path, data: &[u8], append: bool, ctl: &Ctl<'_>) -> Result<(), VfsError>;
    /// Creates a directory (and its parents when `all`).
    fn create_dir(&self, p: &Path, all: bool) -> Result<(), VfsError>;
    /// Entry names of a directory, sorted; more than `limit` entries is an error.
    fn read_dir(&self, p: &Path, limit: usize) -> Result<Vec<String>, VfsError>;
    /// Removes a file (or symlink).
    fn remove_file(&self, p: &Path) -> Result<(), VfsError>;
    /// Removes a directory and everything below it, without recursion and within
    /// [`MAX_WALK_ENTRIES`](crate::MAX_WALK_ENTRIES); `done` counts what went, also when the
    /// removal stops early.
    fn remove_dir_all(&self, p: &Path, ctl: &Ctl<'_>, done: &mut Usage) -> Result<(), VfsError>;
    /// Renames within the tree. A directory is moved only if no path below it becomes longer
    /// or deeper than a guest path may be ([`MAX_GUEST_PATH`](crate::MAX_GUEST_PATH),
    /// [`MAX_GUEST_DEPTH`](crate::MAX_GUEST_DEPTH)); the mount root is never moved.
    fn rename(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError>;
    /// Copies a file within the tree: the copy appears whole or not at all, holes stay holes.
    fn copy(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError>;
    /// Creates a hard link within the tree.
    fn hard_link(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError>;
    /// The path with symlinks resolved, relative to the root.
    fn canonicalize(&self, p: &Path) -> Result<PathBuf, VfsError>;
    /// The target of a symlink.
    fn read_link(&self, p: &Path) -> Result<PathBuf, VfsError>;
    /// Opens a file handle.
    fn open(&self, p: &Path, mode: OpenMode, ctl: &Ctl<'_>) -> Result<std::fs::File, VfsError>;
    /// What is stored below the directory `p` (not `p` itself), deciding per entry (by its
    /// path relative to the tree) whether it counts.
    fn usage(
        &self,
        p: &Path,
        ctl: &Ctl<'_>,
        decide: &dyn Fn(&Path) -> Visit,
    ) -> Result<Usage, VfsError>;

    /// The path gates should judge: `p` with symlinks resolved, or, for a path that does not
    /// exist yet, its longest existing ancestor resolved with the rest appended. A dangling
    /// symlink on the way is followed too, since creating a file through it creates its
    /// target.
    fn resolve_for_gate(&self, p: &Path) -> Result<PathBuf, VfsError> {
        let mut target = p.to_path_buf();
        for _ in 0..MAX_GATE_LINKS {
            let mut existing = target.clone();
            let mut rest: Vec<std::ffi::OsString> = Vec::new();
            let followed = loop {
                match self.canonicalize(&existing) {
                    Ok(mut c) => {
                        for part in rest.iter().rev() {
                            c.push(part);
                        }
                        return Ok(c);
                    }
                    Err(VfsError::NotFound(_)) => {
                        if self
                            .stat(&existing, false)
                            .is_ok_and(|s| s.kind == FileKind::Symlink)
                        {
                            let mut next = existing.parent().unwrap_or(Path::new("")).to_path_buf();
                            next.push(self.read_link(&existing)?);
                            break next;
                        }
                        let Some(name) = existing.file_name().map(ToOwned::to_owned) else {
                            return Err(VfsError::Access(format!(
                                "{} cannot be resolved",
                                p.display()
                            )));
                        };
                        rest.push(name);
                        existing.pop();
                    }
                    Err(e) => return Err(e),
                }
            };
            target = followed;
            for part in rest.iter().rev() {
                target.push(part);
            }
        }
        Err(VfsError::Access(format!(
            "{} (more than {MAX_GATE_LINKS} dangling symlinks)",
            p.display()
        )))
    }
}

/// The empty path is the mount root.
pub(crate) fn at(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}

/// Refuses a copy whose destination already is its source, by name, hard link or symlink:
/// replacing the destination would empty the source before it is read.
pub(crate) fn refuse_same_file(
    src: &std::fs::File,
    dst: &cap_std::fs::Metadata,
    from: &Path,
    to: &Path,
) -> Result<(), VfsError> {
    let a = Metadata::from_just_metadata(src.metadata().map_err(|e| VfsError::from_io(from, e))?);
    if a.dev() == dst.dev() && a.ino() == dst.ino() {
        return Err(same_file(from, to));
    }
    Ok(())
}

/// The error for an operation whose source and destination are one file.
pub(crate) fn same_file(from: &Path, to: &Path) -> VfsError {
    VfsError::InvalidPath(format!(
        "`{}` and `{}` are the same file",
        from.display(),
        to.display()
    ))
}

/// A directory handle confining every operation to its tree.
#[derive(Debug)]
pub struct Mount {
    dir: Dir,
    root: PathBuf,
    /// The user and group what this mount creates is given to, once set.
    owner: std::sync::OnceLock<(u32, u32)>,
    /// The device and inode of the directory `dir` opened, read once: an open handle's
    /// identity never changes.
    identity: std::sync::OnceLock<(u64, u64)>,
}

impl Mount {
    /// Opens (creating it, mode 0700, if missing) the directory at `root`.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(root)?;
        Self::open(root)
    }

    /// Opens the existing directory at `root`.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            dir: Dir::open_ambient_dir(root, ambient_authority())?,
            root: root.to_path_buf(),
            owner: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
        })
    }

    /// Opens the existing directory at `root` (absolute, without `.` or `..`, such as a
    /// canonical path) one component at a time, refusing a symbolic link in any of them: the
    /// directory opened is the one a check resolved, even if a link was swapped in since.
    pub fn open_no_links(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            dir: open_dir_no_links(root)?,
            root: root.to_path_buf(),
            owner: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
        })
    }

    /// Wraps an already-open directory handle rooted at `root`.
    pub fn from_dir(dir: Dir, root: PathBuf) -> Self {
        Self {
            dir,
            root,
            owner: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
        }
    }

    /// From now on, every file and directory this mount creates belongs to user `uid` and
    /// group `gid` (a principal's own ids, so its processes can use what its capsules made);
    /// what exists already is left as it is. The first owner set stays.
    pub fn give_to(&self, uid: u32, gid: u32) {
        let _first = self.owner.set((uid, gid));
    }

    /// Gives the entry open as `fd`, which this mount just created, to the mount's owner.
    fn give(&self, fd: &impl std::os::fd::AsFd, p: &Path) -> Result<(), VfsError> {
        let Some(&(uid, gid)) = self.owner.get() else {
            return Ok(());
        };
        // The empty path with `AT_EMPTY_PATH` changes the descriptor's own inode, also for a
        // directory handle opened `O_PATH`; nothing is resolved again.
        rustix::fs::chownat(
            fd,
            "",
            Some(rustix::fs::Uid::from_raw_unchecked(uid)),
            Some(rustix::fs::Gid::from_raw_unchecked(gid)),
            rustix::fs::AtFlags::EMPTY_PATH,
        )
        .map_err(|e| VfsError::from_io(p, e.into()))
    }

    /// Opens `p` with `opts`, which may create it, emptying it if `truncate`; a file this call
    /// creates is given to the mount's owner, one that exists is opened as it is. The file is
    /// emptied only once it passed the checks of [`Self::open_regular`]: a truncating open
    /// would empty whatever a link planted there leads to before anything is checked.
    fn open_owned(
        &self,
        p: &Path,
        opts: &OpenOptions,
        truncate: bool,
    ) -> Result<cap_std::fs::File, VfsError> {
        let file = self.open_created(p, opts)?;
        if truncate {
            file.set_len(0).map_err(Self::err(p))?;
        }
        Ok(file)
    }

    fn open_created(&self, p: &Path, opts: &OpenOptions) -> Result<cap_std::fs::File, VfsError> {
        if self.owner.get().is_none() {
            return self.open_regular(p, &mut opts.clone());
        }
        let mut fresh = opts.clone();
        fresh.create_new(true);
        match self.open_regular(p, &mut fresh) {
            Ok(file) => {
                self.give(&file, p)?;
                Ok(file)
            }
            // An existing file is opened without `O_CREAT`, which a kernel with
            // `protected_regular` refuses even to root for a file of the principal's in a
            // sticky directory of the host's (the home).
            Err(VfsError::AlreadyExists(_)) => self.open_regular(p, opts.clone().create(false)),
            Err(e) => Err(e),
        }
    }

    /// Creates the directory `p` (and, with `all`, its missing parents), giving each one
    /// created to the mount's owner.
    fn create_dirs_owned(&self, p: &Path, all: bool) -> Result<(), VfsError> {
        use cap_fs_ext::DirExt;
        let make = |q: &Path| -> Result<(), VfsError> {
            self.dir
                .create_dir_with(q, &Self::private_dirs(false))
                .map_err(Self::err(q))?;
            let made = self.dir.open_dir_nofollow(q).map_err(Self::err(q))?;
            self.give(&made, q)
        };
        if !all {
            return make(p);
        }
        let mut prefix = PathBuf::new();
        for part in p.components() {
            prefix.push(part);
            match make(&prefix) {
                Ok(()) | Err(VfsError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if self.stat(p, true)?.is_dir() {
            Ok(())
        } else {
            Err(VfsError::AlreadyExists(p.display().to_string()))
        }
    }

    /// The host directory this mount is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the directory this handle opened is still the one at [`Self::root`]: not moved
    /// away, removed or replaced, and no link put in its place. A holder keeping the handle
    /// between uses checks this before relying on it again.
    pub fn still_at_root(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let mine = match self.identity.get() {
            Some(id) => *id,
            None => {
                let Ok(m) = self.dir.dir_metadata() else {
                    return false;
                };
                *self.identity.get_or_init(|| (m.dev(), m.ino()))
            }
        };
        std::fs::symlink_metadata(&self.root)
            .is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == mine)
    }

    /// The directory handle itself, for the host's own files opened relative to it.
    pub(crate) fn dir(&self) -> &Dir {
        &self.dir
    }

    fn err(p: &Path) -> impl Fn(std::io::Error) -> VfsError + '_ {
        move |e| VfsError::from_io(p, e)
    }

    /// Options creating a private file (0600) when it is missing.
    /// Opens `p` with `opts` without blocking (a FIFO with nobody at the other end would
    /// otherwise hold the calling thread until someone comes) and keeps it only if it is a
    /// regular file.
    fn open_regular(
        &self,
        p: &Path,
        opts: &mut OpenOptions,
    ) -> Result<cap_std::fs::File, VfsError> {
        use cap_fs_ext::OpenOptionsSyncExt;
        let file = self
            .dir
            .open_with(at(p), opts.nonblock(true))
            .map_err(Self::err(p))?;
        let meta = file.metadata().map_err(Self::err(p))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            return Err(VfsError::IsDirectory(p.display().to_string()));
        }
        if !kind.is_file() {
            return Err(VfsError::NotAFile(p.display().to_string()));
        }
        // A principal's processes can hard-link a file of the host's into the tree (where the
        // kernel does not stop them): the host would read or write it for them. A file with
        // another name is used only if it is the principal's own.
        if let Some(&(uid, _)) = self.owner.get()
            && meta.nlink() > 1
            && meta.uid() != uid
        {
            return Err(VfsError::Access(format!(
                "{} has another name and is not the principal's own",
                p.display()
            )));
        }
        Ok(file)
    }

    fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
        opts.mode(0o600)
    }

    /// A builder of private directories (0700).
    fn private_dirs(recursive: bool) -> DirBuilder {
        let mut b = DirBuilder::new();
        b.recursive(recursive);
        b.mode(0o700);
        b
    }

    /// A fresh name next to `p` for a file being assembled before it replaces `p`.
    pub(crate) fn staging_name(p: &Path) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!(".capsule-staging-{}-{n}", std::process::id());
        match p.parent() {
            Some(parent) => parent.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Refuses a move of `from` to `to` after which anything `from` holds would be longer or
    /// deeper than a guest path may be.
    fn check_depth(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        if self
            .dir
            .symlink_metadata(at(from))
            .is_ok_and(|m| m.is_dir())
        {
            walk::check_fits_below(&self.dir, from, walk::room_below(to), ctl)?;
        }
        Ok(())
    }
}

impl Tree for Mount {
    fn stat(&self, p: &Path, follow: bool) -> Result<Stat, VfsError> {
        let m = if follow {
            self.dir.metadata(at(p))
        } else {
            self.dir.symlink_metadata(at(p))
        };
        m.map(|m| Stat::from_metadata(&m)).map_err(Self::err(p))
    }

    fn exists(&self, p: &Path) -> Result<bool, VfsError> {
        match self.dir.symlink_metadata(at(p)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
            Err(e) => Err(VfsError::from_io(p, e)),
        }
    }

    fn read(&self, p: &Path, limit: u64) -> Result<Vec<u8>, VfsError> {
        let file = self.open_regular(p, OpenOptions::new().read(true))?;
        let meta = file.metadata().map_err(Self::err(p))?;
        if meta.len() > limit {
            return Err(VfsError::TooLarge {
                what: "file",
                size: meta.len(),
                limit,
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.into_std()
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(Self::err(p))?;
        if out.len() as u64 > limit {
            return Err(VfsError::TooLarge {
                what: "file",
                size: out.len() as u64,
                limit,
            });
        }
        Ok(out)
    }

    fn write(&self, p: &Path, data: &[u8], append: bool, _ctl: &Ctl<'_>) -> Result<(), VfsError> {
        let mut opts = OpenOptions::new();
        Self::private(opts.write(true).create(true));
        if append {
            opts.append(true);
        }
        let file = self.open_owned(p, &opts, !append)?;
        file.into_std().write_all(data).map_err(Self::err(p))
    }

    fn create_dir(&self, p: &Path, all: bool) -> Result<(), VfsError> {
        if self.owner.get().is_some() {
            return self.create_dirs_owned(p, all);
        }
        self.dir
            .create_dir_with(at(p), &Self::private_dirs(all))
            .map_err(Self::err(p))
    }

    fn read_dir(&self, p: &Path, limit: usize) -> Result<Vec<String>, VfsError> {
        let mut names = Vec::new();
        for entry in self.dir.read_dir(at(p)).map_err(Self::err(p))? {
            let entry = entry.map_err(Self::err(p))?;
            if names.len() == limit {
                return Err(VfsError::TooLarge {
                    what: "directory listing",
                    size: limit as u64 + 1,
                    limit: limit as u64,
                });
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn remove_file(&self, p: &Path) -> Result<(), VfsError> {
        if p.as_os_str().is_empty() {
            return Err(VfsError::IsDirectory("the mount root".into()));
        }
        self.dir.remove_file(p).map_err(Self::err(p))
    }

    fn remove_dir_all(&self, p: &Path, ctl: &Ctl<'_>, done: &mut Usage) -> Result<(), VfsError> {
        if p.as_os_str().is_empty() {
            return Err(VfsError::Access("the mount root cannot be removed".into()));
        }
        if !self.stat(p, false)?.is_dir() {
            return Err(VfsError::NotDirectory(p.display().to_string()));
        }
        walk::remove_tree(&self.dir, p, ctl, done)
    }

    fn rename(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        if from.as_os_str().is_empty() || to.as_os_str().is_empty() {
            return Err(VfsError::Access("the mount root cannot be moved".into()));
        }
        if to.starts_with(from) && to != from {
            return Err(VfsError::InvalidPath(format!(
                "cannot move `{}` into itself",
                from.display()
            )));
        }
        self.check_depth(from, to, ctl)?;
        self.dir
            .rename(at(from), &self.dir, at(to))
            .map_err(Self::err(from))
    }

    fn copy(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        // The copy lands where a symlink at `to` leads: the path gates judged.
        let to = &self.resolve_for_gate(to)?;
        let src = self
            .open_regular(from, OpenOptions::new().read(true))?
            .into_std();
        if let Ok(existing) = self.dir.metadata(at(to)) {
            if existing.is_dir() {
                return Err(VfsError::IsDirectory(to.display().to_string()));
            }
            refuse_same_file(&src, &existing, from, to)?;
        }
        // The copy is assembled under a staging name and renamed into place, so it appears
        // whole or not at all.
        let staging = Self::staging_name(to);
        let mut opts = OpenOptions::new();
        Self::private(opts.write(true).create_new(true));
        let dst = self
            .dir
            .open_with(&staging, &opts)
            .map_err(Self::err(to))?
            .into_std();
        let copied = self.give(&dst, to).and_then(|()| {
            walk::copy_data(&src, &dst, ctl).and_then(|_| {
                self.dir
                    .rename(&staging, &self.dir, at(to))
                    .map_err(Self::err(to))
            })
        });
        if copied.is_err() {
            // Best effort: the staging file is the host's, never a guest's data.
            let _removed = self.dir.remove_file(&staging);
        }
        copied
    }

    fn hard_link(&self, from: &Path, to: &Path, _ctl: &Ctl<'_>) -> Result<(), VfsError> {
        self.dir
            .hard_link(at(from), &self.dir, at(to))
            .map_err(Self::err(from))
    }

    fn canonicalize(&self, p: &Path) -> Result<PathBuf, VfsError> {
        let c = self.dir.canonicalize(at(p)).map_err(Self::err(p))?;
        Ok(if c == Path::new(".") {
            PathBuf::new()
        } else {
            c
        })
    }

    fn read_link(&self, p: &Path) -> Result<PathBuf, VfsError> {
        self.dir.read_link(at(p)).map_err(Self::err(p))
    }

    fn open(&self, p: &Path, mode: OpenMode, _ctl: &Ctl<'_>) -> Result<std::fs::File, VfsError> {
        let mut opts = OpenOptions::new();
        match mode {
            OpenMode::Read => return Ok(self.open_regular(p, opts.read(true))?.into_std()),
            OpenMode::Write => Self::private(opts.write(true).create(true)),
            OpenMode::Append => Self::private(opts.append(true).create(true)),
            OpenMode::ReadWrite => Self::private(opts.read(true).write(true).create(true)),
        };
        Ok(self
            .open_owned(p, &opts, matches!(mode, OpenMode::Write))?
            .into_std())
    }
    fn usage(
        &self,
        p: &Path,
        ctl: &Ctl<'_>,
        decide: &dyn Fn(&Path) -> Visit,
    ) -> Result<Usage, VfsError> {
        walk::measure(&self.dir, p, ctl, decide)
    }
}
