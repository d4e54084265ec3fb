//! Attacks on what a capsule keeps of a displaced principal (home, tmp, log, env overlay):
//! an operator's change made while she is displaced applies to her next call.

use serde_json::json;

use crate::common::*;

const MANIFEST: &str = "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_displaced_principals_tmp_moved_aside_or_her_profile_disabled_applies_next_call() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("keptatk", "prober.wasm", MANIFEST).await;
    let write = |content: &str| json!({"path": "/tmp/t.txt", "content": content});
    ok(&call_as(&p, "write", write("one"), Some("alice")).await);
    // Bob displaces her instance; her resources are kept.
    ok(&call_as(&p, "noop", json!({"count": 1}), Some("bob")).await);

    // Her tmp is moved aside and replaced while she is displaced.
    let home = h.state().join("home").join("alice");
    let tmp = home.join(".local").join("tmp");
    let aside = home.join("tmp-aside");
    std::fs::rename(&tmp, &aside).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(&tmp).unwrap_or_else(|e| panic!("{e}"));
    ok(&call_as(&p, "write", write("two"), Some("alice")).await);
    assert_eq!(
        std::fs::read_to_string(tmp.join("t.txt")).unwrap_or_else(|e| panic!("{e}")),
        "two",
        "her write goes to the tmp now at her path"
    );
    assert_eq!(
        std::fs::read_to_string(aside.join("t.txt")).unwrap_or_else(|e| panic!("{e}")),
        "one",
        "the tmp moved aside is left as it was"
    );

    // Disabled while displaced: her next call is refused, whatever was kept for her.
    ok(&call_as(&p, "noop", json!({"count": 1}), Some("bob")).await);
    let profile = h.state().join("profiles").join("alice.toml");
    std::fs::create_dir_all(h.state().join("profiles")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&profile, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
    let refused = p
        .invoke(
            "write",
            write("three").to_string().as_bytes(),
            Some(pid("alice")),
        )
        .await;
    assert!(
        refused.is_err(),
        "a disabled principal was served: {refused:?}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.join("t.txt")).unwrap_or_else(|e| panic!("{e}")),
        "two"
    );
    std::fs::write(&profile, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
    ok(&call_as(&p, "write", write("four"), Some("alice")).await);
    assert_eq!(
        std::fs::read_to_string(tmp.join("t.txt")).unwrap_or_else(|e| panic!("{e}")),
        "four"
    );
    h.rt.shutdown().await;
}
