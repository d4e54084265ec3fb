//! The path calls of `astrid:fs/host`: each locates its paths, has them gated for how it
//! touches them, and runs on the blocking pool with the growth it causes charged first.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use capsule_vfs::{Ctl, FileKind, OpenMode, Stat, Tree, Usage, VfsError};
use capsule_wit::astrid::fs::host::{
    Datetime, ErrorCode, FileHandle, FileStat, FileType, Host, OpenMode as WitOpenMode,
};
use wasmtime::component::Resource;

use super::handle::FileEntry;
use super::locate::{Located, Touch, content, entry, held};
use super::{FsError, FsView, MAX_OPEN_HANDLES, MAX_READ_BYTES, MAX_READDIR_ENTRIES};
use capsule_store::quota::{ENTRY_BYTES, cost};

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

pub(super) fn file_stat(s: &Stat) -> FileStat {
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

impl Host for FsView<'_> {
    async fn fs_open(
        &mut self,
        path: String,
        mode: WitOpenMode,
    ) -> wasmtime::Result<Result<Resource<FileHandle>, ErrorCode>> {
        if self.ctx.handles >= MAX_OPEN_HANDLES {
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
                let entry = self.core.table.push(FileEntry {
                    file: Arc::new(file),
                    mode,
                    charge: charged.map(|tree| (for_handle, tree)),
                })?;
                self.ctx.handles += 1;
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
        let delta: Delta = |from, to| {
            let size = from.tree().stat(&from.rel, true)?.size;
            let replaced = entry(to.tree(), &to.rel)
                .map_or(-i128::from(ENTRY_BYTES), |st| i128::from(content(&st)));
            Ok(i128::from(size) - replaced)
        };
        let act: Act = |tree, from, to, ctl| tree.copy(from, to, ctl);
        self.transfer("copy", (&src, Touch::Read), &dst, delta, act)
            .await
    }

    async fn fs_rename(
        &mut self,
        src: String,
        dst: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        // A rename over another entry frees that entry, unless both names are one file.
        let delta: Delta = |from, to| {
            let freed = match (entry(from.tree(), &from.rel), entry(to.tree(), &to.rel)) {
                (Some(a), Some(b)) if a.file_id != b.file_id => held(&b),
                _ => 0,
            };
            Ok(-i128::from(freed))
        };
        let act: Act = |tree, from, to, ctl| tree.rename(from, to, ctl);
        self.transfer("rename", (&src, Touch::Replace), &dst, delta, act)
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

/// How a two-path call changes the destination principal's storage (bytes, signed).
type Delta = fn(&Located, &Located) -> Result<i128, FsError>;
/// The tree operation of a two-path call.
type Act = fn(&dyn Tree, &Path, &Path, &Ctl<'_>) -> Result<(), VfsError>;

impl FsView<'_> {
    /// Runs a call that takes `src` (touched as given) to `dst` (replaced) within one mount,
    /// with the destination's storage change charged before the tree operation runs.
    async fn transfer(
        &mut self,
        op: &'static str,
        (src, touch): (&str, Touch),
        dst: &str,
        delta: Delta,
        act: Act,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.run(op, &[(src, touch), (dst, Touch::Replace)], move |j| {
            let (from, to) = (j.loc(0), j.loc(1));
            j.charged(1, delta(from, to)?, || {
                Ok(act(from.tree(), &from.rel, &to.rel, &j.ctl)?)
            })
        })
        .await
    }
}
