//! Attacks on the batch envelope (format version 2) through a real NATS server: frames that
//! are truncated, overlong, miscounted or re-split, counts of zero or far beyond the payload,
//! a version-1 header on a batch payload and a batch header on a single payload, a real
//! signed batch replayed, replayed into another cluster, altered in one frame, and a batch
//! whose range overlaps what was delivered. Each is refused whole (nothing of it published)
//! or delivered exactly once, and counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::{
    Attribution, Bus, JsonPayload, Message, Outgoing, PrincipalId, Receiver, Scope, Topic,
};
use capsule_nats::async_nats::{self, HeaderMap};
use capsule_nats::{
    BatchEnvelope, Bridge, ClusterKey, ClusterName, ENVELOPE_HEADER, Envelope, HostId, KEY_BYTES,
    NatsServer, SIGNATURE_HEADER, encode_frames, is_batch,
};
use futures::StreamExt;
use uuid::Uuid;

#[allow(dead_code)]
mod common;
use common::*;

const KEY: [u8; KEY_BYTES] = [0x42; KEY_BYTES];

fn alice() -> Attribution {
    Attribution::Verified(PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")))
}

fn out(n: u64) -> Outgoing {
    Outgoing {
        topic: Topic::parse("in.x").unwrap_or_else(|e| panic!("{e}")),
        payload: JsonPayload::parse(format!(r#"{{"n":{n}}}"#)).unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::from_u128(7),
        attribution: alice(),
        hops: 0,
    }
}

/// Drains `rx` until a message numbered `last` arrives; returns the numbers seen and the
/// losses reported.
async fn until(rx: &mut Receiver, last: u64) -> (Vec<u64>, u64) {
    let deadline = Instant::now() + PATIENCE;
    let (mut got, mut lost): (Vec<Arc<Message>>, u64) = (Vec::new(), 0);
    while !got.iter().any(|m| number(m) == last) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {last}: have {:?}",
            got.iter().map(|m| number(m)).collect::<Vec<_>>()
        );
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        lost += d.dropped;
        got.extend(d.messages);
    }
    (got.iter().map(|m| number(m)).collect(), lost)
}

/// The envelope of a forged first message from peer `a`.
fn first(epoch: u64, seq: u64) -> Envelope {
    Envelope {
        host: HostId::parse("a").unwrap_or_else(|e| panic!("{e}")),
        attribution: alice(),
        source: Uuid::from_u128(1),
        source_name: None,
        epoch,
        seq,
        hops: 0,
    }
}

fn header(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ENVELOPE_HEADER, value);
    h
}

async fn send_bytes(client: &async_nats::Client, subject: &str, h: HeaderMap, body: Vec<u8>) {
    client
        .publish_with_headers(subject.to_string(), h, body.into())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.unwrap_or_else(|e| panic!("{e}"));
}

fn frames(ns: &[u64]) -> Vec<u8> {
    let bodies: Vec<String> = ns.iter().map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    encode_frames(bodies.iter().map(|b| b.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_are_refused_whole_and_counted() {
    let nats = server();
    let bus_b = Bus::new();
    let b = start(&bus_b, config(&nats.url(), "b", "a", "", "in.*")).await;
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
    let attacker = raw(&nats.url()).await;
    let subject = "capsule.c.in.x";
    let batch = |seq: u64, count: usize| {
        BatchEnvelope {
            first: first(1, seq),
            count,
        }
        .to_header_value()
    };
    let u = Uuid::from_u128(1);
    let good = frames(&[1, 2, 3]);
    let mut truncated = good.clone();
    truncated.pop();
    let mut overlong = good.clone();
    overlong[0] = 0xff;
    let mut trailing = good.clone();
    trailing.push(b' ');
    // The same bytes split another way: frame 1 takes two bytes of frame 2's prefix.
    let mut resplit = good.clone();
    resplit[0] += 2;
    let attacks: Vec<(HeaderMap, Vec<u8>)> = vec![
        (header(&batch(1, 3)), truncated),
        (header(&batch(1, 3)), overlong),
        (header(&batch(1, 3)), trailing),
        (header(&batch(1, 3)), resplit),
        (header(&batch(1, 2)), good.clone()),
        (header(&batch(1, 4)), good.clone()),
        (
            header(&format!("2;a;verified:alice;{u};1;1;0;0")),
            Vec::new(),
        ),
        (
            header(&format!("2;a;verified:alice;{u};1;1;0;0")),
            good.clone(),
        ),
        // Far more than any batch carries, on a tiny payload.
        (
            header(&format!("2;a;verified:alice;{u};1;1;4294967296;0")),
            frames(&[1]),
        ),
        (header(&batch(1, 64)), frames(&[1])),
        // A version-1 header on a batch payload, and a batch header on a single payload.
        (header(&first(1, 1).to_header_value()), good.clone()),
        (header(&batch(1, 1)), br#"{"n":1}"#.to_vec()),
        // A frame that is not JSON sinks the whole batch, not just itself.
        (
            header(&batch(1, 2)),
            encode_frames([&br#"{"n":1}"#[..], b"{nope"]),
        ),
    ];
    let n = attacks.len() as u64;
    for (h, body) in attacks {
        send_bytes(&attacker, subject, h, body).await;
    }
    // A well-formed batch after them all is delivered, exactly once and whole.
    send_bytes(&attacker, subject, header(&batch(1, 3)), good).await;
    let (seen, lost) = until(&mut rx, 3).await;
    assert_eq!((seen, lost), (vec![1, 2, 3], 0));
    let s = b.stats();
    assert_eq!((s.refused, s.imported, s.dropped_in), (n, 3, 0), "{s:?}");
    assert!(rx.try_drain(usize::MAX).messages.is_empty());
}

/// Two signed bridges, `a` exporting `in.*` to `b`; returns a raw client tapping a real
/// batch of messages 1..=3 that `a` sent, after `b` delivered them.
async fn tapped_batch(
    nats: &NatsServer,
) -> (
    Bus,
    Bus,
    Bridge,
    Bridge,
    async_nats::Client,
    async_nats::Message,
) {
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let mut ca = config(&nats.url(), "a", "b", "in.*", "");
    ca.key = Some(ClusterKey::from_bytes(KEY));
    let mut cb = config(&nats.url(), "b", "a", "", "in.*");
    cb.key = Some(ClusterKey::from_bytes(KEY));
    let a = start(&bus_a, ca).await;
    let b = start(&bus_b, cb).await;
    let attacker = raw(&nats.url()).await;
    let mut tap = attacker
        .subscribe("capsule.c.>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    synced(&attacker).await;
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
    // Published together, the three are drained together and leave as one batch.
    bus_a.publish_batch((1..=3).map(out));
    let captured = tokio::time::timeout(PATIENCE, tap.next())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the tap saw nothing"));
    let value = captured
        .headers
        .as_ref()
        .and_then(|h| h.get(ENVELOPE_HEADER))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    assert!(is_batch(&value), "not sent as a batch: {value}");
    assert_eq!(until(&mut rx, 3).await, (vec![1, 2, 3], 0));
    (bus_a, bus_b, a, b, attacker, captured)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_batches_replayed_altered_or_respelled_are_refused() {
    let nats = server();
    let (bus_a, bus_b, _a, b, attacker, captured) = tapped_batch(&nats).await;
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
    let real = captured.headers.clone().unwrap_or_default();
    let value = real
        .get(ENVELOPE_HEADER)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    let env = BatchEnvelope::parse(&value).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(env.count, 3);
    let subject = captured.subject.as_str();
    let body = captured.payload.to_vec();

    // Replayed whole: three replays, counted one by one.
    send_bytes(&attacker, subject, real.clone(), body.clone()).await;
    // One frame altered (same length), under the real signature.
    let altered = frames(&[1, 2, 9]);
    assert_eq!(altered.len(), body.len());
    send_bytes(&attacker, subject, real.clone(), altered).await;
    // The same bytes, re-split, under the real signature.
    let mut resplit = body.clone();
    resplit[0] += 1;
    send_bytes(&attacker, subject, real.clone(), resplit).await;
    // The header respelled as version 1 (dropping the count) or with another count.
    let mut h = real.clone();
    h.insert(ENVELOPE_HEADER, env.first.to_header_value());
    send_bytes(&attacker, subject, h, body.clone()).await;
    let mut h = real.clone();
    let mut fewer = env.clone();
    fewer.count = 2;
    h.insert(ENVELOPE_HEADER, fewer.to_header_value());
    send_bytes(&attacker, subject, h, frames(&[1, 2])).await;
    // Signed with another key.
    let mut h = real.clone();
    h.insert(
        SIGNATURE_HEADER,
        ClusterKey::from_bytes([0; KEY_BYTES]).sign_batch(subject, &env, &body),
    );
    send_bytes(&attacker, subject, h, body.clone()).await;

    bus_a.publish(out(4));
    assert_eq!(
        until(&mut rx, 4).await,
        (vec![4], 0),
        "an attack got through"
    );
    // Three replays refused one by one, five messages refused whole.
    wait_until("every attack refused", || b.stats().refused == 8).await;
    let s = b.stats();
    assert_eq!((s.imported, s.dropped_in, s.foreign), (4, 0, 0), "{s:?}");
    assert!(rx.try_drain(usize::MAX).messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_overlapping_delivered_numbers_delivers_only_the_new_ones_once() {
    let nats = server();
    let (bus_a, bus_b, _a, b, attacker, captured) = tapped_batch(&nats).await;
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
    let value = captured
        .headers
        .as_ref()
        .and_then(|h| h.get(ENVELOPE_HEADER))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    let env = BatchEnvelope::parse(&value).unwrap_or_else(|e| panic!("{e}"));
    let subject = captured.subject.as_str();
    // A key holder's batch 2..=5 over delivered 1..=3: 2 and 3 are replays, 4 and 5 new.
    let key = ClusterKey::from_bytes(KEY);
    let mut overlap = env.clone();
    overlap.first.seq = 2;
    overlap.count = 4;
    let body = frames(&[2, 3, 4, 5]);
    let mut h = header(&overlap.to_header_value());
    h.insert(SIGNATURE_HEADER, key.sign_batch(subject, &overlap, &body));
    send_bytes(&attacker, subject, h.clone(), body.clone()).await;
    // The same batch again: all four are replays now.
    send_bytes(&attacker, subject, h, body).await;
    synced(&attacker).await;
    let (seen, lost) = until(&mut rx, 5).await;
    assert_eq!((seen, lost), (vec![4, 5], 0));
    wait_until("the replayed numbers refused", || b.stats().refused == 6).await;
    // The real publisher's next number continues the stream: 4 and 5 were taken, so its 4
    // is a replay; its 6 follows on.
    bus_a.publish_batch((4..=6).map(out));
    let (seen, _) = until(&mut rx, 6).await;
    assert_eq!(seen, vec![6]);
    let s = b.stats();
    assert_eq!((s.imported, s.refused), (6, 8), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_replayed_into_another_cluster_with_the_same_key_is_refused() {
    let nats = server();
    let (_bus_a, _bus_b, _a, _b, attacker, captured) = tapped_batch(&nats).await;
    let bus_d = Bus::new();
    let mut cd = config(&nats.url(), "d1", "a", "", "in.*");
    cd.cluster = ClusterName::parse("d").unwrap_or_else(|e| panic!("{e}"));
    cd.key = Some(ClusterKey::from_bytes(KEY));
    let d = start(&bus_d, cd).await;
    let mut rx_d = bus_d.subscribe(pat("in.*"), Scope::All);
    let subject = captured
        .subject
        .as_str()
        .replacen("capsule.c.", "capsule.d.", 1);
    send_bytes(
        &attacker,
        &subject,
        captured.headers.clone().unwrap_or_default(),
        captured.payload.to_vec(),
    )
    .await;
    wait_until("the cross-cluster batch refused", || d.stats().refused == 1).await;
    let s = d.stats();
    assert_eq!((s.imported, s.refused), (0, 1), "{s:?}");
    assert!(rx_d.try_drain(usize::MAX).messages.is_empty());
}
