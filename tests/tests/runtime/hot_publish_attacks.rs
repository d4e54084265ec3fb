//! Attacks on the publish path from inside guests: string arguments of every shape a raw
//! component can pass (not UTF-8, out of bounds, wrapping, huge) never publish anything and
//! never hurt the host; a publisher's byte budget holds over any burst, survives the loss of
//! its instance, and is its own, never another principal's.

use std::time::Instant;

use capsule_bus::Attribution;
use capsule_runtime::InvokeError;
use serde_json::json;

use crate::common::*;

const RAW_ACL: &str = "[publish]\n\"probe.*\" = \"opaque\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_publish_strings_of_every_shape_publish_nothing_and_leave_the_host_working() {
    let h = host();
    let mut seen = h.subscribe("probe.*");
    let p = h
        .load("raw-publisher", "hostile-publisher.wasm", RAW_ACL)
        .await;
    let raw_ok = || async {
        let r = p
            .invoke("raw-ok", b"{}", Some(pid("alice")))
            .await
            .unwrap_or_else(|e| panic!("raw-ok: {e}"));
        assert_eq!(r.data.as_deref(), Some(r#"{"code":0}"#), "raw-ok answered");
    };
    // The raw path itself reaches the host.
    raw_ok().await;
    let mut expected = 1;
    for shape in [
        "bad-utf8-topic",
        "bad-utf8-payload",
        "lone-surrogate-payload",
        "oob-topic",
        "oob-payload",
        "huge-payload",
        "wrapping-topic",
        "wrapping-payload",
    ] {
        match p.invoke(shape, b"{}", Some(pid("alice"))).await {
            // A trap: the instance is gone, the host is fine.
            Err(InvokeError::Trapped(_)) => {}
            // Or the host answered with an error code (discriminant 1 is `err`).
            Ok(r) => assert_eq!(r.data.as_deref(), Some(r#"{"code":1}"#), "{shape}"),
            Err(other) => panic!("{shape}: {other}"),
        }
        raw_ok().await;
        expected += 1;
    }
    let got = seen.try_drain(usize::MAX).messages;
    assert_eq!(
        got.len(),
        expected,
        "only the well-formed publishes arrived"
    );
    for m in &got {
        assert_eq!(m.topic.as_str(), "probe.raw");
        assert_eq!(m.payload.as_str(), "\"raw\"");
        assert_eq!(m.attribution(), Attribution::Verified(pid("alice")));
    }
    let stats = p.call_stats();
    assert_eq!(
        stats.completed + stats.failed,
        2 * expected as u64 - 1,
        "{stats:?}"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_payloads_of_hostile_sizes_and_shapes_are_refused_after_a_remembered_topic() {
    let h = host();
    let mut seen = h.subscribe("probe.*");
    let p = h.load("shapes", "prober.wasm", PROBER_ACL).await;
    let publish = |topic: String, payload: String| {
        let p = p.clone();
        async move {
            call_as(
                &p,
                "publish",
                json!({"topic": topic, "payload": payload}),
                Some("alice"),
            )
            .await
        }
    };
    ok(&publish("probe.a".into(), "1".into()).await);
    let long = |n: usize| format!("probe.{}", "a".repeat(n));
    for topic in [
        long(251),
        long(64 * 1024),
        long(1 << 20),
        "probe.a\0".into(),
        "probe.a\u{200b}".into(),
        "probe.\u{0430}".into(),
        "probe..a".into(),
        "probe.a.".into(),
        ".probe.a".into(),
        "probe.*".into(),
        "probe.>".into(),
        String::new(),
    ] {
        let r = publish(topic.clone(), "1".into()).await;
        assert!(
            matches!(err(&r), "invalid-input" | "capability-denied"),
            "{:?}: {r}",
            topic.get(..24)
        );
        // The remembered topic still works between them.
        ok(&publish("probe.a".into(), "1".into()).await);
    }
    for payload in [
        String::new(),
        "{".into(),
        "1 2".into(),
        "\"\u{0}\"".into(),
        format!("\"{}\"", "x".repeat(1 << 20)),
        "\"abc\\\"".into(),
        "\"a\"\"b\"".into(),
        "\"\t\"".into(),
        "\"\\u12\"".into(),
        "\"a".into(),
        "\"".into(),
    ] {
        let r = publish("probe.a".into(), payload.clone()).await;
        assert_eq!(err(&r), "invalid-input", "{:?}: {r}", payload.get(..24));
    }
    let got = seen.try_drain(usize::MAX).messages;
    assert_eq!(got.len(), 13, "only the well-formed publishes arrived");
    assert!(got.iter().all(|m| m.topic.as_str() == "probe.a"));
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_burst_never_exceeds_the_budget_for_the_time_it_took() {
    let h = host();
    let rate = 2_000u64;
    h.profile(
        "alice",
        &format!("[quotas]\nmax_ipc_throughput_bytes = {rate}\n"),
    );
    let mut seen = h.subscribe("probe.*");
    let p = h.load("burst", "prober.wasm", PROBER_ACL).await;
    let count = 5_000u64;
    let start = Instant::now();
    let mut accepted = 0u64;
    // Several bursts, each call its own instance-warm loop of one-byte publishes.
    for _ in 0..4 {
        let r = call_as(
            &p,
            "publish-loop",
            json!({"topic": "probe.b", "payload": "1", "count": count}),
            Some("alice"),
        )
        .await;
        let errors = ok(&r)["errors"].as_u64().unwrap_or(u64::MAX);
        accepted += count - errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // One burst plus what the rate earns over the whole run, measured from outside (so at
    // least as long as the host saw).
    let bound = rate as f64 * (1.0 + elapsed) + 1.0;
    assert!(
        (accepted as f64) <= bound,
        "{accepted} bytes accepted in {elapsed:.3} s at {rate} B/s"
    );
    assert!(accepted >= rate, "the first burst is accepted: {accepted}");
    // The subscriber's queue may cut a long run short, never add to it.
    let got = seen.try_drain(usize::MAX).messages.len() as u64;
    assert!(
        got <= accepted && got >= rate,
        "{got} arrived of {accepted} accepted"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_survives_a_lost_instance_and_never_spends_anyone_elses() {
    let h = host_with(|c| c.handler_pool_size = 2);
    h.profile("alice", "[quotas]\nmax_ipc_throughput_bytes = 100\n");
    let p = h.load("budget", "prober.wasm", PROBER_ACL).await;
    let big = json!({"topic": "probe.r", "payload": format!("\"{}\"", "x".repeat(58))});
    let publish = |who: &'static str| {
        let (p, big) = (p.clone(), big.clone());
        async move { call_as(&p, "publish", big, Some(who)).await }
    };
    ok(&publish("alice").await);
    assert_eq!(err(&publish("alice").await), "rate-limited");
    // Her instance is lost to a trap; the fresh one does not bring a fresh budget.
    assert!(matches!(
        p.invoke("trap", b"{}", Some(pid("alice"))).await,
        Err(InvokeError::Trapped(_))
    ));
    assert_eq!(err(&publish("alice").await), "rate-limited");
    // Other principals alternating with her, on the same capsule, are unaffected; a flood of
    // hers on the other slot does not reach them.
    let flood = json!({"topic": "probe.f", "payload": "1", "count": 50_000});
    let flooding = {
        let p = p.clone();
        tokio::spawn(async move { call_as(&p, "publish-loop", flood, Some("alice")).await })
    };
    for who in ["bob", "carol", "bob"] {
        ok(&publish(who).await);
    }
    let flooded = flooding.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(ok(&flooded)["errors"].as_u64().unwrap_or(0) > 40_000);
    h.rt.shutdown().await;
}
