//! The embedder's view of the state layout agrees with where the host really puts a
//! capsule's files: what a real guest writes to `cwd://`, `home://` and its log is found at
//! the paths `Runtime::paths` names.

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_paths_name_where_a_guest_s_files_really_are() {
    let h = host();
    let c = h
        .load_as(
            "paths-prober",
            "prober.wasm",
            "[capabilities]\nfs_write = [\"*\", \"home://\"]\n",
            "erin",
        )
        .await;
    ok(&call(
        &c,
        "write",
        json!({"path": "cwd://ws.txt", "content": "in the workspace"}),
    )
    .await);
    ok(&call(
        &c,
        "write",
        json!({"path": "home://h.txt", "content": "at home"}),
    )
    .await);
    ok(&call(
        &c,
        "write",
        json!({"path": "/tmp/t.txt", "content": "scratch"}),
    )
    .await);
    ok(&call(
        &c,
        "log",
        json!({"level": "info", "message": "logged line"}),
    )
    .await);
    let paths = h.rt.paths();
    let erin = pid("erin");
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    assert_eq!(
        read(paths.capsule_workspace("paths-prober").join("ws.txt")),
        "in the workspace"
    );
    assert_eq!(read(paths.principal_home(&erin).join("h.txt")), "at home");
    assert_eq!(read(paths.principal_tmp(&erin).join("t.txt")), "scratch");
    assert!(read(paths.capsule_log(&erin, "paths-prober")).contains("logged line"));
    assert_eq!(paths.state_dir(), h.state());
}

fn chain(name: &str, mode: &str, priority: u32) -> String {
    format!(
        "[publish]\n\"chain.*\" = \"x\"\n\
         [subscribe]\n\"outcome.t\" = {{ handler = \"on_t\", priority = {priority} }}\n\
         [env.name]\ntype = \"text\"\ndefault = \"{name}\"\n\
         [env.mode]\ntype = \"text\"\ndefault = \"{mode}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_outcomes_name_each_link_its_trap_and_the_denial_that_stopped_the_chain() {
    let h = host();
    let _a = h
        .load("oc-trap", "chain.wasm", &chain("oc-trap", "trap", 10))
        .await;
    let _b = h
        .load("oc-deny", "chain.wasm", &chain("oc-deny", "deny", 20))
        .await;
    let _c = h
        .load("oc-late", "chain.wasm", &chain("oc-late", "pass", 30))
        .await;
    let mut outcomes = h.rt.dispatch_outcomes();
    h.publish(
        "outcome.t",
        "{}",
        capsule_bus::Attribution::Verified(pid("frank")),
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let o = tokio::time::timeout(std::time::Duration::from_secs(60), outcomes.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?}"))
            .unwrap_or_else(|| panic!("runtime gone"));
        seen.push(o);
    }
    assert_eq!(seen[0].capsule, "oc-trap");
    match &seen[0].result {
        capsule_runtime::LinkResult::Failed { error } => {
            assert!(error.contains("trap"), "{error}");
        }
        other => panic!("expected the trap, got {other:?}"),
    }
    assert_eq!(seen[1].capsule, "oc-deny");
    assert_eq!(
        seen[1].result,
        capsule_runtime::LinkResult::Deny {
            reason: "oc-deny says no".into()
        }
    );
    assert!(seen[1].result.stopped_chain());
    assert_eq!(seen[1].seq, seen[0].seq);
    assert_eq!(seen[1].principal, Some(pid("frank")));
    assert_eq!(seen[1].topic.as_str(), "outcome.t");
    // The chain stopped: the later link never ran.
    assert!(outcomes.try_next().is_none());
    assert_eq!(outcomes.lost(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_names_the_aliased_stub_exports_it_treats_as_absent() {
    let h = host();
    let dir = h.capsule_dir("stubs", "stubs.wasm", "");
    let i = h.rt.inspect(&dir).await.unwrap_or_else(|e| panic!("{e}"));
    let found: Vec<(String, Vec<String>)> = i
        .stubs
        .iter()
        .map(|s| (s.export.clone(), s.same_as.clone()))
        .collect();
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            ("astrid-install".into(), v(&["astrid-upgrade", "run"])),
            ("astrid-upgrade".into(), v(&["astrid-install", "run"])),
            ("run".into(), v(&["astrid-install", "astrid-upgrade"])),
        ]
    );
    assert!(i.stubs[2].to_string().contains("stub"));
    assert!(!i.exports.run && i.exports.hook);
    // A capsule whose entry points are real has none.
    let pong = h.capsule_dir(
        "pong",
        "pong.wasm",
        "[publish]\n\"pong.*\" = \"x\"\n[subscribe]\n\"ping.*\" = \"x\"\n",
    );
    let i = h.rt.inspect(&pong).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(i.stubs.is_empty(), "{:?}", i.stubs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscribe_or_publish_is_explained_in_the_capsule_log_and_bounded() {
    let h = host();
    let c = h
        .load_as("refusal-prober", "prober.wasm", PROBER_ACL, "gina")
        .await;
    assert_eq!(
        err(&call(&c, "subscribe", json!({"pattern": "other.*"})).await),
        "capability-denied"
    );
    assert_eq!(
        err(&call(&c, "publish", json!({"topic": "other.x", "payload": "{}"})).await),
        "capability-denied"
    );
    // Another principal's refusal goes to that principal's log, not the owner's.
    assert_eq!(
        err(&call_as(
            &c,
            "publish",
            json!({"topic": "hank.x", "payload": "{}"}),
            Some("hank")
        )
        .await),
        "capability-denied"
    );
    let paths = h.rt.paths();
    let log = |who: &str| {
        std::fs::read_to_string(paths.capsule_log(&pid(who), "refusal-prober")).unwrap_or_default()
    };
    let gina = log("gina");
    assert!(
        gina.contains("subscribe `other.*` refused (capability-denied): no [subscribe] pattern covers `other.*`; the [subscribe] ACL holds: probe.*"),
        "{gina}"
    );
    assert!(
        gina.contains("publish `other.x` refused (capability-denied): no [publish] pattern matches `other.x`; the [publish] ACL holds: probe.*"),
        "{gina}"
    );
    assert!(!gina.contains("hank.x"), "{gina}");
    assert!(log("hank").contains("publish `hank.x` refused"));
    // A guest retrying a refused publish in a loop writes a bounded number of records: the
    // instance serving gina again is a fresh one (hank was served in between), and it logs
    // at most MAX_LOGGED_REFUSALS.
    let before = log("gina").matches(" refused (capability-denied)").count();
    let flood = json!({"topic": "other.y", "payload": "{}", "count": 200});
    ok(&call(&c, "publish-loop", flood).await);
    let text = log("gina");
    let after = text.matches(" refused (capability-denied)").count();
    assert_eq!(
        after - before,
        capsule_runtime::MAX_LOGGED_REFUSALS as usize
    );
    assert!(text.contains("further refusals of this instance are not logged"));
}
