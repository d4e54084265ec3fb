//! The operator's host policy: what may ever be granted, whatever an approver says. Some host
//! directories are never grantable (the state directory, key material, `/proc`, `/sys`,
//! `/dev`, `/` and every ancestor of those); `<state>/policy.toml` may narrow the rest. Every
//! filesystem check runs on the canonical (symlink-resolved) path; that path is what the
//! operator approves and what the host mounts (opened refusing any link on the way), so a
//! symlink swapped in later cannot redirect a grant. `[net] open_ranges` is the only place
//! address ranges are opened to the network airlock.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use capsule_bus::TopicPattern;
use toml::{Table, Value};

use crate::airlock::{Airlock, IpRange};
use crate::grant::Request;

/// Name of the policy file inside the state directory.
pub const POLICY_FILE: &str = "policy.toml";

/// Host directories no policy or approver can grant, with what each holds.
const SYSTEM_PROTECTED: &[(&str, &str)] = &[
    ("/", "the host's root directory"),
    (
        "/proc",
        "the kernel's process information (including the host's own memory)",
    ),
    ("/sys", "the kernel's device and driver interface"),
    ("/dev", "the host's devices"),
];

/// A host directory that can never be granted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Protected {
    /// Canonical path when it could be resolved, else as given.
    path: PathBuf,
    /// What it holds, for the refusal message.
    what: String,
}

/// Why a request can never be granted on this host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// The directory is, lies inside, or contains a protected directory.
    #[error(
        "{request} can never be granted: it resolves to {}, which {relation} {} ({what})",
        resolved.display(),
        protected.display()
    )]
    Protected {
        /// The request.
        request: Request,
        /// Its canonical path.
        resolved: PathBuf,
        /// The protected directory it touches.
        protected: PathBuf,
        /// How the two relate (`is`, `lies inside`, `contains`).
        relation: &'static str,
        /// What the protected directory holds.
        what: String,
    },
    /// The directory is reached, under another name, through a mount: a bind mount of a
    /// protected directory (or of one of its ancestors or insides), or a kernel file system.
    #[error(
        "{request} can never be granted: {}",
        match (fstype, protected) {
            (Some(t), _) => format!("a {t} file system is mounted at {}", point.display()),
            (None, Some(p)) => format!(
                "through the mount at {}, it {relation} {} ({what})",
                point.display(),
                p.display()
            ),
            (None, None) => format!("the mount at {} is not grantable", point.display()),
        }
    )]
    Mounted {
        /// The request.
        request: Request,
        /// The mount point that ties it to what is protected.
        point: PathBuf,
        /// A kernel file system's type, when that is what is mounted.
        fstype: Option<String>,
        /// The protected directory it aliases, otherwise.
        protected: Option<PathBuf>,
        /// How the two relate (`is`, `lies inside`, `contains`).
        relation: &'static str,
        /// What the protected directory holds.
        what: String,
    },
    /// The path names something other than a directory.
    #[error("{request} cannot be granted: {} is not a directory", resolved.display())]
    NotADirectory {
        /// The request.
        request: Request,
        /// What it resolves to.
        resolved: PathBuf,
    },
    /// The directory does not exist or cannot be resolved.
    #[error("{request} cannot be granted: the directory cannot be resolved ({reason})")]
    Unresolvable {
        /// The request.
        request: Request,
        /// Why.
        reason: String,
    },
    /// The operator's policy does not allow it.
    #[error("{request} is outside the host policy ({}: {rule})", file.display())]
    OutsidePolicy {
        /// The request.
        request: Request,
        /// The policy file.
        file: PathBuf,
        /// Which rule excludes it.
        rule: String,
    },
}

/// A malformed `policy.toml`.
#[derive(Debug, thiserror::Error)]
pub enum HostPolicyError {
    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        /// The policy file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("{}: `{key}`: {reason}", file.display())]
    Malformed {
        /// The policy file.
        file: PathBuf,
        /// Dotted path of the offending key (empty for a syntax error).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A manifest's requests as the host decides about them: every host directory replaced by
/// the canonical directory it resolves to, so the operator approves, and a grant records,
/// the directory that is mounted rather than a spelling whose links may lead elsewhere (or
/// be re-pointed later).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The grantable requests, directories canonical, sorted and without duplicates (a write
    /// request subsumes a read request of the same directory).
    pub requests: Vec<Request>,
    /// Each grantable directory as the manifest writes it, mapped to its canonical directory.
    pub dirs: HashMap<PathBuf, PathBuf>,
    /// The requests that can never be granted on this host.
    pub forbidden: Vec<Forbidden>,
}

/// What this host allows to be granted.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    file: PathBuf,
    protected: Vec<Protected>,
    /// Canonical directories absolute fs grants must lie in; `None` = anywhere not protected.
    fs_roots: Option<Vec<PathBuf>>,
    /// Patterns broad handler bindings must be covered by; `None` = any.
    handler_patterns: Option<Vec<TopicPattern>>,
    /// The mount table, re-read only when it changed.
    mounts: crate::mounts::MountWatch,
    /// The network airlock, with the ranges `[net] open_ranges` opens.
    airlock: Airlock,
}

impl HostPolicy {
    /// The policy in `<state_dir>/policy.toml` (none = only the built-in protections), with
    /// `state_dir` itself protected.
    pub fn load(state_dir: &Path) -> Result<Self, HostPolicyError> {
        let file = state_dir.join(POLICY_FILE);
        let policy = match std::fs::read_to_string(&file) {
            Ok(text) => Self::parse(&text, &file)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::unrestricted(&file),
            Err(source) => return Err(HostPolicyError::Io { file, source }),
        };
        Ok(policy.protect(
            state_dir,
            "the host's state directory: keys, secrets, grants and every principal's data",
        ))
    }

    fn unrestricted(file: &Path) -> Self {
        let mut p = Self {
            file: file.to_path_buf(),
            protected: Vec::new(),
            fs_roots: None,
            handler_patterns: None,
            mounts: crate::mounts::MountWatch::default(),
            airlock: Airlock::closed(),
        };
        for (path, what) in SYSTEM_PROTECTED {
            p = p.protect(Path::new(path), what);
        }
        p
    }

    /// Parses policy text; `file` names it in errors. The built-in protections always apply.
    pub fn parse(text: &str, file: &Path) -> Result<Self, HostPolicyError> {
        let bad = |key: &str, reason: String| HostPolicyError::Malformed {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let root: Table = text
            .parse::<Table>()
            .map_err(|e| bad("", e.message().trim().to_string()))?;
        let mut policy = Self::unrestricted(file);
        for (section, v) in &root {
            let key = match section.as_str() {
                "fs" => "allowed_roots",
                "handlers" => "allowed_patterns",
                "net" => "open_ranges",
                other => {
                    return Err(bad(
                        other,
                        "unknown section (expected fs, handlers or net)".into(),
                    ));
                }
            };
            let t = v
                .as_table()
                .ok_or_else(|| bad(section, "expected a table".into()))?;
            if let Some(unknown) = t.keys().find(|k| *k != key) {
                return Err(bad(
                    &format!("{section}.{unknown}"),
                    format!("unknown key (expected {key})"),
                ));
            }
            let Some(v) = t.get(key) else { continue };
            let at = format!("{section}.{key}");
            let items: Vec<&str> = v
                .as_array()
                .and_then(|a| a.iter().map(Value::as_str).collect())
                .ok_or_else(|| bad(&at, "expected an array of strings".into()))?;
            if section == "fs" {
                let roots = items
                    .iter()
                    .map(|s| {
                        if s.starts_with('/') {
                            Ok(std::fs::canonicalize(s).unwrap_or_else(|_| s.into()))
                        } else {
                            Err(bad(&at, format!("`{s}` is not an absolute path")))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                policy.fs_roots = Some(roots);
            } else if section == "net" {
                let open = items
                    .iter()
                    .map(|s| s.parse::<IpRange>().map_err(|e| bad(&at, e)))
                    .collect::<Result<Vec<_>, _>>()?;
                policy.airlock = Airlock::with_open(open);
            } else {
                let patterns = items
                    .iter()
                    .map(|s| TopicPattern::parse(s).map_err(|e| bad(&at, format!("`{s}`: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                policy.handler_patterns = Some(patterns);
            }
        }
        Ok(policy)
    }

    /// The network airlock: every address class refused except the ranges the operator
    /// opened in `[net] open_ranges` (CIDR, e.g. `["127.0.0.0/8", "::1/128"]`).
    pub fn airlock(&self) -> &Airlock {
        &self.airlock
    }

    /// Adds a directory that can never be granted. It is resolved now; one that does not
    /// exist yet (a cache created on first use) is placed where it will appear: under its
    /// longest existing ancestor, resolved.
    pub fn protect(mut self, dir: &Path, what: &str) -> Self {
        let path = planned_path(dir);
        if !self.protected.iter().any(|p| p.path == path) {
            self.protected.push(Protected {
                path,
                what: what.to_string(),
            });
        }
        self
    }

    /// Checks that `request` may be granted on this host. For a filesystem request the answer
    /// is the canonical directory to mount.
    pub fn check(&self, request: &Request) -> Result<Option<PathBuf>, Box<Forbidden>> {
        match request {
            Request::FsRead(dir) | Request::FsWrite(dir) => self.check_dir(request, dir).map(Some),
            Request::Handler(pattern) | Request::Subscribe(pattern) => match &self.handler_patterns
            {
                Some(allowed) if !allowed.iter().any(|a| a.covers(pattern)) => {
                    Err(Box::new(Forbidden::OutsidePolicy {
                        request: request.clone(),
                        file: self.file.clone(),
                        rule: format!(
                            "handlers.allowed_patterns = [{}]",
                            quoted(allowed.iter().map(TopicPattern::as_str))
                        ),
                    }))
                }
                _ => Ok(None),
            },
            Request::Uplink
            | Request::Net(_)
            | Request::NetConnect(_)
            | Request::NetBind(_)
            | Request::Process(_)
            | Request::Identity(_)
            | Request::Persistent => Ok(None),
        }
    }

    /// Checks every one of `requests` and resolves the grantable directories (see
    /// [`Resolved`]).
    pub fn resolve(&self, requests: &[Request]) -> Resolved {
        let mut out = Resolved::default();
        for r in requests {
            match self.check(r) {
                Ok(Some(real)) => {
                    if let Request::FsRead(dir) | Request::FsWrite(dir) = r {
                        out.dirs.insert(dir.clone(), real.clone());
                    }
                    out.requests.push(r.with_dir(real));
                }
                Ok(None) => out.requests.push(r.clone()),
                Err(e) => out.forbidden.push(*e),
            }
        }
        let written: Vec<PathBuf> = out
            .requests
            .iter()
            .filter_map(|r| match r {
                Request::FsWrite(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        out.requests
            .retain(|r| !matches!(r, Request::FsRead(p) if written.contains(p)));
        out.requests.sort();
        out.requests.dedup();
        out
    }

    fn check_dir(&self, request: &Request, dir: &Path) -> Result<PathBuf, Box<Forbidden>> {
        let resolved = std::fs::canonicalize(dir).map_err(|e| {
            Box::new(Forbidden::Unresolvable {
                request: request.clone(),
                reason: e.to_string(),
            })
        })?;
        for p in &self.protected {
            let relation = if resolved == p.path {
                "is"
            } else if resolved.starts_with(&p.path) && p.path != Path::new("/") {
                "lies inside"
            } else if p.path.starts_with(&resolved) {
                "contains"
            } else {
                continue;
            };
            return Err(Box::new(Forbidden::Protected {
                request: request.clone(),
                resolved,
                protected: p.path.clone(),
                relation,
                what: p.what.clone(),
            }));
        }
        if !std::fs::metadata(&resolved).is_ok_and(|m| m.is_dir()) {
            return Err(Box::new(Forbidden::NotADirectory {
                request: request.clone(),
                resolved,
            }));
        }
        // Spellings agree with the protections; now the file systems must too. A mount made
        // after start is seen (the watch re-reads a changed table); without a table, nothing
        // is granted.
        let table = self.mounts.current().map_err(|e| {
            Box::new(Forbidden::Unresolvable {
                request: request.clone(),
                reason: format!("cannot read the mount table: {e}"),
            })
        })?;
        let protected: Vec<&Path> = self.protected.iter().map(|p| p.path.as_path()).collect();
        if let Some(found) = crate::mounts::exposure(&table, &resolved, &protected) {
            return Err(Box::new(match found {
                crate::mounts::Exposure::Kernel { point, fstype } => Forbidden::Mounted {
                    request: request.clone(),
                    point,
                    fstype: Some(fstype),
                    protected: None,
                    relation: "is",
                    what: String::new(),
                },
                crate::mounts::Exposure::Alias {
                    protected,
                    point,
                    relation,
                } => Forbidden::Mounted {
                    request: request.clone(),
                    what: self
                        .protected
                        .iter()
                        .find(|p| p.path == protected)
                        .map(|p| p.what.clone())
                        .unwrap_or_default(),
                    point,
                    fstype: None,
                    protected: Some(protected),
                    relation,
                },
            }));
        }
        if let Some(roots) = &self.fs_roots
            && !roots.iter().any(|r| resolved.starts_with(r))
        {
            return Err(Box::new(Forbidden::OutsidePolicy {
                request: request.clone(),
                file: self.file.clone(),
                rule: format!(
                    "fs.allowed_roots = [{}]",
                    quoted(roots.iter().map(|r| r.to_str().unwrap_or("?")))
                ),
            }));
        }
        Ok(resolved)
    }
}

/// Where `dir` resolves, or for a directory that does not exist yet, where it will: its
/// longest existing ancestor resolved, with the rest appended (normalised).
fn planned_path(dir: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(dir) {
        return real;
    }
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for ancestor in absolute.ancestors().skip(1) {
        let Ok(real) = std::fs::canonicalize(ancestor) else {
            continue;
        };
        let mut planned = real.clone();
        for c in absolute
            .strip_prefix(ancestor)
            .unwrap_or(Path::new(""))
            .components()
        {
            match c {
                std::path::Component::Normal(part) => planned.push(part),
                std::path::Component::ParentDir if planned != real => {
                    planned.pop();
                }
                std::path::Component::CurDir => {}
                // Climbing above the resolved ancestor cannot be placed without resolving
                // what does not exist yet; keep the spelling.
                _ => return absolute,
            }
        }
        return planned;
    }
    absolute
}

fn quoted<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for HostPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host policy {}", self.file.display())
    }
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self::unrestricted(Path::new(POLICY_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    fn read(p: &Path) -> Request {
        Request::FsRead(p.to_path_buf())
    }

    #[test]
    fn protected_roots_their_insides_and_ancestors_are_refused() {
        let base = tmp();
        let state = base.path().join("state");
        let keys = base.path().join("keys");
        let data = base.path().join("data");
        for d in [&state, &keys, &data, &state.join("home")] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let link = base.path().join("innocent");
        std::os::unix::fs::symlink(&state, &link).unwrap_or_else(|e| panic!("{e}"));
        let policy = HostPolicy::load(&state)
            .unwrap_or_else(|e| panic!("{e}"))
            .protect(&keys, "the host key");
        let refused = |p: &Path| match policy.check(&read(p)).map_err(|e| *e) {
            Err(Forbidden::Protected { relation, .. }) => relation,
            other => panic!("{} should be refused, got {other:?}", p.display()),
        };
        assert_eq!(refused(&state), "is");
        assert_eq!(refused(&state.join("home")), "lies inside");
        assert_eq!(refused(base.path()), "contains");
        assert_eq!(refused(&keys), "is");
        assert_eq!(refused(&link), "is", "checked on the resolved path");
        assert_eq!(refused(Path::new("/")), "is");
        assert_eq!(refused(Path::new("/proc")), "is");
        assert_eq!(refused(Path::new("/proc/self")), "lies inside");
        assert_eq!(refused(Path::new("/dev")), "is");
        assert_eq!(refused(Path::new("/sys/kernel")), "lies inside");
        let message = policy
            .check(&read(&link))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains(&link.display().to_string()), "{message}");
        assert!(message.contains("state directory"), "{message}");
        let resolved = policy.check(&read(&data)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resolved, std::fs::canonicalize(&data).ok());
        assert!(matches!(
            policy
                .check(&read(&base.path().join("missing")))
                .map_err(|e| *e),
            Err(Forbidden::Unresolvable { .. })
        ));
    }

    #[test]
    fn a_protected_directory_created_later_is_protected_where_it_appears() {
        let base = tmp();
        let real = base.path().join("real");
        std::fs::create_dir_all(&real).unwrap_or_else(|e| panic!("{e}"));
        let via = base.path().join("via");
        std::os::unix::fs::symlink(&real, &via).unwrap_or_else(|e| panic!("{e}"));
        // A compile cache configured through a link, created lazily after the host started.
        let cache = via.join("cache").join("v1");
        let policy = HostPolicy::default().protect(&cache, "the compile cache");
        std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("{e}"));
        for (dir, relation) in [
            (real.join("cache").join("v1"), "is"),
            (real.join("cache").join("v1").join("x"), "lies inside"),
            (real.join("cache"), "contains"),
        ] {
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            match policy.check(&read(&dir)).map_err(|e| *e) {
                Err(Forbidden::Protected { relation: r, .. }) => {
                    assert_eq!(r, relation, "{}", dir.display());
                }
                other => panic!("{} should be refused, got {other:?}", dir.display()),
            }
        }
    }

    #[test]
    fn resolving_names_the_real_directories_once() {
        let base = tmp();
        let state = base.path().join("state");
        let data = base.path().join("data");
        for d in [&state, &data] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap_or_else(|e| panic!("{e}"));
        let real = std::fs::canonicalize(&data).unwrap_or_else(|e| panic!("{e}"));
        let policy = HostPolicy::load(&state).unwrap_or_else(|e| panic!("{e}"));
        let r = policy.resolve(&[
            read(&link),
            Request::FsWrite(data.clone()),
            read(&state),
            Request::Uplink,
        ]);
        assert_eq!(
            r.requests,
            vec![Request::FsWrite(real.clone()), Request::Uplink],
            "the link and the directory are one request; write subsumes read"
        );
        assert_eq!(r.dirs.get(&link), Some(&real));
        assert_eq!(r.dirs.get(&data), Some(&real));
        assert_eq!(r.forbidden.len(), 1);
        assert!(!r.dirs.contains_key(&state));
    }

    #[test]
    fn the_policy_file_narrows_roots_and_handlers() {
        let base = tmp();
        let state = base.path().join("state");
        let allowed = base.path().join("allowed");
        let other = base.path().join("other");
        for d in [&state, &allowed, &other] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(
            state.join(POLICY_FILE),
            format!(
                "[fs]\nallowed_roots = [{:?}]\n[handlers]\nallowed_patterns = [\"audit.*\"]\n",
                allowed.display().to_string()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let policy = HostPolicy::load(&state).unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.check(&read(&allowed)).is_ok());
        assert!(matches!(
            policy.check(&read(&other)).map_err(|e| *e),
            Err(Forbidden::OutsidePolicy { .. })
        ));
        let handler =
            |s: &str| Request::Handler(TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}")));
        assert!(policy.check(&handler("audit.x")).is_ok());
        assert!(matches!(
            policy.check(&handler("*")).map_err(|e| *e),
            Err(Forbidden::OutsidePolicy { .. })
        ));
        assert!(policy.check(&Request::Uplink).is_ok());
    }

    #[test]
    fn only_the_policy_file_opens_address_ranges_to_the_airlock() {
        let loopback: std::net::IpAddr = [127, 0, 0, 1].into();
        let closed =
            HostPolicy::parse("", Path::new("policy.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(closed.airlock().check(loopback).is_err());
        let open = HostPolicy::parse(
            "[net]\nopen_ranges = [\"127.0.0.0/8\", \"::1\"]\n",
            Path::new("policy.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(open.airlock().check(loopback), Ok(loopback));
        assert!(open.airlock().check([10, 0, 0, 1].into()).is_err());
        assert_eq!(open.airlock().open_ranges().len(), 2);
    }

    #[test]
    fn malformed_policies_name_the_key() {
        for (text, key) in [
            ("[fs]\nallowed_roots = \"/srv\"\n", "fs.allowed_roots"),
            ("[fs]\nallowed_roots = [\"srv\"]\n", "fs.allowed_roots"),
            ("[fs]\nroots = []\n", "fs.roots"),
            (
                "[handlers]\nallowed_patterns = [\"a..b\"]\n",
                "handlers.allowed_patterns",
            ),
            ("[proc]\n", "proc"),
            (
                "[net]\nopen_ranges = [\"127.0.0.0/33\"]\n",
                "net.open_ranges",
            ),
            ("[net]\nopen_ranges = [\"localhost\"]\n", "net.open_ranges"),
            ("[net]\nopen = [\"127.0.0.1\"]\n", "net.open"),
            ("fs = 1\n", "fs"),
        ] {
            match HostPolicy::parse(text, Path::new("policy.toml")) {
                Err(HostPolicyError::Malformed { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text:?}: expected a malformed policy, got {other:?}"),
            }
        }
    }
}
