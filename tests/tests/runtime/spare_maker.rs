//! The spare maker thread: spares come even while the only runtime thread is held by a caller
//! that never yields, each serves exactly one principal and carries nothing of another's, and
//! an unload or shutdown with a refill or a discard in flight on the thread neither hangs nor
//! keeps a pool slot; kept instances never cost another capsule's call its pool slot.

use std::time::{Duration, Instant};

use capsule_runtime::{Capsule, PoolingConfig};
use serde_json::{Value, json};

use crate::common::*;

/// Blocks this thread (and so the runtime's only thread, in a current-thread test) until the
/// capsule has a spare ready; fails after a bound far beyond any instantiation.
fn spare_ready_without_yielding(c: &Capsule) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.call_stats().spares_ready < 1 {
        assert!(
            Instant::now() < deadline,
            "no spare came while the runtime thread was held: {:?}",
            c.call_stats()
        );
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn spares_come_while_the_caller_holds_the_only_runtime_thread() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("held", "prober.wasm", "").await;
    ok(&call_as(&p, "set-global", json!({"value": "alice-0"}), Some("alice")).await);
    let mut used = p.call_stats().spares_used;
    // No task of this runtime runs while this thread waits: whatever makes the spares must
    // not be one. With one warm instance, every principal change takes a spare.
    for round in 1..=4 {
        for who in ["bob", "carol", "alice"] {
            spare_ready_without_yielding(&p);
            let seen = ok(&call_as(&p, "get-global", json!({}), Some(who)).await).clone();
            assert_eq!(
                seen,
                Value::Null,
                "{who}'s spare must be fresh, round {round}"
            );
            used += 1;
            assert_eq!(p.call_stats().spares_used, used, "{who} took the spare");
            let mine = format!("{who}-{round}");
            ok(&call_as(&p, "set-global", json!({ "value": mine }), Some(who)).await);
            let again = ok(&call_as(&p, "get-global", json!({}), Some(who)).await).clone();
            assert_eq!(again, json!(mine), "{who}'s warm instance is its own");
        }
    }
    assert_eq!(p.call_stats().failed, 0);
    h.rt.shutdown().await;
}

fn tight_pool(c: &mut capsule_runtime::RuntimeConfig) {
    let mut pool = PoolingConfig::default();
    // Two warm, two spares, two waiting to be dropped and one running call fit; one slot
    // kept by each load would exhaust the pool within a few cycles.
    pool.max_instances = 8;
    pool.max_core_instances = 64;
    pool.max_memories = 16;
    c.pooling = Some(pool);
    c.handler_pool_size = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloads_with_spares_in_flight_end_and_give_every_pool_slot_back() {
    let h = host_with(tight_pool);
    for cycle in 0..16 {
        let p = h.load("inflight", "prober.wasm", "").await;
        // Principal changes ask the maker thread for spares and hand it displaced instances;
        // the unload comes right behind them.
        for who in ["alice", "bob", "carol", "dave"] {
            ok(&call_as(&p, "noop", json!({}), Some(who)).await);
        }
        tokio::time::timeout(Duration::from_secs(60), p.unload())
            .await
            .unwrap_or_else(|_| panic!("cycle {cycle}: the unload hangs"));
        let gone = p.call_stats();
        assert_eq!((gone.spares_ready, gone.warm), (0, 0), "cycle {cycle}");
        assert_eq!(gone.failed, 0, "cycle {cycle}: {gone:?}");
    }
    // Had any load kept a slot, these calls could not instantiate.
    let p = h.load("inflight", "prober.wasm", "").await;
    for who in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        ok(&call_as(&p, "noop", json!({}), Some(who)).await);
    }
    assert_eq!(p.call_stats().failed, 0);
    tokio::time::timeout(Duration::from_secs(60), h.rt.shutdown())
        .await
        .unwrap_or_else(|_| panic!("the shutdown hangs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_spares_in_flight_ends() {
    let h = host_with(tight_pool);
    let a = h.load("inflight-a", "prober.wasm", "").await;
    let b = h.load("inflight-b", "prober.wasm", "").await;
    for who in ["alice", "bob", "carol"] {
        ok(&call_as(&a, "noop", json!({}), Some(who)).await);
        ok(&call_as(&b, "noop", json!({}), Some(who)).await);
    }
    tokio::time::timeout(Duration::from_secs(60), h.rt.shutdown())
        .await
        .unwrap_or_else(|_| panic!("the shutdown hangs"));
    for c in [&a, &b] {
        let gone = c.call_stats();
        assert_eq!((gone.spares_ready, gone.warm), (0, 0), "{gone:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_instances_never_cost_another_capsule_the_pool_slot_its_call_needs() {
    // Eight instances in all, one warm instance and one spare wanted per capsule: four called
    // capsules hold half the pool with their warm instances and ask for spares for the rest.
    let h = host_with(|c| {
        tight_pool(c);
        c.handler_pool_size = 1;
    });
    let mut called = Vec::new();
    for i in 0..4 {
        let p = h.load(&format!("filler-{i}"), "prober.wasm", "").await;
        ok(&call_as(&p, "noop", json!({}), Some("alice")).await);
        called.push(p);
    }
    let spares = |c: &[Capsule]| c.iter().map(|p| p.call_stats().spares_ready).sum::<u64>();
    // Let the maker thread make what it will: it stops short of the pool's last quarter.
    let deadline = Instant::now() + Duration::from_secs(3);
    while spares(&called) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spares(&called) <= 3, "spares made into the last slots");
    // Four more capsules' first calls need the other four slots, spares or not.
    for i in 0..4 {
        let late = h.load(&format!("latecomer-{i}"), "prober.wasm", "").await;
        ok(&call_as(&late, "noop", json!({}), Some("bob")).await);
        assert_eq!(late.call_stats().failed, 0, "latecomer {i}");
    }
    // The pool now holds eight warm instances: a ninth capsule's call takes one's slot, and
    // the capsules that lost theirs instantiate again on their next call.
    let ninth = h.load("ninth", "prober.wasm", "").await;
    ok(&call_as(&ninth, "noop", json!({}), Some("carol")).await);
    for p in called.iter().chain([&ninth]) {
        ok(&call_as(p, "noop", json!({}), Some("alice")).await);
        assert_eq!(p.call_stats().failed, 0);
    }
}
