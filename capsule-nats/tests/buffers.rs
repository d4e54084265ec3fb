//! The import side's buffer is bounded in bytes as well as in messages: a peer flooding large
//! messages while the receiving host is busy can make it hold at most the configured bytes,
//! and everything beyond is counted, audited and reported to subscribers as loss, never
//! dropped silently. The receiving host is made busy deterministically: its own admission
//! check blocks on the first message until the test has seen the whole flood reach the
//! client, so nothing here depends on timing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

#[allow(dead_code)]
mod common;
use common::Gate;
use std::time::{Duration, Instant};

use capsule_bus::{
    AUDIT_TOPIC, Attribution, Bus, BusConfig, JsonPayload, Outgoing, PrincipalId, Scope, Topic,
    TopicPattern,
};
use capsule_nats::{Bridge, BridgeConfig, ClusterName, HostId, NatsServer};
use uuid::Uuid;

/// Bound on every wait; generous because the test machine is often loaded.
const PATIENCE: Duration = Duration::from_secs(60);

/// The receiving host's byte bound in this test.
const BOUND: usize = 256 * 1024;

fn pat(s: &str) -> TopicPattern {
    TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// A bus whose own queues never drop in this test, so every loss seen is the bridge's.
fn roomy_bus() -> Bus {
    Bus::with_config(BusConfig {
        route_max_bytes: 64 << 20,
        ..BusConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn config(url: &str, host: &str, peer: &str) -> BridgeConfig {
    let mut c = BridgeConfig::new(
        ClusterName::parse("c").unwrap_or_else(|e| panic!("{e}")),
        HostId::parse(host).unwrap_or_else(|e| panic!("{e}")),
        url,
    );
    c.peers
        .insert(HostId::parse(peer).unwrap_or_else(|e| panic!("{e}")));
    c
}

fn publish(bus: &Bus, n: u64, pad: usize) {
    bus.publish(Outgoing {
        topic: Topic::parse("in.x").unwrap_or_else(|e| panic!("{e}")),
        payload: JsonPayload::parse(format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(pad)))
            .unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::from_u128(7),
        attribution: Attribution::Verified(
            PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        ),
        hops: 0,
    });
}

fn number(m: &capsule_bus::Message) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
    v["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n in {}", m.payload.as_str()))
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_messages_holds_at_most_the_byte_bound_and_the_rest_is_reported_lost() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let (bus_a, bus_b) = (roomy_bus(), roomy_bus());
    let mut ca = config(&nats.url(), "a", "b");
    ca.export.push(pat("in.*"));
    let mut cb = config(&nats.url(), "b", "a");
    cb.import.push(pat("in.*"));
    cb.import_buffer_bytes = BOUND;
    let gate = Arc::new(Gate::default());
    let g = Arc::clone(&gate);
    cb.admit = Some(Arc::new(move |_topic: &Topic, _who: &Attribution| {
        g.pass();
        Ok(())
    }));
    let _a = Bridge::start(bus_a.clone(), ca)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = Bridge::start(bus_b.clone(), cb)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
    let mut audit = bus_b.subscribe(pat(AUDIT_TOPIC), Scope::All);

    // Message 1 stops in b's admission check; the flood then piles up behind it.
    publish(&bus_a, 1, 0);
    wait_until("the first message to reach the check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;
    let (flood, pad) = (40u64, 32 * 1024);
    for n in 2..=flood + 1 {
        publish(&bus_a, n, pad);
    }
    wait_until("the whole flood to reach b's client", || {
        b.stats().received > flood
    })
    .await;
    gate.release();
    wait_until("every message handled or dropped", || {
        let s = b.stats();
        s.imported + s.overflow_in == flood + 1
    })
    .await;
    // A last message shows the receiver the hole the dropped tail of the flood left.
    publish(&bus_a, flood + 2, 0);

    let deadline = Instant::now() + PATIENCE;
    let (mut seen, mut dropped) = (Vec::new(), 0u64);
    while !seen.contains(&(flood + 2)) {
        assert!(Instant::now() < deadline, "gave up: have {seen:?}");
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        dropped += d.dropped;
        seen.extend(d.messages.iter().map(|m| number(m)));
    }
    let s = b.stats();
    assert!(
        s.import_peak_bytes > 0 && s.import_peak_bytes <= BOUND as u64,
        "the buffer held {} bytes, bound {BOUND}",
        s.import_peak_bytes
    );
    assert!(
        s.overflow_in >= flood - (BOUND / pad) as u64,
        "a flood of {} bytes into a {BOUND}-byte buffer dropped only {}",
        flood as usize * pad,
        s.overflow_in
    );
    assert_eq!(s.import_held_bytes, 0, "{s:?}");
    // Every dropped message is a counted, reported hole; the rest arrive in order.
    assert_eq!(s.dropped_in, s.overflow_in, "{s:?}");
    assert_eq!(
        dropped, s.overflow_in,
        "the subscriber was not told of every loss"
    );
    assert_eq!(seen.len() as u64 + s.overflow_in, flood + 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.first(), Some(&1));

    let mut kinds = Vec::new();
    for m in audit.try_drain(usize::MAX).messages {
        let v: serde_json::Value =
            serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
        kinds.push(v["kind"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        kinds.iter().any(|k| k == "nats.import-overflow"),
        "the overflow was not audited: {kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "nats.lost"),
        "the holes were not audited: {kinds:?}"
    );
}

#[test]
fn a_zero_byte_bound_is_refused_before_connecting() {
    let mut c = config("nats://127.0.0.1:1", "b", "a");
    c.import.push(pat("in.*"));
    c.import_buffer_bytes = 0;
    assert_eq!(c.validate(), Err(capsule_nats::ConfigError::ZeroBuffer));
}
