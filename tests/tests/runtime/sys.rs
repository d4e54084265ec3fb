//! `astrid:sys` from inside real guests: configuration per principal, caller, per-principal
//! logs, readiness, clocks, sleep, randomness and capability introspection.

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_resolves_per_principal_and_never_exposes_secrets() {
    let h = host();
    let env = "[env.MODEL]\ntype = \"text\"\ndefault = \"m1\"\n[env.API_KEY]\ntype = \"secret\"\n";
    let write_overlay = |principal: &str, json: &str| {
        let dir = h
            .state()
            .join("home")
            .join(principal)
            .join(".config")
            .join("env");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("cfg.env.json"), json).unwrap_or_else(|e| panic!("{e}"));
    };
    write_overlay(
        "default",
        r#"{"MODEL": "owner-model", "API_KEY": "sk-leak"}"#,
    );
    write_overlay("bob", r#"{"MODEL": "bob-model"}"#);
    let p = h.load("cfg", "prober.wasm", env).await;
    let get = |principal: Option<&'static str>, key: &'static str| {
        let p = p.clone();
        async move { call_as(&p, "config", json!({ "key": key }), principal).await }
    };
    assert_eq!(ok(&get(None, "MODEL").await), "owner-model");
    assert_eq!(ok(&get(Some("bob"), "MODEL").await), "bob-model");
    assert_eq!(
        ok(&get(Some("carol"), "MODEL").await),
        "m1",
        "another principal sees the manifest default, not the owner's overlay"
    );
    assert_eq!(
        ok(&get(None, "API_KEY").await),
        &serde_json::Value::Null,
        "secrets never come from a plain map"
    );
    assert_eq!(ok(&get(None, "UNDECLARED").await), &serde_json::Value::Null);
    assert_eq!(err(&get(None, "__host").await), "config-key-reserved");
    let long = "k".repeat(300);
    let r = call(&p, "config", json!({ "key": long })).await;
    assert_eq!(err(&r), "too-large");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_logs_follow_the_principal_in_scope() {
    let h = host();
    let p = h.load("logger", "prober.wasm", "").await;
    let caller = ok(&call_as(&p, "caller", json!({}), Some("bob")).await).clone();
    assert_eq!(caller["principal"], "bob");
    assert!(
        caller["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T'))
    );
    let own = ok(&call(&p, "caller", json!({})).await).clone();
    assert_eq!(own["principal"], "default");

    ok(&call_as(
        &p,
        "log",
        json!({"level": "warn", "message": "bob-secret-note"}),
        Some("bob"),
    )
    .await);
    ok(&call_as(
        &p,
        "log",
        json!({"level": "info", "message": "alice-note\nFORGED 2000"}),
        Some("alice"),
    )
    .await);
    ok(&call(&p, "log", json!({"message": "owner-note"})).await);
    let read = |who: &str| {
        std::fs::read_to_string(
            h.state()
                .join("home")
                .join(who)
                .join(".local/log/logger.log"),
        )
        .unwrap_or_default()
    };
    let (bob, alice, owner) = (read("bob"), read("alice"), read("default"));
    assert!(bob.contains("WARN bob-secret-note"), "{bob}");
    assert!(!bob.contains("alice-note") && !bob.contains("owner-note"));
    assert!(
        alice.contains("alice-note\\nFORGED"),
        "control characters are escaped: {alice}"
    );
    assert_eq!(alice.lines().count(), 1);
    assert!(!alice.contains("bob-secret-note"));
    assert!(owner.contains("owner-note") && !owner.contains("bob-secret-note"));
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_sleep_randomness_and_clocks() {
    let h = host();
    let p = h.load("sys", "prober.wasm", "").await;
    assert_eq!(ok(&call(&p, "random", json!({"count": 4096})).await), 4096);
    assert_eq!(
        err(&call(&p, "random", json!({"count": 4097})).await),
        "too-large"
    );
    ok(&call(&p, "sleep", json!({"ns": 1_000_000})).await);
    assert_eq!(
        err(&call(&p, "sleep", json!({"ns": 60_000_000_001u64})).await),
        "too-large"
    );
    let a = ok(&call(&p, "clock", json!({})).await).clone();
    let b = ok(&call(&p, "clock", json!({})).await).clone();
    assert!(a["ms"].as_u64().is_some_and(|ms| ms > 1_700_000_000_000));
    assert!(
        b["ns"].as_u64() > a["ns"].as_u64(),
        "monotonic clock advances"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_ready_and_capability_introspection() {
    let h = host();
    h.approve_all();
    let holder = h
        .load(
            "holder",
            "prober.wasm",
            "[capabilities]\nuplink = true\nfs_read = [\"home://notes\"]\n",
        )
        .await;
    let asker = h.load("asker", "prober.wasm", "").await;
    assert_eq!(
        ok(&call(&holder, "capabilities", json!({})).await),
        &json!(["fs_read", "uplink"])
    );
    assert_eq!(
        ok(&call(&asker, "capabilities", json!({})).await),
        &json!([])
    );
    let session = holder.session().to_string();
    let check = |name: &'static str, session: String| {
        let asker = asker.clone();
        async move {
            call(
                &asker,
                "capability",
                json!({"session": session, "name": name}),
            )
            .await
        }
    };
    assert_eq!(ok(&check("uplink", session.clone()).await), true);
    assert_eq!(ok(&check("net", session.clone()).await), false);
    assert_eq!(
        ok(&check("uplink", uuid::Uuid::new_v4().to_string()).await),
        false
    );
    assert!(err(&check("uplink", "not-a-uuid".into()).await).starts_with("unknown:"));

    // Without a run loop there is nothing to wait for: ready at load, and signalling again
    // is harmless. (Run-loop readiness is tested with the gate capsule in `graph`.)
    assert!(asker.is_ready());
    ok(&call(&asker, "ready", json!({})).await);
    assert!(asker.is_ready());
    holder.unload().await;
    assert_eq!(
        ok(&check("uplink", session).await),
        false,
        "an unloaded capsule holds nothing"
    );
    h.rt.shutdown().await;
}
