//! Helpers the hostile bridge tests share: a real NATS server, a bridge for one host with one
//! peer, and a raw client that writes whatever it likes and knows when the server has read it.

use std::time::{Duration, Instant};

use capsule_bus::{Bus, Message, TopicPattern};
use capsule_nats::async_nats::{self, HeaderMap};
use capsule_nats::{Bridge, BridgeConfig, ClusterName, HostId, NatsServer};

/// Bound on every wait; generous because the test machine is often loaded.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn pat(s: &str) -> TopicPattern {
    TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Host `host` of cluster `c` trusting `peer`, exporting and importing one pattern each
/// (none where empty).
pub(crate) fn config(
    url: &str,
    host: &str,
    peer: &str,
    export: &str,
    import: &str,
) -> BridgeConfig {
    let parse = |s: &str| HostId::parse(s).unwrap_or_else(|e| panic!("{e}"));
    let mut c = BridgeConfig::new(
        ClusterName::parse("c").unwrap_or_else(|e| panic!("{e}")),
        parse(host),
        url,
    );
    c.peers.insert(parse(peer));
    if !export.is_empty() {
        c.export.push(pat(export));
    }
    if !import.is_empty() {
        c.import.push(pat(import));
    }
    c
}

pub(crate) async fn start(bus: &Bus, config: BridgeConfig) -> Bridge {
    Bridge::start(bus.clone(), config)
        .await
        .unwrap_or_else(|e| panic!("bridge: {e}"))
}

pub(crate) fn number(m: &Message) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
    v["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n in {}", m.payload.as_str()))
}

pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn raw(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        // The attacker writes whatever subject it likes.
        .skip_subject_validation(true)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Returns once the server has processed everything `client` sent before: `flush` only
/// writes to the socket, while the server's "no responders" answer to a request nobody
/// serves comes after the commands sent ahead of it.
pub(crate) async fn synced(client: &async_nats::Client) {
    let subject = format!("_TEST_SYNC.{}", uuid::Uuid::new_v4().simple());
    let answered = tokio::time::timeout(PATIENCE, client.request(subject, Vec::new().into())).await;
    assert!(
        answered.is_ok(),
        "the server never answered the sync request"
    );
}

pub(crate) async fn send(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &str,
) {
    client
        .publish_with_headers(
            subject.to_string(),
            headers,
            body.as_bytes().to_vec().into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.unwrap_or_else(|e| panic!("{e}"));
}

/// Holds the first caller until opened, so the receiving host is busy exactly while a test
/// piles messages up behind it.
#[derive(Default)]
pub(crate) struct Gate {
    pub(crate) entered: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    pub(crate) fn pass(&self) {
        if self.entered.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Off the worker, so the tasks queued behind this one (the client's connection
        // among them) move to another thread instead of waiting with it.
        tokio::task::block_in_place(|| {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            while !*open {
                open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
            }
        });
    }

    pub(crate) fn release(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }
}

/// Publishes `{"n": n}` on `topic` into `bus`, as alice from one fixed source, so every call
/// continues one publisher's stream on that topic.
pub(crate) fn publish_n(bus: &Bus, topic: &str, n: u64) {
    bus.publish(capsule_bus::Outgoing {
        topic: capsule_bus::Topic::parse(topic).unwrap_or_else(|e| panic!("{e}")),
        payload: capsule_bus::JsonPayload::parse(format!(r#"{{"n":{n}}}"#))
            .unwrap_or_else(|e| panic!("{e}")),
        source: uuid::Uuid::from_u128(7),
        attribution: capsule_bus::Attribution::Verified(
            capsule_bus::PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        hops: 0,
    });
}

/// Drains `rx` until a message numbered at least `last` arrives; returns the numbers seen
/// and the losses the drains reported.
pub(crate) async fn until(rx: &mut capsule_bus::Receiver, last: u64) -> (Vec<u64>, u64) {
    let deadline = Instant::now() + PATIENCE;
    let (mut seen, mut dropped) = (Vec::<u64>::new(), 0);
    while !seen.iter().any(|n| *n >= last) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {last}: have {seen:?}"
        );
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        dropped += d.dropped;
        seen.extend(d.messages.iter().map(|m| number(m)));
    }
    (seen, dropped)
}

/// A raw client subscribed to `subject` on `url`, its subscription in place at the server:
/// it sees what the server routes there.
pub(crate) async fn watch(
    url: &str,
    subject: &str,
) -> (async_nats::Client, async_nats::Subscriber) {
    let watcher = raw(url).await;
    let sub = watcher
        .subscribe(subject.to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    synced(&watcher).await;
    (watcher, sub)
}
