//! Hostile timing around a reload of a capsule with persistent children: a load of a
//! capsule of the same name that lands while the reload's own load waits (here, on the
//! operator's approval) must not take over the parked children; the children of a reload
//! that then fails, or is abandoned midway, die with it, checked by pid; and children taken
//! over still count against their principal's `max_background_processes`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use capsule_runtime::{Approval, ApprovalRequest, Approver};
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::common::{err, host, ok};
use crate::process::{GRANTS, call, gone, runner};

/// Grants everything, but holds the first question asked after it is armed until released.
struct Gate {
    armed: AtomicBool,
    entered: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Gate {
    fn armed() -> Self {
        Self {
            armed: AtomicBool::new(true),
            entered: Arc::new(Notify::new()),
            release: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Approver for Gate {
    fn approve(&self, request: ApprovalRequest) -> BoxFuture<'static, Approval> {
        let hold = self.armed.swap(false, Ordering::SeqCst);
        let answer = Approval::all(&request);
        let (entered, release) = (Arc::clone(&self.entered), Arc::clone(&self.release));
        Box::pin(async move {
            if hold {
                entered.notify_one();
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
            }
            answer
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_reload_does_not_take_over_its_parked_children() {
    let h = host();
    let c = runner(&h).await;
    let r = call(
        &c,
        "persist",
        json!({"cmd": "/bin/sleep", "args": ["1000"]}),
        "alice",
    )
    .await;
    let id = ok(&r)
        .as_str()
        .unwrap_or_else(|| panic!("no id in {r}"))
        .to_string();
    let s = call(&c, "status", json!({"id": id}), "alice").await;
    let pid = ok(&s)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {s}"));

    // The new version asks for one more program, so its load waits on the operator.
    let gate = Arc::new(Gate::armed());
    h.rt.set_approver(gate.clone());
    let wider = GRANTS.replace("\"/bin/true\",", "\"/bin/true\",\n    \"/bin/true extra\",");
    let dir = h.capsule_dir_at("runner", "proc-runner.wasm", "0.2.0", &wider);
    let rt = h.rt.clone();
    let reloading = tokio::spawn(async move { rt.reload("runner", &dir).await });
    gate.entered.notified().await;
    assert!(h.rt.capsule("runner").is_none(), "the old instance is gone");
    assert!(!gone(pid), "the child is parked for the reload");

    // Meanwhile another capsule of the same name, from another directory, loads.
    let elsewhere = capsule_tests::write_capsule(
        &h.state().join("elsewhere").join("runner"),
        "runner",
        "0.1.0",
        "proc-runner.wasm",
        GRANTS,
    );
    let intruder =
        h.rt.load(&elsewhere)
            .await
            .unwrap_or_else(|e| panic!("the racing load: {e}"));
    for who in ["alice", "bob"] {
        let r = call(&intruder, "status", json!({"id": id}), who).await;
        assert_eq!(
            err(&r),
            "no-such-process",
            "a load racing the reload took over its child: {r}"
        );
        let r = call(&intruder, "list", json!({}), who).await;
        assert_eq!(ok(&r), &json!([]));
    }

    // The reload's own load now finds the name taken; the parked child dies with it.
    gate.release.add_permits(1);
    let reloaded = reloading.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(reloaded.is_err(), "two capsules of one name loaded");
    assert!(gone(pid), "{pid} outlived the failed reload");
    intruder.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_children_still_count_against_the_process_quota_after_a_reload() {
    let h = host();
    h.profile("carol", "[quotas]\nmax_background_processes = 2\n");
    let c = runner(&h).await;
    let sleeper = json!({"cmd": "/bin/sleep", "args": ["1000"]});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = call(&c, "persist", sleeper.clone(), "carol").await;
        ids.push(ok(&r).as_str().unwrap_or_else(|| panic!("{r}")).to_string());
    }
    let over = call(&c, "persist", sleeper.clone(), "carol").await;
    assert_eq!(err(&over), "quota");

    let dir = h.capsule_dir_at("runner", "proc-runner.wasm", "0.2.0", GRANTS);
    let c2 =
        h.rt.reload("runner", &dir)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    // Park N, reload, start N more: the limit still holds for what was taken over.
    for action in ["persist", "bg"] {
        let r = call(&c2, action, sleeper.clone(), "carol").await;
        assert_eq!(
            err(&r),
            "quota",
            "{action} passed the limit after a reload: {r}"
        );
    }
    let r = call(
        &c2,
        "spawn",
        json!({"cmd": "/bin/true", "args": []}),
        "carol",
    )
    .await;
    assert_eq!(err(&r), "quota");
    // Another principal's limit is its own.
    let r = call(
        &c2,
        "spawn",
        json!({"cmd": "/bin/true", "args": []}),
        "alice",
    )
    .await;
    assert_eq!(ok(&r)["exit"]["code"], 0);
    // Stopping one taken over frees its place.
    let stopped = call(&c2, "stop", json!({"id": ids[0]}), "carol").await;
    ok(&stopped);
    let r = call(&c2, "persist", sleeper, "carol").await;
    ok(&r);
    assert!(h.rt.unload("runner").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_abandoned_midway_leaves_no_child_behind() {
    let h = host();
    let c = runner(&h).await;
    let r = call(
        &c,
        "persist",
        json!({"cmd": "/bin/sleep", "args": ["1000"]}),
        "alice",
    )
    .await;
    let id = ok(&r)
        .as_str()
        .unwrap_or_else(|| panic!("no id in {r}"))
        .to_string();
    let s = call(&c, "status", json!({"id": id}), "alice").await;
    let pid = ok(&s)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {s}"));

    // The reload's load waits on the operator for good; its caller gives up.
    let gate = Arc::new(Gate::armed());
    h.rt.set_approver(gate.clone());
    let wider = GRANTS.replace("\"/bin/true\",", "\"/bin/true\",\n    \"/bin/true extra\",");
    let dir = h.capsule_dir_at("runner", "proc-runner.wasm", "0.2.0", &wider);
    let rt = h.rt.clone();
    let reloading = tokio::spawn(async move { rt.reload("runner", &dir).await });
    gate.entered.notified().await;
    assert!(!gone(pid), "the child is parked for the reload");
    reloading.abort();
    let joined = reloading.await;
    assert!(joined.is_err_and(|e| e.is_cancelled()));
    assert!(gone(pid), "{pid} outlived the abandoned reload");

    // Nothing of it lingers: the next reload runs, and the id names nothing.
    let again = h.capsule_dir_at("runner", "proc-runner.wasm", "0.3.0", GRANTS);
    let c2 =
        h.rt.reload("runner", &again)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let r = call(&c2, "status", json!({"id": id}), "alice").await;
    assert_eq!(err(&r), "no-such-process");
    assert!(h.rt.unload("runner").await);
}
