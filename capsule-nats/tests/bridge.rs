//! Two (or three) bridges on separate buses, the way separate host processes run them, against
//! a real `nats-server` child on a loopback port: ordering, peer trust, cluster isolation, loop
//! prevention, authentication, malformed input and a server restart in the middle of a stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::{
    AUDIT_TOPIC, Attribution, Bus, JsonPayload, Message, Outgoing, PrincipalId, Receiver, Scope,
    Topic, TopicPattern,
};
use capsule_nats::{
    Auth, Bridge, BridgeConfig, BridgeError, ClusterName, HostId, LinkState, NatsServer,
    ServerOptions, imported_source,
};
use uuid::Uuid;

/// Bound on every wait; generous because the test machine is often loaded.
const PATIENCE: Duration = Duration::from_secs(60);

fn pid(s: &str) -> PrincipalId {
    PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn pat(s: &str) -> TopicPattern {
    TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("{e}"))
}

struct Host<'a> {
    cluster: &'a str,
    host: &'a str,
    peers: &'a [&'a str],
    export: &'a [&'a str],
    import: &'a [&'a str],
}

fn config(url: &str, h: &Host<'_>) -> BridgeConfig {
    let mut c = BridgeConfig::new(
        ClusterName::parse(h.cluster).unwrap_or_else(|e| panic!("{e}")),
        HostId::parse(h.host).unwrap_or_else(|e| panic!("{e}")),
        url,
    );
    c.peers = h
        .peers
        .iter()
        .map(|p| HostId::parse(p).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    c.export = h.export.iter().map(|p| pat(p)).collect();
    c.import = h.import.iter().map(|p| pat(p)).collect();
    c
}

async fn bridge(bus: &Bus, url: &str, h: Host<'_>) -> Bridge {
    Bridge::start(bus.clone(), config(url, &h))
        .await
        .unwrap_or_else(|e| panic!("bridge {}: {e}", h.host))
}

fn publish(bus: &Bus, topic: &str, attribution: Attribution, body: String) {
    bus.publish(Outgoing {
        topic: Topic::parse(topic).unwrap_or_else(|e| panic!("{e}")),
        payload: JsonPayload::parse(body).unwrap_or_else(|e| panic!("{e}")),
        source: Uuid::from_u128(7),
        attribution,
        hops: 0,
    });
}

/// Polls `cond` until it holds, failing the test with `what` after [`PATIENCE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drains `rx` until `done` says the collected messages suffice; returns them and the losses
/// the drains reported.
async fn collect(
    rx: &mut Receiver,
    what: &str,
    mut done: impl FnMut(&[Arc<Message>]) -> bool,
) -> (Vec<Arc<Message>>, u64) {
    let deadline = Instant::now() + PATIENCE;
    let (mut got, mut dropped) = (Vec::new(), 0);
    while !done(&got) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: have {}",
            got.len()
        );
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        dropped += d.dropped;
        got.extend(d.messages);
    }
    (got, dropped)
}

fn number(m: &Message) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
    v["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n in {}", m.payload.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_in_order_with_their_attribution() {
    const N: u64 = 10_000;
    let nats = server();
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let a = bridge(
        &bus_a,
        &nats.url(),
        Host {
            cluster: "c1",
            host: "a",
            peers: &["b"],
            export: &["order.*"],
            import: &[],
        },
    )
    .await;
    let b = bridge(
        &bus_b,
        &nats.url(),
        Host {
            cluster: "c1",
            host: "b",
            peers: &["a"],
            export: &[],
            import: &["order.*"],
        },
    )
    .await;
    let mut rx = bus_b.subscribe(pat("order.*"), Scope::All);
    for n in 0..N {
        publish(
            &bus_a,
            "order.seq",
            Attribution::Verified(pid("alice")),
            format!(r#"{{"n":{n}}}"#),
        );
    }
    let (mut got, mut dropped) = (Vec::new(), 0);
    let deadline = Instant::now() + PATIENCE;
    while (got.len() as u64) + dropped < N {
        assert!(
            Instant::now() < deadline,
            "stalled: {} arrived, {dropped} lost",
            got.len()
        );
        let d = rx.recv(Duration::from_millis(100), usize::MAX).await;
        dropped += d.dropped;
        got.extend(d.messages);
    }
    assert_eq!(dropped, 0, "{:?}", b.stats());
    let order: Vec<u64> = got.iter().map(|m| number(m)).collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>());
    let host_a = HostId::parse("a").unwrap_or_else(|e| panic!("{e}"));
    let source = imported_source(&host_a, &Uuid::from_u128(7));
    for m in &got {
        assert_eq!(m.attribution(), Attribution::Verified(pid("alice")));
        assert_eq!(m.source, source);
        assert_eq!(m.hops(), 1);
    }
    let origin = b
        .origin(&source)
        .unwrap_or_else(|| panic!("origin of {source} not recorded"));
    assert_eq!(
        origin.host, host_a,
        "the receiving host records who vouched"
    );
    assert_eq!(origin.source, Uuid::from_u128(7));
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.exported, sa.dropped()), (N, 0));
    assert_eq!(
        (sb.imported, sb.dropped(), sb.foreign, sb.refused),
        (N, 0, 0, 0)
    );
    assert_eq!(b.state(), LinkState::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_outside_the_peer_list_is_ignored_counted_and_audited() {
    let nats = server();
    let (bus_a, bus_b, bus_x) = (Bus::new(), Bus::new(), Bus::new());
    let _a = bridge(
        &bus_a,
        &nats.url(),
        Host {
            cluster: "c1",
            host: "a",
            peers: &["b"],
            export: &["room.*"],
            import: &[],
        },
    )
    .await;
    let _x = bridge(
        &bus_x,
        &nats.url(),
        Host {
            cluster: "c1",
            host: "mallory",
            peers: &["b"],
            export: &["room.*"],
            import: &[],
        },
    )
    .await;
    let b = bridge(
        &bus_b,
        &nats.url(),
        Host {
            cluster: "c1",
            host: "b",
            peers: &["a"],
            export: &[],
            import: &["room.*"],
        },
    )
    .await;
    let mut rx = bus_b.subscribe(pat("room.*"), Scope::All);
    let mut audit = bus_b.subscribe(pat(AUDIT_TOPIC), Scope::All);
    publish(
        &bus_x,
        "room.post",
        Attribution::Verified(pid("alice")),
        r#"{"n":666}"#.into(),
    );
    publish(
        &bus_a,
        "room.post",
        Attribution::Verified(pid("alice")),
        r#"{"n":1}"#.into(),
    );
    wait_until("the foreign message counted", || b.stats().foreign == 1).await;
    let (got, _) = collect(&mut rx, "the peer's message", |g| !g.is_empty()).await;
    assert_eq!(number(&got[0]), 1);
    assert!(
        rx.try_drain(usize::MAX).messages.is_empty(),
        "mallory's message got through"
    );
    let (entries, _) = collect(&mut audit, "the audit entry", |g| !g.is_empty()).await;
    let entry: serde_json::Value =
        serde_json::from_str(entries[0].payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry["kind"], "nats.foreign-host");
    assert_eq!(entry["host"], "mallory");
    assert_eq!(b.stats().imported, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_one_server_never_mix() {
    let nats = server();
    let (red_a, red_b, blue_b, blue_d) = (Bus::new(), Bus::new(), Bus::new(), Bus::new());
    let _ra = bridge(
        &red_a,
        &nats.url(),
        Host {
            cluster: "red",
            host: "a",
            peers: &["b"],
            export: &["x.*"],
            import: &[],
        },
    )
    .await;
    let _rb = bridge(
        &red_b,
        &nats.url(),
        Host {
            cluster: "red",
            host: "b",
            peers: &["a"],
            export: &[],
            import: &["x.*"],
        },
    )
    .await;
    // Same host names, other cluster: only the cluster keeps them apart.
    let bb = bridge(
        &blue_b,
        &nats.url(),
        Host {
            cluster: "blue",
            host: "b",
            peers: &["a", "d"],
            export: &[],
            import: &["x.*"],
        },
    )
    .await;
    let _bd = bridge(
        &blue_d,
        &nats.url(),
        Host {
            cluster: "blue",
            host: "d",
            peers: &["b"],
            export: &["x.*"],
            import: &[],
        },
    )
    .await;
    let mut red_rx = red_b.subscribe(pat("x.*"), Scope::All);
    let mut blue_rx = blue_b.subscribe(pat("x.*"), Scope::All);
    publish(&red_a, "x.msg", Attribution::System, r#"{"n":1}"#.into());
    let (got, _) = collect(&mut red_rx, "red's message", |g| !g.is_empty()).await;
    assert_eq!(number(&got[0]), 1);
    // Red's message reached red; a blue message sent after it is the fence: had the red one
    // leaked into blue, blue would hold it before the fence.
    publish(&blue_d, "x.fence", Attribution::System, r#"{"n":2}"#.into());
    let (got, _) = collect(&mut blue_rx, "blue's fence", |g| !g.is_empty()).await;
    let seen: Vec<u64> = got.iter().map(|m| number(m)).collect();
    assert_eq!(seen, [2]);
    assert_eq!(got[0].attribution(), Attribution::System);
    let s = bb.stats();
    assert_eq!((s.imported, s.foreign, s.refused), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_messages_never_go_back_and_attributions_are_never_upgraded() {
    let nats = server();
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let a = bridge(
        &bus_a,
        &nats.url(),
        Host {
            cluster: "c",
            host: "a",
            peers: &["b"],
            export: &["echo.*"],
            import: &["echo.*"],
        },
    )
    .await;
    let b = bridge(
        &bus_b,
        &nats.url(),
        Host {
            cluster: "c",
            host: "b",
            peers: &["a"],
            export: &["echo.*"],
            import: &["echo.*"],
        },
    )
    .await;
    let mut rx_a = bus_a.subscribe(pat("echo.*"), Scope::All);
    let mut rx_b = bus_b.subscribe(pat("echo.*"), Scope::All);
    publish(
        &bus_a,
        "echo.one",
        Attribution::Claimed(pid("bob")),
        r#"{"n":1}"#.into(),
    );
    publish(&bus_a, "echo.one", Attribution::System, r#"{"n":2}"#.into());
    let (got, _) = collect(&mut rx_b, "a's messages at b", |g| g.len() >= 2).await;
    assert_eq!(
        got[0].attribution(),
        Attribution::Claimed(pid("bob")),
        "a claim stays a claim"
    );
    assert_eq!(got[1].attribution(), Attribution::System);
    publish(
        &bus_b,
        "echo.fence",
        Attribution::Verified(pid("carol")),
        r#"{"n":3}"#.into(),
    );
    // a sees its own two (locally) and then b's fence; an echo of its own would come before it.
    let (got, _) = collect(&mut rx_a, "b's fence at a", |g| {
        g.iter().any(|m| number(m) == 3)
    })
    .await;
    let seen: Vec<u64> = got.iter().map(|m| number(m)).collect();
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(a.stats().imported, 1);
    wait_until("b to count its one export", || b.stats().exported >= 1).await;
    assert_eq!(b.stats().exported, 1, "b re-exported what it imported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_from_nats_are_refused_and_change_nothing() {
    let nats = server();
    let bus = Bus::new();
    let b = bridge(
        &bus,
        &nats.url(),
        Host {
            cluster: "c",
            host: "b",
            peers: &["a"],
            export: &[],
            import: &["in.*", AUDIT_TOPIC_PATTERN],
        },
    )
    .await;
    let mut rx = bus.subscribe(pat("in.*"), Scope::All);
    let raw = capsule_nats::async_nats::connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let good = |attribution: &str, seq: &str| {
        let mut h = capsule_nats::async_nats::HeaderMap::new();
        h.insert(
            capsule_nats::ENVELOPE_HEADER,
            format!("1;a;{attribution};{};1;{seq};0", Uuid::from_u128(1)),
        );
        h
    };
    let sends: Vec<(&str, Option<capsule_nats::async_nats::HeaderMap>, &str)> = vec![
        ("capsule.c.in.x", None, r#"{"n":0}"#),
        (
            "capsule.c.in.x",
            Some(good("root:alice", "1")),
            r#"{"n":0}"#,
        ),
        (
            "capsule.c.in.x",
            Some(good("verified:alice", "0")),
            r#"{"n":0}"#,
        ),
        (
            "capsule.c.in.x",
            Some(good("verified:alice", "1")),
            "not json",
        ),
        (
            "capsule.c.in.x",
            Some(good("verified:alice", "1")),
            "\u{0}\u{ff}",
        ),
        (
            "capsule.c.astrid.v1.audit.entry",
            Some(good("system", "1")),
            r#"{"kind":"forged"}"#,
        ),
        (
            "capsule.c.in.x",
            Some(good("verified:alice", "1")),
            r#"{"n":9}"#,
        ),
    ];
    for (subject, headers, body) in sends {
        let r = match headers {
            Some(h) => {
                raw.publish_with_headers(subject, h, body.as_bytes().to_vec().into())
                    .await
            }
            None => raw.publish(subject, body.as_bytes().to_vec().into()).await,
        };
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    raw.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let (got, dropped) = collect(&mut rx, "the one good message", |g| !g.is_empty()).await;
    assert_eq!((number(&got[0]), dropped), (9, 0));
    assert_eq!(got[0].attribution(), Attribution::Verified(pid("alice")));
    wait_until("six refusals", || b.stats().refused == 6).await;
    assert_eq!(b.stats().imported, 1);
}

/// An import pattern that covers the audit topic, so the test can show it is still refused.
const AUDIT_TOPIC_PATTERN: &str = "astrid.v1.*";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_server_refuses_a_bridge_without_the_token() {
    let nats = NatsServer::start_with(ServerOptions {
        token: Some("s3cret".into()),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let bus = Bus::new();
    let h = Host {
        cluster: "c",
        host: "a",
        peers: &[],
        export: &["t.*"],
        import: &["t.*"],
    };
    let mut c = config(&nats.url(), &h);
    c.auth = Auth::Token("wrong".into());
    match Bridge::start(bus.clone(), c.clone()).await {
        Err(BridgeError::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
    c.auth = Auth::Token("s3cret".into());
    let a = Bridge::start(bus, c)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.state(), LinkState::Connected);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_is_counted_as_loss_then_recovers() {
    let mut nats = server();
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let mut ca = config(
        &nats.url(),
        &Host {
            cluster: "c",
            host: "a",
            peers: &["b"],
            export: &["s.*"],
            import: &[],
        },
    );
    // A small buffer, so the outage certainly overflows it.
    ca.buffer = 64;
    let a = Bridge::start(bus_a.clone(), ca)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = bridge(
        &bus_b,
        &nats.url(),
        Host {
            cluster: "c",
            host: "b",
            peers: &["a"],
            export: &[],
            import: &["s.*"],
        },
    )
    .await;
    let mut rx = bus_b.subscribe(pat("s.*"), Scope::All);
    let alice = || Attribution::Verified(pid("alice"));
    let mut next = 0u64;
    let send = |bus: &Bus, next: &mut u64| {
        publish(bus, "s.stream", alice(), format!(r#"{{"n":{next}}}"#));
        *next += 1;
    };
    for _ in 0..100 {
        send(&bus_a, &mut next);
    }
    let (mut got, mut dropped) = collect(&mut rx, "the first 100", |g| g.len() >= 100).await;

    nats.stop();
    wait_until("a to notice the outage", || {
        a.state() != LinkState::Connected
    })
    .await;
    for _ in 0..2_000 {
        send(&bus_a, &mut next);
    }
    let during = next;
    nats.restart().unwrap_or_else(|e| panic!("{e}"));
    wait_until("both bridges reconnected", || {
        a.state() == LinkState::Connected
            && b.state() == LinkState::Connected
            && b.stats().connects >= 2
    })
    .await;
    // Keep publishing until one message sent after the restart has arrived.
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "nothing sent after the restart arrived"
        );
        send(&bus_a, &mut next);
        let d = rx.recv(Duration::from_millis(20), usize::MAX).await;
        dropped += d.dropped;
        got.extend(d.messages);
        if got.last().is_some_and(|m| number(m) >= during) {
            break;
        }
    }
    let seen: Vec<u64> = got.iter().map(|m| number(m)).collect();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "order broken: {seen:?}"
    );
    let last = *seen.last().unwrap_or(&0);
    let missing = last + 1 - seen.len() as u64;
    assert!(
        missing > 0,
        "2000 messages into a 64-message buffer lost nothing"
    );
    // Every missing message is accounted for: as a hole b saw and told its subscribers of,
    // or as lost on a's own bus before a numbered it.
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        dropped, sb.dropped_in,
        "b's subscribers were told of every hole b saw"
    );
    assert_eq!(
        missing,
        sb.dropped_in + sa.dropped_unnumbered,
        "silent loss: {sa:?} {sb:?}"
    );
    assert_eq!(sb.disconnects, 1);
    assert!(sb.dropped_in > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiving_host_refuses_what_its_own_check_refuses_and_audits_it() {
    let nats = server();
    let (bus_a, bus_b) = (Bus::new(), Bus::new());
    let _a = bridge(
        &bus_a,
        &nats.url(),
        Host {
            cluster: "c",
            host: "a",
            peers: &["b"],
            export: &["acl.*"],
            import: &[],
        },
    )
    .await;
    let mut cb = config(
        &nats.url(),
        &Host {
            cluster: "c",
            host: "b",
            peers: &["a"],
            export: &[],
            import: &["acl.*"],
        },
    );
    // b's own policy: bob may not act on this host.
    cb.admit = Some(Arc::new(|_topic: &Topic, who: &Attribution| {
        match who.principal() {
            Some(p) if p.as_str() == "bob" => Err("bob's profile is disabled here".into()),
            _ => Ok(()),
        }
    }));
    let b = Bridge::start(bus_b.clone(), cb)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rx = bus_b.subscribe(pat("acl.*"), Scope::All);
    let mut bobs_audit = bus_b.subscribe(pat(AUDIT_TOPIC), Scope::Principal(pid("bob")));
    publish(
        &bus_a,
        "acl.x",
        Attribution::Verified(pid("bob")),
        r#"{"n":1}"#.into(),
    );
    publish(
        &bus_a,
        "acl.x",
        Attribution::Verified(pid("alice")),
        r#"{"n":2}"#.into(),
    );
    let (got, dropped) = collect(&mut rx, "alice's message", |g| !g.is_empty()).await;
    let seen: Vec<u64> = got.iter().map(|m| number(m)).collect();
    assert_eq!(
        (seen, dropped),
        (vec![2], 0),
        "bob's message crossed or was miscounted"
    );
    let (entries, _) = collect(&mut bobs_audit, "bob's audit entry", |g| !g.is_empty()).await;
    let entry: serde_json::Value =
        serde_json::from_str(entries[0].payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry["kind"], "nats.refused");
    assert_eq!(entry["principal"], "bob");
    assert_eq!((b.stats().refused, b.stats().imported), (1, 1));
}
