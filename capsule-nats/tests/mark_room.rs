//! Tail marks and genuine messages share a receiver's import buffer: a round of marks, which
//! anyone able to publish on the request subject can set off (requests carry no signature,
//! even with a cluster key), must not take the room a peer's next message needs. The
//! receiving host is made busy deterministically: its own admission check blocks on one
//! message until the test has seen the marks and the message reach the client.

use std::sync::Arc;
use std::sync::atomic::Ordering;

#[allow(dead_code)]
mod common;

/// a's share of b's import buffer in both tests.
const SHARE: usize = 8;

use capsule_bus::{Attribution, Bus, Topic};
use capsule_nats::{Bridge, ClusterKey, KEY_BYTES, request_subject};
use common::{Gate, config, publish_n, server, start, wait_until};
use futures::StreamExt;

/// Bridges `a` (exporting `s.*`) and `b` (importing it) sharing cluster key `[key; 32]`, where
/// `b` lists seven more peers and holds `8 * SHARE` messages, so a's share is `SHARE`; b's own
/// admission check stops at the first message on `s.x` until `gate` is released.
async fn pair(
    nats: &capsule_nats::NatsServer,
    key: u8,
    bus_a: &Bus,
    bus_b: &Bus,
    gate: &Arc<Gate>,
) -> (Bridge, Bridge) {
    let key = ClusterKey::from_bytes([key; KEY_BYTES]);
    let mut ca = config(&nats.url(), "a", "b", "s.*", "");
    ca.key = Some(key.clone());
    let mut cb = config(&nats.url(), "b", "a", "", "s.*");
    cb.key = Some(key);
    // Eight peers: a's share is an eighth of the buffer, while the client's own queue in
    // front (the whole bound) has room for everything these tests send.
    for p in 1..8 {
        cb.peers.insert(
            capsule_nats::HostId::parse(&format!("p{p}")).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    cb.import_buffer = 8 * SHARE;
    let g = Arc::clone(gate);
    cb.admit = Some(Arc::new(move |topic: &Topic, _who: &Attribution| {
        if topic.as_str() == "s.x" {
            g.pass();
        }
        Ok(())
    }));
    (start(bus_a, ca).await, start(bus_b, cb).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_of_marks_takes_no_room_from_the_peers_next_message() {
    const STREAMS: u64 = 2 * SHARE as u64;
    let nats = server();
    let gate = Arc::new(Gate::default());
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let (a, b) = pair(&nats, 5, &bus_a, &bus_b, &gate).await;

    // a has sent on twice as many streams as b's share of its buffer holds, one at a time.
    for i in 0..STREAMS {
        publish_n(&bus_a, &format!("s.o{i}"), 1);
        wait_until("b to import each stream's message", || {
            b.stats().imported == i + 1
        })
        .await;
    }
    // The first message on s.x stops in b's admission check; what follows piles up.
    publish_n(&bus_a, "s.x", 1);
    wait_until("s.x to reach b's check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;
    let before = b.stats().received;

    // Someone without the key asks for marks: a answers with one per stream it sent.
    let outsider = common::raw(&nats.url()).await;
    outsider
        .publish(
            request_subject(
                &capsule_nats::ClusterName::parse("c").unwrap_or_else(|e| panic!("{e}")),
            ),
            Vec::new().into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    common::synced(&outsider).await;
    wait_until("the round of marks to reach b's client", || {
        b.stats().received > before + STREAMS
    })
    .await;
    // Then a's next genuine message.
    publish_n(&bus_a, "s.x", 2);
    wait_until("the message to reach b's client", || {
        b.stats().received >= before + STREAMS + 2
    })
    .await;
    gate.release();

    let deadline = std::time::Instant::now() + common::PATIENCE;
    while b.stats().imported != STREAMS + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for b to import a's next message: {:?}",
            b.stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let s = b.stats();
    assert_eq!((s.dropped_in, s.slow_consumer), (0, 0), "{s:?}");
    assert_eq!(a.stats().dropped_out, 0);
}

/// A tail mark is signed but carries no number of its own to refuse a copy by, so a tap that
/// captured one could play it back to fill its peer's share of marks: a mark no newer than
/// one already held is dropped on arrival, taking no room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn played_back_copies_of_a_mark_take_no_room() {
    let nats = server();
    let gate = Arc::new(Gate::default());
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let (a, b) = pair(&nats, 6, &bus_a, &bus_b, &gate).await;
    let tap = common::raw(&nats.url()).await;
    let mut marks = tap
        .subscribe("capsule.c.s.o")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    common::synced(&tap).await;

    publish_n(&bus_a, "s.o", 1);
    wait_until("b to import s.o's message", || b.stats().imported == 1).await;
    publish_n(&bus_a, "s.x", 1);
    wait_until("s.x to reach b's check", || {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;

    // The tap asks for a round and keeps s.o's mark.
    tap.publish(
        request_subject(&capsule_nats::ClusterName::parse("c").unwrap_or_else(|e| panic!("{e}"))),
        Vec::new().into(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mark = loop {
        let m = tokio::time::timeout(common::PATIENCE, marks.next())
            .await
            .unwrap_or_else(|_| panic!("no mark of s.o went by"))
            .unwrap_or_else(|| panic!("the tap's subscription ended"));
        if m.payload.is_empty() {
            break m;
        }
    };
    let before = b.stats().received;
    let copies = 2 * SHARE as u64;
    for _ in 0..copies {
        tap.publish_with_headers(
            mark.subject.clone(),
            mark.headers.clone().unwrap_or_default(),
            mark.payload.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    common::synced(&tap).await;
    wait_until("the copies to reach b's client", || {
        b.stats().received >= before + copies
    })
    .await;
    gate.release();

    wait_until("b to import s.x's message", || b.stats().imported == 2).await;
    let s = b.stats();
    assert_eq!(s.overflow_in, 0, "copies of a mark took room: {s:?}");
    assert_eq!((s.dropped_in, s.slow_consumer), (0, 0), "{s:?}");
    assert_eq!(a.stats().dropped_out, 0);
}
