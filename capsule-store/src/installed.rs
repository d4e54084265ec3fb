//! Which version of each capsule each owner installed, one small file per (owner, capsule)
//! under `<state>/installed/<owner>/<capsule>.version`. A record is replaced atomically and
//! is private to the host user; an unreadable or malformed one is an error rather than "not
//! installed", since guessing would run a capsule's install a second time.

use std::path::{Path, PathBuf};

use capsule_ids::PrincipalId;

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

/// Where installed versions are recorded.
#[derive(Clone, Debug)]
pub struct InstalledVersions {
    root: PathBuf,
}

impl InstalledVersions {
    /// The records under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("installed"),
        }
    }

    fn path(&self, owner: &PrincipalId, capsule: &str) -> PathBuf {
        self.root
            .join(owner.as_str())
            .join(format!("{capsule}.version"))
    }

    /// The version recorded for `capsule` installed by `owner`, if any. An unreadable or
    /// malformed record is an error: guessing would re-run install.
    pub fn read(
        &self,
        owner: &PrincipalId,
        capsule: &str,
    ) -> Result<Option<semver::Version>, InstalledError> {
        let path = self.path(owner, capsule);
        match std::fs::read_to_string(&path) {
            Ok(text) => semver::Version::parse(text.trim())
                .map(Some)
                .map_err(|source| InstalledError::Malformed { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(InstalledError::Io { path, source }),
        }
    }

    /// Records `version` atomically.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn records_round_trip_per_owner_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let iv = InstalledVersions::new(dir.path());
        let (a, b) = (
            PrincipalId::parse("a").unwrap_or_else(|e| panic!("{e}")),
            PrincipalId::parse("b").unwrap_or_else(|e| panic!("{e}")),
        );
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
    }
}
