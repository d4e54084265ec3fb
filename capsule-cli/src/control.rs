//! The control socket of a running host: `<state>/control.sock` (0600, in the 0700 state
//! directory) speaks JSON lines, and every request carries the session token `capsule run`
//! wrote to `<state>/control.token` (0600) when it started. A wrong or missing token is
//! refused with a message, counted, audited under `capsule::audit::control`, and the
//! connection is closed. Requests are bounded in size, a new connection must speak within
//! [`FIRST_REQUEST_TIMEOUT`], and connections are bounded in number, so a client cannot hold
//! the host's memory or tasks.
//!
//! Protocol (one JSON object per line each way):
//! - request: `{"token": "…", "op": "…", …}` with `op` one of `publish {topic, payload, as?}`,
//!   `request {topic, payload, reply, as?, timeout_ms?}`, `tail {pattern, as?}`, `ps`,
//!   `metrics`, `load {dir}`, `unload {name}`, `approvals` (pending `astrid:approval`
//!   requests), `approve {id, decision}` (`once`, `session`, `always` or `deny`);
//! - answer: `{"ok": true, …}` or `{"ok": false, "kind": "usage|load|runtime|refused",
//!   "error": "…"}`; a `tail` answer is followed by `{"message": {…}}` and
//!   `{"dropped": n}` lines until the client closes or the host stops (`{"end": "…"}`).
//!
//! Messages published through the socket are attributed `verified` to the `as` principal
//! (the owner by default): the token holder is the operator, trusted to act for anyone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capsule_runtime::bus::{
    AUDIT_TOPIC, Attribution, JsonPayload, Message, Outgoing, PrincipalId, Receiver, Scope, Topic,
    TopicPattern,
};
use capsule_runtime::security::PrincipalProfile;
use capsule_runtime::{MAX_PAYLOAD_BYTES, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::report::Snapshot;

/// The socket's file name in the state directory.
pub(crate) const SOCKET_FILE: &str = "control.sock";
/// The token's file name in the state directory.
pub(crate) const TOKEN_FILE: &str = "control.token";
/// Largest request line (a maximal payload plus its envelope).
pub(crate) const MAX_REQUEST_BYTES: usize = MAX_PAYLOAD_BYTES + 64 * 1024;
/// How long a new connection has to send its first request.
pub(crate) const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most control connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Longest `request` wait.
pub(crate) const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Payload bytes one tail drain forwards at most.
const TAIL_DRAIN_BYTES: usize = 256 * 1024;

/// Where the control files of `state` live.
pub(crate) fn socket_path(state: &Path) -> PathBuf {
    state.join(SOCKET_FILE)
}

/// Where the session token of `state` lives.
pub(crate) fn token_path(state: &Path) -> PathBuf {
    state.join(TOKEN_FILE)
}

/// One request.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Op {
    Publish {
        topic: String,
        payload: Value,
        #[serde(rename = "as")]
        principal: Option<String>,
    },
    Request {
        topic: String,
        payload: Value,
        reply: String,
        #[serde(rename = "as")]
        principal: Option<String>,
        timeout_ms: Option<u64>,
    },
    Tail {
        pattern: String,
        #[serde(rename = "as")]
        principal: Option<String>,
    },
    Ps,
    Metrics,
    Load {
        dir: PathBuf,
    },
    Unload {
        name: String,
    },
    /// The pending approval requests.
    Approvals,
    /// Decides a pending approval request.
    Approve {
        id: u64,
        decision: String,
    },
}

/// The envelope of a request: the token, then the operation.
#[derive(Debug, Deserialize)]
struct Envelope {
    token: Option<String>,
    #[serde(flatten)]
    op: Value,
}

/// Which exit code a refused request maps to on the client.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Usage,
    Load,
    Runtime,
    Refused,
}

fn error(kind: Kind, message: impl Into<String>) -> Value {
    json!({ "ok": false, "kind": kind, "error": message.into() })
}

/// A message as the control socket shows it.
pub(crate) fn message_json(m: &Message) -> Value {
    let (attribution, principal) = match m.attribution() {
        Attribution::Verified(p) => ("verified", Some(p.to_string())),
        Attribution::Claimed(p) => ("claimed", Some(p.to_string())),
        Attribution::System => ("system", None),
    };
    let payload: Value = serde_json::from_str(m.payload.as_str())
        .unwrap_or(Value::String(m.payload.as_str().into()));
    json!({
        "topic": m.topic.as_str(),
        "payload": payload,
        "principal": principal,
        "attribution": attribution,
        "source": m.source.to_string(),
        "seq": m.seq(),
        "timestamp_ms": m.timestamp_ms,
    })
}

/// The running control server.
pub(crate) struct Server {
    rt: Runtime,
    token: String,
    /// The source id of messages published through the socket: random per host run, so
    /// subscribers can tell operator traffic from capsules' and the host's own.
    source: uuid::Uuid,
    refused: AtomicU64,
    /// Scrapes the metrics endpoint refused, shared with it so both views report them.
    metrics_refused: Arc<AtomicU64>,
    started: Instant,
    stop: CancellationToken,
    /// Live tails finish their drain and say goodbye when `stop` fires; the host waits for
    /// them through this tracker.
    tails: tokio_util::task::TaskTracker,
    /// The approval handler `capsule run` installs; its pending requests are decided here.
    approvals: Arc<crate::approvals::Approvals>,
    /// The NATS bridge, once `capsule run --cluster` has joined.
    bridge: std::sync::OnceLock<(Arc<capsule_nats::Bridge>, capsule_nats::BridgeConfig)>,
}

impl Server {
    /// Binds `<state>/control.sock` and writes a fresh token beside it. A socket left by a
    /// host that is gone is replaced; one that still answers means another host serves this
    /// state directory, which is an error.
    pub(crate) async fn bind(rt: Runtime) -> Result<(Arc<Self>, UnixListener), String> {
        let state = rt.config().state_dir.clone();
        let socket = socket_path(&state);
        if socket.exists() {
            if UnixStream::connect(&socket).await.is_ok() {
                return Err(format!(
                    "another capsule host is serving {} (its control socket answers)",
                    state.display()
                ));
            }
            std::fs::remove_file(&socket)
                .map_err(|e| format!("cannot remove the stale {}: {e}", socket.display()))?;
        }
        let listener = UnixListener::bind(&socket)
            .map_err(|e| format!("cannot create {}: {e}", socket.display()))?;
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("cannot make {} private: {e}", socket.display()))?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| format!("OS random source failed: {e}"))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        capsule_runtime::security::private::write_atomic(&token_path(&state), token.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", token_path(&state).display()))?;
        let server = Arc::new(Self {
            rt,
            token,
            source: uuid::Uuid::new_v4(),
            refused: AtomicU64::new(0),
            metrics_refused: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            stop: CancellationToken::new(),
            tails: tokio_util::task::TaskTracker::new(),
            approvals: Arc::new(crate::approvals::Approvals::new()),
            bridge: std::sync::OnceLock::new(),
        });
        Ok((server, listener))
    }

    /// The approval handler whose pending requests this socket decides.
    pub(crate) fn approvals(&self) -> Arc<crate::approvals::Approvals> {
        Arc::clone(&self.approvals)
    }

    /// The counter of scrapes the metrics endpoint refused, reported in every snapshot.
    pub(crate) fn metrics_refused(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.metrics_refused)
    }

    /// Reports `bridge` in every snapshot from now on (the first one set stays).
    pub(crate) fn set_bridge(
        &self,
        bridge: Arc<capsule_nats::Bridge>,
        config: capsule_nats::BridgeConfig,
    ) {
        let _first = self.bridge.set((bridge, config));
    }

    /// Stops the bridge, if there is one, letting its queued messages out first.
    pub(crate) async fn stop_bridge(&self) {
        if let Some((b, _)) = self.bridge.get() {
            b.stop().await;
        }
    }

    /// The host's counters now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::take(
            &self.rt,
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            self.refused.load(Ordering::Relaxed),
        );
        s.metrics_refused = self.metrics_refused.load(Ordering::Relaxed);
        s.bridge = self.bridge.get().map(|(b, c)| crate::cluster::row(b, c));
        s
    }

    /// Accepts connections until [`stop`](Self::stop).
    pub(crate) async fn serve(self: Arc<Self>, listener: UnixListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                () = self.stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                let mut stream = stream;
                let line = error(
                    Kind::Runtime,
                    format!(
                        "the host serves at most {MAX_CONNECTIONS} control connections at once"
                    ),
                );
                let _told = stream.write_all(format!("{line}\n").as_bytes()).await;
                continue;
            };
            let server = Arc::clone(&self);
            let task = async move {
                let _permit = permit;
                server.connection(stream).await;
            };
            self.tails.spawn(task);
        }
    }

    /// Stops accepting, tells every tail to finish, and waits (bounded) for them to flush.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        self.tails.close();
        let _flushed = tokio::time::timeout(Duration::from_secs(2), self.tails.wait()).await;
        let state = &self.rt.config().state_dir;
        for file in [socket_path(state), token_path(state)] {
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %file.display(), error = %e, "could not remove a control file");
            }
        }
    }

    fn token_ok(&self, given: Option<&str>) -> bool {
        let Some(given) = given else { return false };
        let (a, b) = (given.as_bytes(), self.token.as_bytes());
        // Compared in constant time for equal lengths; the length itself is not secret.
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut first = true;
        loop {
            let line = if first {
                match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, read_line(&mut reader)).await {
                    Ok(l) => l,
                    Err(_) => {
                        let _told = send(
                            &mut write,
                            &error(Kind::Usage, "no request within 10 s; closing"),
                        )
                        .await;
                        return;
                    }
                }
            } else {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    l = read_line(&mut reader) => l,
                }
            };
            first = false;
            let line = match line {
                Ok(Some(line)) => line,
                Ok(None) => return,
                Err(e) => {
                    let _told = send(&mut write, &error(Kind::Usage, e)).await;
                    return;
                }
            };
            let envelope: Envelope = match serde_json::from_str(&line) {
                Ok(e) => e,
                Err(e) => {
                    let _told = send(
                        &mut write,
                        &error(Kind::Usage, format!("request is not a JSON object: {e}")),
                    )
                    .await;
                    return;
                }
            };
            if !self.token_ok(envelope.token.as_deref()) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let why = if envelope.token.is_none() {
                    "missing session token"
                } else {
                    "wrong session token"
                };
                let op = envelope.op.get("op").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(
                    target: "capsule::audit::control",
                    op,
                    reason = why,
                    "control request refused"
                );
                let _told = send(
                    &mut write,
                    &error(
                        Kind::Refused,
                        format!(
                            "control socket refused the request: {why} (the token is in {})",
                            token_path(&self.rt.config().state_dir).display()
                        ),
                    ),
                )
                .await;
                return;
            }
            let op: Op = match serde_json::from_value(envelope.op) {
                Ok(op) => op,
                Err(e) => {
                    let _told = send(
                        &mut write,
                        &error(Kind::Usage, format!("malformed request: {e}")),
                    )
                    .await;
                    continue;
                }
            };
            if let Op::Tail { pattern, principal } = op {
                self.tail(&pattern, principal.as_deref(), reader, write)
                    .await;
                return;
            }
            let answer = self.answer(op).await;
            if send(&mut write, &answer).await.is_err() {
                return;
            }
        }
    }

    fn principal(&self, given: Option<&str>) -> Result<PrincipalId, Value> {
        let principal = match given {
            None => self.rt.config().owner.clone(),
            Some(p) => {
                PrincipalId::parse(p).map_err(|e| error(Kind::Usage, format!("--as `{p}`: {e}")))?
            }
        };
        let profile =
            PrincipalProfile::load(&self.rt.config().state_dir, &principal).map_err(|e| {
                error(
                    Kind::Runtime,
                    format!("principal `{principal}` refused: {e}"),
                )
            })?;
        if !profile.enabled {
            return Err(error(
                Kind::Runtime,
                format!("principal `{principal}` refused: its profile is disabled"),
            ));
        }
        Ok(principal)
    }

    /// The scope a subscription made for `principal` gets: audit-covering patterns see only
    /// that principal's entries unless its profile grants the firehose, exactly as for a
    /// capsule owned by it.
    fn scope(&self, pattern: &TopicPattern, principal: &PrincipalId, otherwise: Scope) -> Scope {
        if !pattern.covers_audit_topic() {
            return otherwise;
        }
        let firehose = PrincipalProfile::load(&self.rt.config().state_dir, principal)
            .is_ok_and(|p| p.audit_firehose());
        match capsule_runtime::audit_rule(pattern, principal, firehose) {
            Scope::All => otherwise,
            scoped => scoped,
        }
    }

    fn publish(
        &self,
        topic: &str,
        payload: &Value,
        principal: &PrincipalId,
    ) -> Result<Value, Value> {
        let topic =
            Topic::parse(topic).map_err(|e| error(Kind::Usage, format!("topic `{topic}`: {e}")))?;
        if topic.as_str() == AUDIT_TOPIC {
            return Err(error(
                Kind::Usage,
                "the audit topic carries host entries only; nothing may be published on it",
            ));
        }
        let text = payload.to_string();
        if text.len() > MAX_PAYLOAD_BYTES {
            return Err(error(
                Kind::Usage,
                format!(
                    "payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                    text.len()
                ),
            ));
        }
        let payload = JsonPayload::parse(text).map_err(|e| error(Kind::Usage, e.to_string()))?;
        let report = self.rt.bus().publish(Outgoing {
            topic,
            payload,
            source: self.source,
            attribution: Attribution::Verified(principal.clone()),
            hops: 0,
        });
        Ok(
            json!({ "ok": true, "delivered": report.delivered, "dropped": report.refused + report.cut }),
        )
    }

    async fn answer(&self, op: Op) -> Value {
        let result = match op {
            Op::Publish {
                topic,
                payload,
                principal,
            } => match self.principal(principal.as_deref()) {
                Ok(p) => self.publish(&topic, &payload, &p),
                Err(e) => Err(e),
            },
            Op::Request {
                topic,
                payload,
                reply,
                principal,
                timeout_ms,
            } => {
                self.request(&topic, &payload, &reply, principal.as_deref(), timeout_ms)
                    .await
            }
            Op::Ps => serde_json::to_value(self.snapshot())
                .map(|s| json!({ "ok": true, "snapshot": s }))
                .map_err(|e| error(Kind::Runtime, e.to_string())),
            Op::Metrics => {
                Ok(json!({ "ok": true, "text": crate::metrics::encode(&self.snapshot()) }))
            }
            Op::Load { dir } => match self.rt.load_all([&dir]).await {
                Ok(loaded) => {
                    let names: Vec<Value> = loaded
                        .iter()
                        .map(|c| json!({"name": c.name(), "version": c.manifest().package.version.to_string()}))
                        .collect();
                    Ok(json!({ "ok": true, "loaded": names }))
                }
                Err(e) => Err(error(
                    Kind::Load,
                    format!("cannot load {}: {}", dir.display(), crate::chain(&e)),
                )),
            },
            Op::Unload { name } => {
                if self.rt.unload(&name).await {
                    Ok(json!({ "ok": true, "unloaded": name }))
                } else {
                    Err(error(
                        Kind::Runtime,
                        format!("no capsule named `{name}` is loaded"),
                    ))
                }
            }
            Op::Approvals => Ok(json!({ "ok": true, "pending": self.approvals.list() })),
            Op::Approve { id, decision } => {
                match capsule_runtime::ActionDecision::parse(&decision) {
                    None => Err(error(
                        Kind::Usage,
                        format!(
                            "`{}` is not a decision (once, session, always or deny)",
                            crate::terminal::shown(&decision)
                        ),
                    )),
                    Some(d) if self.approvals.decide(id, d) => {
                        Ok(json!({ "ok": true, "decided": id }))
                    }
                    Some(_) => Err(error(
                        Kind::Usage,
                        format!("no approval request #{id} is pending"),
                    )),
                }
            }
            Op::Tail { .. } => Err(error(Kind::Usage, "tail takes over its connection")),
        };
        result.unwrap_or_else(|e| e)
    }

    async fn request(
        &self,
        topic: &str,
        payload: &Value,
        reply: &str,
        principal: Option<&str>,
        timeout_ms: Option<u64>,
    ) -> Result<Value, Value> {
        let principal = self.principal(principal)?;
        let pattern = TopicPattern::parse(reply)
            .map_err(|e| error(Kind::Usage, format!("--reply `{reply}`: {e}")))?;
        // Only the asking principal's replies answer its request.
        let scope = self.scope(&pattern, &principal, Scope::Principal(principal.clone()));
        let mut receiver = self.rt.bus().subscribe(pattern, scope);
        self.publish(topic, payload, &principal)?;
        let timeout = timeout_ms
            .map_or(Duration::from_secs(5), Duration::from_millis)
            .min(MAX_REQUEST_TIMEOUT);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(error(
                    Kind::Runtime,
                    format!("no reply on `{reply}` within {} ms", timeout.as_millis()),
                ));
            }
            let drain = tokio::select! {
                () = self.stop.cancelled() => return Err(error(Kind::Runtime, "the host is stopping")),
                d = receiver.recv(left, MAX_PAYLOAD_BYTES) => d,
            };
            if let Some(first) = drain.messages.first() {
                return Ok(json!({ "ok": true, "message": message_json(first) }));
            }
        }
    }

    async fn tail(
        &self,
        pattern: &str,
        principal: Option<&str>,
        mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut write: tokio::net::unix::OwnedWriteHalf,
    ) {
        let principal = match self.principal(principal) {
            Ok(p) => p,
            Err(e) => {
                let _told = send(&mut write, &e).await;
                return;
            }
        };
        let pattern = match TopicPattern::parse(pattern) {
            Ok(p) => p,
            Err(e) => {
                let _told =
                    send(&mut write, &error(Kind::Usage, format!("`{pattern}`: {e}"))).await;
                return;
            }
        };
        let scope = self.scope(&pattern, &principal, Scope::All);
        let scope_text = match &scope {
            Scope::All => "all principals".to_string(),
            Scope::Principal(p) => format!("principal {p}"),
            Scope::PrincipalAndSystem(p) => format!("principal {p} and the host"),
            Scope::System => "the host".to_string(),
        };
        let mut receiver: Receiver = self.rt.bus().subscribe(pattern.clone(), scope);
        let ack = json!({ "ok": true, "following": pattern.as_str(), "scope": scope_text });
        if send(&mut write, &ack).await.is_err() {
            return;
        }
        let mut probe = [0u8; 1];
        let readiness = receiver.readiness();
        loop {
            let stopping = tokio::select! {
                () = self.stop.cancelled() => true,
                // Anything the client sends now, or its closing, ends the tail; nothing it
                // sends is kept.
                _ = tokio::io::AsyncReadExt::read(&mut reader, &mut probe) => return,
                () = readiness.ready() => false,
            };
            let drain = receiver.try_drain(TAIL_DRAIN_BYTES);
            if drain.dropped > 0
                && send(&mut write, &json!({ "dropped": drain.dropped }))
                    .await
                    .is_err()
            {
                return;
            }
            for m in &drain.messages {
                if send(&mut write, &json!({ "message": message_json(m) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if stopping {
                // What was queued before the stop is flushed (the loop above), then goodbye.
                while readiness.is_ready() && !readiness.is_closed() {
                    let more = receiver.try_drain(TAIL_DRAIN_BYTES);
                    if more.messages.is_empty() {
                        break;
                    }
                    for m in &more.messages {
                        if send(&mut write, &json!({ "message": message_json(m) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                let _told = send(&mut write, &json!({ "end": "the host stopped" })).await;
                return;
            }
        }
    }
}

/// Reads one line of at most [`MAX_REQUEST_BYTES`]; `None` at end of stream.
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    loop {
        let buf = reader
            .fill_buf()
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err("request line ends without a newline".into())
            };
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "request line is longer than {MAX_REQUEST_BYTES} bytes"
            ));
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| "request is not UTF-8".to_string());
        }
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, value: &Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await
}
