//! Where grants are kept: one private TOML file per capsule under `<state>/grants/`.

use std::path::{Path, PathBuf};

use capsule_ids::CapsuleName;

use super::decision::Grant;

/// Why a stored grant could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The grant file exists but could not be read or written.
    #[error("{}: {source}", file.display())]
    Io {
        /// The grant file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The grant file is not a valid grant.
    #[error("{}: `{key}`: {reason}", file.display())]
    Malformed {
        /// The grant file.
        file: PathBuf,
        /// Dotted path of the offending key (empty for a syntax error).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The file holds the grant of another capsule.
    #[error("{}: holds the grant of capsule `{found}`", file.display())]
    WrongCapsule {
        /// The grant file.
        file: PathBuf,
        /// The capsule named inside it.
        found: CapsuleName,
    },
}

/// The operator's grants, one TOML file per capsule under `<state>/grants/`, each written
/// atomically and readable by the host's user only.
#[derive(Clone, Debug)]
pub struct GrantStore {
    dir: PathBuf,
}

impl GrantStore {
    /// The store under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("grants"),
        }
    }

    /// Where the grant of `capsule` lives.
    pub fn path(&self, capsule: &CapsuleName) -> PathBuf {
        self.dir.join(format!("{capsule}.toml"))
    }

    /// The stored grant of `capsule`, if the operator ever decided about it.
    pub fn load(&self, capsule: &CapsuleName) -> Result<Option<Grant>, GrantError> {
        let file = self.path(capsule);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(GrantError::Io { file, source }),
        };
        let grant = Grant::parse(&text, &file)?;
        if &grant.capsule != capsule {
            return Err(GrantError::WrongCapsule {
                file,
                found: grant.capsule,
            });
        }
        Ok(Some(grant))
    }

    /// Stores `grant`, replacing any earlier one atomically.
    pub fn save(&self, grant: &Grant) -> Result<(), GrantError> {
        let file = self.path(&grant.capsule);
        crate::private::write_atomic(&file, grant.to_toml().as_bytes())
            .map_err(|source| GrantError::Io { file, source })
    }

    /// Deletes the grant of `capsule`; whether there was one.
    pub fn remove(&self, capsule: &CapsuleName) -> Result<bool, GrantError> {
        let file = self.path(capsule);
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(GrantError::Io { file, source }),
        }
    }

    /// Every stored grant, by capsule name; unreadable files are reported in place.
    pub fn list(&self) -> Result<Vec<Result<Grant, GrantError>>, GrantError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(GrantError::Io {
                    file: self.dir.clone(),
                    source,
                });
            }
        };
        let mut names: Vec<CapsuleName> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".toml")?;
                CapsuleName::parse(stem).ok()
            })
            .collect();
        names.sort();
        Ok(names
            .iter()
            .filter_map(|n| self.load(n).transpose())
            .collect())
    }
}
