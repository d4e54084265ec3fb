//! Host resources: bounded host work per guest call, publish loops, opaque errors, and the
//! budgets (CPU, memory, subscriptions, handles, lifecycle-only calls, unload) under attack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::Attribution;
use capsule_runtime::{
    ElicitAnswer, ElicitPrompt, ElicitRefusal, Elicitor, Interrupt, InvokeError, RunExit,
};
use serde_json::json;

use super::Bystander;
use crate::common::*;

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn log_of(h: &Host, principal: &str, capsule: &str) -> String {
    let path = h
        .state()
        .join("home")
        .join(principal)
        .join(".local/log")
        .join(format!("{capsule}.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}
/// A run loop that never waits burns its CPU windows and is trapped; a capsule serving another
/// principal answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_run_loop_is_trapped_while_others_answer() {
    const WINDOWS: u32 = 25;
    let h = host_with(|c| c.max_busy_windows = WINDOWS);
    let bystander = Bystander::start(&h).await;
    let spin = h.load("spin", "spin.wasm", "").await;
    bystander.check("spinning run loop").await;
    let exit = tokio::time::timeout(Duration::from_secs(60), spin.wait_run_exit())
        .await
        .unwrap_or_else(|_| panic!("the spinning run loop was never trapped"));
    assert_eq!(
        exit,
        Some(RunExit::Interrupted(Interrupt::CpuBudget {
            windows: WINDOWS
        }))
    );
    bystander.check("after the spin").await;
    h.rt.shutdown().await;
}
/// Item 9: a run loop that only pretends to cooperate (`recv(0)` or 1 ms sleeps between bursts
/// of work) is metered by the CPU it uses per window and trapped like a plain spinner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_loop_that_polls_without_waiting_is_still_metered() {
    const WINDOWS: u32 = 10;
    let h = host_with(|c| c.max_busy_windows = WINDOWS);
    let bystander = Bystander::start(&h).await;
    for mode in ["recv0", "sleep1"] {
        let name = format!("spinner-{mode}");
        let manifest = format!(
            "[subscribe]\n\"spin.*\" = \"x\"\n[env.mode]\ntype = \"text\"\ndefault = \"{mode}\"\n"
        );
        let spinner = h.load(&name, "hostile-spinner.wasm", &manifest).await;
        bystander.check(&format!("{mode} run loop")).await;
        let exit = tokio::time::timeout(Duration::from_secs(60), spinner.wait_run_exit())
            .await
            .unwrap_or_else(|_| panic!("{mode}: the run loop was never stopped"));
        assert_eq!(
            exit,
            Some(RunExit::Interrupted(Interrupt::CpuBudget {
                windows: WINDOWS
            })),
            "{mode}"
        );
    }
    bystander.check("after the pretend-cooperative loops").await;
    h.rt.shutdown().await;
}
/// Item 9: audit lines are cut at a documented length and topics are validated before they
/// are logged: refused 1 MiB topics never reach the audit log whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_are_cut_and_topics_validated_before_logging() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h.load("flooder", "prober.wasm", PROBER_ACL).await;
    let topic = format!("probe.{}", "a".repeat(1024 * 1024));
    let r = ok(&call(
        &p,
        "publish-loop",
        json!({"topic": topic, "payload": "{}", "count": 20}),
    )
    .await)
    .clone();
    assert_eq!(r["errors"], 20, "every oversized topic is refused");
    let r = call(
        &p,
        "subscribe",
        json!({"pattern": format!("{topic}\n.forged")}),
    )
    .await;
    assert_eq!(err(&r), "invalid-input");
    bystander.check("oversized topics").await;
    let events = audit_events("flooder");
    assert!(events.len() >= 21, "{}", events.len());
    let cut = capsule_runtime::MAX_AUDIT_FIELD_BYTES;
    for e in &events {
        for (field, value) in e {
            assert!(
                value.len() <= cut + 64,
                "audit field `{field}` is {} bytes; fields are cut at {cut}",
                value.len()
            );
            assert!(!value.contains('\n'), "`{field}` carries a raw newline");
        }
    }
    h.rt.shutdown().await;
}
/// Item 9: every Store's resource table is capped: a guest hoarding pollables is stopped (a
/// trap: `subscribe-readiness` has no error to return), its instance discarded, and the next
/// call and other capsules are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_table_of_a_store_is_capped() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h.load("hoarder", "prober.wasm", PROBER_ACL).await;
    let index = ok(&call(&p, "subscribe", json!({"pattern": "probe.x"})).await).clone();
    let cap = capsule_runtime::MAX_STORE_RESOURCES as u64;
    match p
        .invoke(
            "readiness-many",
            json!({"index": index, "count": cap + 10})
                .to_string()
                .as_bytes(),
            None,
        )
        .await
    {
        Err(InvokeError::Trapped(msg)) => assert!(msg.contains("resource table"), "{msg}"),
        other => panic!("hoarding {} pollables must trap: {other:?}", cap + 10),
    }
    bystander.check("pollable hoarding").await;
    ok(&call(&p, "noop", json!({})).await);
    h.rt.shutdown().await;
}
/// Item 10: a handler that publishes to a topic its own capsule handles (and a cycle of two
/// capsules) stops at the documented hop depth: the publish beyond it gets `quota`, is audited,
/// and everything else keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_loop_stops_at_the_hop_limit() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let looper = |listen: &str, publish: &str| {
        format!(
            "[publish]\n\"loop.*\" = \"x\"\n\
             [subscribe]\n\"{listen}\" = {{ wit = \"x\", handler = \"h\" }}\n\
             [env.mode]\ntype = \"text\"\ndefault = \"loop\"\n\
             [env.topic]\ntype = \"text\"\ndefault = \"{publish}\"\n"
        )
    };
    let depth = u64::from(capsule_runtime::MAX_HOP_DEPTH);
    let selfish = h
        .load(
            "selfish",
            "hostile-handler.wasm",
            &looper("loop.self", "loop.self"),
        )
        .await;
    h.publish("loop.self", "{}", Attribution::Verified(pid("alice")));
    until("the self loop to be refused", || {
        log_of(&h, "alice", "selfish").contains("loop publish refused: quota")
    })
    .await;
    let s = selfish.clone();
    until("the last looping call to finish", move || {
        s.call_stats().completed == depth + 1
    })
    .await;
    bystander.check("self publish loop").await;

    let a = h
        .load(
            "cycle-a",
            "hostile-handler.wasm",
            &looper("loop.a", "loop.b"),
        )
        .await;
    let b = h
        .load(
            "cycle-b",
            "hostile-handler.wasm",
            &looper("loop.b", "loop.a"),
        )
        .await;
    h.publish("loop.a", "{}", Attribution::Verified(pid("bob")));
    until("the cycle to be refused", || {
        log_of(&h, "bob", "cycle-a").contains("loop publish refused: quota")
            || log_of(&h, "bob", "cycle-b").contains("loop publish refused: quota")
    })
    .await;
    let (a2, b2) = (a.clone(), b.clone());
    until("the last cycling call to finish", move || {
        a2.call_stats().completed + b2.call_stats().completed == depth + 1
    })
    .await;
    bystander.check("two-capsule publish cycle").await;
    assert_eq!(
        selfish.call_stats().completed,
        depth + 1,
        "the loop stayed stopped"
    );
    let hop_refusals = |capsule: &str| {
        audit_events(capsule)
            .into_iter()
            .filter(|e| {
                e.get("op").map(String::as_str) == Some("publish")
                    && e.get("error").is_some_and(|m| m.contains("hop"))
            })
            .count()
    };
    assert_eq!(hop_refusals("selfish"), 1, "{:?}", audit_events("selfish"));
    assert_eq!(hop_refusals("cycle-a") + hop_refusals("cycle-b"), 1);
    h.rt.shutdown().await;
}
/// Item 11: errors handed to a guest never contain host paths or backend error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_carry_host_paths_or_backend_text() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h
        .load("opaque", "prober.wasm", "[env.TOKEN]\ntype = \"secret\"\n")
        .await;
    // Break the secret store underneath the host: its directory becomes a plain file.
    let secrets = h.state().join("secrets");
    if secrets.is_dir() {
        std::fs::remove_dir_all(&secrets).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(&secrets, b"not a directory").unwrap_or_else(|e| panic!("{e}"));
    let r = call(&p, "config", json!({"key": "TOKEN"})).await;
    let code = err(&r);
    assert_eq!(code, "unknown:secret store unavailable");
    let state = h.state().display().to_string();
    assert!(!code.contains(&state), "{code}");
    let failed = audit_events("opaque").into_iter().any(|e| {
        e.get("message").map(String::as_str) == Some("secret lookup failed")
            && e.get("key").map(String::as_str) == Some("TOKEN")
    });
    assert!(failed, "{:?}", audit_events("opaque"));
    bystander.check("broken secret store").await;
    h.rt.shutdown().await;
}
/// Standing: linear memory growth past the principal's quota fails inside the guest (the
/// ledger counts it) while others answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_growth_past_the_quota_fails_while_others_answer() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h.load("grower", "prober.wasm", "").await;
    let r = ok(&call_as(&p, "grow", json!({"pages": 2000}), Some("mallory")).await).clone();
    assert_eq!(r["result"], -1, "memory.grow reports failure to the guest");
    assert_eq!(r["after"], r["before"]);
    assert!(h.rt.memory_stats()[&pid("mallory")].refused_grows >= 1);
    bystander.check("memory growth").await;
    h.rt.shutdown().await;
}
/// Standing: the subscription and file-handle quotas of an instance hold (`quota`, audited for
/// IPC) while others answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_handle_quotas_hold_while_others_answer() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h
        .load(
            "hog",
            "prober.wasm",
            &format!("{PROBER_ACL}[capabilities]\nfs_write = [\"*\"]\n"),
        )
        .await;
    let many = ok(&call(
        &p,
        "subscribe-many",
        json!({"pattern": "probe.q", "count": 200}),
    )
    .await)
    .clone();
    assert_eq!(many["subscribed"], 128);
    assert_eq!(many["first_error"], "quota");
    let refused = audit_events("hog").into_iter().any(|e| {
        e.get("op").map(String::as_str) == Some("subscribe")
            && e.get("error").is_some_and(|m| m.contains("at most 128"))
    });
    assert!(refused, "the refused subscription is audited");
    ok(&call(&p, "write", json!({"path": "f.txt", "content": "x"})).await);
    for _ in 0..16 {
        ok(&call(&p, "open", json!({"path": "f.txt", "mode": "read"})).await);
    }
    assert_eq!(
        err(&call(&p, "open", json!({"path": "f.txt", "mode": "read"})).await),
        "quota"
    );
    bystander.check("subscription and handle hoarding").await;
    h.rt.shutdown().await;
}

/// Answers the lifecycle fixture's install questions.
struct Installer;

impl Elicitor for Installer {
    fn elicit(
        &self,
        prompt: ElicitPrompt,
    ) -> Pin<Box<dyn Future<Output = Result<ElicitAnswer, ElicitRefusal>> + Send>> {
        let answer = match prompt.key.as_str() {
            "TOKEN" => ElicitAnswer::Secret(b"tok".to_vec()),
            _ => ElicitAnswer::Value("hi".into()),
        };
        Box::pin(async move { Ok(answer) })
    }
}
/// Standing: `astrid:elicit` outside `astrid-install`/`astrid-upgrade` answers
/// `not-in-lifecycle`, whoever asks, while others answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elicit_outside_a_lifecycle_is_refused_while_others_answer() {
    let h = host();
    h.rt.set_elicitor(Arc::new(Installer));
    let bystander = Bystander::start(&h).await;
    let c = h
        .load(
            "lifecycle",
            "lifecycle.wasm",
            "[env.TOKEN]\ntype = \"secret\"\n",
        )
        .await;
    for who in [None, Some("mallory")] {
        assert_eq!(
            err(&call_as(&c, "elicit", json!({}), who).await),
            "not-in-lifecycle"
        );
        assert_eq!(
            err(&call_as(&c, "has-secret", json!({}), who).await),
            "not-in-lifecycle"
        );
    }
    bystander.check("elicit outside lifecycle").await;
    h.rt.shutdown().await;
}
/// Standing: unloading a capsule whose call waits in `recv` answers `closed` at once (audited)
/// while others answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_during_recv_answers_closed_while_others_answer() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let mut waiting = h.subscribe("probe.waiting");
    let p = h.load("waiter", "prober.wasm", PROBER_ACL).await;
    let index = ok(&call(&p, "subscribe", json!({"pattern": "probe.never"})).await).clone();
    let blocked = tokio::spawn({
        let p = p.clone();
        async move {
            call(
                &p,
                "recv",
                json!({"index": index, "timeout": 60000, "notify": "probe.waiting"}),
            )
            .await
        }
    });
    next(&mut waiting).await;
    bystander.check("blocked recv").await;
    tokio::time::timeout(Duration::from_secs(30), p.unload())
        .await
        .unwrap_or_else(|_| panic!("unload did not finish"));
    let answer = blocked.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(err(&answer), "closed");
    let closed = audit_events("waiter").into_iter().any(|e| {
        e.get("op").map(String::as_str) == Some("subscription.recv")
            && e.get("error").is_some_and(|m| m.contains("unloading"))
    });
    assert!(closed, "{:?}", audit_events("waiter"));
    bystander.check("after the unload").await;
    h.rt.shutdown().await;
}
