//! A hostile client of the same NATS server attacks a bridge: forged peer headers with and
//! without a cluster key, tampered and replayed copies of a peer's real messages, sequence
//! numbers that jump to the end of the range, subjects the bus grammar forbids and a subject
//! that is not even UTF-8. Every attack must be refused and counted (or, for what the client
//! library cannot parse, cost a reconnect) while the peer's real messages keep arriving, in
//! order and nothing else.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::{Attribution, Bus, JsonPayload, Message, Outgoing, Receiver, Scope, Topic};
use capsule_nats::async_nats::{self, HeaderMap};
use capsule_nats::{ClusterKey, ENVELOPE_HEADER, Envelope, KEY_BYTES, SIGNATURE_HEADER};
use futures::StreamExt;
use uuid::Uuid;

#[allow(dead_code)]
mod common;
use common::*;

/// Headers claiming to come from peer `a` for verified alice.
fn forged(epoch: u64, seq: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        ENVELOPE_HEADER,
        format!("1;a;verified:alice;{};{epoch};{seq};0", Uuid::from_u128(1)),
    );
    h
}

/// Drains `rx` until a message numbered `last` arrives; returns the numbers seen and the
/// losses the drains reported.
async fn until(rx: &mut Receiver, last: u64) -> (Vec<u64>, u64) {
    let deadline = Instant::now() + PATIENCE;
    let (mut got, mut dropped): (Vec<Arc<Message>>, u64) = (Vec::new(), 0);
    while !got.iter().any(|m| number(m) == last) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {last}: have {}",
            got.len()
        );
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        dropped += d.dropped;
        got.extend(d.messages);
    }
    (got.iter().map(|m| number(m)).collect(), dropped)
}

fn publish(bus: &Bus, n: u64) {
    bus.publish(Outgoing {
        topic: Topic::parse("in.x").unwrap_or_else(|e| panic!("{e}")),
        payload: JsonPayload::parse(format!(r#"{{"n":{n}}}"#)).unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::from_u128(7),
        attribution: Attribution::Verified(
            capsule_bus::PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        hops: 0,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_jump_to_the_end_of_the_range_is_refused_and_overflows_nothing() {
    let nats = server();
    let bus = Bus::new();
    let b = start(&bus, config(&nats.url(), "b", "a", "", "in.*")).await;
    let mut rx = bus.subscribe(
        capsule_bus::TopicPattern::parse("in.*").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let attacker = raw(&nats.url()).await;
    for (seq, n) in [(1, 1), (u64::MAX, 666), (2, 2), (u64::MAX, 667), (3, 3)] {
        send(
            &attacker,
            "capsule.c.in.x",
            forged(1, seq),
            &format!(r#"{{"n":{n}}}"#),
        )
        .await;
    }
    let (seen, dropped) = until(&mut rx, 3).await;
    assert_eq!(seen, [1, 2, 3], "a forged jump got through");
    assert_eq!(dropped, 0, "a forged jump was reported as loss");
    let s = b.stats();
    assert_eq!((s.imported, s.refused, s.dropped_in), (3, 2, 0));
    let stats = rx.stats();
    assert_eq!(
        stats.admitted,
        stats.delivered + stats.dropped + stats.queued
    );
}

/// Has `attacker` tap the cluster's subjects, publishes message 1 on `bus_a`, and returns the
/// copy the tap saw once the receiver behind `rx` has taken the real one.
async fn tapped_first(
    attacker: &async_nats::Client,
    bus_a: &Bus,
    rx: &mut Receiver,
) -> async_nats::Message {
    let mut tap = attacker
        .subscribe("capsule.c.>")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    synced(attacker).await;
    publish(bus_a, 1);
    let captured = tokio::time::timeout(PATIENCE, tap.next())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the tap saw nothing"));
    assert_eq!(until(rx, 1).await, (vec![1], 0));
    captured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_copy_of_a_peers_message_is_refused() {
    let nats = server();
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let _a = start(&bus_a, config(&nats.url(), "a", "b", "in.*", "")).await;
    let b = start(&bus_b, config(&nats.url(), "b", "a", "", "in.*")).await;
    let mut rx = bus_b.subscribe(
        capsule_bus::TopicPattern::parse("in.*").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let attacker = raw(&nats.url()).await;
    let captured = tapped_first(&attacker, &bus_a, &mut rx).await;
    let headers = captured.headers.clone().unwrap_or_default();
    // Played back twice, byte for byte, with a's own headers.
    for _ in 0..2 {
        send(
            &attacker,
            captured.subject.as_str(),
            headers.clone(),
            r#"{"n":1}"#,
        )
        .await;
    }
    publish(&bus_a, 2);
    assert_eq!(
        until(&mut rx, 2).await,
        (vec![2], 0),
        "a replay was delivered again"
    );
    // The replays came over another connection, so they may be judged after message 2.
    wait_until("both replays refused", || b.stats().refused == 2).await;
    assert_eq!(b.stats().imported, 2);
    assert!(
        rx.try_drain(usize::MAX).messages.is_empty(),
        "a replay was delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_key_forged_and_tampered_messages_are_refused() {
    let nats = server();
    let key = ClusterKey::from_bytes([0x5a; KEY_BYTES]);
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let mut ca = config(&nats.url(), "a", "b", "in.*", "");
    ca.key = Some(key.clone());
    let mut cb = config(&nats.url(), "b", "a", "", "in.*");
    cb.key = Some(key);
    let _a = start(&bus_a, ca).await;
    let b = start(&bus_b, cb).await;
    let mut rx = bus_b.subscribe(
        capsule_bus::TopicPattern::parse("in.*").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let attacker = raw(&nats.url()).await;
    let captured = tapped_first(&attacker, &bus_a, &mut rx).await;
    let real = captured.headers.clone().unwrap_or_default();
    let env = Envelope::from_headers(Some(&real)).unwrap_or_else(|e| panic!("{e}"));
    let subject = captured.subject.as_str();

    // Claiming to be peer a with no signature, a made-up one, or one under another key.
    send(&attacker, subject, forged(u64::MAX, 1), r#"{"n":666}"#).await;
    let mut h = forged(u64::MAX, 1);
    h.insert(SIGNATURE_HEADER, "00".repeat(32));
    send(&attacker, subject, h, r#"{"n":667}"#).await;
    let mut h = forged(u64::MAX, 1);
    let mut guess = Envelope::from_headers(Some(&h)).unwrap_or_else(|e| panic!("{e}"));
    guess.source_name = None;
    let wrong = ClusterKey::from_bytes([0; KEY_BYTES]);
    h.insert(
        SIGNATURE_HEADER,
        wrong.sign(subject, &guess, br#"{"n":668}"#),
    );
    send(&attacker, subject, h, r#"{"n":668}"#).await;
    // a's real headers and signature on another payload, another principal, a later number.
    send(&attacker, subject, real.clone(), r#"{"n":669}"#).await;
    let mut h = real.clone();
    let mut other = env.clone();
    other.attribution = Attribution::Verified(
        capsule_bus::PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}")),
    );
    h.insert(ENVELOPE_HEADER, other.to_header_value());
    send(&attacker, subject, h, r#"{"n":1}"#).await;
    let mut h = real.clone();
    let mut other = env.clone();
    other.seq += 1;
    h.insert(ENVELOPE_HEADER, other.to_header_value());
    send(&attacker, subject, h, r#"{"n":1}"#).await;
    // The real message, played back.
    send(&attacker, subject, real, r#"{"n":1}"#).await;

    publish(&bus_a, 2);
    assert_eq!(
        until(&mut rx, 2).await,
        (vec![2], 0),
        "a forgery got through"
    );
    // The forgeries came over another connection, so they may be judged after message 2.
    wait_until("every forgery refused", || b.stats().refused == 7).await;
    let s = b.stats();
    assert_eq!((s.imported, s.foreign), (2, 0));
    assert!(
        rx.try_drain(usize::MAX).messages.is_empty(),
        "a forgery got through"
    );
}

/// Publishes on `subject` over a bare TCP connection, so the subject may hold any bytes.
fn raw_tcp_publish(addr: &str, subject: &[u8], headers: &[u8], body: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(PATIENCE))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut r = BufReader::new(s.try_clone().unwrap_or_else(|e| panic!("{e}")));
    let mut line = String::new();
    r.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.starts_with("INFO"), "{line}");
    let mut out =
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\nHPUB ".to_vec();
    out.extend_from_slice(subject);
    out.extend_from_slice(
        format!(" {} {}\r\n", headers.len(), headers.len() + body.len()).as_bytes(),
    );
    out.extend_from_slice(headers);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\nPING\r\n");
    s.write_all(&out).unwrap_or_else(|e| panic!("{e}"));
    line.clear();
    r.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(line.trim(), "PONG", "the server refused the raw publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_outside_the_bus_grammar_are_refused_and_a_non_utf8_one_costs_only_a_reconnect() {
    let nats = server();
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let _a = start(&bus_a, config(&nats.url(), "a", "b", "in.*", "")).await;
    let b = start(&bus_b, config(&nats.url(), "b", "a", "", "in.*")).await;
    let mut rx = bus_b.subscribe(
        capsule_bus::TopicPattern::parse("in.*").unwrap_or_else(|e| panic!("{e}")),
        Scope::All,
    );
    let attacker = raw(&nats.url()).await;
    let long = format!("capsule.c.in.{}", "x".repeat(4096));
    let many = format!("capsule.c.in{}", ".x".repeat(64));
    let bad = [
        "capsule.c.in.*",
        "capsule.c.in.>",
        "capsule.c.in..x",
        "capsule.c.in.x.",
        "capsule.c.in.é",
        long.as_str(),
        many.as_str(),
    ];
    for (n, subject) in bad.iter().enumerate() {
        send(&attacker, subject, forged(1, n as u64 + 1), r#"{"n":666}"#).await;
    }
    publish(&bus_a, 1);
    assert_eq!(until(&mut rx, 1).await, (vec![1], 0));
    let s = b.stats();
    assert_eq!(s.imported, 1);
    assert!(s.refused >= 1 && s.refused <= bad.len() as u64, "{s:?}");
    let before = s.disconnects;

    // A subject that is not UTF-8: the client library drops the connection rather than
    // parse it, so the attack costs one reconnect; the bridge must come back and carry on.
    let addr = nats.url().trim_start_matches("nats://").to_string();
    let headers = format!(
        "NATS/1.0\r\n{ENVELOPE_HEADER}: 1;a;verified:alice;{};1;100;0\r\n\r\n",
        Uuid::from_u128(1)
    );
    let headers = headers.as_bytes();
    raw_tcp_publish(&addr, b"capsule.c.in.\xff", headers, br#"{"n":666}"#);
    wait_until("the bridge to drop and remake its connection", || {
        let s = b.stats();
        s.disconnects > before && b.state() == capsule_nats::LinkState::Connected
    })
    .await;
    // The subscription is remade just after the connection: a message a sends before that
    // is lost (and later counted as a hole), so a keeps sending until one arrives.
    let deadline = Instant::now() + PATIENCE;
    let mut n = 1;
    let seen = loop {
        assert!(Instant::now() < deadline, "the bridge never came back");
        n += 1;
        publish(&bus_a, n);
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        if !d.messages.is_empty() {
            break d.messages;
        }
    };
    assert!(
        seen.iter().all(|m| (2..=n).contains(&number(m))),
        "the hostile message got through"
    );
    assert!(b.stats().imported > seen.len() as u64);
}
