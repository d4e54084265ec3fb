//! Guest path grammar: a guest path names a mount and a path inside it. Parsing is lexical and
//! total: every string either resolves to (mount, normalised relative path) or is an error;
//! `..` can never climb above the mount root, NUL bytes are refused, and a path is at most
//! [`MAX_GUEST_PATH`] bytes and [`MAX_GUEST_DEPTH`] names deep.

use std::path::{Component, Path, PathBuf};

use crate::error::VfsError;

/// Longest guest path accepted, in bytes.
pub const MAX_GUEST_PATH: usize = 4096;

/// Most names a normalised guest path may hold below its mount root. Mounts keep every entry
/// within this depth (and within [`MAX_GUEST_PATH`] bytes), so walks of them stay cheap.
pub const MAX_GUEST_DEPTH: usize = 128;

/// Which mount a guest path addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// The capsule's workspace: bare paths and `cwd://…`.
    Workspace,
    /// The invoking principal's home: `home://…`.
    Home,
    /// The invoking principal's scratch directory: `/tmp` and `/tmp/…`.
    Tmp,
    /// A host directory granted by absolute path: any other path starting with `/`.
    Absolute,
}

/// A parsed guest path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuestPath {
    /// The mount it addresses.
    pub scheme: Scheme,
    /// Normalised path relative to the mount root (for [`Scheme::Absolute`], relative to `/`).
    pub rel: PathBuf,
}

/// Normalises `s` lexically into a relative path; `..` above the root is a boundary escape.
fn normalize(original: &str, s: &str) -> Result<PathBuf, VfsError> {
    let mut out = PathBuf::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(VfsError::BoundaryEscape(original.to_string()));
                }
            }
            Component::Prefix(_) => return Err(VfsError::InvalidPath(original.to_string())),
        }
    }
    let depth = out.components().count();
    if depth > MAX_GUEST_DEPTH {
        return Err(VfsError::InvalidPath(format!(
            "a path is at most {MAX_GUEST_DEPTH} names deep ({depth} given)"
        )));
    }
    Ok(out)
}

impl GuestPath {
    /// Parses a guest path.
    pub fn parse(s: &str) -> Result<Self, VfsError> {
        if s.len() > MAX_GUEST_PATH {
            return Err(VfsError::InvalidPath(format!("path of {} bytes", s.len())));
        }
        if s.contains('\0') {
            return Err(VfsError::InvalidPath("path contains NUL".into()));
        }
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("home://") {
            (Scheme::Home, rest)
        } else if let Some(rest) = s.strip_prefix("cwd://") {
            (Scheme::Workspace, rest)
        } else if s == "/tmp" || s.starts_with("/tmp/") {
            (Scheme::Tmp, &s[4..])
        } else if s.contains("://") {
            return Err(VfsError::InvalidPath(format!("unknown scheme in `{s}`")));
        } else if s.starts_with('/') {
            (Scheme::Absolute, s)
        } else {
            (Scheme::Workspace, s)
        };
        Ok(Self {
            scheme,
            rel: normalize(s, rest)?,
        })
    }

    /// The path as a guest would write it, in canonical form.
    pub fn display(&self) -> String {
        let rel = self.rel.to_string_lossy();
        match self.scheme {
            Scheme::Workspace => format!("cwd://{rel}"),
            Scheme::Home => format!("home://{rel}"),
            Scheme::Tmp if rel.is_empty() => "/tmp".to_string(),
            Scheme::Tmp => format!("/tmp/{rel}"),
            Scheme::Absolute => format!("/{rel}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> GuestPath {
        GuestPath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn schemes_are_recognised() {
        assert_eq!(
            p("home://notes/a.txt"),
            GuestPath {
                scheme: Scheme::Home,
                rel: "notes/a.txt".into()
            }
        );
        assert_eq!(
            p("cwd://src"),
            GuestPath {
                scheme: Scheme::Workspace,
                rel: "src".into()
            }
        );
        assert_eq!(
            p("src/lib.rs"),
            GuestPath {
                scheme: Scheme::Workspace,
                rel: "src/lib.rs".into()
            }
        );
        assert_eq!(
            p("/tmp/x"),
            GuestPath {
                scheme: Scheme::Tmp,
                rel: "x".into()
            }
        );
        assert_eq!(
            p("/tmp"),
            GuestPath {
                scheme: Scheme::Tmp,
                rel: "".into()
            }
        );
        assert_eq!(
            p("/tmpfile"),
            GuestPath {
                scheme: Scheme::Absolute,
                rel: "tmpfile".into()
            }
        );
        assert_eq!(
            p("/usr/share/dict"),
            GuestPath {
                scheme: Scheme::Absolute,
                rel: "usr/share/dict".into()
            }
        );
        assert_eq!(
            p(""),
            GuestPath {
                scheme: Scheme::Workspace,
                rel: "".into()
            }
        );
    }

    #[test]
    fn dot_dot_cannot_climb_out() {
        assert_eq!(
            p("a/../b"),
            GuestPath {
                scheme: Scheme::Workspace,
                rel: "b".into()
            }
        );
        assert_eq!(
            p("home://a/./b/.."),
            GuestPath {
                scheme: Scheme::Home,
                rel: "a".into()
            }
        );
        for bad in [
            "..",
            "../x",
            "a/../../x",
            "home://..",
            "cwd://a/../../etc",
            "/tmp/../../etc",
            "/..",
        ] {
            assert!(
                matches!(GuestPath::parse(bad), Err(VfsError::BoundaryEscape(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn nul_unknown_schemes_and_huge_paths_are_invalid() {
        for bad in ["a\0b", "ftp://x", "file:///etc/passwd"] {
            assert!(
                matches!(GuestPath::parse(bad), Err(VfsError::InvalidPath(_))),
                "{bad:?}"
            );
        }
        let huge = "a/".repeat(MAX_GUEST_PATH);
        assert!(matches!(
            GuestPath::parse(&huge),
            Err(VfsError::InvalidPath(_))
        ));
        let deepest = vec!["a"; MAX_GUEST_DEPTH].join("/");
        assert!(GuestPath::parse(&deepest).is_ok());
        assert!(GuestPath::parse(&format!("{deepest}/../b/./c/..")).is_ok());
        assert!(matches!(
            GuestPath::parse(&format!("home://{deepest}/a")),
            Err(VfsError::InvalidPath(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in ["cwd://a/b", "home://x", "/tmp/y", "/usr/z", "/tmp"] {
            assert_eq!(p(&p(s).display()), p(s));
        }
    }
}
