//! A `Mount` is a cap-std directory handle: every path is resolved by cap-std relative to it, so
//! no `..`, absolute path or symlink can leave it. `Tree` is the set of operations both a plain
//! mount and the overlay workspace provide.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, FileTypeExt, Metadata, MetadataExt, OpenOptions};

use crate::error::VfsError;

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
    fn write(&self, p: &Path, data: &[u8], append: bool) -> Result<(), VfsError>;
    /// Creates a directory (and its parents when `all`).
    fn create_dir(&self, p: &Path, all: bool) -> Result<(), VfsError>;
    /// Entry names of a directory, sorted; more than `limit` entries is an error.
    fn read_dir(&self, p: &Path, limit: usize) -> Result<Vec<String>, VfsError>;
    /// Removes a file (or symlink).
    fn remove_file(&self, p: &Path) -> Result<(), VfsError>;
    /// Removes a directory and everything below it; returns how many entries went.
    fn remove_dir_all(&self, p: &Path) -> Result<u64, VfsError>;
    /// Renames within the tree.
    fn rename(&self, from: &Path, to: &Path) -> Result<(), VfsError>;
    /// Copies a file within the tree.
    fn copy(&self, from: &Path, to: &Path) -> Result<(), VfsError>;
    /// Creates a hard link within the tree.
    fn hard_link(&self, from: &Path, to: &Path) -> Result<(), VfsError>;
    /// The path with symlinks resolved, relative to the root.
    fn canonicalize(&self, p: &Path) -> Result<PathBuf, VfsError>;
    /// The target of a symlink.
    fn read_link(&self, p: &Path) -> Result<PathBuf, VfsError>;
    /// Opens a file handle.
    fn open(&self, p: &Path, mode: OpenMode) -> Result<std::fs::File, VfsError>;

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

/// Replaces the content of `dst` (opened without truncating it) with the content of `src`.
///
/// Refuses when both handles are the same file, by name, hard link or symlink: truncating the
/// destination would empty the source before it is read, and the kernel copy then loops
/// forever on some file systems.
pub(crate) fn copy_into(
    src: &mut std::fs::File,
    dst: &mut std::fs::File,
    from: &Path,
    to: &Path,
) -> Result<(), VfsError> {
    let a = Metadata::from_just_metadata(src.metadata().map_err(|e| VfsError::from_io(from, e))?);
    let b = Metadata::from_just_metadata(dst.metadata().map_err(|e| VfsError::from_io(to, e))?);
    if a.dev() == b.dev() && a.ino() == b.ino() {
        return Err(same_file(from, to));
    }
    dst.set_len(0).map_err(|e| VfsError::from_io(to, e))?;
    std::io::copy(src, dst).map_err(|e| VfsError::from_io(from, e))?;
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
        })
    }

    /// Wraps an already-open directory handle rooted at `root`.
    pub fn from_dir(dir: Dir, root: PathBuf) -> Self {
        Self { dir, root }
    }

    /// The host directory this mount is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(p: &Path) -> impl Fn(std::io::Error) -> VfsError + '_ {
        move |e| VfsError::from_io(p, e)
    }

    pub(crate) fn count_entries(&self, p: &Path) -> Result<u64, VfsError> {
        let mut n = 0u64;
        for entry in self.dir.read_dir(at(p)).map_err(Self::err(p))? {
            let entry = entry.map_err(Self::err(p))?;
            n += 1;
            let child = p.join(entry.file_name());
            if entry.file_type().map_err(Self::err(&child))?.is_dir() {
                n += self.count_entries(&child)?;
            }
        }
        Ok(n)
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
        let file = self.dir.open(at(p)).map_err(Self::err(p))?;
        let meta = file.metadata().map_err(Self::err(p))?;
        if meta.is_dir() {
            return Err(VfsError::IsDirectory(p.display().to_string()));
        }
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

    fn write(&self, p: &Path, data: &[u8], append: bool) -> Result<(), VfsError> {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true);
        if append {
            opts.append(true);
        } else {
            opts.truncate(true);
        }
        let file = self.dir.open_with(at(p), &opts).map_err(Self::err(p))?;
        file.into_std().write_all(data).map_err(Self::err(p))
    }

    fn create_dir(&self, p: &Path, all: bool) -> Result<(), VfsError> {
        if all {
            self.dir.create_dir_all(at(p))
        } else {
            self.dir.create_dir(at(p))
        }
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

    fn remove_dir_all(&self, p: &Path) -> Result<u64, VfsError> {
        if p.as_os_str().is_empty() {
            return Err(VfsError::Access("the mount root cannot be removed".into()));
        }
        if !self.stat(p, false)?.is_dir() {
            return Err(VfsError::NotDirectory(p.display().to_string()));
        }
        let n = self.count_entries(p)?;
        self.dir.remove_dir_all(p).map_err(Self::err(p))?;
        Ok(n + 1)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), VfsError> {
        self.dir
            .rename(at(from), &self.dir, at(to))
            .map_err(Self::err(from))
    }

    fn copy(&self, from: &Path, to: &Path) -> Result<(), VfsError> {
        let mut src = self.open(from, OpenMode::Read)?;
        let mut opts = OpenOptions::new();
        opts.write(true).create(true);
        let mut dst = self
            .dir
            .open_with(at(to), &opts)
            .map_err(Self::err(to))?
            .into_std();
        copy_into(&mut src, &mut dst, from, to)?;
        // Like `std::fs::copy`, the copy gets the source's permission bits.
        let perms = src.metadata().map_err(Self::err(from))?.permissions();
        dst.set_permissions(perms).map_err(Self::err(to))
    }

    fn hard_link(&self, from: &Path, to: &Path) -> Result<(), VfsError> {
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

    fn open(&self, p: &Path, mode: OpenMode) -> Result<std::fs::File, VfsError> {
        let mut opts = OpenOptions::new();
        match mode {
            OpenMode::Read => opts.read(true),
            OpenMode::Write => opts.write(true).create(true).truncate(true),
            OpenMode::Append => opts.append(true).create(true),
            OpenMode::ReadWrite => opts.read(true).write(true).create(true),
        };
        let file = self.dir.open_with(at(p), &opts).map_err(Self::err(p))?;
        let meta = file.metadata().map_err(Self::err(p))?;
        if meta.is_dir() {
            return Err(VfsError::IsDirectory(p.display().to_string()));
        }
        Ok(file.into_std())
    }
}
