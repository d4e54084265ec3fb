//! Operator grants. A manifest only *requests* the capabilities that reach beyond a capsule's
//! own confinement; the operator's decision is a [`Grant`] stored per capsule, and a capsule
//! may use exactly `requested ∩ granted`. Nothing a capsule author writes grants anything.
//!
//! Requests that need a grant: absolute host directories (`fs_read`/`fs_write`), `uplink`,
//! handler bindings whose pattern reaches beyond the capsule's own topics
//! ([`is_broad_handler`]), `[subscribe]` entries spanning every namespace
//! ([`spans_namespaces`]), `net`, `net_connect`, `net_bind`, `host_process`,
//! `identity` and `allow_persistent`. The rest of the IPC ACLs, KV, `home://`, `/tmp/` and the
//! capsule's own workspace need none.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use capsule_bus::TopicPattern;
use capsule_ids::CapsuleName;
use toml::{Table, Value};

use crate::grants::{EndpointGrant, FsGrant, FsRoot, HostGrant};
use crate::manifest::{Capabilities, IdentityLevel, Manifest, ManifestDigest};

/// One capability a manifest requests that only the operator may allow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Request {
    /// Read access to a host directory: as the manifest writes it (normalised) in
    /// [`requests`], and the canonical directory it resolves to in every decision (see
    /// [`HostPolicy::resolve`](crate::HostPolicy::resolve)).
    FsRead(PathBuf),
    /// Read and write access to a host directory (normalised, then canonical, as for
    /// [`Request::FsRead`]).
    FsWrite(PathBuf),
    /// Registering uplinks and publishing as claimed principals (`publish-as`).
    Uplink,
    /// A handler binding on a pattern that reaches beyond the capsule's own topics.
    Handler(TopicPattern),
    /// A `[subscribe]` ACL entry (without a handler) that reaches beyond the capsule's own
    /// topics: the capsule could open subscriptions seeing every tenant's traffic there.
    Subscribe(TopicPattern),
    /// Outbound HTTP to a host and its subdomains.
    Net(HostGrant),
    /// Outbound TCP connections to an endpoint.
    NetConnect(EndpointGrant),
    /// Listening on an endpoint.
    NetBind(EndpointGrant),
    /// Running a host command.
    Process(String),
    /// Identity operations up to a level.
    Identity(IdentityLevel),
    /// Keeping background processes across restarts.
    Persistent,
}

impl Request {
    /// The manifest capability (or, for handlers, the section) this request comes from.
    pub fn capability(&self) -> &'static str {
        match self {
            Self::FsRead(_) => "fs_read",
            Self::FsWrite(_) => "fs_write",
            Self::Uplink => "uplink",
            Self::Handler(_) => "handlers",
            Self::Subscribe(_) => "subscriptions",
            Self::Net(_) => "net",
            Self::NetConnect(_) => "net_connect",
            Self::NetBind(_) => "net_bind",
            Self::Process(_) => "host_process",
            Self::Identity(_) => "identity",
            Self::Persistent => "allow_persistent",
        }
    }

    /// The same request for the directory `dir` (requests that name no directory are
    /// returned unchanged).
    pub fn with_dir(&self, dir: PathBuf) -> Request {
        match self {
            Self::FsRead(_) => Self::FsRead(dir),
            Self::FsWrite(_) => Self::FsWrite(dir),
            other => other.clone(),
        }
    }

    /// Whether allowing `self` also allows `other` (a directory covers its subtree, a host its
    /// subdomains, a wildcard endpoint its instances, a handler pattern the patterns it
    /// covers, an identity level the lower ones, and write covers read).
    pub fn covers(&self, other: &Request) -> bool {
        match (self, other) {
            (Self::FsRead(g) | Self::FsWrite(g), Self::FsRead(p))
            | (Self::FsWrite(g), Self::FsWrite(p)) => p.starts_with(g),
            (Self::Handler(g), Self::Handler(p))
            | (Self::Handler(g) | Self::Subscribe(g), Self::Subscribe(p)) => g.covers(p),
            (Self::Net(g), Self::Net(h)) => g.allows(h.as_str()),
            (Self::NetConnect(g), Self::NetConnect(e)) | (Self::NetBind(g), Self::NetBind(e)) => {
                g.covers(e)
            }
            (Self::Process(g), Self::Process(c)) => g == c,
            (Self::Identity(g), Self::Identity(l)) => g >= l,
            (Self::Uplink, Self::Uplink) | (Self::Persistent, Self::Persistent) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cap = self.capability();
        match self {
            Self::FsRead(p) | Self::FsWrite(p) => write!(f, "{cap} {}", p.display()),
            Self::Uplink | Self::Persistent => f.write_str(cap),
            Self::Handler(p) => write!(f, "handler on `{p}`"),
            Self::Subscribe(p) => write!(f, "subscribe to `{p}`"),
            Self::Net(h) => write!(f, "{cap} {h}"),
            Self::NetConnect(e) | Self::NetBind(e) => write!(f, "{cap} {e}"),
            Self::Process(c) => write!(f, "{cap} {c}"),
            Self::Identity(l) => write!(f, "{cap} {}", l.as_str()),
        }
    }
}

/// Whether `pattern` spans every namespace: a lone `*` or a first segment that is a
/// wildcard. A `[subscribe]` entry on such a pattern needs a grant (audit entries are scoped
/// to their principal at delivery anyway, so audit coverage alone does not).
pub fn spans_namespaces(pattern: &TopicPattern) -> bool {
    pattern.as_str().split('.').next() == Some("*")
}

/// Whether a handler binding on `pattern` reaches beyond the capsule's own topics: it spans
/// namespaces ([`spans_namespaces`]) or covers the audit topic. Such handlers see, and may
/// rewrite or stop, other capsules' and other principals' traffic, so they need a grant.
pub fn is_broad_handler(pattern: &TopicPattern) -> bool {
    spans_namespaces(pattern) || pattern.covers_audit_topic()
}

/// Every request of `manifest` that needs the operator's grant, sorted and without
/// duplicates (a write request subsumes a read request of the same directory).
pub fn requests(manifest: &Manifest) -> Vec<Request> {
    let caps = &manifest.capabilities;
    let mut out = Vec::new();
    let absolute = |items: &[String]| -> Vec<PathBuf> {
        items
            .iter()
            .filter_map(|s| match FsGrant::parse(s) {
                Ok(FsGrant {
                    root: FsRoot::Absolute(p),
                    ..
                }) => Some(p),
                _ => None,
            })
            .collect()
    };
    let writes = absolute(&caps.fs_write);
    out.extend(
        absolute(&caps.fs_read)
            .into_iter()
            .filter(|p| !writes.contains(p))
            .map(Request::FsRead),
    );
    out.extend(writes.into_iter().map(Request::FsWrite));
    if caps.uplink {
        out.push(Request::Uplink);
    }
    out.extend(
        manifest
            .handlers()
            .map(|(p, _)| p)
            .filter(|p| is_broad_handler(p))
            .cloned()
            .map(Request::Handler),
    );
    out.extend(
        manifest
            .subscribe
            .iter()
            .filter(|s| s.handler.is_none() && spans_namespaces(&s.pattern))
            .map(|s| Request::Subscribe(s.pattern.clone())),
    );
    out.extend(
        caps.net
            .iter()
            .filter_map(|s| HostGrant::parse(s).ok())
            .map(Request::Net),
    );
    out.extend(
        caps.net_connect
            .iter()
            .filter_map(|s| EndpointGrant::parse(s).ok())
            .map(Request::NetConnect),
    );
    out.extend(
        caps.net_bind
            .iter()
            .filter_map(|s| EndpointGrant::parse(s).ok())
            .map(Request::NetBind),
    );
    out.extend(caps.host_process.iter().cloned().map(Request::Process));
    if let Some(level) = caps.identity {
        out.push(Request::Identity(level));
    }
    if caps.allow_persistent {
        out.push(Request::Persistent);
    }
    out.sort();
    out.dedup();
    out
}

/// What a capsule may use without anyone's grant, as shown to the operator beside its
/// requests.
pub fn ungated_summary(manifest: &Manifest) -> Vec<String> {
    let join = |items: Vec<&str>| {
        if items.is_empty() {
            "nothing".to_string()
        } else {
            items.join(", ")
        }
    };
    let mut out = vec![
        format!(
            "publish to {}",
            join(
                manifest
                    .publish
                    .iter()
                    .map(|p| p.pattern.as_str())
                    .collect()
            )
        ),
        format!(
            "subscribe to {}",
            join(
                manifest
                    .subscribe
                    .iter()
                    .filter(|s| s.handler.is_some() || !spans_namespaces(&s.pattern))
                    .map(|s| s.pattern.as_str())
                    .collect()
            )
        ),
    ];
    let own_handlers: Vec<&str> = manifest
        .handlers()
        .map(|(p, _)| p)
        .filter(|p| !is_broad_handler(p))
        .map(TopicPattern::as_str)
        .collect();
    if !own_handlers.is_empty() {
        out.push(format!("handle {}", own_handlers.join(", ")));
    }
    let confined: Vec<String> = manifest
        .capabilities
        .fs_read
        .iter()
        .chain(&manifest.capabilities.fs_write)
        .filter(|s| {
            !matches!(
                FsGrant::parse(s),
                Ok(FsGrant {
                    root: FsRoot::Absolute(_),
                    ..
                })
            )
        })
        .cloned()
        .collect();
    let mut files = vec!["its own KV namespace, home://, /tmp/".to_string()];
    if !confined.is_empty() {
        files.push(format!("files under {}", confined.join(", ")));
    }
    out.push(files.join("; "));
    out
}

/// The operator's recorded decision about one capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The capsule it belongs to.
    pub capsule: CapsuleName,
    /// The capsule version the decision was last made for.
    pub version: semver::Version,
    /// The manifest the decision was last made for.
    pub manifest: ManifestDigest,
    /// What the operator allowed.
    pub granted: Vec<Request>,
    /// What the operator refused; the capsule runs without it and is not asked about it again.
    pub denied: Vec<Request>,
}

/// How the requests of a manifest relate to a stored grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionDiff {
    /// Requested and not yet decided: these need the operator's approval.
    pub added: Vec<Request>,
    /// Requested and already granted.
    pub unchanged: Vec<Request>,
    /// Requested and refused by an earlier decision.
    pub denied: Vec<Request>,
    /// Granted earlier and no longer requested.
    pub removed: Vec<Request>,
}

impl PermissionDiff {
    /// Compares `requests` with the `previous` decision (none on first install).
    pub fn between(requests: &[Request], previous: Option<&Grant>) -> Self {
        let mut diff = Self::default();
        for r in requests {
            match previous {
                Some(g) if g.allows(r) => diff.unchanged.push(r.clone()),
                Some(g) if g.refuses(r) => diff.denied.push(r.clone()),
                _ => diff.added.push(r.clone()),
            }
        }
        if let Some(g) = previous {
            diff.removed = g
                .granted
                .iter()
                .filter(|held| !requests.iter().any(|r| held.covers(r)))
                .cloned()
                .collect();
        }
        diff
    }

    /// Whether every request is already decided.
    pub fn is_settled(&self) -> bool {
        self.added.is_empty()
    }
}

impl Grant {
    /// An empty decision for `manifest`.
    pub fn new(manifest: &Manifest) -> Self {
        Self {
            capsule: manifest.package.name.clone(),
            version: manifest.package.version.clone(),
            manifest: manifest.digest,
            granted: Vec::new(),
            denied: Vec::new(),
        }
    }

    /// Whether `request` is allowed by this grant.
    pub fn allows(&self, request: &Request) -> bool {
        self.granted.iter().any(|g| g.covers(request))
    }

    /// Whether `request` was refused by this grant (and not allowed).
    pub fn refuses(&self, request: &Request) -> bool {
        !self.allows(request) && self.denied.iter().any(|d| d.covers(request))
    }

    /// Adds `allowed` to the granted set, removing them from the denied set.
    pub fn allow(&mut self, allowed: impl IntoIterator<Item = Request>) {
        for r in allowed {
            self.denied.retain(|d| !r.covers(d));
            if !self.allows(&r) {
                self.granted.push(r);
            }
        }
        self.granted.sort();
    }

    /// Adds `refused` to the denied set.
    pub fn deny(&mut self, refused: impl IntoIterator<Item = Request>) {
        for r in refused {
            if !self.denied.contains(&r) {
                self.denied.push(r);
            }
        }
        self.denied.sort();
    }

    /// Removes every granted entry that covers `request`; whether any was removed.
    pub fn revoke(&mut self, request: &Request) -> bool {
        let before = self.granted.len();
        self.granted.retain(|g| !g.covers(request));
        self.granted.len() != before
    }

    /// The capabilities `manifest` may use under this grant: every ungated capability as
    /// written, and each gated one only where this grant allows it. A host directory counts
    /// by what it resolved to: `dirs` maps each directory as the manifest writes it to its
    /// canonical directory, and one missing from `dirs` is not allowed.
    pub fn effective(&self, manifest: &Manifest, dirs: &HashMap<PathBuf, PathBuf>) -> Capabilities {
        let caps = &manifest.capabilities;
        let fs = |items: &[String], write: bool| -> Vec<String> {
            items
                .iter()
                .filter(|s| match FsGrant::parse(s) {
                    Ok(FsGrant {
                        root: FsRoot::Absolute(p),
                        ..
                    }) => dirs.get(&p).is_some_and(|real| {
                        self.allows(&if write {
                            Request::FsWrite(real.clone())
                        } else {
                            Request::FsRead(real.clone())
                        })
                    }),
                    Ok(_) => true,
                    Err(_) => false,
                })
                .cloned()
                .collect()
        };
        let mut fs_read = fs(&caps.fs_read, false);
        // A write request the operator allowed only for reading still reads.
        for s in fs(&caps.fs_write, false) {
            if !fs_read.contains(&s) {
                fs_read.push(s);
            }
        }
        let keep = |items: &[String], make: &dyn Fn(&str) -> Option<Request>| -> Vec<String> {
            items
                .iter()
                .filter(|s| make(s).is_some_and(|r| self.allows(&r)))
                .cloned()
                .collect()
        };
        Capabilities {
            uplink: caps.uplink && self.allows(&Request::Uplink),
            net: keep(&caps.net, &|s| HostGrant::parse(s).ok().map(Request::Net)),
            net_connect: keep(&caps.net_connect, &|s| {
                EndpointGrant::parse(s).ok().map(Request::NetConnect)
            }),
            net_bind: keep(&caps.net_bind, &|s| {
                EndpointGrant::parse(s).ok().map(Request::NetBind)
            }),
            fs_write: fs(&caps.fs_write, true),
            fs_read,
            host_process: keep(&caps.host_process, &|s| Some(Request::Process(s.into()))),
            kv: caps.kv.clone(),
            identity: caps
                .identity
                .filter(|l| self.allows(&Request::Identity(*l))),
            allow_persistent: caps.allow_persistent && self.allows(&Request::Persistent),
            allow_prompt_injection: caps.allow_prompt_injection,
            bind_workers: caps.bind_workers,
        }
    }

    /// The grant as the TOML text stored on disk.
    pub fn to_toml(&self) -> String {
        let mut root = Table::new();
        root.insert("capsule".into(), Value::from(self.capsule.as_str()));
        root.insert("version".into(), Value::from(self.version.to_string()));
        root.insert("manifest".into(), Value::from(self.manifest.to_string()));
        for (key, items) in [("granted", &self.granted), ("denied", &self.denied)] {
            if !items.is_empty() {
                root.insert(key.into(), Value::Table(section(items)));
            }
        }
        format!(
            "# The operator's decision about capsule `{}`: what it may use beyond its own\n\
             # confinement. Change it with `capsule grant` and `capsule revoke`.\n{root}",
            self.capsule
        )
    }

    /// Parses a stored grant; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, GrantError> {
        let bad = |key: &str, reason: String| GrantError::Malformed {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let root: Table = text
            .parse::<Table>()
            .map_err(|e| bad("", e.message().trim().to_string()))?;
        for key in root.keys() {
            if !["capsule", "version", "manifest", "granted", "denied"].contains(&key.as_str()) {
                return Err(bad(key, "unknown key".into()));
            }
        }
        let text_of = |key: &str| -> Result<&str, GrantError> {
            root.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(key, "missing, or not a string".into()))
        };
        let capsule =
            CapsuleName::parse(text_of("capsule")?).map_err(|e| bad("capsule", e.to_string()))?;
        let version = semver::Version::parse(text_of("version")?)
            .map_err(|e| bad("version", format!("not a semver version ({e})")))?;
        let manifest = ManifestDigest::parse(text_of("manifest")?)
            .ok_or_else(|| bad("manifest", "expected \"sha256:<64 hex digits>\"".into()))?;
        let list = |key: &str| -> Result<Vec<Request>, GrantError> {
            match root.get(key) {
                None => Ok(Vec::new()),
                Some(Value::Table(t)) => parse_section(t, key).map_err(|(k, r)| bad(&k, r)),
                Some(_) => Err(bad(key, "expected a table".into())),
            }
        };
        let mut granted = list("granted")?;
        let mut denied = list("denied")?;
        granted.sort();
        denied.sort();
        Ok(Self {
            capsule,
            version,
            manifest,
            granted,
            denied,
        })
    }
}

/// Renders requests as a table keyed by capability name.
fn section(requests: &[Request]) -> Table {
    let mut t = Table::new();
    for r in requests {
        let item = match r {
            Request::FsRead(p) | Request::FsWrite(p) => p.display().to_string(),
            Request::Handler(p) | Request::Subscribe(p) => p.as_str().to_string(),
            Request::Net(h) => h.to_string(),
            Request::NetConnect(e) | Request::NetBind(e) => e.to_string(),
            Request::Process(c) => c.clone(),
            Request::Uplink | Request::Persistent => {
                t.insert(r.capability().to_string(), Value::Boolean(true));
                continue;
            }
            Request::Identity(l) => {
                t.insert(r.capability().to_string(), Value::from(l.as_str()));
                continue;
            }
        };
        if let Value::Array(items) = t
            .entry(r.capability().to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            items.push(Value::from(item));
        }
    }
    t
}

/// Parses a `[granted]` or `[denied]` table; errors carry (key path, reason).
fn parse_section(t: &Table, path: &str) -> Result<Vec<Request>, (String, String)> {
    let mut out = Vec::new();
    for (key, v) in t {
        let at = format!("{path}.{key}");
        let items = || -> Result<Vec<&str>, (String, String)> {
            v.as_array()
                .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| (at.clone(), "expected an array of strings".into()))
        };
        let flag = || -> Result<bool, (String, String)> {
            v.as_bool()
                .ok_or_else(|| (at.clone(), "expected a boolean".into()))
        };
        let each = |make: &dyn Fn(&str) -> Result<Request, String>| {
            items()?
                .into_iter()
                .enumerate()
                .map(|(i, s)| make(s).map_err(|r| (format!("{at}[{i}]"), r)))
                .collect::<Result<Vec<_>, _>>()
        };
        let absolute = |s: &str| match FsGrant::parse(s)? {
            FsGrant {
                root: FsRoot::Absolute(p),
                ..
            } => Ok(p),
            _ => Err(format!("`{s}` is not an absolute host directory")),
        };
        match key.as_str() {
            "fs_read" => out.extend(each(&|s| absolute(s).map(Request::FsRead))?),
            "fs_write" => out.extend(each(&|s| absolute(s).map(Request::FsWrite))?),
            "handlers" => out.extend(each(&|s| {
                TopicPattern::parse(s)
                    .map(Request::Handler)
                    .map_err(|e| e.to_string())
            })?),
            "subscriptions" => out.extend(each(&|s| {
                TopicPattern::parse(s)
                    .map(Request::Subscribe)
                    .map_err(|e| e.to_string())
            })?),
            "net" => out.extend(each(&|s| HostGrant::parse(s).map(Request::Net))?),
            "net_connect" => {
                out.extend(each(&|s| EndpointGrant::parse(s).map(Request::NetConnect))?);
            }
            "net_bind" => out.extend(each(&|s| EndpointGrant::parse(s).map(Request::NetBind))?),
            "host_process" => out.extend(each(&|s| {
                if s.is_empty() || s.contains('\0') {
                    Err("a command must be a non-empty name or path".into())
                } else {
                    Ok(Request::Process(s.to_string()))
                }
            })?),
            "uplink" => {
                if flag()? {
                    out.push(Request::Uplink);
                }
            }
            "allow_persistent" => {
                if flag()? {
                    out.push(Request::Persistent);
                }
            }
            "identity" => {
                let level = v
                    .as_str()
                    .and_then(IdentityLevel::parse)
                    .ok_or_else(|| (at.clone(), "expected resolve, link or admin".into()))?;
                out.push(Request::Identity(level));
            }
            _ => return Err((at, "unknown capability".into())),
        }
    }
    Ok(out)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let text = format!(
            "[package]\nname = \"cap\"\nversion = \"1.0.0\"\n[[component]]\nid = \"c\"\nfile = \"c.wasm\"\n{extra}"
        );
        Manifest::parse(&text, Path::new("/caps/cap/Capsule.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pat(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_reaching_capabilities_are_requests() {
        let m = manifest(
            "[subscribe]\n\"*\" = { handler = \"all\" }\n\"own.*\" = { handler = \"own\" }\n\
             \"*.x\" = { handler = \"x\" }\n\"astrid.v1.*\" = { handler = \"audit\" }\n\
             \"*.y\" = \"opaque\"\n\"own.acl\" = \"opaque\"\n\
             [capabilities]\nfs_read = [\"/srv/a\", \"home://n\", \"*\", \"/srv/b\"]\n\
             fs_write = [\"/srv/b\", \"cwd://out\"]\nuplink = true\nnet = [\"Api.Example.com\"]\n\
             host_process = [\"git\"]\nidentity = \"link\"\nkv = [\"x\"]\n",
        );
        let shown: Vec<String> = requests(&m).iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "fs_read /srv/a",
                "fs_write /srv/b",
                "uplink",
                "handler on `*`",
                "handler on `*.x`",
                "handler on `astrid.v1.*`",
                "subscribe to `*.y`",
                "net api.example.com",
                "host_process git",
                "identity link",
            ]
        );
        assert!(requests(&manifest("[capabilities]\nfs_read = [\"home://\"]\n")).is_empty());
    }

    #[test]
    fn broad_handlers_are_the_ones_reaching_beyond_own_topics() {
        for p in [
            "*",
            "*.a",
            "*.*.b",
            "astrid.*",
            "astrid.v1.audit.entry",
            "astrid.*.audit.*",
        ] {
            assert!(is_broad_handler(&pat(p)), "{p}");
        }
        for p in ["own.*", "own.a", "a.*.b", "astrid.v1.session.*"] {
            assert!(!is_broad_handler(&pat(p)), "{p}");
        }
        for p in ["*", "*.a", "*.*.b"] {
            assert!(spans_namespaces(&pat(p)), "{p}");
        }
        for p in ["astrid.*", "astrid.v1.audit.entry", "own.*"] {
            assert!(
                !spans_namespaces(&pat(p)),
                "{p}: audit entries are scoped at delivery"
            );
        }
    }

    #[test]
    fn coverage_follows_each_grammar() {
        let r = |p: &str| Request::FsRead(p.into());
        let w = |p: &str| Request::FsWrite(p.into());
        assert!(r("/srv").covers(&r("/srv/a")));
        assert!(w("/srv").covers(&r("/srv/a")));
        assert!(w("/srv").covers(&w("/srv")));
        assert!(!r("/srv").covers(&w("/srv")), "read does not cover write");
        assert!(!r("/srv/a").covers(&r("/srv")));
        assert!(!r("/sr").covers(&r("/srv")), "components, not bytes");
        let h = |s: &str| Request::Handler(pat(s));
        assert!(h("*").covers(&h("*.x")));
        assert!(!h("*.x").covers(&h("*")));
        let net = |s: &str| Request::Net(HostGrant::parse(s).unwrap_or_else(|e| panic!("{e}")));
        assert!(net("example.com").covers(&net("api.example.com")));
        assert!(!net("api.example.com").covers(&net("example.com")));
        let tcp = |s: &str| {
            Request::NetConnect(EndpointGrant::parse(s).unwrap_or_else(|e| panic!("{e}")))
        };
        assert!(tcp("db:*").covers(&tcp("db:5432")));
        assert!(!tcp("db:5432").covers(&tcp("db:*")));
        assert!(
            Request::Identity(IdentityLevel::Admin).covers(&Request::Identity(IdentityLevel::Link))
        );
        assert!(!Request::Uplink.covers(&Request::Persistent));
    }

    #[test]
    fn diff_separates_new_kept_refused_and_dropped() {
        let m = manifest("[capabilities]\nfs_read = [\"/srv/a\", \"/srv/new\"]\nuplink = true\n");
        let mut g = Grant::new(&m);
        g.allow([
            Request::FsRead("/srv/a".into()),
            Request::FsRead("/srv/old".into()),
        ]);
        g.deny([Request::Uplink]);
        let d = PermissionDiff::between(&requests(&m), Some(&g));
        assert_eq!(d.added, vec![Request::FsRead("/srv/new".into())]);
        assert_eq!(d.unchanged, vec![Request::FsRead("/srv/a".into())]);
        assert_eq!(d.denied, vec![Request::Uplink]);
        assert_eq!(d.removed, vec![Request::FsRead("/srv/old".into())]);
        let first = PermissionDiff::between(&requests(&m), None);
        assert_eq!(first.added.len(), 3);
        assert!(!first.is_settled());
    }

    #[test]
    fn effective_capabilities_are_the_intersection() {
        let m = manifest(
            "[capabilities]\nfs_read = [\"/srv/a\", \"home://n\"]\nfs_write = [\"/srv/w\", \"*\"]\n\
             uplink = true\nnet = [\"a.example\", \"b.example\"]\n",
        );
        // `/srv/w` is a link to `/data/w`: the grant names the real directory.
        let dirs: HashMap<PathBuf, PathBuf> = [("/srv/a", "/srv/a"), ("/srv/w", "/data/w")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let mut g = Grant::new(&m);
        g.allow([
            Request::FsRead("/data/w".into()),
            Request::Net(HostGrant::parse("a.example").unwrap_or_else(|e| panic!("{e}"))),
        ]);
        g.deny([Request::Uplink]);
        let e = g.effective(&m, &dirs);
        assert_eq!(e.fs_read, vec!["home://n", "/srv/w", "*"]);
        assert_eq!(e.fs_write, vec!["*"]);
        assert!(!e.uplink);
        assert_eq!(e.net, vec!["a.example"]);
        assert!(Grant::new(&m).effective(&m, &dirs).net.is_empty());
        // A grant of the spelling, not of the directory it resolves to, allows nothing; nor
        // does a directory that was never resolved.
        let mut spelled = Grant::new(&m);
        spelled.allow([
            Request::FsRead("/srv/w".into()),
            Request::FsRead("/srv/a".into()),
        ]);
        assert_eq!(
            spelled.effective(&m, &dirs).fs_read,
            vec!["/srv/a", "home://n", "*"]
        );
        assert_eq!(
            spelled.effective(&m, &HashMap::new()).fs_read,
            vec!["home://n", "*"]
        );
    }

    #[test]
    fn grants_round_trip_through_toml() {
        let m = manifest("");
        let mut g = Grant::new(&m);
        g.allow([
            Request::FsWrite("/srv/out".into()),
            Request::Uplink,
            Request::Handler(pat("*")),
            Request::Subscribe(pat("*.chat")),
            Request::NetBind(EndpointGrant::parse("[::1]:80").unwrap_or_else(|e| panic!("{e}"))),
            Request::Identity(IdentityLevel::Resolve),
            Request::Process("git".into()),
        ]);
        g.deny([Request::Persistent, Request::FsRead("/srv/x".into())]);
        let text = g.to_toml();
        let back =
            Grant::parse(&text, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, g);
        for (bad, key) in [
            (
                text.replace("capsule = \"cap\"", "capsule = \"Cap\""),
                "capsule",
            ),
            (
                text.replace("uplink = true", "uplink = \"yes\""),
                "granted.uplink",
            ),
            (
                text.replace("handlers = [\"*\"]", "handlers = [\"a..b\"]"),
                "granted.handlers[0]",
            ),
            (format!("{text}\n[extra]\n"), "extra"),
            (
                text.replace("fs_write = [\"/srv/out\"]", "fs_write = [\"home://x\"]"),
                "granted.fs_write[0]",
            ),
        ] {
            match Grant::parse(&bad, Path::new("g.toml")) {
                Err(GrantError::Malformed { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("expected a malformed grant at {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_store_writes_private_files_and_lists_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = GrantStore::new(dir.path());
        let m = manifest("");
        assert!(
            store
                .load(&m.package.name)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        let mut g = Grant::new(&m);
        g.allow([Request::Uplink]);
        store.save(&g).unwrap_or_else(|e| panic!("{e}"));
        let file = store.path(&m.package.name);
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("grants"))
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            store
                .load(&m.package.name)
                .unwrap_or_else(|e| panic!("{e}")),
            Some(g.clone())
        );
        let listed: Vec<Grant> = store
            .list()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(listed, vec![g]);
        // A grant file renamed to another capsule's name is not that capsule's grant.
        let other = CapsuleName::parse("other").unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(&file, store.path(&other)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.load(&other),
            Err(GrantError::WrongCapsule { .. })
        ));
        assert!(
            store
                .remove(&m.package.name)
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            !store
                .remove(&m.package.name)
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }
}
