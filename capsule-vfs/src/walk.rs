//! Bounded tree work: walks, removals and copies that never recurse, keep one directory
//! handle open at a time, visit at most [`MAX_WALK_ENTRIES`] entries, refuse entries whose
//! mount-relative path is longer or deeper than a guest path may be, and stop as soon as the
//! operation is cancelled. A guest cannot make any of them overflow a stack, exhaust file
//! descriptors or run unbounded.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, MetadataExt};

use crate::error::VfsError;
use crate::mount::at;
use crate::path::{MAX_GUEST_DEPTH, MAX_GUEST_PATH};

/// Most entries one walk (a measurement, a removal, a depth check) visits.
pub const MAX_WALK_ENTRIES: u64 = 1_000_000;

/// Bytes moved per step of a copy (a cancellation check between steps).
const COPY_CHUNK: usize = 1024 * 1024;

fn never() -> bool {
    false
}

/// How one operation may be stopped: checked between directory entries and between copied
/// chunks.
#[derive(Clone, Copy)]
pub struct Ctl<'a> {
    cancelled: &'a (dyn Fn() -> bool + Sync),
}

impl std::fmt::Debug for Ctl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctl")
            .field("cancelled", &(self.cancelled)())
            .finish()
    }
}

impl<'a> Ctl<'a> {
    /// Stops the operation once `cancelled` answers true.
    pub fn new(cancelled: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Self { cancelled }
    }

    /// Never cancelled (host-initiated work such as an overlay commit).
    pub fn uncancellable() -> Ctl<'static> {
        Ctl { cancelled: &never }
    }

    /// `Err(Cancelled)` once the operation should stop.
    pub fn check(&self) -> Result<(), VfsError> {
        if (self.cancelled)() {
            Err(VfsError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// What a walk found or removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Entries (files, directories, links, anything else).
    pub entries: u64,
    /// Bytes of regular files, each file counted once however many names it has.
    pub bytes: u64,
}

/// What a walk is told to do with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    /// Count it and, for a directory, walk below it.
    Enter,
    /// Leave it and everything below it out.
    Skip,
    /// Walk below it without counting the entry itself.
    Through,
}

fn err(p: &Path) -> impl Fn(std::io::Error) -> VfsError + '_ {
    move |e| VfsError::from_io(p, e)
}

/// Checks the walk's bounds for an entry at `rel`.
pub(crate) fn bounded(rel: &Path, seen: u64, ctl: &Ctl<'_>) -> Result<(), VfsError> {
    ctl.check()?;
    if seen > MAX_WALK_ENTRIES {
        return Err(VfsError::TooLarge {
            what: "entries in one tree walk",
            size: seen,
            limit: MAX_WALK_ENTRIES,
        });
    }
    let len = rel.as_os_str().len() as u64;
    if len > MAX_GUEST_PATH as u64 {
        return Err(VfsError::TooLarge {
            what: "path length below the mount",
            size: len,
            limit: MAX_GUEST_PATH as u64,
        });
    }
    let depth = rel.components().count() as u64;
    if depth > MAX_GUEST_DEPTH as u64 {
        return Err(VfsError::TooLarge {
            what: "path depth below the mount",
            size: depth,
            limit: MAX_GUEST_DEPTH as u64,
        });
    }
    Ok(())
}

/// The room a move leaves below its destination `to`: bytes and names an entry below the
/// moved directory may take.
pub(crate) fn room_below(to: &Path) -> (u64, u64) {
    let bytes = (MAX_GUEST_PATH as u64).saturating_sub(to.as_os_str().len() as u64 + 1);
    let names = (MAX_GUEST_DEPTH as u64).saturating_sub(to.components().count() as u64);
    (bytes, names)
}

/// Refuses an entry at `rel` (relative to a moved directory) that would not fit in `room`.
pub(crate) fn fits(rel: &Path, room: (u64, u64)) -> Result<(), VfsError> {
    let (len, depth) = (
        rel.as_os_str().len() as u64,
        rel.components().count() as u64,
    );
    if len > room.0 || depth > room.1 {
        return Err(VfsError::TooLarge {
            what: "path length or depth after the move",
            size: len.max(depth),
            limit: room.0.min(room.1),
        });
    }
    Ok(())
}

/// Sums what is below `root` (not `root` itself) in `dir`, deciding per entry with `decide`.
/// Directories are walked breadth-first from an explicit queue of relative paths.
pub(crate) fn measure(
    dir: &Dir,
    root: &Path,
    ctl: &Ctl<'_>,
    decide: &dyn Fn(&Path) -> Visit,
) -> Result<Usage, VfsError> {
    let mut usage = Usage::default();
    let mut seen = 0u64;
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in dir.read_dir(at(&current)).map_err(err(&current))? {
            let entry = entry.map_err(err(&current))?;
            let rel = current.join(entry.file_name());
            seen += 1;
            bounded(&rel, seen, ctl)?;
            let visit = decide(&rel);
            if visit == Visit::Skip {
                continue;
            }
            let meta = entry.metadata().map_err(err(&rel))?;
            if visit == Visit::Enter {
                usage.entries += 1;
                if meta.is_file() && (meta.nlink() <= 1 || linked.insert((meta.dev(), meta.ino())))
                {
                    usage.bytes += meta.len();
                }
            }
            if meta.is_dir() {
                pending.push(rel);
            }
        }
    }
    Ok(usage)
}

/// Checks that every path below `root`, relative to `root`, fits in `room` (see
/// [`room_below`]), failing with `TooLarge` at the first that does not.
pub(crate) fn check_fits_below(
    dir: &Dir,
    root: &Path,
    room: (u64, u64),
    ctl: &Ctl<'_>,
) -> Result<(), VfsError> {
    let mut seen = 0u64;
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(current) = pending.pop() {
        let full = root.join(&current);
        for entry in dir.read_dir(at(&full)).map_err(err(&full))? {
            let entry = entry.map_err(err(&full))?;
            let rel = current.join(entry.file_name());
            seen += 1;
            bounded(&root.join(&rel), seen, ctl)?;
            fits(&rel, room)?;
            if entry.file_type().map_err(err(&rel))?.is_dir() {
                pending.push(rel);
            }
        }
    }
    Ok(())
}

/// A directory being emptied: its path and the subdirectories still to empty.
struct Frame {
    path: PathBuf,
    subdirs: Vec<OsString>,
}

/// Removes the files of `path` now and returns its subdirectories, counting what went.
fn empty_files(
    dir: &Dir,
    path: &Path,
    ctl: &Ctl<'_>,
    done: &mut Usage,
    seen: &mut u64,
) -> Result<Vec<OsString>, VfsError> {
    let mut subdirs = Vec::new();
    for entry in dir.read_dir(at(path)).map_err(err(path))? {
        let entry = entry.map_err(err(path))?;
        let rel = path.join(entry.file_name());
        *seen += 1;
        bounded(&rel, *seen, ctl)?;
        let meta = entry.metadata().map_err(err(&rel))?;
        if meta.is_dir() {
            subdirs.push(entry.file_name());
        } else {
            entry.remove_file().map_err(err(&rel))?;
            done.entries += 1;
            if meta.is_file() && meta.nlink() <= 1 {
                done.bytes += meta.len();
            }
        }
    }
    Ok(subdirs)
}

/// Removes the directory `root` and everything below it, depth first without recursion.
/// `done` counts what was removed, also when the removal stops early (cancelled, too large,
/// an I/O error), so the caller can account for it.
pub(crate) fn remove_tree(
    dir: &Dir,
    root: &Path,
    ctl: &Ctl<'_>,
    done: &mut Usage,
) -> Result<(), VfsError> {
    let mut seen = 0u64;
    let subdirs = empty_files(dir, root, ctl, done, &mut seen)?;
    let mut stack = vec![Frame {
        path: root.to_path_buf(),
        subdirs,
    }];
    while let Some(top) = stack.last_mut() {
        match top.subdirs.pop() {
            Some(name) => {
                let path = top.path.join(name);
                let subdirs = empty_files(dir, &path, ctl, done, &mut seen)?;
                stack.push(Frame { path, subdirs });
            }
            None => {
                dir.remove_dir(at(&top.path)).map_err(err(&top.path))?;
                done.entries += 1;
                stack.pop();
            }
        }
    }
    Ok(())
}

/// Copies all of `src` into `dst` (both open, `dst` empty), chunk by chunk, checking `ctl`
/// between chunks. Holes in `src` are skipped where the filesystem reports them and chunks of
/// zeros are never written, so a sparse file stays sparse. Returns the bytes copied.
pub(crate) fn copy_data(
    src: &std::fs::File,
    dst: &std::fs::File,
    ctl: &Ctl<'_>,
) -> Result<u64, VfsError> {
    use std::os::unix::fs::FileExt;
    let io = |e| VfsError::from_io(Path::new("<copy>"), e);
    let len = src.metadata().map_err(io)?.len();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut offset = 0u64;
    while offset < len {
        ctl.check()?;
        let Some(data) = next_data(src, offset, len) else {
            break;
        };
        offset = data;
        let want = usize::try_from((len - offset).min(COPY_CHUNK as u64)).unwrap_or(COPY_CHUNK);
        let n = src.read_at(&mut buf[..want], offset).map_err(io)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset).map_err(io)?;
        }
        offset += n as u64;
    }
    dst.set_len(len).map_err(io)?;
    Ok(len)
}

/// The first offset at or after `from` holding data, `None` if only a hole follows. Where the
/// filesystem cannot say, every offset holds data.
#[cfg(target_os = "linux")]
fn next_data(src: &std::fs::File, from: u64, len: u64) -> Option<u64> {
    match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(from)) {
        Ok(at) if at < len => Some(at),
        Ok(_) => None,
        Err(rustix::io::Errno::NXIO) => None,
        Err(_) => Some(from),
    }
}

#[cfg(not(target_os = "linux"))]
fn next_data(_src: &std::fs::File, from: u64, _len: u64) -> Option<u64> {
    Some(from)
}
