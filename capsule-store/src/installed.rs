//! Which version of each capsule each owner installed, one small file per (owner, capsule)
//! under `<state>/installed/<owner>/<capsule>.version`. A record is replaced atomically and
//! is private to the host user; an unreadable or malformed one is an error rather than "not
//! installed", since guessing would run a capsule's install a second time.
//!
//! Two ways to record. [`InstalledVersions::write`] returns once the record is durable (file
//! and directory synced): for a record whose loss would change what runs. A first record of
//! a capsule whose install ran no guest code ([`InstalledVersions::write_unsynced`]) returns
//! once readers see it, and is made durable in the background with others queued meanwhile,
//! a few `fsync`s per batch instead of two per record. Losing such a record in a crash
//! leaves the owner where the load started, "not installed"; it is only ever a new file
//! (never replacing a record), so the worst a crash leaves is an empty file, which reads as
//! "not installed" too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_ids::PrincipalId;

use crate::installed_sync::Unsynced;

/// Why an installed-version record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    /// The record exists but could not be read, or could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The record file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The record does not hold a semver version.
    #[error("{}: not a version ({source})", path.display())]
    Malformed {
        /// The record file.
        path: PathBuf,
        /// Why the text is not a version.
        source: semver::Error,
    },
}

/// Where installed versions are recorded. Clones share the queue of records not yet synced.
#[derive(Clone, Debug)]
pub struct InstalledVersions {
    root: PathBuf,
    unsynced: Arc<Unsynced>,
}

impl InstalledVersions {
    /// The records under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        let root = state_dir.join("installed");
        Self {
            unsynced: Arc::new(Unsynced::new(root.clone())),
            root,
        }
    }

    fn path(&self, owner: &PrincipalId, capsule: &str) -> PathBuf {
        self.root
            .join(owner.as_str())
            .join(format!("{capsule}.version"))
    }

    /// The version recorded for `capsule` installed by `owner`, if any. An unreadable or
    /// malformed record is an error: guessing would re-run install. An empty file is "not
    /// installed": only an unsynced first record lost in a crash leaves one.
    pub fn read(
        &self,
        owner: &PrincipalId,
        capsule: &str,
    ) -> Result<Option<semver::Version>, InstalledError> {
        let path = self.path(owner, capsule);
        match std::fs::read_to_string(&path) {
            Ok(text) if text.is_empty() => Ok(None),
            Ok(text) => semver::Version::parse(text.trim())
                .map(Some)
                .map_err(|source| InstalledError::Malformed { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(InstalledError::Io { path, source }),
        }
    }

    /// Records `version` atomically and durably: file and directory are synced before this
    /// returns.
    pub fn write(
        &self,
        owner: &PrincipalId,
        capsule: &str,
        version: &semver::Version,
    ) -> Result<(), InstalledError> {
        let path = self.path(owner, capsule);
        capsule_security::private::write_atomic(&path, format!("{version}\n").as_bytes())
            .map_err(|source| InstalledError::Io { path, source })
    }

    /// Records `version` as the first record of `capsule` for `owner`, visible to readers when
    /// this returns but durable only once the background sync has reached it (see
    /// [`flush`](Self::flush)). For a record whose loss in a crash would change nothing that
    /// ran: the caller must know no record existed and no guest code ran for it.
    pub fn write_unsynced(
        &self,
        owner: &PrincipalId,
        capsule: &str,
        version: &semver::Version,
    ) -> Result<(), InstalledError> {
        let path = self.path(owner, capsule);
        match capsule_security::private::replace_parts(
            &path,
            &[format!("{version}\n").as_bytes()],
            false,
        ) {
            Ok(()) => {
                self.unsynced.queue(path);
                Ok(())
            }
            Err(source) => Err(InstalledError::Io { path, source }),
        }
    }

    /// Waits until every record written with [`write_unsynced`](Self::write_unsynced) before
    /// this call is durable; the first sync failure since the last flush is returned.
    pub fn flush(&self) -> Result<(), InstalledError> {
        self.unsynced
            .flush()
            .map_err(|(path, source)| InstalledError::Io { path, source })
    }

    /// Records written unsynced and not yet durable.
    pub fn unsynced(&self) -> u64 {
        self.unsynced.pending()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn records_round_trip_per_owner_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let iv = InstalledVersions::new(dir.path());
        let (a, b) = (pid("a"), pid("b"));
        assert_eq!(iv.read(&a, "cap").ok(), Some(None));
        iv.write(&a, "cap", &v("1.2.3"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(iv.read(&a, "cap").ok(), Some(Some(v("1.2.3"))));
        assert_eq!(
            iv.read(&b, "cap").ok(),
            Some(None),
            "each owner installs separately"
        );
        std::fs::write(iv.path(&a, "cap"), "garbage").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            iv.read(&a, "cap"),
            Err(InstalledError::Malformed { .. })
        ));
        std::fs::write(iv.path(&a, "cap"), " \n").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(iv.read(&a, "cap"), Err(InstalledError::Malformed { .. })),
            "only a file with nothing in it is taken for a lost unsynced record"
        );
    }

    #[test]
    fn an_empty_record_left_by_a_crash_reads_as_not_installed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let iv = InstalledVersions::new(dir.path());
        let a = pid("a");
        let path = iv.path(&a, "cap");
        capsule_security::private::create_private_dir(
            path.parent().unwrap_or_else(|| panic!("no parent")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(iv.read(&a, "cap").ok(), Some(None));
    }

    #[test]
    fn unsynced_records_are_visible_at_once_and_durable_after_flush() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let iv = InstalledVersions::new(dir.path());
        let shared = iv.clone();
        for i in 0..50 {
            let owner = pid(&format!("o{}", i % 3));
            iv.write_unsynced(&owner, &format!("c{i}"), &v("0.1.0"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                shared.read(&owner, &format!("c{i}")).ok(),
                Some(Some(v("0.1.0"))),
                "a clone sees the record as soon as it is written"
            );
        }
        shared.flush().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(iv.unsynced(), 0, "flush waits for every queued record");
        for o in 0..3 {
            let owner_dir = dir.path().join("installed").join(format!("o{o}"));
            for entry in std::fs::read_dir(&owner_dir).unwrap_or_else(|e| panic!("{e}")) {
                let entry = entry.unwrap_or_else(|e| panic!("{e}"));
                let name = entry.file_name().to_string_lossy().into_owned();
                assert!(name.ends_with(".version"), "no temporary file left: {name}");
                let mode = entry
                    .metadata()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        // A flush with nothing queued returns at once.
        iv.flush().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn an_unsynced_record_that_cannot_be_written_is_an_error_and_queues_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // A file where the owner's directory would go.
        std::fs::create_dir_all(dir.path().join("installed")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("installed").join("a"), "x")
            .unwrap_or_else(|e| panic!("{e}"));
        let iv = InstalledVersions::new(dir.path());
        assert!(matches!(
            iv.write_unsynced(&pid("a"), "cap", &v("1.0.0")),
            Err(InstalledError::Io { .. })
        ));
        assert_eq!(iv.unsynced(), 0);
        iv.flush().unwrap_or_else(|e| panic!("{e}"));
    }
}
