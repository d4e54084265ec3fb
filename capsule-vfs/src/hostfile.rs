//! The host trusts a file it keeps in a principal's home (a capsule log, an env overlay) only
//! if the host itself made it: every directory on the way and the file are owned by the host's
//! own user, the file is a regular file with no other name (no hard link to something
//! elsewhere), and nothing on the way is a symbolic link. A principal's own processes may own
//! parts of its home; whatever they made or moved into the host's places is refused, never
//! followed, read or written.

use std::io;
use std::path::Path;

use cap_fs_ext::DirExt;
use cap_std::fs::{Dir, DirBuilder, Metadata, MetadataExt};

/// The user the host runs as, the only owner it trusts for its own files.
fn host_user() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn untrusted(what: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} is not the host's own ({why}); it is left alone",
            what.display()
        ),
    )
}

/// Refuses `meta` unless the host's user owns it.
fn check_owner(meta: &Metadata, what: &Path) -> io::Result<()> {
    if meta.uid() == host_user() {
        Ok(())
    } else {
        Err(untrusted(what, "owned by another user"))
    }
}

/// Opens the directory `rel` below `base` one component at a time, creating missing ones
/// (mode 0700) when `create` is set, refusing a symbolic link in any component and any
/// component the host's user does not own.
pub(crate) fn open_host_dir(base: &Dir, rel: &Path, create: bool) -> io::Result<Dir> {
    let mut dir = base.try_clone()?;
    let mut walked = std::path::PathBuf::new();
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a host directory is named by plain components",
            ));
        };
        walked.push(name);
        if create {
            let mut b = DirBuilder::new();
            #[cfg(unix)]
            cap_std::fs::DirBuilderExt::mode(&mut b, 0o700);
            match dir.create_dir_with(name, &b) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let next = dir.open_dir_nofollow(name)?;
        check_owner(&next.dir_metadata()?, &walked)?;
        dir = next;
    }
    Ok(dir)
}

/// `file` if it is a regular file of the host's user with a single name. Host files are
/// opened without blocking before this check, because a principal's own processes can put a
/// FIFO where one is expected, and opening that would hold a host thread until someone opened
/// the other end.
pub(crate) fn host_file(file: cap_std::fs::File, what: &Path) -> io::Result<std::fs::File> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    check_owner(&meta, what)?;
    if meta.nlink() != 1 {
        return Err(untrusted(what, "it has another name"));
    }
    Ok(file.into_std())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        host_user() == 0
    }

    #[test]
    fn a_directory_or_file_of_another_user_or_a_second_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority())
            .unwrap_or_else(|e| panic!("{e}"));
        let made = open_host_dir(&base, Path::new("a/b"), true);
        assert!(made.is_ok(), "{made:?}");
        std::fs::write(tmp.path().join("a/b/f"), "x").unwrap_or_else(|e| panic!("{e}"));
        let open = |rel: &str| {
            base.open(rel)
                .and_then(|f| host_file(f, Path::new(rel)))
                .map(drop)
        };
        assert!(open("a/b/f").is_ok());
        std::fs::hard_link(tmp.path().join("a/b/f"), tmp.path().join("g"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(open("a/b/f").is_err(), "a second name");
        std::os::unix::fs::symlink(tmp.path().join("a"), tmp.path().join("s"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(open_host_dir(&base, Path::new("s/b"), false).is_err());
        if root() {
            std::os::unix::fs::chown(tmp.path().join("a"), Some(4_000_123), None)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(open_host_dir(&base, Path::new("a/b"), false).is_err());
            std::os::unix::fs::chown(tmp.path().join("a"), Some(0), None)
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::remove_file(tmp.path().join("g")).unwrap_or_else(|e| panic!("{e}"));
            std::os::unix::fs::chown(tmp.path().join("a/b/f"), Some(4_000_123), None)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(open("a/b/f").is_err(), "a file of another user");
        }
    }
}
