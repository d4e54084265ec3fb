//! Streams interrupted by the link to NATS going away, against a real `nats-server`: every
//! message a publisher sent must either arrive on the receiving bus or be counted there as
//! lost (or counted by the sender as lost before it numbered it), including the tail of a
//! stream that nothing follows. Three ways of losing the link: a server restart while the
//! stream flows, the receiver cut off while a stream ends, and the sender's written bytes
//! lost with its connection. Forged and malformed tail marks are refused.

#[allow(dead_code)]
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capsule_bus::{Attribution, Bus, JsonPayload, Outgoing, PrincipalId, Receiver, Scope, Topic};
use capsule_nats::async_nats::HeaderMap;
use capsule_nats::{
    Bridge, ClusterKey, ENVELOPE_HEADER, Envelope, HostId, KEY_BYTES, LinkState, SIGNATURE_HEADER,
    tail_header_value,
};
use common::{PATIENCE, config, number, pat, server, start, wait_until};
use futures::StreamExt;
use proxy::Proxy;
use uuid::Uuid;

fn publish(bus: &Bus, n: u64, last: bool) {
    let body = if last {
        format!(r#"{{"n":{n},"end":"stream-ends-here"}}"#)
    } else {
        format!(r#"{{"n":{n}}}"#)
    };
    bus.publish(Outgoing {
        topic: Topic::parse("s.stream").unwrap_or_else(|e| panic!("{e}")),
        payload: JsonPayload::parse(body).unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::from_u128(7),
        attribution: Attribution::Verified(
            PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        hops: 0,
    });
}

/// What the receiving subscriber has seen so far.
#[derive(Default)]
struct Seen {
    numbers: Vec<u64>,
    /// Losses its drains reported (holes the bridge saw, and its own queue's overflow).
    told: u64,
}

impl Seen {
    fn drain(&mut self, rx: &mut Receiver) {
        let d = rx.try_drain(usize::MAX);
        self.told += d.dropped;
        self.numbers.extend(d.messages.iter().map(|m| number(m)));
    }

    async fn until(&mut self, rx: &mut Receiver, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.drain(rx);
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}: {} delivered, {} told lost",
                self.numbers.len(),
                self.told
            );
            let d = rx.recv(Duration::from_millis(50), usize::MAX).await;
            self.told += d.dropped;
            self.numbers.extend(d.messages.iter().map(|m| number(m)));
        }
    }
}

/// Waits until every one of `sent` messages is delivered or counted lost, and checks that
/// none arrived twice or out of order and that no loss was counted for a message that
/// arrived.
async fn all_accounted(rx: &mut Receiver, seen: &mut Seen, sent: u64, a: &Bridge, b: &Bridge) {
    let unnumbered = || a.stats().dropped_unnumbered;
    seen.until(rx, "every message delivered or counted lost", |s| {
        let accounted = s.numbers.len() as u64 + s.told + unnumbered();
        assert!(
            accounted <= sent,
            "more accounted for than sent: {accounted} of {sent}, {:?} {:?}",
            a.stats(),
            b.stats()
        );
        accounted == sent
    })
    .await;
    assert!(
        seen.numbers.windows(2).all(|w| w[0] < w[1]),
        "order broken or a message delivered twice"
    );
    let sb = b.stats();
    assert_eq!(
        seen.told, sb.dropped_in,
        "told exactly the losses b counted"
    );
    assert_eq!(sb.refused, 0, "nothing refused: {sb:?}");
}

/// A publisher on its own task, streaming numbered messages until told to stop.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(bus: &Bus, from: u64) -> Self {
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(from)),
        );
        let (bus, s, n) = (bus.clone(), Arc::clone(&stop), Arc::clone(&sent));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                for _ in 0..16 {
                    publish(&bus, n.fetch_add(1, Ordering::SeqCst), false);
                }
                // Paced, so the stream is still flowing when the link goes away.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Self { stop, sent, task }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_else(|e| panic!("{e}"));
        self.sent.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_in_flight_loses_nothing_uncounted() {
    let mut nats = server();
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let a = start(&bus_a, config(&nats.url(), "a", "b", "s.*", "")).await;
    let b = start(&bus_b, config(&nats.url(), "b", "a", "", "s.*")).await;
    let mut rx = bus_b.subscribe(pat("s.*"), Scope::All);
    let mut seen = Seen::default();

    let stream = Stream::start(&bus_a, 0);
    seen.until(&mut rx, "the stream to flow", |s| s.numbers.len() >= 200)
        .await;
    nats.stop();
    wait_until("a to notice the outage", || {
        a.state() != LinkState::Connected
    })
    .await;
    let before = stream.sent();
    wait_until("the stream to go on during the outage", || {
        stream.sent() >= before + 500
    })
    .await;
    nats.restart().unwrap_or_else(|e| panic!("{e}"));
    // The stream ends as soon as the sender is back: whatever it queued during the outage
    // may reach the server before the receiver has subscribed again, with nothing after it
    // to reveal the hole.
    wait_until("a to reconnect", || a.state() == LinkState::Connected).await;
    let sent = stream.stop().await;
    wait_until("b to reconnect", || {
        b.state() == LinkState::Connected && b.stats().connects >= 2
    })
    .await;
    all_accounted(&mut rx, &mut seen, sent, &a, &b).await;
    assert!(seen.numbers.len() as u64 > 200, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_cut_off_while_a_stream_ends_counts_the_tail() {
    let nats = server();
    let proxy = Proxy::start(nats.port());
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let a = start(&bus_a, config(&nats.url(), "a", "b", "s.*", "")).await;
    let b = start(&bus_b, config(&proxy.url(), "b", "a", "", "s.*")).await;
    // Sees what the server routes, so the test knows when the tail has passed it.
    let (_watcher, mut watch) = common::watch(&nats.url(), "capsule.c.s.>").await;
    let mut rx = bus_b.subscribe(pat("s.*"), Scope::All);
    let mut seen = Seen::default();

    for n in 0..200 {
        publish(&bus_a, n, false);
    }
    seen.until(&mut rx, "the first 200", |s| s.numbers.len() == 200)
        .await;

    proxy.refuse();
    wait_until("b to notice the cut", || b.state() != LinkState::Connected).await;
    for n in 200..500 {
        publish(&bus_a, n, n == 499);
    }
    // The whole tail went through the server while b was away.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .unwrap_or_else(|_| panic!("the tail never reached the server"))
            .unwrap_or_else(|| panic!("the watcher's subscription ended"));
        if m.payload.windows(16).any(|w| w == b"stream-ends-here") {
            break;
        }
    }
    proxy.open();
    all_accounted(&mut rx, &mut seen, 500, &a, &b).await;
    assert_eq!(seen.numbers.len(), 200);
    assert_eq!(b.stats().dropped_in, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_written_tail_is_lost_with_its_connection_counts_it() {
    let nats = server();
    let proxy = Proxy::start(nats.port());
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let a = start(&bus_a, config(&proxy.url(), "a", "b", "s.*", "")).await;
    let b = start(&bus_b, config(&nats.url(), "b", "a", "", "s.*")).await;
    let mut rx = bus_b.subscribe(pat("s.*"), Scope::All);
    let mut seen = Seen::default();

    for n in 0..200 {
        publish(&bus_a, n, false);
    }
    seen.until(&mut rx, "the first 200", |s| s.numbers.len() == 200)
        .await;

    // The client writes the tail out as if all were well; none of it reaches the server.
    proxy.swallow(b"stream-ends-here");
    for n in 200..500 {
        publish(&bus_a, n, n == 499);
    }
    wait_until("the whole tail to be written", || proxy.swallowed_needle()).await;
    proxy.open();
    proxy.cut();
    wait_until("a to reconnect", || {
        a.state() == LinkState::Connected && a.stats().connects >= 2
    })
    .await;
    all_accounted(&mut rx, &mut seen, 500, &a, &b).await;
    assert_eq!(seen.numbers.len(), 200);
    assert_eq!(b.stats().dropped_in, 300);
}

/// A tail mark's header from peer `a` for stream `source` on `s.stream`.
fn mark(source: Uuid, epoch: u64, last: u64) -> Envelope {
    Envelope {
        host: HostId::parse("a").unwrap_or_else(|e| panic!("{e}")),
        attribution: Attribution::Verified(
            PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        source,
        source_name: None,
        epoch,
        seq: last,
        hops: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_malformed_tail_marks_are_refused_and_count_no_loss() {
    let nats = server();
    let key = ClusterKey::from_bytes([0x5a; KEY_BYTES]);
    let mut cb = config(&nats.url(), "b", "a", "", "s.*");
    cb.key = Some(key.clone());
    let b = start(&Bus::new(), cb).await;
    let raw = common::raw(&nats.url()).await;
    let subject = "capsule.c.s.stream";
    let source = Uuid::from_u128(99);
    let send = |mark: Envelope, sig: Option<String>, body: &'static str| {
        let raw = raw.clone();
        async move {
            let mut h = HeaderMap::new();
            h.insert(ENVELOPE_HEADER, tail_header_value(&mark).as_str());
            if let Some(sig) = sig {
                h.insert(SIGNATURE_HEADER, sig.as_str());
            }
            common::send(&raw, subject, h, body).await;
        }
    };
    // A first sight starts the record (nothing lost), as a first message would.
    send(
        mark(source, 5, 10),
        Some(key.sign_tail(subject, &mark(source, 5, 10))),
        "",
    )
    .await;
    let wrong = ClusterKey::from_bytes([0; KEY_BYTES]);
    send(mark(source, 5, 20), None, "").await;
    send(
        mark(source, 5, 20),
        Some(wrong.sign_tail(subject, &mark(source, 5, 20))),
        "",
    )
    .await;
    // A message's tag does not pass for a mark's.
    send(
        mark(source, 5, 20),
        Some(key.sign(subject, &mark(source, 5, 20), b"")),
        "",
    )
    .await;
    send(
        mark(source, 5, 20),
        Some(key.sign_tail(subject, &mark(source, 5, 20))),
        "{}",
    )
    .await;
    let far = mark(source, 5, 10 + (1 << 33));
    send(far.clone(), Some(key.sign_tail(subject, &far)), "").await;
    let old = mark(source, 4, 30);
    send(old.clone(), Some(key.sign_tail(subject, &old)), "").await;
    common::synced(&raw).await;
    wait_until("the refusals", || b.stats().refused >= 6).await;
    // A genuine mark past the last one seen still counts exactly its hole.
    send(
        mark(source, 5, 13),
        Some(key.sign_tail(subject, &mark(source, 5, 13))),
        "",
    )
    .await;
    wait_until("the genuine mark's loss", || b.stats().dropped_in > 0).await;
    let s = b.stats();
    assert_eq!((s.refused, s.dropped_in, s.imported), (6, 3, 0), "{s:?}");
}
