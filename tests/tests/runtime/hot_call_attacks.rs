//! Attacks on what a handler call may keep between calls (a principal's warm instance, its
//! spares, the cached profile): an operator's change to a principal applies to the next call
//! started after it, whatever the guest kept open, and no call ever finds anything of another
//! principal's, whatever way the previous call ended.

use std::time::Duration;

use capsule_runtime::{Capsule, InvokeError};
use serde_json::{Value, json};

use crate::common::*;
use crate::scope_cache_settled::settle;
use crate::settled_attacks::Mapping;

const HOME_RW: &str = "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n";

async fn as_(p: &Capsule, who: &str, action: &str, args: Value) -> Value {
    call_as(p, action, args, Some(who)).await
}

fn refused(r: Result<capsule_runtime::HookResponse, InvokeError>, who: &str) {
    match r {
        Err(InvokeError::PrincipalRefused { principal, .. }) => assert_eq!(principal, pid(who)),
        other => panic!("{who} must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_disabled_through_a_mapping_keeping_every_stat_field_refuses_the_next_call() {
    let h = host_with(|c| c.handler_pool_size = 2);
    // Both texts have the same length, so only the bytes change.
    let (on, off) = ("enabled = true \n", "enabled = false\n");
    assert_eq!(on.len(), off.len());
    h.profile("alice", on);
    let path = h.state().join("profiles/alice.toml");
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    let map = Mapping::of(&file, on.len());
    // The first store makes the page writable (and moves the times once); later ones do not.
    map.store(0, b'e');
    settle(&path);
    let p = h.load("mapped-profile", "prober.wasm", "").await;
    let other = h.load("mapped-profile-2", "prober.wasm", "").await;
    for _ in 0..2 {
        let me = as_(&p, "alice", "caller", json!({})).await;
        assert_eq!(ok(&me)["principal"], "alice");
    }
    assert!(p.call_stats().warm >= 1);
    let before = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
    for (i, b) in off.bytes().enumerate() {
        map.store(i, b);
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")),
        off
    );
    let after = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
    {
        use std::os::unix::fs::MetadataExt as _;
        let stamp = |m: &std::fs::Metadata| {
            (
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        };
        // Only meaningful when the rewrite really kept every stat field; the kernel decides.
        if stamp(&before) != stamp(&after) {
            eprintln!("the mapping moved the file's times; the attack is weaker here");
        }
    }
    // Her warm instance, a fresh one on another capsule, and after another principal's call.
    refused(p.invoke("noop", b"{}", Some(pid("alice"))).await, "alice");
    refused(
        other.invoke("noop", b"{}", Some(pid("alice"))).await,
        "alice",
    );
    let bob = as_(&p, "bob", "caller", json!({})).await;
    assert_eq!(ok(&bob)["principal"], "bob");
    refused(p.invoke("noop", b"{}", Some(pid("alice"))).await, "alice");
    // Enabled again through the same mapping: she acts again.
    for (i, b) in on.bytes().enumerate() {
        map.store(i, b);
    }
    let me = as_(&p, "alice", "caller", json!({})).await;
    assert_eq!(ok(&me)["principal"], "alice");
    drop(map);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_handle_kept_by_a_warm_instance_obeys_a_lowered_storage_quota() {
    let h = host();
    let p = h.load("kept-handle", "prober.wasm", HOME_RW).await;
    let open = json!({"path": "home://grow.bin", "mode": "read-write"});
    assert_eq!(ok(&as_(&p, "alice", "open", open).await), 0);
    let small = json!({"index": 0, "offset": 0, "data": "x"});
    assert_eq!(ok(&as_(&p, "alice", "handle-write", small).await), 1);
    assert_eq!(
        p.call_stats().warm,
        1,
        "the handle lives in her warm instance"
    );
    // The operator leaves alice almost no storage.
    h.profile("alice", "[quotas]\nmax_storage_bytes = 4\n");
    let big = json!({"index": 0, "offset": 0, "data": "y".repeat(4096)});
    let wrote = as_(&p, "alice", "handle-write", big).await;
    assert!(
        wrote.get("err").is_some(),
        "a write through a handle opened under the old quota is held to the new one: {wrote}"
    );
    let grown = as_(
        &p,
        "alice",
        "handle-len",
        json!({"index": 0, "size": 1 << 20}),
    )
    .await;
    assert!(
        grown.get("err").is_some(),
        "a resize through the kept handle is held to the new quota: {grown}"
    );
    let len = std::fs::metadata(h.state().join("home/alice/grow.bin"))
        .map(|m| m.len())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(len <= 4, "the file grew to {len} bytes past a 4-byte quota");
    // Raised again: the same handle may grow.
    h.profile("alice", "[quotas]\nmax_storage_bytes = 1000000\n");
    let big = json!({"index": 0, "offset": 0, "data": "z".repeat(4096)});
    assert_eq!(ok(&as_(&p, "alice", "handle-write", big).await), 4096);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_kept_by_a_warm_instance_never_reaches_a_home_the_operator_moved_aside() {
    let h = host();
    let p = h.load("moved-home", "prober.wasm", HOME_RW).await;
    let note = json!({"path": "home://note.txt", "content": "old"});
    ok(&as_(&p, "alice", "write", note).await);
    let open = json!({"path": "home://note.txt", "mode": "read-write"});
    assert_eq!(ok(&as_(&p, "alice", "open", open).await), 0);
    let home = h.state().join("home/alice");
    let aside = h.state().join("alice-archived");
    std::fs::rename(&home, &aside).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(&home).unwrap_or_else(|e| panic!("{e}"));
    let read = as_(&p, "alice", "handle-read", json!({"index": 0, "max": 64})).await;
    assert!(
        read.get("err").is_some(),
        "the archived home is read through a kept handle: {read}"
    );
    let write = json!({"index": 0, "offset": 0, "data": "NEW"});
    let wrote = as_(&p, "alice", "handle-write", write).await;
    assert!(
        wrote.get("err").is_some(),
        "the archived home is written through a kept handle: {wrote}"
    );
    // Now the operator puts a link to the archive where her home was.
    std::fs::remove_dir_all(&home).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&aside, &home).unwrap_or_else(|e| panic!("{e}"));
    let open = json!({"path": "home://note.txt", "mode": "read-write"});
    let reopened = as_(&p, "alice", "open", open).await;
    assert!(
        reopened.get("err").is_some(),
        "a link in place of a home is followed: {reopened}"
    );
    let clobber = json!({"path": "home://note.txt", "content": "via-link"});
    assert!(
        as_(&p, "alice", "write", clobber)
            .await
            .get("err")
            .is_some()
    );
    let write = json!({"index": 0, "offset": 0, "data": "NEW"});
    assert!(
        as_(&p, "alice", "handle-write", write)
            .await
            .get("err")
            .is_some()
    );
    assert_eq!(
        std::fs::read_to_string(aside.join("note.txt")).unwrap_or_else(|e| panic!("{e}")),
        "old",
        "the archive stays as the operator left it"
    );
    h.rt.shutdown().await;
}

/// Runs `action` for `who` until it ends with an interrupt, advancing the manual epoch.
async fn interrupted(h: &Host, p: &Capsule, who: &'static str, action: &'static str) {
    let mut task = tokio::spawn({
        let p = p.clone();
        async move { p.invoke(action, b"{}", Some(pid(who))).await }
    });
    let mut ticks = 0;
    let result = loop {
        h.rt.advance_epoch();
        ticks += 1;
        if let Ok(joined) = tokio::time::timeout(Duration::from_millis(20), &mut task).await {
            break joined.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(ticks < 5_000, "still running after {ticks} windows");
    };
    assert!(
        matches!(
            result,
            Err(InvokeError::Interrupted(_) | InvokeError::Trapped(_))
        ),
        "{action} must not complete: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_traps_or_runs_out_of_time_leaves_nothing_to_anyone() {
    let h = manual_host(4);
    // Fuel high enough that the deadline, not the fuel budget, stops the spin.
    let quotas = "[quotas]\nmax_timeout_secs = 1\nmax_cpu_fuel_per_sec = 1000000000000000\n";
    h.profile("default", quotas);
    h.profile("alice", quotas);
    let p = h.load("failing", "prober.wasm", HOME_RW).await;
    let plant = |p: &Capsule| {
        let p = p.clone();
        async move {
            ok(&as_(&p, "alice", "set-global", json!({"value": "alice-secret"})).await);
            let open = json!({"path": "home://secret.txt", "mode": "write"});
            assert_eq!(ok(&as_(&p, "alice", "open", open).await), 0);
        }
    };
    let nothing_left = |p: &Capsule, who: &'static str| {
        let p = p.clone();
        async move {
            assert_eq!(
                ok(&as_(&p, who, "get-global", json!({})).await),
                &Value::Null
            );
            let handle = as_(&p, who, "handle-read", json!({"index": 0, "max": 8})).await;
            assert_eq!(err(&handle), "no such handle", "{who}");
            let me = as_(&p, who, "caller", json!({})).await;
            assert_eq!(ok(&me)["principal"], who);
        }
    };
    plant(&p).await;
    match p.invoke("trap", b"{}", Some(pid("alice"))).await {
        Err(InvokeError::Trapped(_)) => {}
        other => panic!("the guest aborts: {other:?}"),
    }
    nothing_left(&p, "bob").await;
    nothing_left(&p, "alice").await;
    plant(&p).await;
    interrupted(&h, &p, "alice", "spin").await;
    nothing_left(&p, "bob").await;
    nothing_left(&p, "alice").await;
    assert_eq!(p.call_stats().failed, 2, "{:?}", p.call_stats());
    h.rt.shutdown().await;
}
