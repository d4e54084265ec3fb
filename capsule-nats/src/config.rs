//! A bridge's settings: which cluster and host it is, where NATS is, how it authenticates,
//! which peers it believes, and which topics cross. Everything is validated before a
//! connection is attempted, so a bad setting is a typed error and nothing starts.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use capsule_bus::{AUDIT_TOPIC, Attribution, Topic, TopicPattern};
use uuid::Uuid;

use crate::sign::ClusterKey;
use crate::subject::{ClusterName, HostId};

/// Environment variable holding a NATS token, read by [`Auth::from_env`].
pub const TOKEN_ENV: &str = "CAPSULE_NATS_TOKEN";
/// Environment variable naming a NATS credentials file, read by [`Auth::from_env`].
pub const CREDS_ENV: &str = "CAPSULE_NATS_CREDS";
/// Environment variable holding an nkey seed, read by [`Auth::from_env`].
pub const NKEY_ENV: &str = "CAPSULE_NATS_NKEY";

/// Messages the bridge holds for NATS while the connection is down, by default.
pub const DEFAULT_BUFFER: usize = 4096;
/// Messages received from NATS that wait for the local bus per import pattern, by default.
pub const DEFAULT_IMPORT_BUFFER: usize = 65_536;
/// Bytes (payload and headers) of messages received from NATS that wait for the local bus per
/// import pattern, by default: 64 MiB.
pub const DEFAULT_IMPORT_BUFFER_BYTES: usize = 64 << 20;
/// How the bridge authenticates to the NATS server.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (a server that requires none).
    #[default]
    None,
    /// A shared token.
    Token(String),
    /// An nkey seed (`SU…`).
    NkeySeed(String),
    /// A `.creds` file (user JWT and nkey seed), as NATS account tooling writes them.
    CredentialsFile(PathBuf),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs or `Debug` output.
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::NkeySeed(_) => f.write_str("NkeySeed(<redacted>)"),
            Self::CredentialsFile(p) => write!(f, "CredentialsFile({})", p.display()),
        }
    }
}

impl Auth {
    /// Credentials from the environment: [`TOKEN_ENV`], then [`NKEY_ENV`], then
    /// [`CREDS_ENV`]; [`Auth::None`] when none is set.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(t) = var(TOKEN_ENV) {
            Self::Token(t)
        } else if let Some(s) = var(NKEY_ENV) {
            Self::NkeySeed(s)
        } else if let Some(p) = var(CREDS_ENV) {
            Self::CredentialsFile(PathBuf::from(p))
        } else {
            Self::None
        }
    }
}

/// Looks up a local capsule's name from its instance id, for the `Capsule-Source-Name` header.
pub type SourceNames = Arc<dyn Fn(Uuid) -> Option<String> + Send + Sync>;

/// The receiving host's own verdict on an imported message, asked after the peer check:
/// `Err(reason)` refuses it (counted and audited). A host checks here what it would check for
/// a local publish, such as whether the principal's profile is enabled.
pub type Admit = Arc<dyn Fn(&Topic, &Attribution) -> Result<(), String> + Send + Sync>;

/// Everything a [`Bridge`](crate::Bridge) needs.
#[derive(Clone)]
pub struct BridgeConfig {
    /// The cluster: the namespace of every subject.
    pub cluster: ClusterName,
    /// This host's id inside the cluster.
    pub host: HostId,
    /// NATS server URLs (`nats://host:port`, comma-separated lists allowed).
    pub servers: String,
    /// How to authenticate.
    pub auth: Auth,
    /// The cluster's shared message key: with it every exported message is signed and every
    /// imported one must carry a valid signature. Without it the origin host is only a
    /// header, which any client the NATS server lets publish can write.
    pub key: Option<ClusterKey>,
    /// Hosts whose messages are accepted; anything from another host is ignored and counted.
    pub peers: BTreeSet<HostId>,
    /// Local topics published to NATS.
    pub export: Vec<TopicPattern>,
    /// NATS subjects (as bus patterns) published into the local bus.
    pub import: Vec<TopicPattern>,
    /// Messages held for NATS while the connection is down; beyond it the newest are dropped
    /// (and counted, and seen as gaps by every receiver).
    pub buffer: usize,
    /// Messages received from NATS held for the local bus per import pattern (the bridge's
    /// own buffer, and separately the client library's hand-over queue in front of it, which
    /// the bridge empties into its buffer before every message it handles). Only messages
    /// that passed every check needing no state (signature, framing, peer list) are held,
    /// and each peer may hold an equal part of the bound (the bound divided by the number of
    /// peers); a message beyond its peer's part is dropped (counted in
    /// [`BridgeStats::overflow_in`](crate::BridgeStats), audited, and seen by receivers as a
    /// hole in its publisher's sequence).
    pub import_buffer: usize,
    /// Bytes (payload and headers) of the messages held for the local bus per import pattern,
    /// shared equally among the peers like [`import_buffer`](Self::import_buffer); a message
    /// that would take its peer's part past its share is dropped like one past
    /// [`import_buffer`](Self::import_buffer), so a message larger than a peer's share is
    /// always dropped.
    pub import_buffer_bytes: usize,
    /// Names of local capsules by instance id, sent along when known.
    pub source_names: Option<SourceNames>,
    /// The receiving host's own check of each imported message; `None` admits every message
    /// that passed the bridge's checks.
    pub admit: Option<Admit>,
}

impl fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeConfig")
            .field("cluster", &self.cluster)
            .field("host", &self.host)
            .field("servers", &self.servers)
            .field("auth", &self.auth)
            .field("key", &self.key)
            .field("peers", &self.peers)
            .field("export", &self.export)
            .field("import", &self.import)
            .field("buffer", &self.buffer)
            .field("import_buffer", &self.import_buffer)
            .field("import_buffer_bytes", &self.import_buffer_bytes)
            .finish_non_exhaustive()
    }
}

/// A [`BridgeConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No server URL was given.
    #[error("no NATS server URL given")]
    NoServers,
    /// Neither export nor import patterns were given: the bridge would carry nothing.
    #[error("the bridge exports and imports nothing; give at least one topic pattern")]
    NothingToBridge,
    /// A pattern covers nothing but the audit topic, which never crosses hosts.
    #[error("pattern {0} only names the audit topic, which stays on its own host")]
    AuditOnly(String),
    /// The host lists itself as a peer.
    #[error("host {0} lists itself as a peer")]
    SelfPeer(String),
    /// A buffer is zero.
    #[error("the bridge buffers must hold at least one message and one byte")]
    ZeroBuffer,
}

impl BridgeConfig {
    /// A configuration with no peers and nothing bridged yet, no credentials and the default
    /// buffer.
    pub fn new(cluster: ClusterName, host: HostId, servers: impl Into<String>) -> Self {
        Self {
            cluster,
            host,
            servers: servers.into(),
            auth: Auth::None,
            key: None,
            peers: BTreeSet::new(),
            export: Vec::new(),
            import: Vec::new(),
            buffer: DEFAULT_BUFFER,
            import_buffer: DEFAULT_IMPORT_BUFFER,
            import_buffer_bytes: DEFAULT_IMPORT_BUFFER_BYTES,
            source_names: None,
            admit: None,
        }
    }

    /// Checks the settings that do not need a connection.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.trim().is_empty() {
            return Err(ConfigError::NoServers);
        }
        if self.export.is_empty() && self.import.is_empty() {
            return Err(ConfigError::NothingToBridge);
        }
        if self.buffer == 0 || self.import_buffer == 0 || self.import_buffer_bytes == 0 {
            return Err(ConfigError::ZeroBuffer);
        }
        if self.peers.contains(&self.host) {
            return Err(ConfigError::SelfPeer(self.host.to_string()));
        }
        let audit = Topic::parse(AUDIT_TOPIC).ok();
        for p in self.export.iter().chain(&self.import) {
            if p.is_exact() && audit.as_ref().is_some_and(|t| p.matches(t)) {
                return Err(ConfigError::AuditOnly(p.as_str().to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BridgeConfig {
        let mut c = BridgeConfig::new(
            ClusterName::parse("c").unwrap_or_else(|e| panic!("{e}")),
            HostId::parse("h").unwrap_or_else(|e| panic!("{e}")),
            "nats://127.0.0.1:4222",
        );
        c.export
            .push(TopicPattern::parse("chat.*").unwrap_or_else(|e| panic!("{e}")));
        c
    }

    #[test]
    fn unusable_settings_are_refused() {
        assert_eq!(base().validate(), Ok(()));
        let mut c = base();
        c.servers = " ".into();
        assert_eq!(c.validate(), Err(ConfigError::NoServers));
        let mut c = base();
        c.export.clear();
        assert_eq!(c.validate(), Err(ConfigError::NothingToBridge));
        let mut c = base();
        c.buffer = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroBuffer));
        let mut c = base();
        c.import_buffer_bytes = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroBuffer));
        let mut c = base();
        c.peers.insert(c.host.clone());
        assert!(matches!(c.validate(), Err(ConfigError::SelfPeer(_))));
        let mut c = base();
        c.import
            .push(TopicPattern::parse(AUDIT_TOPIC).unwrap_or_else(|e| panic!("{e}")));
        assert!(matches!(c.validate(), Err(ConfigError::AuditOnly(_))));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut c = base();
        c.auth = Auth::Token("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Auth::NkeySeed("SUAB".into())).contains("SUAB"));
    }
}
