//! Principals' profiles as every call resolves them: the file's bytes are read on every
//! resolve (no `stat` field proves a profile unchanged: a store through a shared writable
//! mapping moves none of them once its page is writable) and parsed only when they changed.
//! For recently active principals the file stays open, so a resolve is one `stat` of the path
//! (whose device and inode must still be the open file's: a file renamed over it, a deleted
//! one or a swapped symlink is opened afresh, and the open descriptor keeps its inode number
//! from being reused) and one positioned read. Anything but a regular file is refused, never
//! waited on; the descriptors held stay bounded.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use capsule_bus::PrincipalId;
use capsule_security::{PrincipalProfile, ProfileError};
use parking_lot::Mutex;

use crate::bounded::{BoundedMap, PRINCIPAL_CACHE_CAPACITY, PRINCIPAL_IDLE_TTL};
use crate::scope::{PrincipalRefusal, ProfileGrant};

/// Most profile files kept open at once (the most recently resolved principals'); others are
/// opened, read and closed on every resolve.
pub(crate) const HELD_PROFILES: usize = 64;

/// One version of a profile file: the bytes it held when read, or that there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ProfileText {
    Absent,
    Read(Arc<[u8]>),
}

impl ProfileText {
    /// The profile this version holds (an absent file is the default profile).
    fn parse(&self, path: &Path) -> Result<PrincipalProfile, ProfileError> {
        match self {
            Self::Absent => Ok(PrincipalProfile::default()),
            Self::Read(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => PrincipalProfile::parse(text, path),
                Err(e) => Err(ProfileError::Io {
                    file: path.to_path_buf(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                }),
            },
        }
    }
}

/// A profile file kept open, with the path it was opened at and its identity then.
#[derive(Debug)]
struct Held {
    file: File,
    path: PathBuf,
    /// Device and inode of `file`.
    id: (u64, u64),
}

impl Held {
    /// Opens the regular file at `path`; `None` when there is none.
    fn open(path: PathBuf) -> io::Result<Option<Self>> {
        // Non-blocking, so a FIFO planted at the path is refused below, not waited on.
        let file = match File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the profile is not a regular file",
            ));
        }
        Ok(Some(Self {
            file,
            path,
            id: (meta.dev(), meta.ino()),
        }))
    }

    /// The file's bytes now; `len` is its size as last seen (a hint only).
    fn read(&self, len: u64) -> io::Result<Arc<[u8]>> {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0).saturating_add(1).max(64)];
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                buf.resize(buf.len().saturating_mul(2), 0);
            }
            match self.file.read_at(&mut buf[filled..], filled as u64) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    // A regular file reads short only at its end.
                    if filled < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf.into())
    }
}

/// Profiles by principal, read on every resolve and parsed when the bytes changed; bounded
/// like every per-principal cache (see [`crate::bounded`]).
#[derive(Debug)]
pub(crate) struct ProfileCache {
    state_dir: PathBuf,
    entries: Mutex<BoundedMap<PrincipalId, (ProfileText, ProfileGrant)>>,
    held: Mutex<BoundedMap<PrincipalId, Arc<Held>>>,
}

impl ProfileCache {
    pub(crate) fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            entries: Mutex::new(BoundedMap::new(
                PRINCIPAL_CACHE_CAPACITY,
                PRINCIPAL_IDLE_TTL,
            )),
            held: Mutex::new(BoundedMap::new(HELD_PROFILES, PRINCIPAL_IDLE_TTL)),
        }
    }

    /// Principals whose profile is cached now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Profile files held open now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// What `principal`'s profile file holds now (the path is followed like any open).
    fn read(&self, principal: &PrincipalId) -> (PathBuf, io::Result<ProfileText>) {
        let held = self.held.lock().get_mut(principal, Instant::now()).cloned();
        let path = held.as_ref().map_or_else(
            || PrincipalProfile::path(&self.state_dir, principal),
            |h| h.path.clone(),
        );
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                drop(self.held.lock().remove(principal));
                return (path, Ok(ProfileText::Absent));
            }
            Err(e) => return (path, Err(e)),
        };
        // The path still names the open file: its bytes are read through the descriptor.
        if let Some(h) = held.filter(|h| h.id == (meta.dev(), meta.ino())) {
            let text = h.read(meta.len()).map(ProfileText::Read);
            return (path, text);
        }
        let opened = match Held::open(path.clone()) {
            Ok(Some(h)) => Arc::new(h),
            Ok(None) => {
                drop(self.held.lock().remove(principal));
                return (path, Ok(ProfileText::Absent));
            }
            Err(e) => {
                drop(self.held.lock().remove(principal));
                return (path, Err(e));
            }
        };
        let text = opened.read(meta.len()).map(ProfileText::Read);
        if text.is_ok() {
            self.held
                .lock()
                .insert(principal.clone(), opened, Instant::now());
        }
        (path, text)
    }

    /// The profile of `principal`; a malformed profile or a disabled principal is refused.
    /// The file is read every time (it is small) and parsed only when its bytes changed.
    pub(crate) fn resolve(&self, principal: &PrincipalId) -> ProfileGrant {
        let (path, now) = self.read(principal);
        let now = match now {
            Ok(text) => text,
            Err(source) => {
                let reason =
                    PrincipalRefusal::Profile(Arc::new(ProfileError::Io { file: path, source }));
                tracing::warn!(%principal, %reason, "principal profile refused");
                // The cache is not consulted: the next call reads the file again.
                return Err(reason);
            }
        };
        if let Some((seen, grant)) = self.entries.lock().get_mut(principal, Instant::now())
            && *seen == now
        {
            return grant.clone();
        }
        let grant: ProfileGrant = match now.parse(&path) {
            Ok(p) if !p.enabled => Err(PrincipalRefusal::Disabled(principal.clone())),
            Ok(p) => Ok(Arc::new(p)),
            Err(e) => Err(PrincipalRefusal::Profile(Arc::new(e))),
        };
        if let Err(reason) = &grant {
            tracing::warn!(%principal, %reason, "principal profile refused");
        }
        self.entries
            .lock()
            .insert(principal.clone(), (now, grant.clone()), Instant::now());
        grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A cache over a fresh state directory, and `alice`'s profile path in it.
    fn cache() -> (tempfile::TempDir, ProfileCache, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cache = ProfileCache::new(dir.path().to_path_buf());
        let path = PrincipalProfile::path(dir.path(), &pid("alice"));
        std::fs::create_dir_all(path.parent().unwrap_or(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, cache, path)
    }

    fn disabled(grant: ProfileGrant) -> bool {
        matches!(grant, Err(PrincipalRefusal::Disabled(_)))
    }

    #[test]
    fn the_profile_cache_stays_bounded_under_principal_churn() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cache = ProfileCache::new(dir.path().to_path_buf());
        std::fs::create_dir_all(dir.path().join("profiles")).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..PRINCIPAL_CACHE_CAPACITY + 50 {
            let p = pid(&format!("p{i}"));
            if i % 4 == 0 {
                let path = PrincipalProfile::path(dir.path(), &p);
                std::fs::write(path, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
            }
            assert!(cache.resolve(&p).is_ok());
            assert!(cache.len() <= PRINCIPAL_CACHE_CAPACITY);
            assert!(cache.held() <= HELD_PROFILES);
        }
        assert_eq!(cache.len(), PRINCIPAL_CACHE_CAPACITY);
        assert_eq!(cache.held(), HELD_PROFILES);
    }

    #[test]
    fn a_profile_rewritten_in_place_with_its_old_mtime_is_read_again() {
        let (_dir, cache, path) = cache();
        let p = pid("alice");
        // Same length both times, so only the content and the change time differ.
        std::fs::write(&path, "enabled = true \n").unwrap_or_else(|e| panic!("{e}"));
        let before = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cache.resolve(&p).is_ok());
        assert_eq!(cache.held(), 1, "the file is kept open");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut &f, b"enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        f.set_modified(before).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let after = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            before, after,
            "the rewrite must keep the old mtime for this test"
        );
        assert!(
            disabled(cache.resolve(&p)),
            "a disabled profile must be seen even when its mtime was restored"
        );
    }

    #[test]
    fn a_profile_renamed_over_deleted_or_grown_is_what_the_next_resolve_reads() {
        let (dir, cache, path) = cache();
        let p = pid("alice");
        std::fs::write(&path, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(cache.resolve(&p).is_ok());
        // An atomic replacement: a new file renamed over the open one.
        let new = dir.path().join("new.toml");
        std::fs::write(&new, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&new, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(disabled(cache.resolve(&p)), "the renamed-over file applies");
        // Deleted: the defaults apply, and the deleted file is no longer held.
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(cache.resolve(&p).is_ok());
        assert_eq!(cache.held(), 0);
        // Recreated far longer than before: every byte is read.
        let long = format!("{}enabled = false\n", "# padding\n".repeat(2000));
        std::fs::write(&path, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(cache.resolve(&p).is_ok());
        std::fs::write(&path, &long).unwrap_or_else(|e| panic!("{e}"));
        assert!(disabled(cache.resolve(&p)), "the line past 20 KB is read");
    }

    #[test]
    fn a_profile_written_through_a_hard_link_or_deleted_and_recreated_while_held_is_read_anew() {
        let (dir, cache, path) = cache();
        let p = pid("alice");
        std::fs::write(&path, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(cache.resolve(&p).is_ok());
        assert_eq!(cache.held(), 1);
        // Rewritten in place through another name for the same inode.
        let link = dir.path().join("link.toml");
        std::fs::hard_link(&path, &link).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&link, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            disabled(cache.resolve(&p)),
            "a write through the link applies"
        );
        // Deleted and recreated while the old inode is still open (and linked elsewhere): the
        // new file applies, the old one is never read again.
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(cache.resolve(&p).is_ok(), "the recreated file applies");
        std::fs::write(&link, "enabled = true \n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            disabled(cache.resolve(&p)),
            "the file at the path, not the old one"
        );
        // Truncated, then rewritten in place.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            cache.resolve(&p).is_ok(),
            "an empty profile is the defaults"
        );
        std::fs::write(&path, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(disabled(cache.resolve(&p)));
        assert_eq!(cache.held(), 1);
    }

    #[test]
    fn a_swapped_symlink_is_followed_to_its_new_target() {
        let (dir, cache, path) = cache();
        let p = pid("alice");
        let (on, off) = (dir.path().join("on.toml"), dir.path().join("off.toml"));
        std::fs::write(&on, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&off, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&on, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(cache.resolve(&p).is_ok());
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&off, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(disabled(cache.resolve(&p)), "the new target applies");
    }

    #[test]
    fn a_fifo_or_a_directory_at_the_profile_path_is_refused_without_waiting() {
        let (_dir, cache, path) = cache();
        let p = pid("alice");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(made.success(), "mkfifo failed");
        // Without a writer an ordinary open of a FIFO blocks for ever; this must return.
        assert!(matches!(
            cache.resolve(&p),
            Err(PrincipalRefusal::Profile(_))
        ));
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            cache.resolve(&p),
            Err(PrincipalRefusal::Profile(_))
        ));
        assert_eq!(cache.held(), 0);
    }
}
