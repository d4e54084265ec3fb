//! Reading values out of a parsed TOML tree so that every problem becomes a [`ManifestError`]
//! naming the file, the dotted key path and the reason.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::position::offset_of;

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
    /// More than one key is wrong: every problem found in one pass, sorted by position.
    #[error("{}: {} problems:{}", file.display(), problems.len(), list(problems))]
    Many {
        /// The manifest path.
        file: PathBuf,
        /// Each problem, in the order of the file.
        problems: Vec<Problem>,
    },
}

/// One wrong key of a manifest with several, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key (of its closest existing ancestor when it is missing).
    pub line: usize,
    /// 1-based column of the same.
    pub column: usize,
    /// Dotted path of the offending key, such as `package.name`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: `{}`: {}",
            self.line, self.column, self.key, self.reason
        )
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

impl ManifestError {
    /// Every wrong key this error reports (one for [`Invalid`](Self::Invalid), each of
    /// [`Many`](Self::Many)), positioned in `text`; empty for I/O and file-type errors, and
    /// the one syntax error for [`Syntax`](Self::Syntax).
    pub fn problems(&self, text: &str) -> Vec<Problem> {
        match self {
            Self::Io { .. } | Self::NotAManifest { .. } => Vec::new(),
            Self::Syntax {
                line,
                column,
                message,
                ..
            } => vec![Problem {
                line: *line,
                column: *column,
                key: String::new(),
                reason: message.clone(),
            }],
            Self::Invalid { key, reason, .. } => vec![locate(text, key, reason)],
            Self::Many { problems, .. } => problems.clone(),
        }
    }
}

fn locate(text: &str, key: &str, reason: &str) -> Problem {
    let (line, column) = line_col(text, offset_of(text, key));
    Problem {
        line,
        column,
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// A field renamed by a translation: `(current name, legacy name)`.
pub(crate) type Rename = (&'static str, &'static str);

/// Where a translated entry came from.
struct Alias {
    current: String,
    legacy: String,
    renames: &'static [Rename],
}

/// Reads key values out of TOML tables, turning every problem into a [`ManifestError`] that
/// names the key.
pub(crate) struct Reader<'f> {
    file: &'f Path,
    /// Problems set aside so that parsing goes on and reports them all at once.
    noted: RefCell<Vec<ManifestError>>,
    /// Every entry translated from an earlier layout.
    aliases: RefCell<Vec<Alias>>,
}

impl<'f> Reader<'f> {
    /// A reader whose errors name `file`.
    pub(crate) fn new(file: &'f Path) -> Self {
        Self {
            file,
            noted: RefCell::new(Vec::new()),
            aliases: RefCell::new(Vec::new()),
        }
    }

    /// Records that the entry at `current` was written at `legacy` in the file, its fields
    /// named as in `renames` (`(current, legacy)`), so a problem found in the translated entry
    /// names, and is located at, what the author wrote.
    pub(crate) fn alias(&self, current: String, legacy: String, renames: &'static [Rename]) {
        self.aliases.borrow_mut().push(Alias {
            current,
            legacy,
            renames,
        });
    }

    /// `key`, or where the author wrote it when its entry was translated from a legacy one.
    fn as_written(&self, key: String) -> String {
        let aliases = self.aliases.borrow();
        for a in aliases.iter() {
            let Some(rest) = key.strip_prefix(a.current.as_str()) else {
                continue;
            };
            if rest.is_empty() {
                return a.legacy.clone();
            }
            if let Some(field) = rest.strip_prefix('.') {
                let (head, tail) = field.split_at(field.find(['.', '[']).unwrap_or(field.len()));
                let head = a
                    .renames
                    .iter()
                    .find(|(current, _)| *current == head)
                    .map_or(head, |(_, legacy)| legacy);
                return format!("{}.{head}{tail}", a.legacy);
            }
            if rest.starts_with('[') {
                return format!("{}{rest}", a.legacy);
            }
        }
        key
    }

    /// The value of `result`, or `None` with its error noted for [`Reader::finish`].
    pub(crate) fn keep<T>(&self, result: Result<T, ManifestError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.noted.borrow_mut().push(e);
                None
            }
        }
    }

    /// Notes an error for [`Reader::finish`].
    pub(crate) fn note(&self, e: ManifestError) {
        self.noted.borrow_mut().push(e);
    }

    /// Whether any error was noted.
    pub(crate) fn failed(&self) -> bool {
        !self.noted.borrow().is_empty()
    }

    /// The noted errors as one: a single error as it is, several as
    /// [`ManifestError::Many`] sorted by their position in `text`.
    pub(crate) fn finish(&self, text: &str) -> ManifestError {
        let mut noted = self.noted.take();
        if noted.len() <= 1 {
            return noted.pop().unwrap_or_else(|| {
                self.invalid(
                    "package",
                    "the manifest could not be read (no error recorded)",
                )
            });
        }
        let mut problems: Vec<Problem> = noted.iter().flat_map(|e| e.problems(text)).collect();
        problems.sort_by(|a, b| (a.line, a.column, &a.key).cmp(&(b.line, b.column, &b.key)));
        problems.dedup();
        ManifestError::Many {
            file: self.file.to_path_buf(),
            problems,
        }
    }

    pub(crate) fn invalid(
        &self,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            key: self.as_written(key.into()),
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
