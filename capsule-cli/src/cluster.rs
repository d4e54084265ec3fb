//! `capsule run --cluster NAME --nats URL`: joins the host's bus to a cluster through a
//! `capsule-nats` bridge, and reports the bridge in `capsule ps` and the metrics. Flags are
//! checked before anything starts; credentials come from `--nats-creds`, the environment
//! (`CAPSULE_NATS_TOKEN`, `CAPSULE_NATS_NKEY`, `CAPSULE_NATS_CREDS`) or the state directory
//! (`nats.creds`, `nats.token`), never from the command line, where other users could read them;
//! the cluster's message key likewise comes from `CAPSULE_NATS_CLUSTER_KEY` or
//! `<state>/nats.cluster-key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_nats::{Auth, Bridge, BridgeConfig, ClusterKey, ClusterName, HostId};
use capsule_runtime::Runtime;
use capsule_runtime::bus::TopicPattern;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::Failure;

/// The cluster flags of `capsule run`.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ClusterArgs {
    /// Join this cluster: the namespace of every NATS subject the host uses
    #[arg(long, value_name = "NAME", requires_all = ["nats", "host_id"])]
    cluster: Option<String>,
    /// NATS server URL(s), e.g. nats://10.0.0.5:4222 (comma-separated for several)
    #[arg(long, value_name = "URL", requires = "cluster")]
    nats: Option<String>,
    /// This host's id inside the cluster (letters, digits, '_' and '-')
    #[arg(long, value_name = "ID", requires = "cluster")]
    host_id: Option<String>,
    /// A host whose messages are accepted (repeat, or separate with commas)
    #[arg(
        long = "peer",
        value_name = "ID",
        value_delimiter = ',',
        requires = "cluster"
    )]
    peers: Vec<String>,
    /// Local topics sent to the cluster (repeatable) [default: * (every topic but the audit topic)]
    #[arg(long = "export", value_name = "PATTERN", requires = "cluster")]
    export: Vec<String>,
    /// Cluster topics received into the local bus (repeatable) [default: *]
    #[arg(long = "import", value_name = "PATTERN", requires = "cluster")]
    import: Vec<String>,
    /// A NATS credentials (.creds) file [default: $CAPSULE_NATS_CREDS, else nats.creds in the
    /// state directory]
    #[arg(long, value_name = "FILE", requires = "cluster")]
    nats_creds: Option<PathBuf>,
    /// Bytes of received cluster messages held for the local bus per import pattern; beyond
    /// it messages are dropped, counted and reported as loss [default: 67108864 (64 MiB)]
    #[arg(long, value_name = "BYTES", requires = "cluster")]
    nats_import_bytes: Option<usize>,
}

fn usage(flag: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Usage(format!("{flag}: {e}"))
}

fn patterns(flag: &str, given: &[String]) -> Result<Vec<TopicPattern>, Failure> {
    let given: Vec<&str> = if given.is_empty() {
        vec!["*"]
    } else {
        given.iter().map(String::as_str).collect()
    };
    given
        .into_iter()
        .map(|p| TopicPattern::parse(p).map_err(|e| usage(flag, format!("{p:?}: {e}"))))
        .collect()
}

/// Credentials: the flag, the environment, then files in the state directory.
fn auth(args: &ClusterArgs, state: &Path) -> Result<Auth, Failure> {
    if let Some(p) = &args.nats_creds {
        return Ok(Auth::CredentialsFile(p.clone()));
    }
    let env = Auth::from_env();
    if env != Auth::None {
        return Ok(env);
    }
    let creds = state.join("nats.creds");
    if creds.is_file() {
        return Ok(Auth::CredentialsFile(creds));
    }
    let token = state.join("nats.token");
    if token.is_file() {
        let t = std::fs::read_to_string(&token)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", token.display())))?;
        return Ok(Auth::Token(t.trim().to_string()));
    }
    Ok(Auth::None)
}

/// Environment variable holding the cluster's message key (64 hexadecimal digits).
pub(crate) const CLUSTER_KEY_ENV: &str = "CAPSULE_NATS_CLUSTER_KEY";

/// The cluster key: the environment, else `<state>/nats.cluster-key`; `None` when neither is
/// set (messages then travel unsigned and the origin host is only a header).
fn cluster_key(state: &Path) -> Result<Option<ClusterKey>, Failure> {
    let (text, from) = match std::env::var(CLUSTER_KEY_ENV)
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(t) => (t, CLUSTER_KEY_ENV.to_string()),
        None => {
            let file = state.join("nats.cluster-key");
            if !file.is_file() {
                return Ok(None);
            }
            let t = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", file.display())))?;
            (t, file.display().to_string())
        }
    };
    ClusterKey::parse_hex(&text)
        .map(Some)
        .map_err(|e| usage(&from, e))
}

impl ClusterArgs {
    /// The bridge configuration, or `None` without `--cluster`. Every flag is checked here,
    /// before the host starts anything.
    pub(crate) fn config(&self, state: &Path) -> Result<Option<BridgeConfig>, Failure> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let cluster = ClusterName::parse(cluster).map_err(|e| usage("--cluster", e))?;
        let host = HostId::parse(self.host_id.as_deref().unwrap_or_default())
            .map_err(|e| usage("--host-id", e))?;
        let mut c = BridgeConfig::new(cluster, host, self.nats.clone().unwrap_or_default());
        for p in &self.peers {
            c.peers
                .insert(HostId::parse(p).map_err(|e| usage("--peer", e))?);
        }
        c.export = patterns("--export", &self.export)?;
        c.import = patterns("--import", &self.import)?;
        c.auth = auth(self, state)?;
        c.key = cluster_key(state)?;
        if let Some(bytes) = self.nats_import_bytes {
            if bytes == 0 {
                return Err(usage("--nats-import-bytes", "must be at least 1"));
            }
            c.import_buffer_bytes = bytes;
        }
        c.validate().map_err(|e| usage("--cluster", e))?;
        Ok(Some(c))
    }
}

/// Starts the bridge on `rt`'s bus; the exported messages carry their capsule's name.
pub(crate) async fn join(rt: &Runtime, mut config: BridgeConfig) -> Result<Arc<Bridge>, Failure> {
    let names = rt.clone();
    config.source_names = Some(Arc::new(move |id| {
        names
            .capsules()
            .iter()
            .find(|c| c.session() == id)
            .map(|c| c.name().to_string())
    }));
    // An imported message acts for its principal on this host too: this host's profile for
    // that principal must let it act, as for a publish through the control socket.
    let gate = crate::admit::ProfileGate::new(rt.config().state_dir.clone());
    config.admit = Some(Arc::new(move |_topic, who| match who.principal() {
        None => Ok(()),
        Some(p) => gate.check(p),
    }));
    let cluster = config.cluster.clone();
    Bridge::start(rt.bus().clone(), config)
        .await
        .map(Arc::new)
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot join cluster {cluster}: {}",
                crate::chain(&e)
            ))
        })
}

/// The bridge in a snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct BridgeRow {
    pub(crate) cluster: String,
    pub(crate) host: String,
    pub(crate) state: String,
    pub(crate) peers: Vec<String>,
    pub(crate) exported: u64,
    pub(crate) imported: u64,
    pub(crate) dropped_out: u64,
    pub(crate) dropped_in: u64,
    pub(crate) foreign: u64,
    pub(crate) refused: u64,
    pub(crate) connects: u64,
    pub(crate) disconnects: u64,
    /// Received messages dropped because an import buffer was full.
    #[serde(default)]
    pub(crate) overflow_in: u64,
    /// Bytes the import buffers hold now.
    #[serde(default)]
    pub(crate) import_held_bytes: u64,
    /// The most bytes one import buffer ever held.
    #[serde(default)]
    pub(crate) import_peak_bytes: u64,
    /// The configured bound of each import buffer, in bytes.
    #[serde(default)]
    pub(crate) import_bound_bytes: u64,
}

/// What the bridge is and has done, for the snapshot.
pub(crate) fn row(b: &Bridge, config: &BridgeConfig) -> BridgeRow {
    let s = b.stats();
    BridgeRow {
        cluster: config.cluster.to_string(),
        host: config.host.to_string(),
        state: b.state().as_str().to_string(),
        peers: config.peers.iter().map(ToString::to_string).collect(),
        exported: s.exported,
        imported: s.imported,
        dropped_out: s.dropped_out,
        dropped_in: s.dropped_in,
        foreign: s.foreign,
        refused: s.refused,
        connects: s.connects,
        disconnects: s.disconnects,
        overflow_in: s.overflow_in,
        import_held_bytes: s.import_held_bytes,
        import_peak_bytes: s.import_peak_bytes,
        import_bound_bytes: u64::try_from(config.import_buffer_bytes).unwrap_or(u64::MAX),
    }
}

/// The `capsule ps` line of the bridge.
pub(crate) fn render(r: &BridgeRow) -> String {
    format!(
        "cluster {} as {}: {}; peers {}; out {}, in {}, dropped {} out/{} in; \
         ignored {} foreign, {} refused; {} connects, {} disconnects; \
         import buffer {}/{} bytes (peak {}), {} overflowed\n",
        r.cluster,
        r.host,
        r.state,
        if r.peers.is_empty() {
            "none".to_string()
        } else {
            r.peers.join(",")
        },
        r.exported,
        r.imported,
        r.dropped_out,
        r.dropped_in,
        r.foreign,
        r.refused,
        r.connects,
        r.disconnects,
        r.import_held_bytes,
        r.import_bound_bytes,
        r.import_peak_bytes,
        r.overflow_in
    )
}

/// Registers the bridge's metrics: `capsule_bridge_messages{direction}`,
/// `capsule_bridge_dropped{direction}`, `capsule_bridge_ignored{reason}`,
/// `capsule_bridge_import_overflow{bound}`, `capsule_bridge_import_buffer_bytes{kind}` and
/// `capsule_bridge_connected`.
pub(crate) fn register(registry: &mut Registry, r: &BridgeRow) {
    counters(
        registry,
        "bridge_messages",
        "Messages the NATS bridge carried, by direction",
        "direction",
        &[("out", r.exported), ("in", r.imported)],
    );
    counters(
        registry,
        "bridge_dropped",
        "Messages the NATS bridge lost, by direction (in: holes in publishers' sequences)",
        "direction",
        &[("out", r.dropped_out), ("in", r.dropped_in)],
    );
    counters(
        registry,
        "bridge_ignored",
        "Messages the NATS bridge ignored: from a host outside the peer list, or malformed",
        "reason",
        &[("foreign", r.foreign), ("refused", r.refused)],
    );
    counters(
        registry,
        "bridge_import_overflow",
        "Received messages the NATS bridge dropped because an import buffer was full (each \
         later shows as an in hole)",
        "bound",
        &[("messages_or_bytes", r.overflow_in)],
    );
    let buffered = Family::<Vec<(String, String)>, Gauge<i64>>::default();
    for (kind, v) in [
        ("held", r.import_held_bytes),
        ("peak", r.import_peak_bytes),
        ("bound", r.import_bound_bytes),
    ] {
        buffered
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    registry.register(
        "bridge_import_buffer_bytes",
        "Bytes of received messages the NATS bridge holds for the local bus (held now, the \
         peak of one import pattern, and the bound per pattern)",
        buffered,
    );
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(r.state == "connected"));
    registry.register(
        "bridge_connected",
        "Whether the NATS bridge is connected now",
        connected,
    );
}

/// Registers one counter family `name` with a value per `label` value.
fn counters(registry: &mut Registry, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    for (value, n) in values {
        family
            .get_or_create(&vec![(label.to_string(), (*value).to_string())])
            .inc_by(*n);
    }
    registry.register(name, help, family);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_key_file_is_read_and_a_malformed_one_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // The variable wins over the file; this test needs the file.
        if std::env::var_os(CLUSTER_KEY_ENV).is_some() {
            return;
        }
        assert_eq!(cluster_key(dir.path()).ok().flatten(), None);
        let file = dir.path().join("nats.cluster-key");
        std::fs::write(&file, format!("{}\n", "0f".repeat(32))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cluster_key(dir.path()).ok().flatten(),
            Some(ClusterKey::from_bytes([0x0f; 32]))
        );
        std::fs::write(&file, "secret").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(cluster_key(dir.path()), Err(Failure::Usage(_))));
    }

    fn args(import_bytes: Option<usize>) -> ClusterArgs {
        ClusterArgs {
            cluster: Some("c".into()),
            nats: Some("nats://127.0.0.1:4222".into()),
            host_id: Some("h".into()),
            nats_import_bytes: import_bytes,
            ..ClusterArgs::default()
        }
    }

    #[test]
    fn the_import_byte_bound_is_a_flag_and_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path();
        let c = args(None).config(state).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            c.map(|c| c.import_buffer_bytes),
            Some(capsule_nats::DEFAULT_IMPORT_BUFFER_BYTES)
        );
        let c = args(Some(4096))
            .config(state)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.map(|c| c.import_buffer_bytes), Some(4096));
        assert!(matches!(
            args(Some(0)).config(state),
            Err(Failure::Usage(m)) if m.contains("--nats-import-bytes")
        ));
    }
}
