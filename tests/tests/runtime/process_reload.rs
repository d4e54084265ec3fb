//! Persistent host processes across a reload, with real children checked by pid: the new
//! instance re-attaches them by id for the principal that started them only, with their
//! output and exit records; another principal, and a capsule of another name asking for the
//! same ids, see `no-such-process`; a reload that loses the grant or the name kills them; and
//! a plain unload still leaves nothing behind.

use serde_json::{Value, json};

use crate::common::{Host, err, host, ok};
use crate::process::{GRANTS, call, gone, runner};

/// Starts a persistent child for `who` and returns its id.
async fn persist(c: &capsule_runtime::Capsule, request: Value, who: &str) -> String {
    let r = call(c, "persist", request, who).await;
    ok(&r)
        .as_str()
        .unwrap_or_else(|| panic!("no id in {r}"))
        .to_string()
}

async fn pid_of(c: &capsule_runtime::Capsule, id: &str, who: &str) -> u64 {
    let s = call(c, "status", json!({"id": id}), who).await;
    ok(&s)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {s}"))
}

fn sleeper() -> Value {
    json!({"cmd": "/bin/sleep", "args": ["1000"], "label": "kept"})
}

async fn reload(h: &Host, name: &str, version: &str, manifest: &str) -> capsule_runtime::Capsule {
    let dir = h.capsule_dir_at(name, "proc-runner.wasm", version, manifest);
    h.rt.reload("runner", &dir)
        .await
        .unwrap_or_else(|e| panic!("reloading as {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_process_survives_a_reload_and_only_its_principal_reattaches() {
    let h = host();
    let c = runner(&h).await;
    let running = persist(&c, sleeper(), "alice").await;
    let running_pid = pid_of(&c, &running, "alice").await;
    let done = persist(&c, json!({"cmd": "/bin/echo", "args": ["hello"]}), "alice").await;
    let waited = call(&c, "wait", json!({"id": done}), "alice").await;
    assert_eq!(ok(&waited)["code"], 0);
    let bobs = persist(&c, sleeper(), "bob").await;
    let bobs_pid = pid_of(&c, &bobs, "bob").await;

    // An upgrade to a new version of the same capsule.
    let c2 = reload(&h, "runner", "0.2.0", GRANTS).await;
    assert!(c.is_unloaded(), "the old instance is gone");
    assert!(
        !gone(running_pid),
        "the persistent child survived the reload"
    );
    assert!(!gone(bobs_pid));

    // Alice re-attaches hers by id, with the output and exit kept across the reload.
    let status = call(&c2, "status", json!({"id": running}), "alice").await;
    assert_eq!(ok(&status)["running"], true);
    assert_eq!(ok(&status)["pid"], json!(running_pid));
    let logs = call(&c2, "read-since", json!({"id": done}), "alice").await;
    assert_eq!(ok(&logs)["data"], "hello\n");
    assert_eq!(ok(&logs)["eof"], true);
    let status = call(&c2, "status", json!({"id": done}), "alice").await;
    assert_eq!(ok(&status)["exit"], json!({"code": 0, "signal": null}));
    let attached = call(&c2, "attach", json!({"id": running}), "alice").await;
    ok(&attached);
    let mut listed: Vec<String> = ok(&call(&c2, "list", json!({}), "alice").await)
        .as_array()
        .unwrap_or_else(|| panic!("not a list"))
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    listed.sort();
    let mut mine = vec![running.clone(), done.clone()];
    mine.sort();
    assert_eq!(listed, mine, "alice lists exactly her own");

    // Bob cannot reach alice's ids after the reload, and they look like no process at all.
    for action in [
        "attach",
        "status",
        "read-logs",
        "read-since",
        "signal",
        "stop",
        "release",
    ] {
        for id in [&running, &done] {
            let theirs = call(&c2, action, json!({"id": id}), "bob").await;
            let nobody = call(&c2, action, json!({"id": "0000"}), "bob").await;
            assert_eq!(err(&theirs), "no-such-process", "{action}");
            assert_eq!(theirs, nobody, "{action}");
        }
    }
    let bob_list = call(&c2, "list", json!({}), "bob").await;
    assert_eq!(ok(&bob_list)[0]["id"], json!(bobs));
    assert_eq!(ok(&bob_list).as_array().map(Vec::len), Some(1));

    // A capsule of another name asking for the same ids, as the same principal, finds none.
    let other = h.load("other", "proc-runner.wasm", GRANTS).await;
    for id in [&running, &done, &bobs] {
        let r = call(&other, "status", json!({"id": id}), "alice").await;
        assert_eq!(err(&r), "no-such-process");
    }
    let r = call(&other, "list", json!({}), "alice").await;
    assert_eq!(ok(&r), &json!([]));
    other.unload().await;
    assert!(
        !gone(running_pid),
        "another capsule's unload leaves it alone"
    );

    // Unloaded for good, the capsule takes every child with it.
    assert!(h.rt.unload("runner").await);
    assert!(gone(running_pid), "{running_pid} outlived the unload");
    assert!(gone(bobs_pid), "{bobs_pid} outlived the unload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_loses_the_grant_or_the_name_and_a_plain_unload_kill_the_children() {
    let h = host();
    let c = runner(&h).await;

    // The operator's new manifest no longer asks for persistence.
    let id = persist(&c, sleeper(), "alice").await;
    let p = pid_of(&c, &id, "alice").await;
    let without = GRANTS.replace("allow_persistent = true", "");
    let c2 = reload(&h, "runner", "0.1.0", &without).await;
    assert!(gone(p), "a child the new instance may not keep was killed");
    let r = call(&c2, "status", json!({"id": id}), "alice").await;
    assert_eq!(err(&r), "no-such-process");

    // Granted again, but the program no longer is.
    let c3 = reload(&h, "runner", "0.1.0", GRANTS).await;
    let id = persist(&c3, sleeper(), "alice").await;
    let p = pid_of(&c3, &id, "alice").await;
    let no_sleep = GRANTS.replace("\"/bin/sleep\",", "");
    let c4 = reload(&h, "runner", "0.1.0", &no_sleep).await;
    assert!(
        gone(p),
        "a child whose program is no longer granted was killed"
    );
    let r = call(&c4, "status", json!({"id": id}), "alice").await;
    assert_eq!(err(&r), "no-such-process");

    // A "reload" into a capsule of another name hands nothing over.
    let c5 = reload(&h, "runner", "0.1.0", GRANTS).await;
    let id = persist(&c5, sleeper(), "alice").await;
    let p = pid_of(&c5, &id, "alice").await;
    let renamed = reload(&h, "renamed", "0.1.0", GRANTS).await;
    assert!(
        gone(p),
        "a child left without its capsule's name was killed"
    );
    let r = call(&renamed, "status", json!({"id": id}), "alice").await;
    assert_eq!(err(&r), "no-such-process");
    renamed.unload().await;

    // Unload then load is not a reload: nothing is kept in between.
    let c6 = runner(&h).await;
    let id = persist(&c6, sleeper(), "alice").await;
    let p = pid_of(&c6, &id, "alice").await;
    c6.unload().await;
    assert!(gone(p));
    let c7 = runner(&h).await;
    let r = call(&c7, "status", json!({"id": id}), "alice").await;
    assert_eq!(err(&r), "no-such-process");

    // A failed reload (the component is missing) kills what it would have handed over.
    let id = persist(&c7, sleeper(), "alice").await;
    let p = pid_of(&c7, &id, "alice").await;
    let broken = h.capsule_dir("runner", "proc-runner.wasm", GRANTS);
    std::fs::remove_file(broken.join("proc-runner.wasm")).unwrap_or_else(|e| panic!("{e}"));
    assert!(h.rt.reload("runner", &broken).await.is_err());
    assert!(gone(p), "a failed reload left its child behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_shutdown_kills_persistent_children() {
    let h = host();
    let c = runner(&h).await;
    let id = persist(&c, sleeper(), "alice").await;
    let p = pid_of(&c, &id, "alice").await;
    h.rt.shutdown().await;
    assert!(gone(p), "{p} outlived the host");
}
