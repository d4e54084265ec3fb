//! The import buffer is for messages that passed every check needing no state: a client
//! without the cluster key flooding the import subject (garbage, unsigned forgeries, tiny
//! messages claiming full batches, oversized headers) takes none of it, and a peer flooding
//! takes at most its own share, so a genuine peer's messages all arrive, in order, none lost.
//! The receiving host is made busy deterministically: its own admission check blocks on the
//! genuine peer's first message until the whole flood has reached the client.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use capsule_bus::{Attribution, Bus, BusConfig, PrincipalId, Scope, Topic, TopicPattern};
use capsule_nats::async_nats::{self, HeaderMap};
use capsule_nats::{
    BridgeConfig, ClusterKey, ENVELOPE_HEADER, Envelope, HostId, KEY_BYTES, SIGNATURE_HEADER,
};
use uuid::Uuid;

#[allow(dead_code)]
mod common;
use common::*;

/// The receiving host's byte bound in these tests.
const BOUND: usize = 64 * 1024;
/// Messages the genuine peer sends after the one that stops in the check.
const N: u64 = 50;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x42; KEY_BYTES])
}

/// A bus whose own queues never drop in these tests, so every loss seen is the bridge's.
fn roomy_bus() -> Bus {
    Bus::with_config(BusConfig {
        route_max_bytes: 64 << 20,
        queue_max_messages: 1 << 20,
        ..BusConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Host b importing `in.*` under the cluster key, trusting `peers`, with a small byte bound
/// and an admission check that stops at `gate` on the first message.
fn receiver(url: &str, peers: &[&str], gate: &Arc<Gate>) -> BridgeConfig {
    let mut c = config(url, "b", peers[0], "", "in.*");
    for p in &peers[1..] {
        c.peers
            .insert(HostId::parse(p).unwrap_or_else(|e| panic!("{e}")));
    }
    c.key = Some(key());
    c.import_buffer_bytes = BOUND;
    // The client's own queue must hold the whole flood while the check is stopped.
    c.import_buffer = 4096;
    let g = Arc::clone(gate);
    c.admit = Some(Arc::new(move |_topic: &Topic, _who: &Attribution| {
        g.pass();
        Ok(())
    }));
    c
}

fn envelope(host: &str, seq: u64) -> Envelope {
    Envelope {
        host: HostId::parse(host).unwrap_or_else(|e| panic!("{e}")),
        attribution: Attribution::Verified(
            PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        source: Uuid::from_u128(1),
        source_name: None,
        epoch: 1,
        seq,
        hops: 0,
    }
}

/// Sends `body` as message `seq` of `host`'s publisher 1, signed with the cluster key.
async fn signed(client: &async_nats::Client, host: &str, topic: &str, seq: u64, body: &str) {
    let subject = format!("capsule.c.{topic}");
    let env = envelope(host, seq);
    let mut h = env.to_headers();
    h.insert(
        SIGNATURE_HEADER,
        key().sign(&subject, &env, body.as_bytes()).as_str(),
    );
    send(client, &subject, h, body).await;
}

fn with_envelope(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ENVELOPE_HEADER, value);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_the_key_takes_no_buffer_room_from_a_peer() {
    let nats = server();
    let bus = roomy_bus();
    let gate = Arc::new(Gate::default());
    let b = start(&bus, receiver(&nats.url(), &["a"], &gate)).await;
    let mut rx = bus.subscribe(
        TopicPattern::parse("in.*").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let peer = raw(&nats.url()).await;
    let attacker = raw(&nats.url()).await;

    signed(&peer, "a", "in.x", 1, r#"{"n":1}"#).await;
    wait_until("the first message to reach the check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;

    let subject = "capsule.c.in.x";
    let pad = "x".repeat(4096);
    let big = format!(r#"{{"n":666,"pad":"{pad}"}}"#);
    let u = Uuid::from_u128(1);
    let mut flood = 0u64;
    for i in 0..20u64 {
        // Garbage: no headers at all.
        client_publish(&attacker, subject, None, &big).await;
        // An unsigned forgery naming the peer.
        let h = with_envelope(&format!("1;a;verified:alice;{u};9;{};0", i + 1));
        client_publish(&attacker, subject, Some(h), &big).await;
        // A wrongly signed one.
        let mut h = with_envelope(&format!("1;a;verified:alice;{u};9;{};0", i + 1));
        h.insert(SIGNATURE_HEADER, "00".repeat(32).as_str());
        client_publish(&attacker, subject, Some(h), &big).await;
        // An oversized header that decodes as nothing.
        let h = with_envelope(&format!("1;a;{}", "y".repeat(8192)));
        client_publish(&attacker, subject, Some(h), "{}").await;
        // Tiny messages claiming full batches, unsigned and with a made-up signature.
        for seq in [1 + 64 * i, 10_000 + 64 * i] {
            let mut h = with_envelope(&format!("2;a;verified:alice;{u};9;{seq};64;0"));
            if seq > 1 + 64 * i {
                h.insert(SIGNATURE_HEADER, "11".repeat(32).as_str());
            }
            client_publish(&attacker, subject, Some(h), "{}").await;
        }
        flood += 6;
    }
    attacker.flush().await.unwrap_or_else(|e| panic!("{e}"));
    synced(&attacker).await;

    for n in 2..=N + 1 {
        signed(&peer, "a", "in.x", n, &format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_until(
        "the flood and the peer's messages to reach b's client",
        || b.stats().received > flood + N,
    )
    .await;
    gate.release();

    let (seen, dropped) = until(&mut rx, N + 1).await;
    assert_eq!(seen, (1..=N + 1).collect::<Vec<_>>(), "the peer's messages");
    assert_eq!(dropped, 0, "the subscriber was told of loss");
    wait_until("every forgery refused", || b.stats().refused >= flood).await;
    let s = b.stats();
    assert_eq!(
        (s.imported, s.overflow_in, s.dropped_in),
        (N + 1, 0, 0),
        "{s:?}"
    );
    assert!(s.import_peak_bytes < BOUND as u64 / 2, "{s:?}");
    assert!(rx.try_drain(usize::MAX).messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_loses_its_own_share_and_never_another_peers() {
    let nats = server();
    let bus = roomy_bus();
    let gate = Arc::new(Gate::default());
    let b = start(&bus, receiver(&nats.url(), &["a", "c"], &gate)).await;
    let mut from_c = bus.subscribe(
        TopicPattern::parse("in.c").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let mut from_a = bus.subscribe(
        TopicPattern::parse("in.a").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let (flooder, peer) = (raw(&nats.url()).await, raw(&nats.url()).await);

    signed(&peer, "c", "in.c", 1, r#"{"n":1}"#).await;
    wait_until("the first message to reach the check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;
    // A key holder naming peer a, with twice the whole bound in valid messages.
    let pad = "x".repeat(4096);
    let flood = (2 * BOUND / 4096) as u64;
    for n in 1..=flood {
        signed(
            &flooder,
            "a",
            "in.a",
            n,
            &format!(r#"{{"n":{n},"pad":"{pad}"}}"#),
        )
        .await;
    }
    synced(&flooder).await;
    for n in 2..=N + 1 {
        signed(&peer, "c", "in.c", n, &format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_until("both floods to reach b's client", || {
        b.stats().received > flood + N
    })
    .await;
    gate.release();

    let (seen, dropped) = until(&mut from_c, N + 1).await;
    assert_eq!(seen, (1..=N + 1).collect::<Vec<_>>(), "peer c's messages");
    assert_eq!(dropped, 0, "peer c was told of loss");
    wait_until("a's flood handled or dropped", || {
        let s = b.stats();
        s.imported + s.overflow_in == flood + N + 1
    })
    .await;
    let s = b.stats();
    assert!(
        s.overflow_in > 0 && s.overflow_in < flood,
        "a's share should hold some of its flood and drop the rest: {s:?}"
    );
    // a's next message shows its own subscribers the hole its overflow left.
    signed(&flooder, "a", "in.a", flood + 1, r#"{"n":100000}"#).await;
    let (seen_a, dropped_a) = until(&mut from_a, 100_000).await;
    assert!(seen_a.windows(2).all(|w| w[0] < w[1]), "{seen_a:?}");
    assert_eq!(
        dropped_a, s.overflow_in,
        "a's loss was not reported to a's topic"
    );
    assert_eq!(seen_a.len() as u64 + dropped_a, flood + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_peers_signed_message_take_no_room_from_it() {
    let nats = server();
    let bus = roomy_bus();
    let gate = Arc::new(Gate::default());
    let mut cfg = receiver(&nats.url(), &["a", "c"], &gate);
    // Only peer c's message stops in the check, so a's first one is delivered before.
    let g = Arc::clone(&gate);
    cfg.admit = Some(Arc::new(move |topic: &Topic, _who: &Attribution| {
        if topic.as_str() == "in.c" {
            g.pass();
        }
        Ok(())
    }));
    let b = start(&bus, cfg).await;
    let mut from_a = bus.subscribe(
        TopicPattern::parse("in.a").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let (peer_a, peer_c) = (raw(&nats.url()).await, raw(&nats.url()).await);
    // A client without the key that can read the cluster's subjects.
    let attacker = raw(&nats.url()).await;
    let mut tap = attacker
        .subscribe("capsule.c.in.a")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    synced(&attacker).await;

    let pad = "x".repeat(4096);
    signed(
        &peer_a,
        "a",
        "in.a",
        1,
        &format!(r#"{{"n":1,"pad":"{pad}"}}"#),
    )
    .await;
    let captured = tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut tap))
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the attacker never saw a's message"));
    let (seen, _) = until(&mut from_a, 1).await;
    assert_eq!(seen, vec![1]);

    signed(&peer_c, "c", "in.c", 1, r#"{"n":1}"#).await;
    wait_until("c's message to reach the check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;
    // Copies of a's genuine, signed message: twice a's whole share in bytes.
    let copies = (2 * BOUND / 4096) as u64;
    for _ in 0..copies {
        let r = attacker
            .publish_with_headers(
                captured.subject.clone(),
                captured.headers.clone().unwrap_or_default(),
                captured.payload.clone(),
            )
            .await;
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    synced(&attacker).await;
    for n in 2..=N + 1 {
        signed(&peer_a, "a", "in.a", n, &format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_until("the copies and a's messages to reach b's client", || {
        b.stats().received >= 2 + copies + N
    })
    .await;
    gate.release();

    wait_until("every message handled, refused or dropped", || {
        let s = b.stats();
        s.imported + s.overflow_in + s.refused >= 2 + copies + N
    })
    .await;
    let s = b.stats();
    assert_eq!((s.overflow_in, s.dropped_in), (0, 0), "{s:?}");
    let (seen, dropped) = until(&mut from_a, N + 1).await;
    assert_eq!(seen, (2..=N + 1).collect::<Vec<_>>(), "peer a's messages");
    assert_eq!(dropped, 0, "peer a was told of loss");
    assert_eq!(s.imported, N + 2, "{s:?}");
}

/// Publishes without flushing, so a flood is written in few syscalls.
async fn client_publish(
    client: &async_nats::Client,
    subject: &str,
    headers: Option<HeaderMap>,
    body: &str,
) {
    let body = body.as_bytes().to_vec().into();
    let r = match headers {
        Some(h) => {
            client
                .publish_with_headers(subject.to_string(), h, body)
                .await
        }
        None => client.publish(subject.to_string(), body).await,
    };
    r.unwrap_or_else(|e| panic!("{e}"));
}
