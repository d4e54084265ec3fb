//! Interceptor dispatch with real components: priority chains, payload replacement, `final`,
//! `deny` and failing links, per-principal fairness under a flood, and pooled instances that
//! never carry one principal's guest state, keys or log lines into another's call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use capsule_bus::Attribution;
use capsule_runtime::Capsule;
use serde_json::{Value, json};

use crate::common::*;

fn chain_manifest(name: &str, mode: &str, priority: u32) -> String {
    format!(
        "[publish]\n\"chain.*\" = \"x\"\n\
         [subscribe]\n\"chain.t\" = {{ wit = \"x\", handler = \"on_t\", priority = {priority} }}\n\
         [env.name]\ntype = \"text\"\ndefault = \"{name}\"\n\
         [env.mode]\ntype = \"text\"\ndefault = \"{mode}\"\n"
    )
}

/// Collects `chain.seen` reports until `n` have arrived, keyed by capsule name.
async fn seen(rx: &mut capsule_bus::Receiver, n: usize) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    while out.len() < n {
        let m = next(rx).await;
        let v: Value = serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
        let name = v["capsule"].as_str().unwrap_or_default().to_string();
        out.insert(name, v);
    }
    out
}

/// Waits (bounded) until the dispatcher has ended `stopped` chains.
async fn wait_for<F: Fn() -> bool>(what: &str, done: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn load_chain(h: &Host, modes: [&str; 3]) -> Vec<Capsule> {
    load_chain_named(h, ["h-a", "h-b", "h-c"], modes).await
}

/// Like [`load_chain`] with other names, for tests whose audit events must not mix with the
/// `h-*` ones (audit capture is process-wide).
async fn load_chain_named(h: &Host, names: [&str; 3], modes: [&str; 3]) -> Vec<Capsule> {
    let mut out = Vec::new();
    for (name, mode, priority) in [
        (names[0], modes[0], 10),
        (names[1], modes[1], 10),
        (names[2], modes[2], 20),
    ] {
        out.push(
            h.load(name, "chain.wasm", &chain_manifest(name, mode, priority))
                .await,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_priorities_see_the_original_and_the_next_level_sees_the_replacement() {
    let h = host();
    let mut rx = h.subscribe("chain.seen");
    let _capsules = load_chain(&h, ["replace", "pass", "pass"]).await;
    h.publish(
        "chain.t",
        r#"{"orig":1}"#,
        Attribution::Verified(pid("carol")),
    );
    let got = seen(&mut rx, 3).await;
    assert_eq!(got["h-a"]["saw"], r#"{"orig":1}"#);
    assert_eq!(got["h-b"]["saw"], r#"{"orig":1}"#);
    assert_eq!(got["h-c"]["saw"], r#"{"replaced_by":"h-a"}"#);
    for name in ["h-a", "h-b", "h-c"] {
        assert_eq!(got[name]["action"], "on_t");
        assert_eq!(
            got[name]["principal"], "carol",
            "the handler runs as the message's principal"
        );
    }
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_at_a_level_stops_the_later_levels() {
    let h = host();
    let mut rx = h.subscribe("chain.seen");
    let _capsules = load_chain(&h, ["final", "pass", "pass"]).await;
    h.publish("chain.t", "1", Attribution::System);
    let got = seen(&mut rx, 2).await;
    assert!(
        got.contains_key("h-a") && got.contains_key("h-b"),
        "both level-10 handlers ran"
    );
    let rt = h.rt.clone();
    wait_for("the chain to stop", move || {
        rt.dispatch_stats().stopped == 1
    })
    .await;
    assert!(
        rx.try_drain(usize::MAX).messages.is_empty(),
        "the priority-20 handler never ran"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_is_audited_and_a_failing_link_does_not_break_the_chain() {
    let h = host();
    let mut rx = h.subscribe("chain.seen");
    let _capsules = load_chain(&h, ["replace", "trap", "pass"]).await;
    h.publish("chain.t", "1", Attribution::System);
    let got = seen(&mut rx, 3).await;
    assert_eq!(
        got["h-c"]["saw"], r#"{"replaced_by":"h-a"}"#,
        "the chain went on past the trap"
    );
    let rt = h.rt.clone();
    wait_for("the failed link to be counted", move || {
        rt.dispatch_stats().failed_links == 1
    })
    .await;
    h.rt.shutdown().await;

    let h = host();
    let mut rx = h.subscribe("chain.seen");
    let _capsules = load_chain(&h, ["deny", "pass", "pass"]).await;
    h.publish("chain.t", "1", Attribution::Verified(pid("mallory")));
    seen(&mut rx, 2).await;
    let rt = h.rt.clone();
    wait_for("the chain to stop", move || {
        rt.dispatch_stats().stopped == 1
    })
    .await;
    assert!(rx.try_drain(usize::MAX).messages.is_empty());
    let denials: Vec<_> = audit_events("h-a")
        .into_iter()
        .filter(|e| e.get("decision").map(String::as_str) == Some("deny"))
        .collect();
    assert_eq!(denials.len(), 1, "the denial is audited");
    assert_eq!(denials[0]["reason"], "h-a says no");
    assert_eq!(denials[0]["principal"], "mallory");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_principal_cannot_delay_another_beyond_one_call() {
    let h = host();
    let manifest = "[publish]\n\"done.*\" = \"x\"\n[subscribe]\n\"flood.*\" = { wit = \"x\", handler = \"publish\" }\n";
    let worker = h.load("worker", "prober.wasm", manifest).await;
    let mut done = h.subscribe("done.*");
    let a_payload = json!({"topic": "done.a", "payload": "{}"}).to_string();
    let b_payload = json!({"topic": "done.b", "payload": "{}"}).to_string();
    for _ in 0..10_000 {
        h.publish("flood.in", &a_payload, Attribution::Verified(pid("alice")));
    }
    for _ in 0..10 {
        h.publish("flood.in", &b_payload, Attribution::Verified(pid("bob")));
    }
    // The completion order, as seen by an observer of the handlers' replies.
    let mut order: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while order.iter().filter(|w| *w == "bob").count() < 10 {
        assert!(Instant::now() < deadline, "bob's calls never all completed");
        let d = done.recv(Duration::from_secs(5), usize::MAX).await;
        for m in d.messages {
            order.push(m.principal().map(|p| p.to_string()).unwrap_or_default());
        }
    }
    let first_b = order.iter().position(|w| w == "bob").unwrap_or(0);
    let last_b = order.iter().rposition(|w| w == "bob").unwrap_or(0);
    let alice_between = order[first_b..=last_b]
        .iter()
        .filter(|w| *w == "alice")
        .count();
    assert!(
        alice_between <= 10,
        "alice completed {alice_between} calls while bob's 10 were served (completion positions {first_b}..={last_b})"
    );
    // Alice's backlog is still draining after bob is done.
    let stats_now = worker.call_stats();
    assert!(
        stats_now.queued > 0 || stats_now.completed < 10_010,
        "{stats_now:?}"
    );
    // Every call is accounted for: completed or dropped (counted), none lost.
    let w = worker.clone();
    wait_for("alice's backlog to drain", move || {
        let s = w.call_stats();
        s.completed + s.failed + s.dropped == 10_010
    })
    .await;
    let s = worker.call_stats();
    assert!(s.dropped > 0, "a bounded queue drops past its bound: {s:?}");
    assert_eq!(s.failed, 0);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_instance_never_carries_guest_state_across_principals() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("pooled", "prober.wasm", "").await;
    ok(&call_as(
        &p,
        "set-global",
        json!({"value": "alice-secret"}),
        Some("alice"),
    )
    .await);
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("alice")).await),
        "alice-secret",
        "the same principal keeps its instance"
    );
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("bob")).await),
        &Value::Null,
        "bob never sees alice's guest memory"
    );
    ok(&call_as(
        &p,
        "set-global",
        json!({"value": "bob-secret"}),
        Some("bob"),
    )
    .await);
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("alice")).await),
        &Value::Null
    );
    assert_eq!(p.call_stats().resets, 2);
    // Interleaved calls from both principals on the one instance keep KV and logs apart too.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let who = if i % 2 == 0 { "alice" } else { "bob" };
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let set = json!({"key": format!("k{i}"), "value": who});
            ok(&call_as(&p, "kv-set", set, Some(who)).await);
            let line = json!({"level": "info", "message": format!("{who}-line-{i}")});
            ok(&call_as(&p, "log", line, Some(who)).await);
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    for (who, other) in [("alice", "bob"), ("bob", "alice")] {
        let log = h
            .state()
            .join("home")
            .join(who)
            .join(".local/log/pooled.log");
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text.matches(&format!("{who}-line-")).count(), 10, "{text}");
        assert!(!text.contains(&format!("{other}-line-")), "{text}");
    }
    for who in ["alice", "bob"] {
        let keys = ok(&call_as(&p, "kv-list", json!({"prefix": "k"}), Some(who)).await).clone();
        assert_eq!(keys.as_array().map(Vec::len), Some(10), "{who}: {keys}");
        for k in keys.as_array().into_iter().flatten() {
            let v = call_as(&p, "kv-get", json!({"key": k}), Some(who)).await;
            assert_eq!(ok(&v), who);
        }
    }
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_need_the_hook_export() {
    let h = host();
    let dir = h.capsule_dir(
        "nohook",
        "pong.wasm",
        "[subscribe]\n\"x.y\" = { wit = \"x\", handler = \"h\" }\n",
    );
    let e =
        h.rt.load(&dir)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(e.contains("astrid-hook-trigger"), "{e}");
}

/// The audit topic as a subscription scoped to `principal` sees it (what a capsule owned by
/// that principal, or `capsule tail --as`, gets).
fn audit_view(h: &Host, principal: &str) -> capsule_bus::Receiver {
    h.rt.bus().subscribe(
        capsule_bus::TopicPattern::parse(capsule_bus::AUDIT_TOPIC)
            .unwrap_or_else(|e| panic!("{e}")),
        capsule_bus::Scope::Principal(pid(principal)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_reaches_the_audit_topic_for_its_principal_only_and_is_counted() {
    let h = host();
    let mut mallory = audit_view(&h, "mallory");
    let mut alice = audit_view(&h, "alice");
    let capsules = load_chain_named(&h, ["d-a", "d-b", "d-c"], ["deny", "trap", "pass"]).await;
    h.publish("chain.t", "1", Attribution::Verified(pid("mallory")));
    let entry = next(&mut mallory).await;
    let v: Value = serde_json::from_str(entry.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        v,
        json!({"kind": "dispatch.denied", "capsule": "d-a", "action": "on_t", "decision": "deny",
               "topic": "chain.t", "principal": "mallory", "reason": "d-a says no"})
    );
    assert_eq!(entry.attribution(), Attribution::Verified(pid("mallory")));
    let rt = h.rt.clone();
    wait_for("the chain to stop", move || {
        rt.dispatch_stats().stopped == 1
    })
    .await;
    assert!(
        alice.try_drain(usize::MAX).messages.is_empty(),
        "alice's view holds none of mallory's denials"
    );
    h.publish("chain.t", "2", Attribution::Claimed(pid("alice")));
    let entry = next(&mut alice).await;
    assert_eq!(entry.attribution(), Attribution::Claimed(pid("alice")));
    assert!(mallory.try_drain(usize::MAX).messages.is_empty());

    // The counters saw it: two denials by d-a, two trapped calls of d-b.
    let [a, b, _c] = capsules.as_slice() else {
        panic!("three capsules")
    };
    let (a, b) = (a.clone(), b.clone());
    wait_for("d-b's traps to be counted", move || b.stats().traps == 2).await;
    let stats = a.stats();
    assert_eq!(stats.handler_denials, 2);
    assert_eq!(stats.calls.completed, 2);
    assert_eq!(stats.traps, 0);
    let principals: Vec<&str> = stats.memory.keys().map(|p| p.as_str()).collect();
    assert!(
        principals.contains(&"mallory") && principals.contains(&"alice"),
        "memory peaks per principal: {principals:?}"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_denying_audit_entries_cannot_start_a_loop() {
    let h = host();
    let mut all = h.subscribe(capsule_bus::AUDIT_TOPIC);
    let _approver = h.approve_all();
    // The watcher's owner holds the firehose, so its handler sees mallory's entries too.
    h.profile("default", "grants = [\"audit:read_all\"]\n");
    // A granted handler on the audit topic that denies everything it sees.
    let audit_denier = format!(
        "[subscribe]\n\"{}\" = {{ wit = \"x\", handler = \"on_t\", priority = 1 }}\n\
         [env.name]\ntype = \"text\"\ndefault = \"watcher\"\n\
         [env.mode]\ntype = \"text\"\ndefault = \"deny\"\n",
        capsule_bus::AUDIT_TOPIC
    );
    let _watcher = h.load("watcher", "chain.wasm", &audit_denier).await;
    let _chain = load_chain_named(&h, ["l-a", "l-b", "l-c"], ["deny", "pass", "pass"]).await;
    h.publish("chain.t", "1", Attribution::Verified(pid("mallory")));
    let first = next(&mut all).await;
    assert!(first.payload.as_str().contains("\"capsule\":\"l-a\""));
    // The watcher denies that entry too; the denial of an audit entry is not re-published.
    let rt = h.rt.clone();
    wait_for("both chains to stop", move || {
        rt.dispatch_stats().stopped == 2
    })
    .await;
    assert!(
        all.try_drain(usize::MAX).messages.is_empty(),
        "exactly one audit entry"
    );
    h.rt.shutdown().await;
}
