//! Behaviour of the bus through its public API: scopes, bounds and eviction, fan-out cap,
//! fairness, budgets, receive timeouts and receiver drop.

use std::time::Duration;

use capsule_bus::{
    Attribution, Bus, BusConfig, BusConfigError, JsonPayload, Outgoing, PrincipalId, Receiver,
    Scope, Topic, TopicPattern,
};
use uuid::Uuid;

fn pid(s: &str) -> PrincipalId {
    PrincipalId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn pat(s: &str) -> TopicPattern {
    TopicPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn msg(topic: &str, who: Option<&str>, payload: &str) -> Outgoing {
    Outgoing {
        topic: Topic::parse(topic).unwrap_or_else(|e| panic!("{topic}: {e}")),
        payload: JsonPayload::parse(payload.to_string()).unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::nil(),
        attribution: match who {
            Some(p) => Attribution::Verified(pid(p)),
            None => Attribution::System,
        },
        hops: 0,
    }
}

/// A JSON string payload of exactly `len` bytes (`len >= 2`).
fn sized(len: usize) -> String {
    format!("\"{}\"", "x".repeat(len - 2))
}

fn principals(rx: &mut Receiver) -> Vec<String> {
    rx.try_drain(usize::MAX)
        .messages
        .iter()
        .map(|m| {
            m.principal()
                .map_or("<system>".to_string(), |p| p.to_string())
        })
        .collect()
}

fn bus_with(f: impl FnOnce(&mut BusConfig)) -> Bus {
    let mut c = BusConfig::default();
    f(&mut c);
    Bus::with_config(c).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn delivers_to_matching_subscriptions_only() {
    let bus = Bus::new();
    let mut a = bus.subscribe(pat("chat.*"), Scope::All);
    let mut b = bus.subscribe(pat("chat.room.msg"), Scope::All);
    let mut c = bus.subscribe(pat("other.*"), Scope::All);
    let report = bus.publish(msg("chat.room.msg", Some("alice"), "1"));
    assert_eq!(report.delivered, 2);
    assert!(!report.is_cut());
    assert_eq!(a.try_drain(usize::MAX).messages.len(), 1);
    let got = b.try_drain(usize::MAX);
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].topic.as_str(), "chat.room.msg");
    assert_eq!(got.messages[0].payload.as_str(), "1");
    assert_eq!(got.messages[0].seq(), report.seq);
    assert!(c.try_drain(usize::MAX).messages.is_empty());
}

#[test]
fn one_publish_shares_one_message() {
    let bus = Bus::new();
    let mut a = bus.subscribe(pat("t"), Scope::All);
    let mut b = bus.subscribe(pat("t"), Scope::All);
    bus.publish(msg("t", None, r#"{"big":"payload"}"#));
    let (x, y) = (a.try_drain(usize::MAX), b.try_drain(usize::MAX));
    assert!(std::sync::Arc::ptr_eq(&x.messages[0], &y.messages[0]));
}

#[test]
fn scopes_admit_what_they_say() {
    let bus = Bus::new();
    let mut all = bus.subscribe(pat("t"), Scope::All);
    let mut only = bus.subscribe(pat("t"), Scope::Principal(pid("alice")));
    let mut with_sys = bus.subscribe(pat("t"), Scope::PrincipalAndSystem(pid("alice")));
    for who in [Some("alice"), Some("bob"), None] {
        bus.publish(msg("t", who, "0"));
    }
    assert_eq!(principals(&mut all), vec!["alice", "bob", "<system>"]);
    assert_eq!(principals(&mut only), vec!["alice"]);
    assert_eq!(principals(&mut with_sys), vec!["alice", "<system>"]);
    // Out-of-scope messages are not admitted, so they are not losses either.
    assert_eq!(only.stats().admitted, 1);
    assert_eq!(only.stats().dropped, 0);
}

#[test]
fn claimed_attribution_is_keyed_by_its_principal() {
    let bus = Bus::new();
    let mut only = bus.subscribe(pat("t"), Scope::Principal(pid("carol")));
    let mut out = msg("t", None, "0");
    out.attribution = Attribution::Claimed(pid("carol"));
    let report = bus.publish(out);
    let got = only.try_drain(usize::MAX);
    assert_eq!(got.messages.len(), 1);
    assert_eq!(
        got.messages[0].seq(),
        report.seq,
        "the claimed flag does not disturb the sequence"
    );
    assert_eq!(
        got.messages[0].attribution(),
        Attribution::Claimed(pid("carol"))
    );
}

#[test]
fn full_principal_queue_evicts_its_own_oldest_and_reports_it() {
    let bus = bus_with(|c| c.queue_max_messages = 3);
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    for i in 0..5 {
        bus.publish(msg("t", Some("alice"), &i.to_string()));
    }
    let d = rx.try_drain(usize::MAX);
    let payloads: Vec<&str> = d.messages.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(payloads, vec!["2", "3", "4"]);
    assert_eq!(d.dropped, 2);
    // Reported once.
    assert_eq!(rx.try_drain(usize::MAX).dropped, 0);
    let s = rx.stats();
    assert_eq!((s.admitted, s.delivered, s.dropped, s.queued), (5, 3, 2, 0));
}

#[test]
fn byte_bound_evicts_from_the_heaviest_principal() {
    let bus = bus_with(|c| c.route_max_bytes = 100);
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    for _ in 0..4 {
        bus.publish(msg("t", Some("heavy"), &sized(20)));
    }
    bus.publish(msg("t", Some("light"), &sized(20)));
    // The route is full (100 bytes); the next message evicts one of heavy's.
    bus.publish(msg("t", Some("light"), &sized(20)));
    let d = rx.try_drain(usize::MAX);
    assert_eq!(d.dropped, 1);
    let light = d
        .messages
        .iter()
        .filter(|m| m.principal() == Some(&pid("light")))
        .count();
    assert_eq!(light, 2, "the light principal lost nothing");
    assert_eq!(d.messages.len(), 5);
}

#[test]
fn message_larger_than_the_route_is_refused_and_counted() {
    let bus = bus_with(|c| c.route_max_bytes = 10);
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    let report = bus.publish(msg("t", Some("a"), &sized(11)));
    assert_eq!((report.delivered, report.refused), (0, 1));
    let d = rx.try_drain(usize::MAX);
    assert!(d.messages.is_empty());
    assert_eq!(d.dropped, 1);
}

#[test]
fn fanout_cap_cuts_and_counts() {
    let bus = bus_with(|c| c.max_fanout = 2);
    let mut rxs: Vec<Receiver> = (0..3)
        .map(|_| bus.subscribe(pat("t"), Scope::All))
        .collect();
    // An out-of-scope subscription does not use up the cap.
    let _bystander = bus.subscribe(pat("t"), Scope::Principal(pid("nobody")));
    let report = bus.publish(msg("t", Some("a"), "0"));
    assert_eq!((report.delivered, report.cut), (2, 1));
    assert!(report.is_cut());
    let drains: Vec<_> = rxs.iter_mut().map(|r| r.try_drain(usize::MAX)).collect();
    let got: usize = drains.iter().map(|d| d.messages.len()).sum();
    let lost: u64 = drains.iter().map(|d| d.dropped).sum();
    assert_eq!((got, lost), (2, 1));
    for r in &rxs {
        let s = r.stats();
        assert_eq!(s.admitted, s.delivered + s.dropped + s.queued);
    }
}

#[test]
fn light_principal_is_not_starved_by_a_flood() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    for i in 0..10_000 {
        bus.publish(msg("t", Some("heavy"), &format!("{{\"n\":{i}}}")));
    }
    for i in 0..10 {
        bus.publish(msg("t", Some("light"), &format!("{{\"n\":{i}}}")));
    }
    let mut light_seen = 0;
    for _ in 0..20 {
        let d = rx.try_drain_limited(usize::MAX, 1);
        assert_eq!(d.messages.len(), 1);
        if d.messages[0].principal() == Some(&pid("light")) {
            light_seen += 1;
        }
    }
    assert_eq!(
        light_seen, 10,
        "all light messages within the first 20 pops"
    );
    assert_eq!(rx.stats().dropped, 0);
}

#[test]
fn large_messages_share_by_bytes_and_never_stall() {
    let bus = bus_with(|c| c.drr_quantum = 10);
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    // Alone, a message 100 quanta large comes out on the first pop.
    bus.publish(msg("t", Some("big"), &sized(1000)));
    assert_eq!(rx.try_drain_limited(usize::MAX, 1).messages.len(), 1);

    bus.publish(msg("t", Some("big"), &sized(1000)));
    for _ in 0..200 {
        bus.publish(msg("t", Some("small"), &sized(10)));
    }
    let order = principals(&mut rx);
    let pos = order
        .iter()
        .position(|p| p == "big")
        .unwrap_or_else(|| panic!("big message lost"));
    // 1000 bytes of credit take 100 visits, during which `small` sends one 10-byte message
    // per visit.
    assert!((95..=105).contains(&pos), "big message delivered at {pos}");
}

#[test]
fn per_publisher_order_is_preserved() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t.*"), Scope::All);
    for i in 0..50 {
        let who = ["a", "b", "c"][i % 3];
        bus.publish(msg("t.x", Some(who), &i.to_string()));
    }
    let d = rx.try_drain(usize::MAX);
    for who in ["a", "b", "c"] {
        let seqs: Vec<u64> = d
            .messages
            .iter()
            .filter(|m| m.principal() == Some(&pid(who)))
            .map(|m| m.seq())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{who}: {seqs:?}");
    }
    assert_eq!(d.messages.len(), 50);
}

#[test]
fn drain_respects_byte_budget_but_always_returns_one() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    for _ in 0..5 {
        bus.publish(msg("t", Some("a"), &sized(100)));
    }
    let d = rx.try_drain(250);
    assert_eq!(d.messages.len(), 2);
    assert_eq!(d.lagged, 3, "three still queued");
    let d = rx.try_drain(10);
    assert_eq!(
        d.messages.len(),
        1,
        "a message larger than the budget still moves"
    );
    assert_eq!(rx.try_drain(usize::MAX).messages.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn recv_times_out_empty() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    let start = tokio::time::Instant::now();
    let d = rx.recv(Duration::from_secs(5), usize::MAX).await;
    assert!(d.messages.is_empty());
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn recv_wakes_on_publish_and_drains_the_rest() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    let publisher = bus.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        for i in 0..3 {
            publisher.publish(msg("t", None, &i.to_string()));
        }
    });
    let start = tokio::time::Instant::now();
    let d = rx.recv(Duration::from_secs(60), usize::MAX).await;
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(d.messages.len(), 3);
    task.await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn readiness_follows_the_queue() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    let ready = rx.readiness();
    assert!(!ready.is_ready());
    bus.publish(msg("t", None, "1"));
    assert!(ready.is_ready());
    ready.ready().await;
    rx.try_drain(usize::MAX);
    assert!(!ready.is_ready());
}

#[tokio::test]
async fn dropping_the_receiver_removes_the_route_and_releases_waiters() {
    let bus = Bus::new();
    let rx = bus.subscribe(pat("t.*"), Scope::All);
    let ready = rx.readiness();
    assert_eq!(bus.subscription_count(), 1);
    let waiter = tokio::spawn({
        let ready = ready.clone();
        async move { ready.ready().await }
    });
    drop(rx);
    waiter.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.is_closed());
    assert_eq!(bus.subscription_count(), 0);
    assert_eq!(bus.publish(msg("t.x", None, "1")).delivered, 0);
}

#[test]
fn config_rejects_zero_limits() {
    for (name, f) in [
        (
            "route_max_bytes",
            (|c: &mut BusConfig| c.route_max_bytes = 0) as fn(&mut BusConfig),
        ),
        ("queue_max_messages", |c| c.queue_max_messages = 0),
        ("max_fanout", |c| c.max_fanout = 0),
        ("drr_quantum", |c| c.drr_quantum = 0),
    ] {
        let mut c = BusConfig::default();
        f(&mut c);
        assert_eq!(Bus::with_config(c).err(), Some(BusConfigError::Zero(name)));
    }
}

#[test]
fn sequence_numbers_increase() {
    let bus = Bus::new();
    let a = bus.publish(msg("t", None, "1")).seq;
    let b = bus.publish(msg("t", None, "1")).seq;
    assert!(b > a);
}

#[test]
fn the_hop_count_travels_with_the_message() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    let mut out = msg("t", Some("alice"), "1");
    out.hops = 9;
    let report = bus.publish(out);
    let got = rx.try_drain(usize::MAX);
    assert_eq!(got.messages[0].hops(), 9);
    assert_eq!(got.messages[0].seq(), report.seq);
}

#[test]
fn a_one_principal_drain_never_mixes_principals_and_loses_nothing() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    for who in [Some("alice"), Some("bob"), Some("alice"), None, Some("bob")] {
        bus.publish(msg("t", who, "1"));
    }
    let mut claimed = msg("t", None, "1");
    claimed.attribution = Attribution::Claimed(pid("alice"));
    bus.publish(claimed);
    let mut batches = Vec::new();
    loop {
        let d = rx.try_drain_one_principal(usize::MAX);
        if d.messages.is_empty() {
            break;
        }
        let first = d.messages[0].attribution();
        assert!(
            d.messages.iter().all(|m| m.attribution() == first),
            "{:?}",
            d.messages
        );
        batches.push((first, d.messages.len()));
    }
    let total: usize = batches.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 6, "{batches:?}");
    assert!(
        batches.len() >= 4,
        "alice, bob, the system and alice's claim: {batches:?}"
    );
    let s = rx.stats();
    assert_eq!(s.admitted, s.delivered + s.dropped + s.queued);
    assert_eq!(s.queued, 0);
}

#[test]
fn a_one_principal_drain_keeps_batching_a_single_principal() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    for _ in 0..50 {
        bus.publish(msg("t", Some("alice"), "1"));
    }
    let d = rx.try_drain_one_principal(usize::MAX);
    assert_eq!(
        d.messages.len(),
        50,
        "one principal's backlog comes in one batch"
    );
    assert_eq!(d.lagged, 0);
}

#[tokio::test]
async fn recv_one_principal_waits_then_stops_at_the_next_principal() {
    let bus = Bus::new();
    let mut rx = bus.subscribe(pat("t"), Scope::All);
    let empty = rx
        .recv_one_principal(Duration::from_millis(5), usize::MAX)
        .await;
    assert!(empty.messages.is_empty());
    bus.publish(msg("t", Some("alice"), "1"));
    bus.publish(msg("t", Some("bob"), "2"));
    let d = rx
        .recv_one_principal(Duration::from_secs(5), usize::MAX)
        .await;
    assert_eq!(d.messages.len(), 1);
    assert_eq!(d.lagged, 1, "bob's message waits for the next drain");
}

#[test]
fn scope_intersections_admit_exactly_what_both_admit() {
    let (a, b) = (pid("a"), pid("b"));
    let scopes = [
        Scope::All,
        Scope::Principal(a.clone()),
        Scope::Principal(b.clone()),
        Scope::PrincipalAndSystem(a.clone()),
        Scope::PrincipalAndSystem(b.clone()),
        Scope::System,
    ];
    let keys = [None, Some(&a), Some(&b)];
    for x in &scopes {
        for y in &scopes {
            let both = x.intersect(y);
            for k in keys {
                let expected = x.admits(k) && y.admits(k);
                let got = both.as_ref().is_some_and(|s| s.admits(k));
                assert_eq!(got, expected, "{x:?} ∩ {y:?} on {k:?}");
            }
            if both.is_none() {
                assert!(
                    keys.iter().all(|k| !(x.admits(*k) && y.admits(*k))),
                    "{x:?} ∩ {y:?} is not empty"
                );
            }
        }
    }
}

#[test]
fn reported_loss_reaches_matching_in_scope_subscriptions_only() {
    let bus = Bus::new();
    let mut all = bus.subscribe(pat("chat.*"), Scope::All);
    let mut alice = bus.subscribe(pat("chat.*"), Scope::Principal(pid("alice")));
    let mut bob = bus.subscribe(pat("chat.*"), Scope::Principal(pid("bob")));
    let mut other = bus.subscribe(pat("news.*"), Scope::All);
    let topic = Topic::parse("chat.post").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bus.report_loss(&topic, Some(&pid("alice")), 3), 2);
    assert_eq!(bus.report_loss(&topic, Some(&pid("alice")), 0), 0);
    bus.publish(msg("chat.post", Some("alice"), "1"));
    let d = all.try_drain(usize::MAX);
    assert_eq!((d.messages.len(), d.dropped), (1, 3));
    assert_eq!(alice.try_drain(usize::MAX).dropped, 3);
    assert_eq!(bob.try_drain(usize::MAX).dropped, 0);
    assert_eq!(other.try_drain(usize::MAX).dropped, 0);
    let s = all.stats();
    assert_eq!((s.admitted, s.delivered, s.dropped), (4, 1, 3));
    assert_eq!(s.admitted, s.delivered + s.dropped + s.queued);
}

/// A batch publish delivers, evicts and reports exactly as the same publishes one by one,
/// in order, and wakes a receiver that was already waiting.
#[tokio::test(start_paused = true)]
async fn a_batch_publishes_like_single_publishes_and_wakes_waiters() {
    let bounded = |c: &mut BusConfig| c.queue_max_messages = 3;
    let outs: Vec<Outgoing> = (0..5)
        .map(|i| {
            msg(
                if i % 2 == 0 { "a.x" } else { "b.x" },
                Some("p"),
                &i.to_string(),
            )
        })
        .collect();
    let (one, batch) = (bus_with(bounded), bus_with(bounded));
    let mut rx_one = [
        one.subscribe(pat("*"), Scope::All),
        one.subscribe(pat("a.*"), Scope::All),
    ];
    let mut rx_batch = [
        batch.subscribe(pat("*"), Scope::All),
        batch.subscribe(pat("a.*"), Scope::All),
    ];
    let waiter = tokio::spawn({
        let ready = rx_batch[1].readiness();
        async move { ready.ready().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());

    let singles: Vec<_> = outs.iter().map(|o| one.publish(o.clone())).collect();
    let batched = batch.publish_batch(outs);
    let strip = |r: &capsule_bus::PublishReport| (r.delivered, r.refused, r.cut);
    assert_eq!(
        singles.iter().map(strip).collect::<Vec<_>>(),
        batched.iter().map(strip).collect::<Vec<_>>()
    );
    assert!(batched.windows(2).all(|w| w[0].seq < w[1].seq));
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .unwrap_or_else(|_| panic!("the waiting receiver was never woken"))
        .unwrap_or_else(|e| panic!("{e}"));
    for (a, b) in rx_one.iter_mut().zip(rx_batch.iter_mut()) {
        let (da, db) = (a.try_drain(usize::MAX), b.try_drain(usize::MAX));
        let text = |d: &capsule_bus::Drain| {
            d.messages
                .iter()
                .map(|m| m.payload.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(text(&da), text(&db));
        assert_eq!(da.dropped, db.dropped);
    }
    // The bound of 3 evicted the oldest two from the route taking every message.
    assert_eq!(rx_one[0].stats().dropped, 2);
}
