//! Attacks on the topic a guest instance remembers from its last allowed publish (which then
//! skips the parse and the `[publish]` ACL walk): refused topics interleaved with the
//! remembered one, a prefix of it, `publish-as` without the uplink grant, a throughput quota
//! lowered by the operator, and a second principal on the same capsule. Each is refused or
//! attributed exactly as without the shortcut, and every refusal is audited.

use capsule_bus::Attribution;
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_topic_lets_nothing_else_skip_its_checks() {
    capture_audit();
    let h = host();
    let p = h.load("topic-cache", "prober.wasm", PROBER_ACL).await;
    let mut seen = h.subscribe("probe.*");
    let publish = |topic: &'static str, payload: &'static str, principal: &'static str| {
        let p = p.clone();
        async move {
            call_as(
                &p,
                "publish",
                json!({"topic": topic, "payload": payload}),
                Some(principal),
            )
            .await
        }
    };
    // alice's warm instance remembers `probe.a`; refused topics between its uses stay refused.
    for _ in 0..2 {
        ok(&publish("probe.a", "1", "alice").await);
        assert_eq!(
            err(&publish("other.a", "1", "alice").await),
            "capability-denied"
        );
        assert_eq!(
            err(&publish("probe", "1", "alice").await),
            "capability-denied"
        );
        assert_eq!(
            err(&publish("probe.a ", "1", "alice").await),
            "invalid-input"
        );
        assert_eq!(
            err(&publish("probe.a", "{", "alice").await),
            "invalid-input"
        );
    }
    // The uplink grant is checked before the remembered topic is looked at.
    let claimed = call_as(
        &p,
        "publish-as",
        json!({"topic": "probe.a", "payload": "1", "principal": "mallory"}),
        Some("alice"),
    )
    .await;
    assert_eq!(err(&claimed), "capability-denied");
    // The operator lowers alice's throughput: the remembered topic does not carry the old one.
    h.profile("alice", "[quotas]\nmax_ipc_throughput_bytes = 8\n");
    let big = call_as(
        &p,
        "publish",
        json!({"topic": "probe.a", "payload": format!("\"{}\"", "x".repeat(64))}),
        Some("alice"),
    )
    .await;
    assert_eq!(err(&big), "rate-limited");
    // bob publishes on the same topic as himself, never as alice.
    ok(&publish("probe.a", "2", "bob").await);
    assert_eq!(
        err(&publish("other.a", "2", "bob").await),
        "capability-denied"
    );

    // The route serves principals in turn, so only the order within one principal is FIFO.
    let mut got: Vec<(String, Option<String>)> = seen
        .try_drain(usize::MAX)
        .messages
        .iter()
        .map(|m| {
            let who = match m.attribution() {
                Attribution::Verified(p) => Some(p.to_string()),
                _ => None,
            };
            (m.payload.as_str().to_string(), who)
        })
        .collect();
    got.sort();
    let (a, b) = (Some("alice".to_string()), Some("bob".to_string()));
    assert_eq!(
        got,
        [("1".into(), a.clone()), ("1".into(), a), ("2".into(), b)],
        "only the allowed publishes arrived, each as its caller"
    );
    // Every refusal is audited with its principal, the remembered topic's and the others'.
    let refused: Vec<(String, String)> = audit_events("topic-cache")
        .into_iter()
        .filter(|e| e.get("op").map(String::as_str) == Some("publish") && e.contains_key("error"))
        .map(|e| {
            (
                e.get("principal").cloned().unwrap_or_default(),
                e.get("topic").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let count = |who: &str, topic: &str| {
        refused
            .iter()
            .filter(|(p, t)| p == who && t.trim_matches('"') == topic)
            .count()
    };
    assert_eq!(count("alice", "other.a"), 2, "{refused:?}");
    assert_eq!(count("alice", "probe"), 2, "{refused:?}");
    assert_eq!(count("alice", "probe.a"), 3, "{refused:?}");
    assert_eq!(count("bob", "other.a"), 1, "{refused:?}");
    h.rt.shutdown().await;
}
