//! Open files of `astrid:fs/host`: a handle remembers its mode and whose quota growth through
//! it is charged to, and every handle call runs on the blocking pool.

use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use capsule_vfs::{OpenMode, Stat, VfsError};
use capsule_wit::astrid::fs::host::{ErrorCode, FileHandle, FileStat, HostFileHandle};
use wasmtime::component::Resource;

use super::charge::{Charge, resize_charged};
use super::paths::file_stat;
use super::{FsError, FsView, MAX_READ_BYTES};
use capsule_store::quota::Charged;

/// A handle-mode requirement: what the handle was opened for if it fails, and the check.
type ModeCheck = (&'static str, fn(OpenMode) -> bool);

/// An open file as kept in the resource table.
#[derive(Debug)]
pub(crate) struct FileEntry {
    pub(super) file: Arc<std::fs::File>,
    pub(super) mode: OpenMode,
    /// Whose storage growth through a writable handle is charged to, and in which tree: the
    /// principal in scope when it was opened, whoever is in scope later.
    pub(super) charge: Option<(Arc<Charge>, Charged)>,
}

pub(super) fn entry_handle(r: &Resource<FileHandle>) -> Resource<FileEntry> {
    Resource::new_borrow(r.rep())
}

impl FsView<'_> {
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
        let entry = self.core.table.get(&entry_handle(handle))?;
        if let Some((what, allowed)) = need
            && !allowed(entry.mode)
        {
            return Ok(Err(FsError::HandleMode(what).code()));
        }
        let file = Arc::clone(&entry.file);
        // Growth is charged under the opener's quota as it is now: a handle kept by a warm
        // instance must not carry a quota the operator has since lowered or withdrawn.
        let charge = entry.charge.as_ref().map(|(opened, tree)| {
            let now = self.core.scopes.profiles.resolve(&opened.principal);
            (Arc::new(opened.with_profile(&now)), *tree)
        });
        match self
            .core
            .limits
            .blocking(move || op(&file, charge.as_ref()))
            .await?
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

pub(super) fn handle_io(e: std::io::Error) -> FsError {
    FsError::Vfs(VfsError::from_io(Path::new("<handle>"), e))
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
        let append = self.core.table.get(&entry_handle(&self_))?.mode == OpenMode::Append;
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
        self.core
            .table
            .delete(Resource::<FileEntry>::new_own(rep.rep()))?;
        self.ctx.handles = self.ctx.handles.saturating_sub(1);
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
