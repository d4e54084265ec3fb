//! `astrid:ipc` from inside real guests: round trips, every error path with its exact code,
//! attribution, audit scoping, real pollables and audit events.

use std::collections::HashMap;
use std::time::Duration;

use capsule_bus::Attribution;
use capsule_runtime::RunExit;
use serde_json::json;

use crate::common::*;

const PONG: &str = "[publish]\n\"pong.*\" = \"opaque\"\n\n[subscribe]\n\"ping.*\" = \"opaque\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_round_trip_is_verified_and_sourced() {
    let h = host();
    let mut replies = h.subscribe("pong.reply");
    let pong = h.load("pong", "pong.wasm", PONG).await;
    assert!(
        pong.wait_ready(Duration::from_secs(20)).await,
        "pong never signalled ready"
    );
    let ping = h
        .load("ping", "ping.wasm", "[publish]\n\"ping.*\" = \"opaque\"\n")
        .await;

    let reply = next(&mut replies).await;
    assert_eq!(reply.topic.as_str(), "pong.reply");
    assert_eq!(reply.payload.as_str(), r#"{"ping":1}"#);
    assert_eq!(
        reply.source,
        pong.session(),
        "the reply comes from pong's session"
    );
    assert_eq!(reply.attribution(), Attribution::Verified(pid("default")));
    // A run that returns at once is tolerated.
    assert_eq!(ping.wait_run_exit().await, Some(RunExit::Returned));
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_installs_the_publishers_scope_for_replies() {
    let h = host();
    let mut replies = h.subscribe("pong.reply");
    let pong = h.load("pong", "pong.wasm", PONG).await;
    assert!(pong.wait_ready(Duration::from_secs(20)).await);
    h.publish(
        "ping.x",
        r#"{"from":"bob"}"#,
        Attribution::Verified(pid("bob")),
    );
    let reply = next(&mut replies).await;
    assert_eq!(reply.attribution(), Attribution::Verified(pid("bob")));
    h.publish(
        "ping.x",
        r#"{"from":"carol"}"#,
        Attribution::Claimed(pid("carol")),
    );
    let reply = next(&mut replies).await;
    assert_eq!(
        reply.attribution(),
        Attribution::Claimed(pid("carol")),
        "a claimed principal is in scope, and the reply made for it stays a claim"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_error_paths_return_exact_codes() {
    let h = host();
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let publish = |topic: String, payload: String| {
        let p = p.clone();
        async move { call(&p, "publish", json!({"topic": topic, "payload": payload})).await }
    };
    ok(&publish("probe.ok".into(), "{}".into()).await);
    ok(&publish("probe.a.b.c.d.e.f.g".into(), "{}".into()).await);
    let long = format!("probe.{}", "a".repeat(251));
    assert_eq!(long.len(), 257);
    for (topic, why) in [
        (long, "longer than 256 bytes"),
        ("probe..x".to_string(), "empty segment"),
        ("probe.a.b.c.d.e.f.g.h".to_string(), "9 segments"),
        ("probe.*".to_string(), "wildcard"),
        ("probe.a b".to_string(), "space"),
        (String::new(), "empty"),
    ] {
        assert_eq!(
            err(&publish(topic, "{}".into()).await),
            "invalid-input",
            "{why}"
        );
    }
    assert_eq!(
        err(&publish("other.topic".into(), "{}".into()).await),
        "capability-denied"
    );
    assert_eq!(
        err(&publish("probe.ok".into(), "not json".into()).await),
        "invalid-input"
    );
    assert_eq!(
        err(&publish("probe.ok".into(), "{".into()).await),
        "invalid-input"
    );
    let max = format!("\"{}\"", "x".repeat(1024 * 1024 - 2));
    ok(&publish("probe.ok".into(), max.clone()).await);
    let over = format!("\"{}\"", "x".repeat(1024 * 1024 - 1));
    assert_eq!(
        err(&publish("probe.ok".into(), over).await),
        "invalid-input"
    );

    // No [publish] table at all: nothing may be published, nothing subscribed.
    let closed = h.load("closed", "prober.wasm", "").await;
    assert_eq!(
        err(&call(
            &closed,
            "publish",
            json!({"topic": "probe.ok", "payload": "{}"})
        )
        .await),
        "capability-denied"
    );
    assert_eq!(
        err(&call(&closed, "subscribe", json!({"pattern": "probe.x"})).await),
        "capability-denied"
    );
    h.rt.shutdown().await;
}

/// The host remembers the topic an instance last published on; a guest alternating that
/// topic with near-misses (a longer or shorter text, a refused or malformed one) must get
/// each one judged on its own, and every delivered message must carry the exact topic given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_topic_never_lets_a_near_miss_through() {
    let h = host();
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let mut seen = h.rt.bus().subscribe(
        capsule_bus::TopicPattern::parse("probe.*").unwrap_or_else(|e| panic!("{e}")),
        capsule_bus::Scope::All,
    );
    let publish = |topic: &str| {
        let (p, topic) = (p.clone(), topic.to_string());
        async move { call(&p, "publish", json!({"topic": topic, "payload": "1"})).await }
    };
    let mut sent = Vec::new();
    for (near, code) in [
        ("probe.ok.", "invalid-input"),
        ("probe.ok*", "invalid-input"),
        ("probe.o", ""),
        ("probe.ok.x", ""),
        ("probe", "capability-denied"),
        ("probe.okk", ""),
        ("probeXok", "capability-denied"),
        ("probe.ok", ""),
    ] {
        ok(&publish("probe.ok").await);
        sent.push("probe.ok");
        let r = publish(near).await;
        if code.is_empty() {
            ok(&r);
            sent.push(near);
        } else {
            assert_eq!(err(&r), code, "{near}");
        }
    }
    let got: Vec<String> = seen
        .try_drain(usize::MAX)
        .messages
        .iter()
        .map(|m| m.topic.as_str().to_string())
        .collect();
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_rate_limited_by_the_principals_quota() {
    let h = host();
    h.profile("default", "[quotas]\nmax_ipc_throughput_bytes = 100\n");
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let payload = format!("\"{}\"", "x".repeat(58));
    let args = json!({"topic": "probe.rate", "payload": payload});
    ok(&call(&p, "publish", args.clone()).await);
    assert_eq!(
        err(&call(&p, "publish", args.clone()).await),
        "rate-limited"
    );
    // Another principal has its own budget.
    ok(&call_as(&p, "publish", args, Some("bob")).await);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_cut_is_backpressure() {
    let h = host_with(|c| c.bus.max_fanout = 1);
    let mut a = h.subscribe("probe.fan");
    let mut b = h.subscribe("probe.fan");
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let r = call(&p, "publish", json!({"topic": "probe.fan", "payload": "1"})).await;
    assert_eq!(err(&r), "backpressure");
    let got = a.try_drain(usize::MAX).messages.len() + b.try_drain(usize::MAX).messages.len();
    assert_eq!(got, 1, "delivered to the subscribers within the cap");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_as_needs_uplink_and_arrives_claimed() {
    let h = host();
    let mut rx = h.subscribe("probe.*");
    let plain = h.load("plain", "prober.wasm", PROBER_ACL).await;
    let args = json!({"topic": "probe.in", "payload": "{}", "principal": "carol"});
    assert_eq!(
        err(&call(&plain, "publish-as", args.clone()).await),
        "capability-denied"
    );

    h.approve_all();
    let uplink = h
        .load(
            "uplink",
            "prober.wasm",
            &format!("{PROBER_ACL}\n[capabilities]\nuplink = true\n"),
        )
        .await;
    let bad = json!({"topic": "probe.in", "payload": "{}", "principal": "not valid!"});
    assert_eq!(
        err(&call(&uplink, "publish-as", bad).await),
        "invalid-input"
    );
    ok(&call(&uplink, "publish-as", args).await);
    let m = next(&mut rx).await;
    assert_eq!(m.attribution(), Attribution::Claimed(pid("carol")));
    assert_eq!(m.source, uplink.session());
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_error_paths_return_exact_codes() {
    let h = host();
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let sub = |pattern: String| {
        let p = p.clone();
        async move { call(&p, "subscribe", json!({"pattern": pattern})).await }
    };
    let long = format!("probe.{}", "a".repeat(251));
    for (pattern, why) in [
        (long, "longer than 256 bytes"),
        ("probe.*.*".to_string(), "two wildcards"),
        ("probe.*.x".to_string(), "wildcard not last"),
        ("probe.a.b.c.d.e.f.g.h".to_string(), "9 segments"),
        ("probe.a b".to_string(), "space"),
        ("probe.x*".to_string(), "partial wildcard"),
    ] {
        assert_eq!(err(&sub(pattern).await), "invalid-input", "{why}");
    }
    assert_eq!(err(&sub("other.*".into()).await), "capability-denied");
    assert_eq!(
        err(&sub("*".into()).await),
        "capability-denied",
        "broader than the ACL"
    );
    ok(&sub("probe.deeper.*".into()).await);

    let before = h.rt.bus().subscription_count();
    let many = ok(&call(
        &p,
        "subscribe-many",
        json!({"pattern": "probe.q", "count": 130}),
    )
    .await)
    .clone();
    assert_eq!(
        many["subscribed"], 127,
        "128 live subscriptions per instance, one already held"
    );
    assert_eq!(many["first_error"], "quota");
    assert_eq!(h.rt.bus().subscription_count(), before + 127);
    // Dropping subscriptions frees their routes and their slots.
    ok(&call(&p, "drop-all", json!({})).await);
    assert_eq!(h.rt.bus().subscription_count(), before - 1);
    ok(&sub("probe.again".into()).await);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_and_recv_deliver_and_report_losses() {
    let h = host_with(|c| c.bus.queue_max_messages = 2);
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let index = ok(&call(&p, "subscribe", json!({"pattern": "probe.in"})).await).clone();
    let empty = ok(&call(&p, "recv", json!({"index": index, "timeout": 10})).await).clone();
    assert_eq!(
        empty["messages"],
        json!([]),
        "a timed-out recv returns an empty envelope"
    );

    // The subscription was opened in a call serving the owner, so it takes the owner's
    // messages (and the system's).
    for i in 0..5 {
        h.publish(
            "probe.in",
            &i.to_string(),
            Attribution::Verified(pid("default")),
        );
    }
    let env = ok(&call(&p, "poll", json!({"index": index})).await).clone();
    let messages = env["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 2);
    assert_eq!(env["dropped"], 3, "evictions are reported");
    assert_eq!(messages[0]["payload"], "3");
    assert_eq!(messages[0]["principal"], json!({"verified": "default"}));
    assert_eq!(messages[0]["source"], uuid::Uuid::nil().to_string());
    assert_eq!(messages[0]["topic"], "probe.in");

    h.publish("probe.in", "7", Attribution::System);
    h.publish("probe.in", "8", Attribution::System);
    let env = ok(&call(&p, "recv", json!({"index": index, "timeout": 60000})).await).clone();
    assert_eq!(
        env["messages"].as_array().map(Vec::len),
        Some(2),
        "recv drains what is queued"
    );
    assert_eq!(env["messages"][0]["principal"], "system");
    assert_eq!(env["dropped"], 0);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_keeps_its_own_scope_when_it_receives() {
    let h = host();
    let mut rx = h.subscribe("probe.out");
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let index = ok(&call_as(
        &p,
        "subscribe",
        json!({"pattern": "probe.in"}),
        Some("alice"),
    )
    .await)
    .clone();
    // A system message would put the owner in scope, were the call's scope not pinned.
    h.publish("probe.in", "{}", Attribution::System);
    let env = ok(&call_as(&p, "poll", json!({"index": index}), Some("alice")).await).clone();
    assert_eq!(env["messages"][0]["principal"], "system");
    let caller = ok(&call_as(&p, "caller", json!({}), Some("alice")).await).clone();
    assert_eq!(caller["principal"], "alice");
    ok(&call_as(
        &p,
        "publish",
        json!({"topic": "probe.out", "payload": "{}"}),
        Some("alice"),
    )
    .await);
    assert_eq!(
        next(&mut rx).await.attribution(),
        Attribution::Verified(pid("alice"))
    );
    h.rt.shutdown().await;
}

/// Audit scoping of a capsule's own (run-loop) subscriptions. Each server below answers every
/// message it receives with the principal it was delivered for; the servers hold on a gate
/// while the entries are published, so each one drains exactly what its route admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_subscriptions_are_scoped_unless_the_owner_holds_the_firehose() {
    let h = host();
    h.profile("ops", "grants = [\"audit:read_all\"]\n");
    let mut answers = h.subscribe("served.*");
    let server = |pattern: &str, out: &str| {
        format!(
            "[publish]\n\"served.*\" = \"x\"\n\
             [subscribe]\n\"astrid.*\" = \"x\"\n\"probe.*\" = \"x\"\n\"serve-gate.*\" = \"x\"\n\
             [env.in]\ntype = \"text\"\ndefault = \"{pattern}\"\n\
             [env.out]\ntype = \"text\"\ndefault = \"served.{out}\"\n"
        )
    };
    let servers = [
        ("alice-audit", "astrid.v1.audit.*", "alice"),
        ("alice-wide", "astrid.*", "alice"),
        ("alice-other", "probe.*", "alice"),
        ("ops-audit", "astrid.v1.audit.*", "ops"),
    ];
    for (name, pattern, owner) in servers {
        let c = h
            .load_as(name, "hostile-kvserver.wasm", &server(pattern, name), owner)
            .await;
        assert!(c.wait_ready(Duration::from_secs(20)).await, "{name}");
    }
    // Every server holds on its gate before the entries are published.
    let hold = json!({"op": "hold", "tag": "hold"}).to_string();
    h.publish(
        "astrid.v1.audit.entry",
        &hold,
        Attribution::Verified(pid("alice")),
    );
    h.publish("probe.x", &hold, Attribution::Verified(pid("alice")));
    let mut held = 0;
    while held < servers.len() {
        let m = next(&mut answers).await;
        let v: serde_json::Value = serde_json::from_str(m.payload.as_str()).unwrap_or_default();
        assert_eq!(v["tag"], "hold", "{v}");
        held += 1;
    }
    for (i, who) in ["alice", "bob", "alice"].into_iter().enumerate() {
        let entry = json!({"op": "get", "tag": format!("{who}-{i}")}).to_string();
        h.publish(
            "astrid.v1.audit.entry",
            &entry,
            Attribution::Verified(pid(who)),
        );
        h.publish("probe.x", &entry, Attribution::Verified(pid(who)));
    }
    let entry = json!({"op": "get", "tag": "system"}).to_string();
    h.publish("astrid.v1.audit.entry", &entry, Attribution::System);
    h.publish("serve-gate.go", "{}", Attribution::System);

    // Each server's answers, until it answered the last message its route held.
    let mut got: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let mut done = 0;
    while done < servers.len() {
        let m = next(&mut answers).await;
        let v: serde_json::Value = serde_json::from_str(m.payload.as_str()).unwrap_or_default();
        let server = m.topic.as_str().trim_start_matches("served.").to_string();
        if v["last"] == true && v["lagged"] == 0 {
            done += 1;
        }
        got.entry(server).or_default().push(v["caller"].clone());
    }
    let mine = json!("alice");
    assert_eq!(
        got["alice-audit"],
        vec![mine.clone(), mine.clone()],
        "only the owner's own audit entries"
    );
    assert_eq!(
        got["alice-wide"],
        vec![mine.clone(), mine.clone()],
        "a covering wildcard is scoped too"
    );
    assert_eq!(
        got["alice-other"].len(),
        3,
        "non-audit subscriptions are not scoped"
    );
    assert_eq!(
        got["ops-audit"].len(),
        4,
        "the firehose holder sees every principal and the system"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_a_real_pollable() {
    let h = host();
    let mut waiting = h.subscribe("probe.waiting");
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let index = ok(&call(&p, "subscribe", json!({"pattern": "probe.ready"})).await).clone();
    let task = tokio::spawn({
        let p = p.clone();
        async move {
            call(
                &p,
                "wait",
                json!({"index": index, "notify": "probe.waiting"}),
            )
            .await
        }
    });
    // The guest holds its pollable and is about to block in poll.
    next(&mut waiting).await;
    h.publish("probe.ready", "{}", Attribution::System);
    let r = task.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(&r)["was_ready"],
        false,
        "nothing was queued when the pollable was made"
    );
    assert_eq!(ok(&r)["ready"], json!([0]));
    assert_eq!(ok(&r)["after"], true);
    assert_eq!(
        err(&call(&p, "poll-empty", json!({})).await),
        "invalid-input"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interceptor_bindings_come_from_the_manifest() {
    let h = host();
    let manifest = "[subscribe]\n\"probe.h\" = { wit = \"x\", handler = \"on_h\", priority = 5 }\n\"probe.acl\" = \"x\"\n";
    let p = h.load("prober", "prober.wasm", manifest).await;
    let b = ok(&call(&p, "bindings", json!({})).await).clone();
    assert_eq!(b, json!([{"id": 0, "action": "on_h", "topic": "probe.h"}]));
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ipc_call_is_audited() {
    let h = host();
    let p = h.load("audited", "prober.wasm", PROBER_ACL).await;
    ok(&call_as(
        &p,
        "publish",
        json!({"topic": "probe.a", "payload": "[1,2]"}),
        Some("bob"),
    )
    .await);
    err(&call(&p, "publish", json!({"topic": "nope", "payload": "{}"})).await);
    ok(&call(&p, "subscribe", json!({"pattern": "probe.*"})).await);
    let events = audit_events("audited");
    let find = |op: &str| {
        events
            .iter()
            .filter(|e| e.get("op").map(String::as_str) == Some(op))
            .cloned()
            .collect::<Vec<_>>()
    };
    let publishes = find("publish");
    assert_eq!(publishes.len(), 2, "{events:?}");
    let good = &publishes[0];
    assert_eq!(good["principal"], "bob");
    assert_eq!(good["topic"], "probe.a");
    assert_eq!(good["size"], "5");
    assert!(!good.contains_key("error"));
    let bad = &publishes[1];
    assert_eq!(bad["principal"], "default");
    assert!(bad["error"].contains("capability denied"), "{bad:?}");
    assert_eq!(find("subscribe").len(), 1);
    h.rt.shutdown().await;
}
