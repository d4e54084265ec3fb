//! What a capsule keeps of a principal whose warm instance another principal displaced (her
//! home, tmp, log and env overlay; never an instance): it serves her next call only, and
//! every change the operator made meanwhile applies to that call.

use serde_json::{Value, json};

use crate::common::*;

const MANIFEST: &str = HOME_AND_MODEL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_displaced_principals_kept_resources_serve_only_her_and_follow_every_change() {
    // One warm instance: every call below displaces the other principal's.
    let h = host_with(|c| c.handler_pool_size = 1);
    h.write_overlay("alice", "kept", r#"{"MODEL": "a1"}"#);
    let p = h.load("kept", "prober.wasm", MANIFEST).await;
    let model = |who: &'static str| {
        let p = p.clone();
        async move { ok(&call_as(&p, "config", json!({"key": "MODEL"}), Some(who)).await).clone() }
    };
    let note = json!({"path": "home://note.txt"});
    let write = |content: &str| json!({"path": "home://note.txt", "content": content});
    ok(&call_as(&p, "write", write("hers"), Some("alice")).await);
    assert_eq!(model("alice").await, "a1");

    // Bob displaces her instance and finds none of what she had.
    let resets = p.call_stats().resets;
    assert_eq!(model("bob").await, "m1");
    let read = call_as(&p, "read", note.clone(), Some("bob")).await;
    assert!(read.get("err").is_some(), "bob read alice's home: {read}");
    assert!(p.call_stats().resets > resets, "bob's calls displaced hers");

    // While she is displaced, her overlay is rewritten to the same size with its old mtime.
    let path = h.overlay_path("alice", "kept");
    let before = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{e}"));
    h.write_overlay("alice", "kept", r#"{"MODEL": "a2"}"#);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(before))
        .unwrap_or_else(|e| panic!("{e}"));
    let resets = p.call_stats().resets;
    assert_eq!(
        model("alice").await,
        "a2",
        "her operator's new overlay applies"
    );
    assert!(p.call_stats().resets > resets, "her call displaced bob's");
    assert_eq!(
        ok(&call_as(&p, "read", note.clone(), Some("alice")).await),
        "hers"
    );

    // An overlay given to bob while he is displaced applies to his next call.
    h.write_overlay("bob", "kept", r#"{"MODEL": "b1"}"#);
    assert_eq!(model("bob").await, "b1");

    // Her home is moved aside and replaced while bob holds the instance.
    let home = h.state().join("home").join("alice");
    let aside = h.state().join("alice-archived");
    std::fs::rename(&home, &aside).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(&home).unwrap_or_else(|e| panic!("{e}"));
    let read = call_as(&p, "read", note.clone(), Some("alice")).await;
    assert!(
        read.get("err").is_some(),
        "the archived home must not be read through: {read}"
    );
    ok(&call_as(&p, "write", write("new"), Some("alice")).await);
    assert_eq!(
        std::fs::read_to_string(home.join("note.txt")).unwrap_or_else(|e| panic!("{e}")),
        "new"
    );
    assert_eq!(
        std::fs::read_to_string(aside.join("note.txt")).unwrap_or_else(|e| panic!("{e}")),
        "hers",
        "the archived home is left as the operator moved it"
    );
    // The new home has no overlay: the manifest's default applies to her again.
    assert_eq!(model("alice").await, "m1");

    // Bob, displaced again, still has only his own.
    assert_eq!(model("bob").await, "b1");
    let read = call_as(&p, "read", note, Some("bob")).await;
    assert!(read.get("err").is_some(), "bob read alice's home: {read}");
    assert_eq!(
        ok(&call_as(&p, "caller", json!({}), Some("bob")).await)["principal"],
        Value::from("bob")
    );
    h.rt.shutdown().await;
}
