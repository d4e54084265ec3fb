//! The running bridge: local publishes on export patterns leave for NATS numbered per publisher
//! and topic, NATS messages on import patterns enter the local bus with the attribution their
//! origin host gave them, and every loss on the way is counted. The export path never blocks
//! the bus: it holds at most [`BridgeConfig::buffer`] messages while NATS is away and drops the
//! newest beyond that, after numbering them, so each receiver sees the hole.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, HeaderMap, HeaderName, Subject};
use bytes::Bytes;
use capsule_bus::{AUDIT_TOPIC, Attribution, Bus, Message, Scope, Topic};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::batch::{
    BatchEnvelope, FRAME_PREFIX, MAX_BATCH, MAX_BATCH_BYTES, MAX_MEMBER_BYTES, encode_frames,
};
use crate::config::{Auth, BridgeConfig, ConfigError};
use crate::envelope::{ENVELOPE_HEADER, Envelope, sendable_name};
use crate::import::Importer;
use crate::seq::{Numbering, SEQ_TABLE_CAPACITY};
use crate::sign::SIGNATURE_HEADER;
use crate::subject::{pattern_subject, topic_subject};
use crate::tail::{Tails, request_subject};

/// Tracing target of the bridge's audit records.
pub const AUDIT_TARGET: &str = "capsule::audit::nats";

/// [`ENVELOPE_HEADER`] as a ready header name: a name built from a `&str` is a fresh
/// allocation, and one is built for every message sent and every lookup.
pub(crate) const ENVELOPE_NAME: HeaderName = HeaderName::from_static(ENVELOPE_HEADER);
/// [`SIGNATURE_HEADER`] as a ready header name.
pub(crate) const SIGNATURE_NAME: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);

/// Bytes of payload one export drain takes from the bus at most.
const EXPORT_DRAIN_BYTES: usize = 256 * 1024;
/// Messages an export loop hands over between two yields to the scheduler.
const YIELD_EVERY: u32 = 1024;
/// Topic subjects each export loop remembers before starting over.
const SUBJECTS_KEPT: usize = 1024;
/// How long an export waits for room in the client's queue before looking at the connection
/// again.
const EXPORT_WAIT: Duration = Duration::from_millis(50);
/// How long [`Bridge::stop`] waits for queued exports to reach NATS.
const STOP_FLUSH: Duration = Duration::from_secs(2);
/// Bytes of the server's `max_payload` left to a batch's headers.
const BATCH_HEADROOM: usize = 4096;

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The configuration cannot work.
    #[error("invalid bridge configuration: {0}")]
    Config(#[from] ConfigError),
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The first connection to NATS failed.
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        /// The configured URLs.
        servers: String,
        /// The client's reason.
        source: async_nats::ConnectError,
    },
    /// Subscribing to an imported subject failed.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client's reason.
        source: async_nats::SubscribeError,
    },
}

/// The state of the bridge's NATS connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Connected; messages flow.
    Connected,
    /// Lost; the client reconnects on its own, exports wait in the bounded buffer.
    Disconnected,
    /// Not connected yet.
    Pending,
    /// Stopped.
    Closed,
}

impl LinkState {
    /// A one-word name for status displays.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Pending => "pending",
            Self::Closed => "closed",
        }
    }
}

/// A snapshot of a bridge's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Messages published to NATS.
    pub exported: u64,
    /// Messages published into the local bus.
    pub imported: u64,
    /// Outgoing messages lost: dropped by the full buffer, refused by the client, or lost
    /// on the local bus before the bridge took them.
    pub dropped_out: u64,
    /// The part of `dropped_out` lost on the local bus before the bridge numbered it, which
    /// receivers cannot see as holes.
    pub dropped_unnumbered: u64,
    /// Incoming messages known lost: holes in publishers' sequences.
    pub dropped_in: u64,
    /// Messages ignored because their host is not a configured peer.
    pub foreign: u64,
    /// Messages refused: malformed headers, a subject outside the import patterns, the
    /// audit topic, a payload that is not JSON.
    pub refused: u64,
    /// Messages of this very host that came back (ignored).
    pub looped: u64,
    /// Publishers whose numbering started over. The restart is no loss, but the messages of
    /// the new numbering missed before the first one seen are (in `dropped_in`).
    pub restarts: u64,
    /// Times the client reported a slow consumer (its losses show up as holes).
    pub slow_consumer: u64,
    /// Incoming messages dropped because an import buffer was full (in messages or bytes).
    /// They were not checked yet, so they are not reported on any topic here; each one shows
    /// up in `dropped_in`, and in the receiving subscribers' `dropped` counters, as a hole
    /// once its publisher's next message gets through.
    pub overflow_in: u64,
    /// Messages the client received from NATS (before any check).
    pub received: u64,
    /// Bytes (payload and headers) the import buffers hold now, all patterns together.
    pub import_held_bytes: u64,
    /// The most bytes one import pattern's buffer ever held; never above
    /// [`BridgeConfig::import_buffer_bytes`].
    pub import_peak_bytes: u64,
    /// Connections made, the first one included.
    pub connects: u64,
    /// Connections lost.
    pub disconnects: u64,
}

impl BridgeStats {
    /// All known losses, both directions.
    pub fn dropped(&self) -> u64 {
        self.dropped_out + self.dropped_in
    }
}

/// Counters shared by the bridge's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) imported: AtomicU64,
    pub(crate) dropped_out: AtomicU64,
    pub(crate) dropped_unnumbered: AtomicU64,
    pub(crate) dropped_in: AtomicU64,
    pub(crate) foreign: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) looped: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) slow_consumer: AtomicU64,
    pub(crate) overflow_in: AtomicU64,
    pub(crate) import_held_bytes: AtomicU64,
    pub(crate) import_peak_bytes: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) closed: AtomicBool,
}

/// Adds `n` to `c` and says whether the new total crossed a power of two, which is when a
/// repeated condition is audited again (so a flood costs a logarithmic number of entries).
pub(crate) fn bump(c: &AtomicU64, n: u64) -> bool {
    let before = c.fetch_add(n, Ordering::Relaxed);
    let after = before.saturating_add(n);
    n > 0 && (before == 0 || before.ilog2() != after.ilog2())
}

/// Publishes one audit entry on the local bus (with `attribution`, so the audit scoping of
/// the host shows it to that principal) and to the tracing target [`AUDIT_TARGET`].
pub(crate) fn audit(bus: &Bus, attribution: Attribution, body: serde_json::Value) {
    tracing::warn!(target: AUDIT_TARGET, entry = %body, "nats bridge");
    let (Ok(topic), Ok(payload)) = (
        Topic::parse(AUDIT_TOPIC),
        capsule_bus::JsonPayload::parse(body.to_string()),
    ) else {
        return;
    };
    bus.publish(capsule_bus::Outgoing {
        topic,
        payload,
        source: Uuid::nil(),
        attribution,
        hops: 0,
    });
}

/// A running bridge. Dropping it stops every task at once; [`Bridge::stop`] first lets queued
/// exports reach NATS.
pub struct Bridge {
    client: Client,
    counters: Arc<Counters>,
    importer: Arc<Importer>,
    tasks: Mutex<Tasks>,
}

/// The bridge's tasks; emptied by [`Bridge::stop`].
#[derive(Default)]
struct Tasks {
    drains: Vec<JoinHandle<()>>,
    imports: Vec<JoinHandle<()>>,
    /// Tail marks and requests for them.
    others: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// How long [`Bridge::start`] waits for the server to confirm its subscriptions.
const SYNC_WITHIN: Duration = Duration::from_secs(5);

/// Connects with the bridge's options; `connected` is notified each time the connection comes
/// up.
async fn connect(
    config: &BridgeConfig,
    counters: &Arc<Counters>,
    connected: &Arc<Notify>,
) -> Result<Client, BridgeError> {
    let events = Arc::clone(counters);
    let up = Arc::clone(connected);
    let host = config.host.to_string();
    let mut opts = ConnectOptions::new()
        .name(format!("capsule-{}-{}", config.cluster, config.host))
        // The server never hands this connection its own messages back.
        .no_echo()
        // Subjects are built from validated topics; the client need not scan them again.
        .skip_subject_validation(true)
        .client_capacity(config.buffer)
        .subscription_capacity(config.import_buffer)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let exp = u32::try_from(attempts.min(6)).unwrap_or(6);
            Duration::from_millis((20u64 << exp).min(1000))
        })
        .event_callback(move |event| {
            let events = Arc::clone(&events);
            let host = host.clone();
            let up = Arc::clone(&up);
            async move {
                match &event {
                    Event::Connected => up.notify_one(),
                    Event::Disconnected => {
                        events.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::SlowConsumer(_) => {
                        events.slow_consumer.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                tracing::info!(target: AUDIT_TARGET, host, %event, "nats connection event");
            }
        });
    opts = match &config.auth {
        Auth::None => opts,
        Auth::Token(t) => opts.token(t.clone()),
        Auth::NkeySeed(s) => opts.nkey(s.clone()),
        Auth::CredentialsFile(p) => {
            opts.credentials_file(p)
                .await
                .map_err(|source| BridgeError::Credentials {
                    path: p.display().to_string(),
                    source,
                })?
        }
    };
    opts.connect(config.servers.as_str())
        .await
        .map_err(|source| BridgeError::Connect {
            servers: config.servers.clone(),
            source,
        })
}

impl Bridge {
    /// Validates `config`, connects, subscribes to the imported subjects and starts carrying
    /// messages between `bus` and NATS. Must run inside a tokio runtime.
    pub async fn start(bus: Bus, config: BridgeConfig) -> Result<Self, BridgeError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let connected = Arc::new(Notify::new());
        let client = connect(&config, &counters, &connected).await?;
        let config = Arc::new(config);
        let importer = Arc::new(Importer::new(
            bus.clone(),
            Arc::clone(&config),
            Arc::clone(&counters),
        ));

        let mut imports = Vec::with_capacity(config.import.len());
        for (i, pattern) in config.import.iter().enumerate() {
            let subject = pattern_subject(&config.cluster, pattern);
            let sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|source| BridgeError::Subscribe { subject, source })?;
            imports.push(tokio::spawn(crate::import::import_loop(
                Arc::clone(&importer),
                i,
                sub,
            )));
        }
        // The server must hold the subscriptions before anyone is told the bridge is up.
        // `flush` only writes them to the socket, and the server serves each connection on
        // its own, so a peer's publish could still overtake them there. A request nobody
        // answers comes back as the server's own "no responders" reply, sent only after
        // everything this connection sent before it was processed.
        let sync = format!("_CAPSULE_SYNC.{}", uuid::Uuid::new_v4().simple());
        let _synced =
            tokio::time::timeout(SYNC_WITHIN, client.request(sync, Vec::new().into())).await;

        let marks = Arc::new(Notify::new());
        let mut others = Vec::new();
        if !config.export.is_empty() {
            let subject = request_subject(&config.cluster);
            let requests = client
                .subscribe(subject.clone())
                .await
                .map_err(|source| BridgeError::Subscribe { subject, source })?;
            others.push(tokio::spawn(crate::tail::request_loop(
                requests,
                Arc::clone(&marks),
            )));
        }
        others.push(tokio::spawn(crate::tail::connect_loop(
            client.clone(),
            config.cluster.clone(),
            connected,
            Arc::clone(&marks),
            !config.import.is_empty(),
        )));

        let numbering = Arc::new(Mutex::new(Numbering::new(SEQ_TABLE_CAPACITY)));
        let mut drains = Vec::with_capacity(config.export.len());
        let mut tails = Vec::with_capacity(config.export.len());
        for (i, pattern) in config.export.iter().enumerate() {
            let t = Arc::new(Tails::new());
            tails.push(Arc::clone(&t));
            // Subscribed before `start` returns: a message published on the bus the moment
            // the bridge is up is exported, not missed uncounted.
            let rx = bus.subscribe(pattern.clone(), Scope::All);
            drains.push(tokio::spawn(export_loop(
                client.clone(),
                rx,
                bus.clone(),
                Arc::clone(&config),
                i,
                Books {
                    numbering: Arc::clone(&numbering),
                    tails: t,
                },
                Arc::clone(&counters),
            )));
        }
        if !tails.is_empty() {
            others.push(tokio::spawn(crate::tail::mark_loop(
                client.clone(),
                Arc::clone(&config),
                tails,
                marks,
            )));
        }
        Ok(Self {
            client,
            counters,
            importer,
            tasks: Mutex::new(Tasks {
                drains,
                imports,
                others,
            }),
        })
    }

    /// The connection's state now.
    pub fn state(&self) -> LinkState {
        if self.counters.closed.load(Ordering::Relaxed) {
            return LinkState::Closed;
        }
        match self.client.connection_state() {
            async_nats::connection::State::Connected => LinkState::Connected,
            async_nats::connection::State::Disconnected => LinkState::Disconnected,
            async_nats::connection::State::Pending => LinkState::Pending,
        }
    }

    /// The counters now.
    pub fn stats(&self) -> BridgeStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BridgeStats {
            exported: get(&c.exported),
            imported: get(&c.imported),
            dropped_out: get(&c.dropped_out),
            dropped_unnumbered: get(&c.dropped_unnumbered),
            dropped_in: get(&c.dropped_in),
            foreign: get(&c.foreign),
            refused: get(&c.refused),
            looped: get(&c.looped),
            restarts: get(&c.restarts),
            slow_consumer: get(&c.slow_consumer),
            overflow_in: get(&c.overflow_in),
            received: self.client.statistics().in_messages.load(Ordering::Relaxed),
            import_held_bytes: get(&c.import_held_bytes),
            import_peak_bytes: get(&c.import_peak_bytes),
            connects: self.client.statistics().connects.load(Ordering::Relaxed),
            disconnects: get(&c.disconnects),
        }
    }

    /// Where an imported message's source id came from: the host that vouched for the
    /// message's attribution and the publishing capsule there. `None` for local sources and
    /// for ids the bounded origin table has forgotten.
    pub fn origin(&self, source: &Uuid) -> Option<crate::Origin> {
        self.importer.origin(source)
    }

    /// Stops taking local messages, gives the client's queue up to two seconds to reach
    /// NATS, then stops receiving. Later calls do nothing.
    pub async fn stop(&self) {
        let (drains, imports, others) = {
            let mut t = self.tasks.lock();
            (
                std::mem::take(&mut t.drains),
                std::mem::take(&mut t.imports),
                std::mem::take(&mut t.others),
            )
        };
        for d in drains.into_iter().chain(others) {
            d.abort();
        }
        let _flushed = tokio::time::timeout(STOP_FLUSH, self.client.flush()).await;
        self.counters.closed.store(true, Ordering::Relaxed);
        for i in imports {
            i.abort();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.counters.closed.store(true, Ordering::Relaxed);
        let t = self.tasks.get_mut();
        for task in t.drains.iter().chain(&t.imports).chain(&t.others) {
            task.abort();
        }
    }
}

/// Whether `source` is an id the importer gave a remote publisher: such messages came from
/// another host and are never sent back out.
pub(crate) fn is_imported_source(source: &Uuid) -> bool {
    source.get_version_num() == 8
}

/// What an export loop keeps of the streams it sends: the numbering every loop shares, and
/// its own record of each stream's last number for tail marks.
struct Books {
    numbering: Arc<Mutex<Numbering<(Uuid, Topic)>>>,
    tails: Arc<Tails>,
}

/// Takes local messages matching export pattern `index` (and no earlier one, so overlapping
/// patterns send each message once), numbers them and hands them to the client.
///
/// While connected, a full client queue is waited on (the local subscription holds the
/// backlog). While disconnected, a message the client's bounded queue cannot take at once is
/// dropped after it was numbered, so every receiver sees the hole; the bus subscription is
/// still drained, so nothing is lost unnumbered there.
async fn export_loop(
    client: Client,
    mut rx: capsule_bus::Receiver,
    bus: Bus,
    config: Arc<BridgeConfig>,
    index: usize,
    books: Books,
    counters: Arc<Counters>,
) {
    let Books { numbering, tails } = books;
    let ready = rx.readiness();
    // Subjects of recent topics, so a busy topic's subject is built once, not per message.
    let mut subjects: HashMap<Topic, Subject> = HashMap::new();
    let mut batch = Vec::new();
    let mut handled = 0u32;
    loop {
        ready.ready().await;
        let drain = rx.try_drain(EXPORT_DRAIN_BYTES);
        counters
            .dropped_unnumbered
            .fetch_add(drain.dropped, Ordering::Relaxed);
        if drain.dropped > 0 && bump(&counters.dropped_out, drain.dropped) {
            audit(
                &bus,
                Attribution::System,
                serde_json::json!({
                    "kind": "nats.export-lost",
                    "lost": counters.dropped_out.load(Ordering::Relaxed),
                    "reason": "the bridge fell behind the local bus",
                }),
            );
        }
        // The whole drain is numbered under one lock; a message dropped later keeps its
        // number, so receivers still see the hole.
        {
            let mut numbering = numbering.lock();
            for m in drain.messages {
                if exportable(&config, index, &m) {
                    let (epoch, seq) = numbering.next(&(m.source, m.topic.clone()));
                    batch.push((m, epoch, seq));
                }
            }
        }
        // Runs of one publisher stream travel as one NATS message while connected; while
        // not, every message goes alone so the client's bounded queue counts bus messages.
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        // Asked only when there is more than one message to send: a lone message pays nothing.
        let limit = if connected && batch.len() > 1 {
            (client.server_info().max_payload)
                .saturating_sub(BATCH_HEADROOM)
                .min(MAX_BATCH_BYTES)
        } else {
            0
        };
        let mut start = 0;
        while start < batch.len() {
            let len = if connected {
                run_len(&batch[start..], limit)
            } else {
                1
            };
            let run = &batch[start..start + len];
            start += len;
            let (m, epoch, seq) = &run[0];
            let envelope = Envelope {
                host: config.host.clone(),
                attribution: m.attribution(),
                source: m.source,
                source_name: config
                    .source_names
                    .as_ref()
                    .and_then(|f| f(m.source))
                    .filter(|n| sendable_name(n)),
                epoch: *epoch,
                seq: *seq,
                hops: m.hops(),
            };
            if subjects.len() >= SUBJECTS_KEPT && !subjects.contains_key(&m.topic) {
                subjects.clear();
            }
            let subject = subjects
                .entry(m.topic.clone())
                .or_insert_with(|| Subject::from(topic_subject(&config.cluster, &m.topic)))
                .clone();
            let mut headers = HeaderMap::new();
            let payload = if len == 1 {
                headers.insert(ENVELOPE_NAME, envelope.to_header_value());
                if let Some(key) = &config.key {
                    let tag = key.sign(&subject, &envelope, m.payload.as_str().as_bytes());
                    headers.insert(SIGNATURE_NAME, tag);
                }
                // The payload is handed over without a copy: the bytes stay in the bus's
                // shared message until the client has written them out.
                Bytes::from_owner(SharedPayload(Arc::clone(m)))
            } else {
                let framed =
                    encode_frames(run.iter().map(|(m, _, _)| m.payload.as_str().as_bytes()));
                let batch_env = BatchEnvelope {
                    first: envelope,
                    count: len,
                };
                headers.insert(ENVELOPE_NAME, batch_env.to_header_value());
                if let Some(key) = &config.key {
                    headers.insert(
                        SIGNATURE_NAME,
                        key.sign_batch(&subject, &batch_env, &framed),
                    );
                }
                Bytes::from(framed)
            };
            // Outside the cooperative budget: a spent budget would turn every 128th message
            // into a full trip through the scheduler; the loop yields every
            // `YIELD_EVERY` messages instead.
            let send =
                tokio::task::unconstrained(client.publish_with_headers(subject, headers, payload));
            let sent = hand_over(&client, send).await;
            // After the hand-over (or the drop), so a mark never overtakes what it covers.
            if let Some((_, _, last)) = run.last() {
                tails.record(m.source, &m.topic, m.attribution(), m.hops(), *epoch, *last);
            }
            // Lets the other tasks of a busy worker run now and then.
            handled = handled.wrapping_add(len as u32);
            if handled >= YIELD_EVERY {
                handled = 0;
                tokio::task::yield_now().await;
            }
            let n = len as u64;
            match sent {
                Some(Ok(())) => {
                    counters.exported.fetch_add(n, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    counters.dropped_out.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(target: AUDIT_TARGET, error = %e, "nats publish failed");
                }
                None => {
                    if bump(&counters.dropped_out, n) {
                        audit(
                            &bus,
                            m.attribution(),
                            serde_json::json!({
                                "kind": "nats.export-lost",
                                "lost": counters.dropped_out.load(Ordering::Relaxed),
                                "topic": m.topic.as_str(),
                                "reason": "NATS is unreachable and the buffer is full",
                            }),
                        );
                    }
                }
            }
        }
        batch.clear();
    }
}

/// How many of `items` from the first on travel as one batch: the longest run (at most
/// [`MAX_BATCH`]) of one publisher's consecutively numbered messages of one stream on one
/// topic with one attribution and hop count, each at most [`MAX_MEMBER_BYTES`], framed
/// within `limit` bytes. Only messages already drained are considered: nothing ever waits
/// for a batch to fill.
fn run_len(items: &[(Arc<Message>, u64, u64)], limit: usize) -> usize {
    let Some((first, epoch, seq)) = items.first() else {
        return 0;
    };
    let fits = |m: &Message| m.payload.len() <= MAX_MEMBER_BYTES;
    if !fits(first) {
        return 1;
    }
    let mut bytes = FRAME_PREFIX + first.payload.len();
    let mut len = 1;
    for (m, e, s) in &items[1..] {
        let framed = FRAME_PREFIX + m.payload.len();
        let same = len < MAX_BATCH
            && e == epoch
            && *s == seq.saturating_add(len as u64)
            && m.source == first.source
            && m.topic == first.topic
            && m.principal() == first.principal()
            && m.is_claimed() == first.is_claimed()
            && m.hops() == first.hops()
            && fits(m)
            && bytes + framed <= limit;
        if !same {
            break;
        }
        bytes += framed;
        len += 1;
    }
    len
}

/// Drives one publish: to completion while connected (re-checking the connection every
/// [`EXPORT_WAIT`]), once while not. `None` means the client could not take it now and it
/// was not sent (a pending send into the client's queue sends nothing when dropped).
async fn hand_over<F>(client: &Client, send: F) -> Option<F::Output>
where
    F: std::future::Future,
{
    let mut send = std::pin::pin!(send);
    // The common case: the client's queue has room and takes it at once.
    if let std::task::Poll::Ready(out) = futures::poll!(send.as_mut()) {
        return Some(out);
    }
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            if let Ok(out) = tokio::time::timeout(EXPORT_WAIT, send.as_mut()).await {
                return Some(out);
            }
        } else {
            return match futures::poll!(send.as_mut()) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            };
        }
    }
}

/// A bus message lent to the NATS client as its payload bytes, so exporting a message does
/// not copy it.
struct SharedPayload(Arc<Message>);

impl AsRef<[u8]> for SharedPayload {
    fn as_ref(&self) -> &[u8] {
        self.0.payload.as_str().as_bytes()
    }
}

/// Audit entries stay on their host, imported messages never go back out, and a message
/// matching an earlier export pattern was sent by that pattern's loop.
fn exportable(config: &BridgeConfig, index: usize, m: &Message) -> bool {
    m.topic.as_str() != AUDIT_TOPIC
        && !is_imported_source(&m.source)
        && !config.export[..index].iter().any(|p| p.matches(&m.topic))
}
