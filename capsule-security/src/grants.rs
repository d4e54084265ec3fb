//! Capability grant grammars, parsed once: filesystem grants (`*`, `cwd://sub`, `home://sub`,
//! absolute prefixes), network host allowlists (exact host or any subdomain), socket endpoints
//! (`host:port`, `host:*`, `unix:path`) and command allowlists. Matching is purely lexical on
//! already-normalised inputs; the VFS resolves symlinks before asking.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Which tree a filesystem grant applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FsRoot {
    /// The capsule's workspace (`*`, `cwd://…` and bare guest paths).
    Workspace,
    /// The invoking principal's home (`home://…`).
    Home,
    /// A host directory named by absolute path.
    Absolute(PathBuf),
}

/// One filesystem grant: a root and a subtree below it (empty = the whole root).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FsGrant {
    /// The tree.
    pub root: FsRoot,
    /// Normalised relative subtree.
    pub subtree: PathBuf,
}

impl fmt::Display for FsGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            FsRoot::Workspace => write!(f, "cwd://{}", self.subtree.display()),
            FsRoot::Home => write!(f, "home://{}", self.subtree.display()),
            FsRoot::Absolute(p) => write!(f, "{}", p.join(&self.subtree).display()),
        }
    }
}

/// Normalises a relative path lexically; `None` if it climbs out with `..` or is absolute.
pub fn normalize_relative(s: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl FsGrant {
    /// Parses a grant as written in `fs_read` / `fs_write`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.contains('\0') {
            return Err("a path must not contain NUL".into());
        }
        let rel = |rest: &str, root: FsRoot| -> Result<Self, String> {
            let subtree =
                normalize_relative(rest).ok_or_else(|| format!("`{s}` climbs out of its root"))?;
            Ok(Self { root, subtree })
        };
        if s == "*" {
            return rel("", FsRoot::Workspace);
        }
        if let Some(rest) = s.strip_prefix("cwd://") {
            return rel(rest, FsRoot::Workspace);
        }
        if let Some(rest) = s.strip_prefix("home://") {
            return rel(rest, FsRoot::Home);
        }
        if let Some(after_root) = s.strip_prefix('/') {
            let mut abs = PathBuf::from("/");
            let rest = normalize_relative(after_root)
                .ok_or_else(|| format!("`{s}` is not a normal absolute path"))?;
            abs.push(rest);
            if abs == Path::new("/") {
                return Err("granting the whole host filesystem (`/`) is not allowed".into());
            }
            // Guests always see `/tmp/` as their principal's own scratch space, so a host
            // directory there could never be reached: refuse it instead of granting nothing.
            if abs.starts_with("/tmp") {
                return Err(format!(
                    "`{s}` is under /tmp, which guests see as their own scratch space; \
                     grant a host directory outside /tmp"
                ));
            }
            return Ok(Self {
                root: FsRoot::Absolute(abs),
                subtree: PathBuf::new(),
            });
        }
        Err(format!(
            "`{s}` is not a filesystem grant (expected `*`, `cwd://sub`, `home://sub` or an absolute path)"
        ))
    }

    /// Whether `path` (normalised, relative to `root`) lies inside this grant.
    pub fn covers(&self, root: &FsRoot, path: &Path) -> bool {
        &self.root == root && path.starts_with(&self.subtree)
    }
}

pub use crate::host_grant::HostGrant;

pub(crate) fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Whether a URL parser reads `host` as an IPv4 address: its last label is a decimal or
/// `0x` hexadecimal number (`127.1`, `0x7f.1`, `2130706433` all mean `127.0.0.1`).
pub(crate) fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or("");
    match last.strip_prefix("0x") {
        Some(hex) => hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !last.is_empty() && last.chars().all(|c| c.is_ascii_digit()),
    }
}

/// A socket endpoint grant for `net_connect` / `net_bind`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointGrant {
    /// `host:port`, or `host:*` (`port = None`) for any port.
    Tcp {
        /// The host (exact, case-insensitive) or `*` for any host.
        host: String,
        /// The port, or any.
        port: Option<u16>,
    },
    /// `unix:path`; an empty path means the capsule's own provisioned socket.
    Unix(String),
}

impl EndpointGrant {
    /// Parses `host:port`, `host:*` or `unix:path`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.contains('\0') {
                return Err("a socket path must not contain NUL".into());
            }
            return Ok(Self::Unix(path.to_string()));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not `host:port`, `host:*` or `unix:path`"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let host_ok = host == "*" || valid_host(&host) || host.parse::<std::net::IpAddr>().is_ok();
        if !host_ok {
            return Err(format!("`{s}`: `{host}` is not a host"));
        }
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("`{s}`: `{p}` is not a port"))?,
            ),
        };
        Ok(Self::Tcp { host, port })
    }

    /// Whether connecting to (or binding) `host:port` is covered.
    pub fn allows_tcp(&self, host: &str, port: u16) -> bool {
        match self {
            Self::Tcp { host: h, port: p } => {
                (h == "*" || h.eq_ignore_ascii_case(host)) && p.is_none_or(|p| p == port)
            }
            Self::Unix(_) => false,
        }
    }

    /// Whether every endpoint `other` names is also named by `self`.
    pub fn covers(&self, other: &EndpointGrant) -> bool {
        match (self, other) {
            (Self::Tcp { host: h, port: p }, Self::Tcp { host: oh, port: op }) => {
                (h == "*" || h == oh) && (p.is_none() || p == op)
            }
            (Self::Unix(p), Self::Unix(op)) => p == op,
            _ => false,
        }
    }

    /// Whether the Unix socket `path` is covered.
    pub fn allows_unix(&self, path: &str) -> bool {
        matches!(self, Self::Unix(p) if p == path)
    }
}

impl fmt::Display for EndpointGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } => {
                if host.contains(':') {
                    write!(f, "[{host}]")?;
                } else {
                    f.write_str(host)?;
                }
                match port {
                    Some(p) => write!(f, ":{p}"),
                    None => f.write_str(":*"),
                }
            }
            Self::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_grants_parse_into_roots_and_subtrees() {
        let g = |s: &str| FsGrant::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            g("*"),
            FsGrant {
                root: FsRoot::Workspace,
                subtree: PathBuf::new()
            }
        );
        assert_eq!(
            g("cwd://src/./lib"),
            FsGrant {
                root: FsRoot::Workspace,
                subtree: "src/lib".into()
            }
        );
        assert_eq!(
            g("home://notes"),
            FsGrant {
                root: FsRoot::Home,
                subtree: "notes".into()
            }
        );
        assert_eq!(
            g("home://"),
            FsGrant {
                root: FsRoot::Home,
                subtree: PathBuf::new()
            }
        );
        assert_eq!(
            g("/usr/share//dict/"),
            FsGrant {
                root: FsRoot::Absolute("/usr/share/dict".into()),
                subtree: PathBuf::new()
            }
        );
        for bad in [
            "home://../x",
            "cwd://a/../../b",
            "/",
            "/a/../..",
            "relative",
            "ftp://x",
            "/a\0b",
            "/tmp",
            "/tmp/shared",
        ] {
            assert!(FsGrant::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn fs_grants_cover_their_subtree_only() {
        let notes = FsGrant::parse("home://notes").unwrap_or_else(|e| panic!("{e}"));
        assert!(notes.covers(&FsRoot::Home, Path::new("notes")));
        assert!(notes.covers(&FsRoot::Home, Path::new("notes/a/b.txt")));
        assert!(!notes.covers(&FsRoot::Home, Path::new("notes2/a")));
        assert!(!notes.covers(&FsRoot::Home, Path::new("secret")));
        assert!(!notes.covers(&FsRoot::Workspace, Path::new("notes/a")));
    }

    #[test]
    fn host_grants_allow_exact_and_subdomains() {
        let g = HostGrant::parse("Example.com").unwrap_or_else(|e| panic!("{e}"));
        assert!(g.allows("example.com"));
        assert!(g.allows("api.EXAMPLE.com"));
        assert!(!g.allows("badexample.com"));
        assert!(!g.allows("example.com.evil.net"));
        assert!(HostGrant::parse("com").is_err());
        assert!(HostGrant::parse("*.com").is_err());
    }

    #[test]
    fn a_host_grant_that_reads_as_an_ipv4_address_covers_that_address_only() {
        // URL parsers read a host whose last label is a number as an IPv4 address (`127.1`,
        // `0x7f.1`, `2130706433`), so such a grant can never name a domain: a partial one
        // like `0.1` would otherwise cover every address ending in `.0.1` by suffix.
        for partial in [
            "1",
            "0.1",
            "0.0.1",
            "2.3.4",
            "0x7f.1",
            "2130706433",
            "a.1",
            "127.00.0.1",
        ] {
            assert!(
                HostGrant::parse(partial).is_err(),
                "{partial:?} should be refused"
            );
        }
        let g = HostGrant::parse("8.8.8.8").unwrap_or_else(|e| panic!("{e}"));
        assert!(g.allows("8.8.8.8"));
        assert!(!g.allows("1.8.8.8.8"));
        // A name whose last label merely starts with a digit is still a name.
        let n = HostGrant::parse("api.1password.com").unwrap_or_else(|e| panic!("{e}"));
        assert!(n.allows("x.api.1password.com"));
    }

    #[test]
    fn endpoint_grants() {
        let p = |s: &str| EndpointGrant::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(p("db.local:5432").allows_tcp("db.local", 5432));
        assert!(!p("db.local:5432").allows_tcp("db.local", 5433));
        assert!(p("db.local:*").allows_tcp("DB.local", 1));
        assert!(p("127.0.0.1:8080").allows_tcp("127.0.0.1", 8080));
        assert!(p("[::1]:80").allows_tcp("::1", 80));
        assert!(p("unix:/run/app.sock").allows_unix("/run/app.sock"));
        assert!(!p("unix:/run/app.sock").allows_tcp("run", 1));
        for bad in ["db.local", "db.local:http", "db.local:70000", "bad host:1"] {
            assert!(EndpointGrant::parse(bad).is_err(), "{bad}");
        }
    }
}
