//! Reading values out of a parsed TOML tree so that every problem becomes a [`ManifestError`]
//! naming the file, the dotted key path and the reason.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        /// The manifest path.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: line {line}, column {column}: {message}", file.display())]
    Syntax {
        /// The manifest path.
        file: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the TOML parser reported.
        message: String,
    },
    /// The manifest is not a regular file of at most
    /// [`MAX_MANIFEST_BYTES`](super::MAX_MANIFEST_BYTES) (a FIFO, a
    /// device, a directory, a huge file); it was refused without reading from it.
    #[error("{}: {reason}", file.display())]
    NotAManifest {
        /// The manifest path.
        file: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// A key is missing, unknown, of the wrong type or has an invalid value.
    #[error("{}: `{key}`: {reason}", file.display())]
    Invalid {
        /// The manifest path.
        file: PathBuf,
        /// Dotted path of the offending key, such as `package.name`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads key values out of TOML tables, turning every problem into a [`ManifestError`] that
/// names the key.
pub(crate) struct Reader<'f> {
    file: &'f Path,
}

impl<'f> Reader<'f> {
    /// A reader whose errors name `file`.
    pub(crate) fn new(file: &'f Path) -> Self {
        Self { file }
    }

    pub(crate) fn invalid(
        &self,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Errors on any key of `table` not in `known`.
    pub(crate) fn known_keys(
        &self,
        table: &Table,
        path: &str,
        known: &[&str],
    ) -> Result<(), ManifestError> {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                return Err(self.invalid(
                    join(path, key),
                    format!("unknown key (expected one of: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn table<'v>(&self, v: &'v Value, path: &str) -> Result<&'v Table, ManifestError> {
        v.as_table()
            .ok_or_else(|| self.invalid(path, format!("expected a table, found {}", v.type_str())))
    }

    pub(crate) fn string(&self, v: &Value, path: &str) -> Result<String, ManifestError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.invalid(path, format!("expected a string, found {}", v.type_str())))
    }

    pub(crate) fn bool(&self, v: &Value, path: &str) -> Result<bool, ManifestError> {
        v.as_bool().ok_or_else(|| {
            self.invalid(path, format!("expected a boolean, found {}", v.type_str()))
        })
    }

    pub(crate) fn strings(&self, v: &Value, path: &str) -> Result<Vec<String>, ManifestError> {
        let arr = v.as_array().ok_or_else(|| {
            self.invalid(
                path,
                format!("expected an array of strings, found {}", v.type_str()),
            )
        })?;
        arr.iter()
            .enumerate()
            .map(|(i, item)| self.string(item, &format!("{path}[{i}]")))
            .collect()
    }

    pub(crate) fn opt_string(
        &self,
        t: &Table,
        path: &str,
        key: &str,
    ) -> Result<Option<String>, ManifestError> {
        t.get(key)
            .map(|v| self.string(v, &join(path, key)))
            .transpose()
    }
}

/// `path.key`, with `key` quoted unless it is a bare TOML key.
pub(crate) fn join(path: &str, key: &str) -> String {
    let quoted = if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        quoted
    } else {
        format!("{path}.{quoted}")
    }
}

/// The 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}
