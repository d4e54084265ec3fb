//! Requests: what a manifest asks for that reaches beyond a capsule's own confinement, so
//! that only the operator may allow it, and how one request covers another.

use std::fmt;
use std::path::PathBuf;

use capsule_bus::TopicPattern;

use crate::grants::{EndpointGrant, FsGrant, FsRoot, HostGrant};
use crate::manifest::{IdentityLevel, Manifest};

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
            (Self::Net(g), Self::Net(h)) => g.covers(h),
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
