//! Attacks on the call resources a principal's warm instance keeps: an operator who rewrites
//! the env overlay keeping size and mtime, replaces the home, disables the principal or lowers
//! its storage quota is obeyed on the next call, and interleaved principals on one instance
//! slot never see each other's.

use serde_json::{Value, json};

use crate::common::*;

const MANIFEST: &str = HOME_AND_MODEL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_rewritten_with_its_size_and_mtime_kept_applies_to_the_next_call() {
    // What `cp -p` or `rsync -t` does: new content of the same length, old mtime restored.
    let h = host();
    h.write_overlay("alice", "cached", r#"{"MODEL": "a1"}"#);
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let model = || async { call_as(&p, "config", json!({"key": "MODEL"}), Some("alice")).await };
    assert_eq!(ok(&model().await), "a1");
    let path = h.overlay_path("alice", "cached");
    let before = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{e}"));
    h.write_overlay("alice", "cached", r#"{"MODEL": "a2"}"#);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(before))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(&model().await),
        "a2",
        "the overlay alice's operator wrote now"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_replaced_between_calls_is_the_one_the_next_call_uses() {
    let h = host();
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let call = |action: &'static str, args: Value| {
        let p = p.clone();
        async move { call_as(&p, action, args, Some("alice")).await }
    };
    ok(&call(
        "write",
        json!({"path": "home://note.txt", "content": "old"}),
    )
    .await);
    assert_eq!(
        ok(&call("read", json!({"path": "home://note.txt"})).await),
        "old"
    );
    assert_eq!(p.call_stats().warm, 1);
    // The operator moves alice's home aside and gives her a new, empty one.
    let home = h.state().join("home").join("alice");
    let aside = h.state().join("alice-archived");
    std::fs::rename(&home, &aside).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(&home).unwrap_or_else(|e| panic!("{e}"));
    let read = call("read", json!({"path": "home://note.txt"})).await;
    assert!(
        read.get("err").is_some(),
        "the archived home must not be read through: {read}"
    );
    ok(&call(
        "write",
        json!({"path": "home://note.txt", "content": "new"}),
    )
    .await);
    assert_eq!(
        std::fs::read_to_string(home.join("note.txt")).unwrap_or_else(|e| panic!("{e}")),
        "new"
    );
    assert_eq!(
        std::fs::read_to_string(aside.join("note.txt")).unwrap_or_else(|e| panic!("{e}")),
        "old",
        "the archived home is left as the operator moved it"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_principal_is_refused_at_once_and_a_lowered_storage_quota_applies() {
    let h = host();
    h.write_overlay("alice", "cached", r#"{"MODEL": "a1"}"#);
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let call = |action: &'static str, args: Value| {
        let p = p.clone();
        async move { call_as(&p, action, args, Some("alice")).await }
    };
    ok(&call("kv-set", json!({"key": "k", "value": "v"})).await);
    assert_eq!(ok(&call("config", json!({"key": "MODEL"})).await), "a1");
    h.profile("alice", "enabled = false\n");
    match p.invoke("noop", b"{}", Some(pid("alice"))).await {
        Err(capsule_runtime::InvokeError::PrincipalRefused { principal, .. }) => {
            assert_eq!(principal, pid("alice"));
        }
        other => panic!("a disabled alice must be refused: {other:?}"),
    }
    // Re-enabled with almost no storage: her warm resources do not carry the old quota.
    h.profile("alice", "enabled = true\n[quotas]\nmax_storage_bytes = 4\n");
    let big = call("kv-set-size", json!({"key": "big", "size": 4096})).await;
    assert!(
        big.get("err").is_some(),
        "the lowered storage quota applies: {big}"
    );
    assert_eq!(ok(&call("kv-get", json!({"key": "k"})).await), "v");
    assert_eq!(ok(&call("config", json!({"key": "MODEL"})).await), "a1");
    // Bob, never warm here, finds none of alice's.
    assert_eq!(
        ok(&call_as(&p, "kv-get", json!({"key": "k"}), Some("bob")).await),
        &Value::Null
    );
    assert_eq!(
        ok(&call_as(&p, "config", json!({"key": "MODEL"}), Some("bob")).await),
        "m1"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_principals_on_a_pool_of_one_each_see_only_their_own() {
    let h = host_with(|c| c.handler_pool_size = 1);
    h.write_overlay("alice", "cached", r#"{"MODEL": "alice-model"}"#);
    h.write_overlay("bob", "cached", r#"{"MODEL": "bob-model"}"#);
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let run = |who: &'static str| {
        let p = p.clone();
        async move {
            for round in 0..12 {
                let me = call_as(&p, "caller", json!({}), Some(who)).await;
                assert_eq!(ok(&me)["principal"], who, "round {round}");
                let model = call_as(&p, "config", json!({"key": "MODEL"}), Some(who)).await;
                assert_eq!(ok(&model), &json!(format!("{who}-model")), "round {round}");
                let mine = format!("{who}-{round}");
                let set = json!({"path": "home://note.txt", "content": mine});
                ok(&call_as(&p, "write", set, Some(who)).await);
                let got = call_as(&p, "read", json!({"path": "home://note.txt"}), Some(who)).await;
                assert_eq!(ok(&got), &json!(mine), "round {round}");
            }
        }
    };
    tokio::join!(run("alice"), run("bob"));
    assert_eq!(p.call_stats().failed, 0, "{:?}", p.call_stats());
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_a_refused_principal_gave_back_and_a_removed_home_carry_nothing_over() {
    let h = host_with(|c| c.handler_pool_size = 2);
    h.write_overlay("alice", "cached", r#"{"MODEL": "alice-model"}"#);
    h.profile("mallory", "enabled = false\n");
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let set = json!({"path": "home://note.txt", "content": "alice's"});
    ok(&call_as(&p, "write", set, Some("alice")).await);
    ok(&call_as(
        &p,
        "kv-set",
        json!({"key": "k", "value": "alice's"}),
        Some("alice"),
    )
    .await);
    for _ in 0..3 {
        assert!(p.invoke("noop", b"{}", Some(pid("mallory"))).await.is_err());
        let me = call_as(&p, "caller", json!({}), Some("bob")).await;
        assert_eq!(ok(&me)["principal"], "bob");
        let got = call_as(&p, "read", json!({"path": "home://note.txt"}), Some("bob")).await;
        assert!(got.get("err").is_some(), "bob reads alice's note: {got}");
        let kv = call_as(&p, "kv-get", json!({"key": "k"}), Some("bob")).await;
        assert_eq!(ok(&kv), &Value::Null);
        let model = call_as(&p, "config", json!({"key": "MODEL"}), Some("bob")).await;
        assert_eq!(ok(&model), "m1");
    }
    // The operator removes alice's home altogether: her next call starts from an empty one.
    std::fs::remove_dir_all(h.state().join("home").join("alice")).unwrap_or_else(|e| panic!("{e}"));
    let got = call_as(
        &p,
        "read",
        json!({"path": "home://note.txt"}),
        Some("alice"),
    )
    .await;
    assert!(
        got.get("err").is_some(),
        "a removed home is still read: {got}"
    );
    let model = call_as(&p, "config", json!({"key": "MODEL"}), Some("alice")).await;
    assert_eq!(ok(&model), "m1", "a removed overlay is gone with its home");
    let set = json!({"path": "home://note.txt", "content": "again"});
    ok(&call_as(&p, "write", set, Some("alice")).await);
    assert!(h.state().join("home/alice/note.txt").is_file());
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_new_overlay_carries_no_warm_resources_over() {
    let h = host_with(|c| c.handler_pool_size = 1);
    h.write_overlay("alice", "cached", r#"{"MODEL": "a1"}"#);
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let model = |p: &capsule_runtime::Capsule, who: &'static str| {
        let p = p.clone();
        async move { call_as(&p, "config", json!({"key": "MODEL"}), Some(who)).await }
    };
    assert_eq!(ok(&model(&p, "alice").await), "a1");
    assert_eq!(ok(&model(&p, "alice").await), "a1");
    p.unload().await;
    let gone = p.invoke("noop", b"{}", Some(pid("alice"))).await;
    assert!(gone.is_err(), "an unloaded capsule still answers: {gone:?}");
    h.write_overlay("alice", "cached", r#"{"MODEL": "a9"}"#);
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    // Bob first, on the only slot, then alice: each sees only their own.
    assert_eq!(ok(&model(&p, "bob").await), "m1");
    assert_eq!(ok(&model(&p, "alice").await), "a9");
    assert_eq!(ok(&model(&p, "bob").await), "m1");
    h.rt.shutdown().await;
}
