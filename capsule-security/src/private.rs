//! Host-private state files: directories are created 0700 and files 0600 whatever the umask,
//! and a file is replaced atomically (written beside, synced, renamed, directory synced) so a
//! reader sees the old content or the new, never half of one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Creates `dir` and its missing ancestors with mode 0700, and makes `dir` itself 0700 if it
/// already existed with a wider mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Replaces `file` with `bytes` atomically, creating its directory private if needed; the
/// file is 0600.
pub fn write_atomic(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_parts(file, &[bytes])
}

/// Creates the new file `file` (an existing one is an error, so two writers cannot both
/// believe they created it) holding `bytes`, 0600, synced.
pub fn create_new(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Like [`write_atomic`], with the content given in parts written one after another.
pub fn write_atomic_parts(file: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    replace_parts(file, parts, true)
}

/// Replaces `file` with `parts` written one after another, atomically for readers (written
/// beside, renamed), creating its directory private if needed; the file is 0600. With `durable`
/// the file and its directory are synced before this returns, so the new content survives a
/// crash; without it a crash may leave the old content (never a mix of both).
pub fn replace_parts(file: &Path, parts: &[&[u8]], durable: bool) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = file.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        for part in parts {
            f.write_all(part)?;
        }
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        // The temporary file is ours alone; a failure to remove it changes nothing visible.
        let _gone = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_dirs_are_private_and_replaced_whole() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let file = open.join("deep").join("f.toml");
        write_atomic(&file, b"one").unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&file, b"two").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&file).unwrap_or_default(), b"two");
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .unwrap_or_else(|e| panic!("{e}"))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&open.join("deep")), 0o700);
        let leftovers = std::fs::read_dir(open.join("deep"))
            .unwrap_or_else(|e| panic!("{e}"))
            .count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        create_private_dir(&open).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&open), 0o700, "an existing wide directory is narrowed");
    }
}
