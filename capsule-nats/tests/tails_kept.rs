//! Which streams a sender keeps tail marks for, against a real `nats-server`: the README
//! promises marks for the streams an export pattern sent most recently (the last
//! `TAILS_KEPT`), so a long-lived stream that keeps sending must not be forgotten in favour
//! of streams that sent nothing since, or the loss at its end goes uncounted.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "common/proxy.rs"]
mod proxy;

use capsule_bus::Bus;
use capsule_nats::{LinkState, TAILS_KEPT};
use common::{PATIENCE, config, publish_n, server, start, wait_until};
use futures::StreamExt;
use proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_sent_last_keeps_its_tail_mark_however_early_it_began() {
    let nats = server();
    let proxy = Proxy::start(nats.port());
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let a = start(&bus_a, config(&nats.url(), "a", "b", "s.*", "")).await;
    let b = start(&bus_b, config(&proxy.url(), "b", "a", "", "s.*")).await;
    let (_watcher, mut watch) = common::watch(&nats.url(), "capsule.c.s.>").await;

    // The long-lived stream begins first, then the table fills with others.
    publish_n(&bus_a, "s.long", 1);
    wait_until("b to import the long stream's first message", || {
        b.stats().imported == 1
    })
    .await;
    let others = TAILS_KEPT as u64 - 1;
    for i in 0..others {
        publish_n(&bus_a, &format!("s.o{i}"), 1);
        if i % 256 == 255 {
            wait_until("a to export what was published", || {
                a.stats().exported + a.stats().dropped_unnumbered >= i + 2
            })
            .await;
        }
    }
    wait_until("b to import every other stream", || {
        b.stats().imported == 1 + others
    })
    .await;

    // b is away while the long stream sends its last message, after every other stream's;
    // then one new stream starts, which fills the table by one.
    proxy.refuse();
    wait_until("b to notice the cut", || b.state() != LinkState::Connected).await;
    publish_n(&bus_a, "s.long", 2);
    publish_n(&bus_a, "s.new", 1);
    // The new stream's second message is handed over after its first was recorded.
    publish_n(&bus_a, "s.new", 2);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let m = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("the new stream never reached the server"))
            .unwrap_or_else(|| panic!("the watcher's subscription ended"));
        if m.subject.as_str() == "capsule.c.s.new" && m.payload.windows(5).any(|w| w == b"\"n\":2")
        {
            break;
        }
    }
    assert_eq!(b.stats().dropped_in, 0);
    proxy.open();

    // The long stream sent last but one: its mark must reach b, which counts the one
    // message it missed; the new stream's marks are a first sight, no loss.
    wait_until("b to count the long stream's lost last message", || {
        b.stats().dropped_in >= 1
    })
    .await;
    assert_eq!(b.stats().dropped_in, 1, "{:?}", b.stats());
}
