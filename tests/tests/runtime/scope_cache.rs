//! A principal's call resources (home, tmp, log, env overlay) kept with its warm instance and
//! reused by its next call: reused only by that principal, re-read when its env overlay
//! changes, and never standing in for the profile, which is resolved on every call.

use capsule_runtime::InvokeError;
use serde_json::{Value, json};

use crate::common::*;

const MANIFEST: &str = HOME_AND_MODEL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_principals_each_see_only_their_own_kv_home_identity_and_config() {
    // Two warm instances: alice's and bob's calls each find their own and reuse its resources.
    let h = host_with(|c| c.handler_pool_size = 2);
    h.write_overlay("alice", "cached", r#"{"MODEL": "alice-model"}"#);
    h.write_overlay("bob", "cached", r#"{"MODEL": "bob-model"}"#);
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let mut left: [Option<String>; 2] = [None, None];
    for round in 0..8 {
        for (i, who) in ["alice", "bob"].into_iter().enumerate() {
            let call = |action: &'static str, args: Value| {
                let p = p.clone();
                async move { call_as(&p, action, args, Some(who)).await }
            };
            let me = ok(&call("caller", json!({})).await).clone();
            assert_eq!(me["principal"], who, "round {round}");
            assert_eq!(
                ok(&call("config", json!({"key": "MODEL"})).await),
                &json!(format!("{who}-model")),
                "round {round}"
            );
            let kv = ok(&call("kv-get", json!({"key": "k"})).await).clone();
            let file = call("read", json!({"path": "home://note.txt"})).await;
            match &left[i] {
                None => {
                    assert_eq!(kv, Value::Null, "{who} round {round}");
                    assert!(file.get("err").is_some(), "{who} round {round}: {file}");
                }
                Some(mine) => {
                    assert_eq!(kv, json!(mine), "{who} round {round}");
                    assert_eq!(ok(&file), &json!(mine), "{who} round {round}");
                }
            }
            let mine = format!("{who}-{round}");
            ok(&call("kv-set", json!({"key": "k", "value": mine})).await);
            ok(&call("write", json!({"path": "home://note.txt", "content": mine})).await);
            left[i] = Some(mine);
        }
    }
    // Someone new finds nothing of theirs, and the manifest's default.
    assert_eq!(
        ok(&call_as(&p, "kv-get", json!({"key": "k"}), Some("carol")).await),
        &Value::Null
    );
    assert_eq!(
        ok(&call_as(&p, "config", json!({"key": "MODEL"}), Some("carol")).await),
        "m1"
    );
    assert_eq!(p.call_stats().failed, 0, "{:?}", p.call_stats());
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_env_overlay_and_a_lowered_quota_apply_to_the_next_call() {
    let h = host();
    h.write_overlay("alice", "cached", r#"{"MODEL": "a1"}"#);
    let p = h.load("cached", "prober.wasm", MANIFEST).await;
    let model = || async { call_as(&p, "config", json!({"key": "MODEL"}), Some("alice")).await };
    assert_eq!(ok(&model().await), "a1");
    assert_eq!(ok(&model().await), "a1");
    assert_eq!(p.call_stats().warm, 1);
    h.write_overlay("alice", "cached", r#"{"MODEL": "a2, rewritten"}"#);
    assert_eq!(ok(&model().await), "a2, rewritten");
    std::fs::remove_file(h.state().join("home/alice/.config/env/cached.env.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(&model().await),
        "m1",
        "a removed overlay is gone at once"
    );

    // A quota lowered below what alice's warm instance holds: the next call cannot run in it
    // and a fresh instance under the new quota fails as it must.
    h.profile("alice", "[quotas]\nmax_memory_bytes = 65536\n");
    match p.invoke("noop", b"{}", Some(pid("alice"))).await {
        Err(InvokeError::Instantiate { capsule, .. }) => assert_eq!(capsule, "cached"),
        other => panic!("alice's lowered quota must apply to the next call: {other:?}"),
    }
    h.rt.shutdown().await;
}
