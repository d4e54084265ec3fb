//! Invariants any wire format of the bridge must keep, attacked through a real NATS server:
//! a publisher whose new stream starts past 1 has its skipped messages counted, loss under an
//! import buffer filled with mixed small and large messages is counted exactly and order
//! kept, and clusters whose names differ only in case or by a suffix never mix.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use capsule_bus::{Attribution, Bus, BusConfig, JsonPayload, Outgoing, PrincipalId, Scope, Topic};
use capsule_nats::async_nats::HeaderMap;
use capsule_nats::{BridgeConfig, ClusterName, ENVELOPE_HEADER, MAX_GAP};
use uuid::Uuid;

#[allow(dead_code)]
mod common;
use common::*;

fn alice() -> Attribution {
    Attribution::Verified(PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")))
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

/// Publishes `{"n":n,"pad":"x…"}` on `topic` from local capsule `source` as alice.
fn publish(bus: &Bus, topic: &str, source: u128, n: u64, pad: usize) {
    bus.publish(Outgoing {
        topic: Topic::parse(topic).unwrap_or_else(|e| panic!("{e}")),
        payload: JsonPayload::parse(format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(pad)))
            .unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::from_u128(source),
        attribution: alice(),
        hops: 0,
    });
}

/// Makes `config`'s admission check stop at `gate` on the first message.
fn gated(config: &mut BridgeConfig, gate: &Arc<Gate>) {
    let g = Arc::clone(gate);
    config.admit = Some(Arc::new(move |_topic: &Topic, _who: &Attribution| {
        g.pass();
        Ok(())
    }));
}

/// Envelope headers naming peer `a`'s publisher 1 as verified alice.
fn envelope(epoch: u64, seq: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        ENVELOPE_HEADER,
        format!("1;a;verified:alice;{};{epoch};{seq};0", Uuid::from_u128(1)),
    );
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_epoch_starting_past_one_reports_the_messages_it_skipped() {
    // Every stream epoch numbers from 1. A receiver that already follows a publisher and
    // then first sees its new epoch at number 4 missed numbers 1 to 3 of it: a loss it must
    // count, not a silent restart. A new epoch is no licence for an implausible jump either.
    let nats = server();
    let bus = roomy_bus();
    let b = start(&bus, config(&nats.url(), "b", "a", "", "in.*")).await;
    let mut rx = bus.subscribe(pat("in.*"), Scope::All);
    let peer = raw(&nats.url()).await;
    for (epoch, seq, n) in [
        (1, 1, 1),
        (1, 2, 2),
        (2, 4, 3),
        (2, 5, 4),
        (3, MAX_GAP + 2, 666),
        (3, 1, 5),
    ] {
        send(
            &peer,
            "capsule.c.in.x",
            envelope(epoch, seq),
            &format!(r#"{{"n":{n}}}"#),
        )
        .await;
    }
    let (seen, dropped) = until(&mut rx, 5).await;
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    let s = b.stats();
    assert_eq!(
        dropped, 3,
        "the skipped start of epoch 2 was not reported: {s:?}"
    );
    assert_eq!((s.dropped_in, s.restarts, s.refused), (3, 2, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_with_mixed_small_and_large_messages_is_counted_exactly_in_order() {
    // Holes in the middle of the stream (a large message dropped, the small ones after it
    // held): each is a counted loss the subscriber is told of, and what arrives is in order.
    let nats = server();
    let (bus_a, bus_b) = (roomy_bus(), roomy_bus());
    let _a = start(&bus_a, config(&nats.url(), "a", "b", "in.*", "")).await;
    let mut cb = config(&nats.url(), "b", "a", "", "in.*");
    // Bytes only: the message bound also caps the client's queue, whose losses are holes the
    // check below could not wait for.
    cb.import_buffer_bytes = 64 * 1024;
    let gate = Arc::new(Gate::default());
    gated(&mut cb, &gate);
    let b = start(&bus_b, cb).await;
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);

    publish(&bus_a, "in.x", 7, 1, 0);
    wait_until("the first message to reach the check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;
    let last = 40;
    for n in 2..=last {
        // Every message is over the 8 KiB a batch member may have, so each travels alone
        // and `received` counts them one by one.
        let pad = if n % 3 == 0 { 24 * 1024 } else { 9 * 1024 };
        publish(&bus_a, "in.x", 7, n, pad);
    }
    wait_until("the flood to reach b's client", || {
        b.stats().received >= last
    })
    .await;
    gate.release();
    wait_until("every message handled or dropped", || {
        let s = b.stats();
        s.imported + s.overflow_in == last
    })
    .await;
    publish(&bus_a, "in.x", 7, last + 1, 0);
    let (seen, dropped) = until(&mut rx, last + 1).await;
    let s = b.stats();
    assert!(s.overflow_in > 0, "nothing overflowed: {s:?}");
    assert!(
        seen.windows(2).any(|w| w[1] > w[0] + 1 && w[1] < last),
        "no hole in the middle of the stream: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(s.dropped_in, s.overflow_in, "{s:?}");
    assert_eq!(
        dropped, s.overflow_in,
        "the subscriber was not told of every loss"
    );
    assert_eq!(
        seen.len() as u64 + s.overflow_in,
        last + 1,
        "{seen:?} {s:?}"
    );
    assert!(s.import_peak_bytes <= 64 * 1024, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_named_alike_but_not_the_same_never_mix() {
    // NATS subjects are case-sensitive and the cluster is a whole token: `c`, `C`, `c-1` and
    // `c_1` are four namespaces; a prefix of a name is not the name.
    let nats = server();
    let named = |cluster: &str, host: &str, peer: &str, export: &str, import: &str| {
        let mut c = config(&nats.url(), host, peer, export, import);
        c.cluster = ClusterName::parse(cluster).unwrap_or_else(|e| panic!("{e}"));
        c
    };
    let bus_a = roomy_bus();
    let _a = start(&bus_a, named("c", "a", "b", "*", "")).await;
    let mut others = Vec::new();
    for cluster in ["C", "c-1", "c_1", "cc"] {
        let bus = roomy_bus();
        let bridge = start(&bus, named(cluster, "b", "a", "", "*")).await;
        let rx = bus.subscribe(pat("in.*"), Scope::All);
        others.push((cluster, bus, bridge, rx));
    }
    let bus_b = roomy_bus();
    let b = start(&bus_b, named("c", "b", "a", "", "*")).await;
    let mut rx = bus_b.subscribe(pat("in.*"), Scope::All);
    publish(&bus_a, "in.x", 7, 1, 0);
    assert_eq!(until(&mut rx, 1).await, (vec![1], 0));
    // Each other cluster's own peer `a` then sends a fence; had a's message of cluster `c`
    // leaked, it would be held before the fence.
    for (cluster, _bus, bridge, rx) in &mut others {
        let peer = roomy_bus();
        let _p = start(&peer, named(cluster, "a", "b", "*", "")).await;
        publish(&peer, "in.fence", 8, 2, 0);
        assert_eq!(until(rx, 2).await, (vec![2], 0), "cluster {cluster}");
        let s = bridge.stats();
        assert_eq!(
            (s.imported, s.refused, s.foreign),
            (1, 0, 0),
            "{cluster}: {s:?}"
        );
    }
    assert_eq!(b.stats().imported, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_messages_claiming_big_batches_cannot_push_a_peers_messages_out() {
    // Three tiny messages claiming 64 members each: their framing is checked before they
    // are held, so they take no place at all, and a held batch would count once, not 64 times.
    let nats = server();
    let bus = roomy_bus();
    let mut cb = config(&nats.url(), "b", "a", "", "in.*");
    cb.import_buffer = 128;
    let gate = Arc::new(Gate::default());
    gated(&mut cb, &gate);
    let b = start(&bus, cb).await;
    let mut rx = bus.subscribe(pat("in.*"), Scope::All);
    let peer = raw(&nats.url()).await;
    send(&peer, "capsule.c.in.x", envelope(1, 1), r#"{"n":1}"#).await;
    wait_until("the first message to reach the check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;
    for _ in 0..3 {
        let mut h = HeaderMap::new();
        h.insert(
            ENVELOPE_HEADER,
            format!("2;a;verified:alice;{};1;1;64;0", Uuid::from_u128(2)),
        );
        send(&peer, "capsule.c.in.x", h, "x").await;
    }
    for n in 2..=11 {
        send(
            &peer,
            "capsule.c.in.x",
            envelope(1, n),
            &format!(r#"{{"n":{n}}}"#),
        )
        .await;
    }
    wait_until("everything to reach b's client", || {
        b.stats().received >= 14
    })
    .await;
    gate.release();
    let (seen, dropped) = until(&mut rx, 11).await;
    let s = b.stats();
    assert_eq!(seen, (1..=11).collect::<Vec<_>>(), "{s:?}");
    assert_eq!((dropped, s.overflow_in), (0, 0), "{s:?}");
    assert_eq!(s.refused, 3, "{s:?}");
}
