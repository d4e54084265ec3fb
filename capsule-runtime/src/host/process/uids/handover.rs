//! Hands a principal what the host made for it before it had a user id of its own: the files
//! and directories its capsules created through `astrid:fs` in its home and `/tmp/` while its
//! children still ran as the host's user stay the host's otherwise, so its own children could
//! not use them. The walk follows no link and re-resolves no path: every entry is opened
//! relative to its directory without following links, checked on the descriptor, and changed
//! through that descriptor. Only the host's own regular files with a single name and the
//! host's own directories change hands (to the principal's ids, group and other access
//! removed); the host's places in the home (`.local`, `.config`) are left out, and so is
//! anything else: links, FIFOs, sockets, devices, entries of another user, and a file with a
//! second name (a hard link a child could have made to a file of the host's).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::Ids;

/// How deep the walk descends; deeper entries stay the host's (and a warning says so).
pub(crate) const MAX_DEPTH: usize = 128;

/// The home entries that are the host's own and never change hands.
const HOST_PLACES: &[&[u8]] = &[b".local", b".config"];

/// What a hand-over changed and what it left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handed {
    /// Entries given to the principal.
    pub(crate) given: u64,
    /// Entries of the host left as they are (links, special files, files with several names,
    /// entries below [`MAX_DEPTH`], entries that could not be changed).
    pub(crate) kept: u64,
}

fn open_at(dir: &impl AsFd, name: &CStr, flags: libc::c_int) -> Option<OwnedFd> {
    // SAFETY: openat relative to a borrowed directory descriptor with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat(fd: &impl AsFd) -> Option<libc::stat> {
    // SAFETY: fstat fills a zeroed stat struct for a borrowed descriptor.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd.as_fd().as_raw_fd(), &mut st) == 0).then_some(st)
    }
}

/// Gives the inode open as `fd` to `ids`, keeping only the owner's permission bits.
fn give(fd: &impl AsFd, st: &libc::stat, ids: Ids) -> bool {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: fchownat on a borrowed descriptor with the empty path names that inode only.
    if unsafe { libc::fchownat(raw, c"".as_ptr(), ids.uid, ids.gid, libc::AT_EMPTY_PATH) } != 0 {
        return false;
    }
    // `O_PATH` descriptors refuse `fchmod`; their `/proc/self/fd` link names exactly this
    // inode and is never re-resolved.
    std::fs::set_permissions(
        format!("/proc/self/fd/{raw}"),
        std::os::unix::fs::PermissionsExt::from_mode(st.st_mode & 0o700),
    )
    .is_ok()
}

/// The names in the directory open as `dir`.
fn names(dir: &OwnedFd) -> Vec<CString> {
    let Ok(copy) = dir.try_clone() else {
        return Vec::new();
    };
    let Ok(d) = cap_std::fs::Dir::from_std_file(std::fs::File::from(copy)).entries() else {
        return Vec::new();
    };
    d.filter_map(Result::ok)
        .filter_map(|e| CString::new(e.file_name().as_bytes()).ok())
        .collect()
}

/// Walks the directory open as `dir` (already the principal's or the host's), giving what the
/// host made in it to `ids`; at the home's top level (`home`) the host's places are skipped.
fn walk(dir: &OwnedFd, ids: Ids, host: u32, home: bool, depth: usize, out: &mut Handed) {
    for name in names(dir) {
        if home && HOST_PLACES.contains(&name.as_bytes()) {
            continue;
        }
        let Some(entry) = open_at(dir, &name, libc::O_PATH) else {
            continue;
        };
        let Some(st) = stat(&entry) else { continue };
        let kind = st.st_mode & libc::S_IFMT;
        let mine = st.st_uid == host;
        match kind {
            libc::S_IFREG if mine && st.st_nlink == 1 => {
                if give(&entry, &st, ids) {
                    out.given += 1;
                } else {
                    out.kept += 1;
                }
            }
            libc::S_IFDIR if mine || st.st_uid == ids.uid => {
                if depth >= MAX_DEPTH {
                    out.kept += 1;
                    continue;
                }
                // "." opened through the entry's own descriptor: the very directory checked.
                let Some(sub) = open_at(&entry, c".", libc::O_RDONLY | libc::O_DIRECTORY) else {
                    out.kept += u64::from(mine);
                    continue;
                };
                if mine {
                    if give(&sub, &st, ids) {
                        out.given += 1;
                    } else {
                        out.kept += 1;
                        continue;
                    }
                }
                walk(&sub, ids, host, false, depth + 1, out);
            }
            _ if mine => out.kept += 1,
            _ => {}
        }
    }
}

/// Gives what the host made in the home open as `home` (but its own places) and in the tmp
/// open as `tmp` to `ids`. Blocking: walks both trees.
pub(crate) fn hand_over_made(home: Option<&OwnedFd>, tmp: Option<&OwnedFd>, ids: Ids) -> Handed {
    // SAFETY: geteuid has no preconditions.
    let host = unsafe { libc::geteuid() };
    let mut out = Handed::default();
    if let Some(home) = home {
        walk(home, ids, host, true, 0, &mut out);
    }
    if let Some(tmp) = tmp {
        walk(tmp, ids, host, false, 0, &mut out);
    }
    if out.kept > 0 {
        tracing::warn!(
            given = out.given,
            kept = out.kept,
            "some entries the host made in a principal's home stay the host's (links, special \
             files, files with several names, or too deep)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn open(p: &std::path::Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(p).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn hands_over_host_made_entries_and_nothing_a_link_reaches() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let home = dir.path().join("home");
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, "host").unwrap_or_else(|e| panic!("{e}"));
        for d in ["d/e", ".local/log", ".local/tmp/t", ".config/env"] {
            std::fs::create_dir_all(home.join(d)).unwrap_or_else(|e| panic!("{e}"));
        }
        for f in [
            "a.txt",
            "d/e/f.txt",
            ".local/log/x.log",
            ".local/tmp/t/s.txt",
        ] {
            std::fs::write(home.join(f), "x").unwrap_or_else(|e| panic!("{e}"));
        }
        std::os::unix::fs::symlink(&outside, home.join("link")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(dir.path(), home.join("dirlink"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::hard_link(&outside, home.join("hard")).unwrap_or_else(|e| panic!("{e}"));
        let ids = Ids {
            uid: 3_100_990,
            gid: 3_100_990,
        };
        let tmp = home.join(".local/tmp");
        let out = hand_over_made(Some(&open(&home)), Some(&open(&tmp)), ids);
        let owner = |p: &str| {
            std::fs::symlink_metadata(home.join(p))
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .uid()
        };
        for p in [
            "a.txt",
            "d",
            "d/e",
            "d/e/f.txt",
            ".local/tmp/t",
            ".local/tmp/t/s.txt",
        ] {
            assert_eq!(owner(p), ids.uid, "{p}");
        }
        for p in [
            ".local",
            ".local/log",
            ".local/log/x.log",
            ".config",
            "link",
            "dirlink",
        ] {
            assert_eq!(owner(p), 0, "{p}");
        }
        let m = std::fs::metadata(&outside).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.uid(), 0, "a hard link's target stays the host's");
        assert_eq!(out.given, 6);
        assert!(out.kept >= 3, "{out:?}");
    }
}
