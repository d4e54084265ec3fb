//! Spare instances (fresh instances made off the call path) and warm ones (kept for the one
//! principal each served): a spare serves exactly one principal, never carries another's guest
//! memory, fits the quota of whoever takes it, and ends with the load that made it.

use std::time::{Duration, Instant};

use capsule_runtime::{Capsule, InvokeError};
use serde_json::{Value, json};

use crate::common::*;

/// Waits (bounded) until the capsule has `n` spares ready.
async fn spares_ready(c: &Capsule, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.call_stats().spares_ready < n {
        assert!(
            Instant::now() < deadline,
            "no spare was made: {:?}",
            c.call_stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn global(c: &Capsule, who: &str) -> Value {
    ok(&call_as(c, "get-global", json!({}), Some(who)).await).clone()
}

async fn set_global(c: &Capsule, who: &str, value: &str) {
    ok(&call_as(c, "set-global", json!({ "value": value }), Some(who)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_serves_one_principal_and_never_carries_another_ones_memory() {
    let h = host_with(|c| c.handler_pool_size = 2);
    let p = h.load("spares", "prober.wasm", "").await;
    set_global(&p, "alice", "alice-secret").await;
    spares_ready(&p, 1).await;
    let before = p.call_stats().spares_used;
    // Bob gets a spare: fresh memory, nothing of alice's.
    assert_eq!(global(&p, "bob").await, Value::Null);
    assert_eq!(
        p.call_stats().spares_used,
        before + 1,
        "bob's call took the spare"
    );
    // Both keep their own instance; neither sees the other's value.
    assert_eq!(global(&p, "alice").await, json!("alice-secret"));
    set_global(&p, "bob", "bob-secret").await;
    assert_eq!(global(&p, "alice").await, json!("alice-secret"));
    assert_eq!(global(&p, "bob").await, json!("bob-secret"));
    // A third principal pushes the oldest warm instance out and starts from nothing.
    spares_ready(&p, 1).await;
    assert_eq!(global(&p, "carol").await, Value::Null);
    let stats = p.call_stats();
    assert!(
        stats.warm <= 2,
        "warm instances stay within the pool: {stats:?}"
    );

    // Under concurrency: six principals at once, each remembering its own value; every call
    // sees nothing (its instance was pushed out) or that principal's own latest value, never
    // anyone else's. Alice and bob may still find what they left above in their warm instance.
    let mut tasks = Vec::new();
    let left = [
        ("alice", Some("alice-secret")),
        ("bob", Some("bob-secret")),
        ("carol", None),
        ("dave", None),
        ("erin", None),
        ("frank", None),
    ];
    for (who, before) in left {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut last: Option<String> = before.map(str::to_string);
            for round in 0..12 {
                let seen = global(&p, who).await;
                match seen.as_str() {
                    None => assert_eq!(seen, Value::Null, "{who}"),
                    Some(s) => assert_eq!(
                        Some(s),
                        last.as_deref(),
                        "{who} saw a value it did not leave last"
                    ),
                }
                let mine = format!("{who}-{round}");
                set_global(&p, who, &mine).await;
                last = Some(mine);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let stats = p.call_stats();
    assert!(
        stats.spares_used > before + 1,
        "spares served calls: {stats:?}"
    );
    assert!(stats.warm <= 2, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_too_big_for_a_principals_quota_is_not_given_to_it() {
    let h = host();
    h.profile("tiny", "[quotas]\nmax_memory_bytes = 65536\n");
    let p = h.load("spares-quota", "prober.wasm", "").await;
    ok(&call_as(&p, "noop", json!({}), Some("pat")).await);
    spares_ready(&p, 1).await;
    // The spare was made under the owner's quota; tiny's is smaller than it, so tiny gets a
    // fresh instance under its own quota, which fails as it must.
    match p.invoke("noop", b"{}", Some(pid("tiny"))).await {
        Err(InvokeError::Instantiate { capsule, .. }) => assert_eq!(capsule, "spares-quota"),
        other => panic!("tiny must not run in a spare beyond its quota: {other:?}"),
    }
    assert!(
        h.rt.memory_stats()
            .get(&pid("tiny"))
            .is_some_and(|s| s.refused_grows >= 1)
    );
    assert!(p.call_stats().spares_ready >= 1, "the spare is still there");
    // Someone whose quota it fits gets it.
    let used = p.call_stats().spares_used;
    ok(&call_as(&p, "noop", json!({}), Some("quinn")).await);
    assert_eq!(p.call_stats().spares_used, used + 1);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_and_warm_instances_end_with_their_load() {
    let h = host_with(|c| c.handler_pool_size = 2);
    let manifest = |mark: &str| format!("[env.mark]\ntype = \"text\"\ndefault = \"{mark}\"\n");
    let old = h.load("respawn", "prober.wasm", &manifest("v1")).await;
    set_global(&old, "alice", "from-v1").await;
    assert_eq!(
        ok(&call_as(&old, "config", json!({"key": "mark"}), Some("alice")).await),
        "v1"
    );
    spares_ready(&old, 2).await;
    assert!(old.call_stats().warm >= 1);

    let dir = h.capsule_dir("respawn", "prober.wasm", &manifest("v2"));
    let new =
        h.rt.reload("respawn", &dir)
            .await
            .unwrap_or_else(|e| panic!("reload: {e}"));
    let gone = old.call_stats();
    assert_eq!((gone.spares_ready, gone.warm), (0, 0), "{gone:?}");
    assert!(matches!(
        old.invoke("noop", b"{}", Some(pid("bob"))).await,
        Err(InvokeError::Unloaded(_))
    ));
    // Every call after the reload runs the new load's instances: its configuration, and none
    // of the memory the old load's warm instance kept for alice.
    for who in ["alice", "bob", "carol", "alice", "bob"] {
        assert_eq!(
            ok(&call_as(&new, "config", json!({"key": "mark"}), Some(who)).await),
            "v2",
            "{who}"
        );
        assert_eq!(global(&new, who).await, Value::Null, "{who}");
    }
    new.unload().await;
    let gone = new.call_stats();
    assert_eq!((gone.spares_ready, gone.warm), (0, 0), "{gone:?}");
    h.rt.shutdown().await;
}

/// A caller that never yields (calls back to back on one runtime task, with no epoch ticking
/// to make the guest yield) starves the keeper, which would run on the same worker; the
/// instances its calls displace must not pile up waiting for the keeper until the pool
/// refuses the next principal's instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displaced_instances_never_fill_the_pool_while_the_keeper_is_starved() {
    let h = host_with(|c| {
        c.epoch_mode = capsule_runtime::EpochMode::Manual;
        let mut pool = capsule_runtime::PoolingConfig::default();
        pool.max_instances = 12;
        pool.max_core_instances = 96;
        pool.max_memories = 24;
        c.pooling = Some(pool);
    });
    let p = h.load("starved", "prober.wasm", "").await;
    let caller = p.clone();
    let outcome = tokio::spawn(async move {
        for n in 0..90 {
            let who = ["alice", "bob", "carol"][n % 3];
            if let Err(e) = caller.invoke("noop", b"{}", Some(pid(who))).await {
                return Err(format!("call {n} for {who}: {e}"));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome, Ok(()), "{:?}", p.call_stats());
    assert_eq!(p.call_stats().failed, 0);
    h.rt.shutdown().await;
}
