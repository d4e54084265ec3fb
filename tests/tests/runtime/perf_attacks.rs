//! Attacks on the fast call path and the lazy, shared per-capsule setup: a call abandoned by
//! its caller mid-run still ends as it would on a worker (its slot given back, its instance
//! kept only for its own principal or discarded), a principal flooding a capsule cannot starve
//! another through calls run on the callers' tasks, and a pool sized from hostile numbers is
//! refused with a typed error before any address space is reserved.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capsule_runtime::{
    Capsule, ConfigError, InvokeError, MAX_POOL_RESERVATION, PoolingConfig, Runtime,
};
use serde_json::{Value, json};

use crate::common::*;

/// Waits (bounded) until `cond` holds for the capsule's call counters.
async fn until(c: &Capsule, what: &str, cond: impl Fn(&capsule_runtime::CallStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond(&c.call_stats()) {
        assert!(
            Instant::now() < deadline,
            "{what} never happened: {:?}",
            c.call_stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sleep_args(ms: u64) -> Vec<u8> {
    json!({ "ns": ms * 1_000_000 }).to_string().into_bytes()
}

/// Polls `fut` exactly once and reports whether it was still running then.
async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    futures::poll!(fut).is_pending()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_mid_run_ends_as_on_a_worker_and_frees_its_slot() {
    // One slot: anything the abandoned call kept would block every later call.
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("abandon", "prober.wasm", "").await;
    ok(&call_as(
        &p,
        "set-global",
        json!({"value": "alice-kept"}),
        Some("alice"),
    )
    .await);
    let before = p.call_stats();

    // Alice's call starts on this task (the slot is free, nobody waits) and is inside the
    // guest's sleep when its caller gives up on it.
    let args = sleep_args(300);
    let mut abandoned = Box::pin(p.invoke("sleep", &args, Some(pid("alice"))));
    assert!(
        poll_once(&mut abandoned).await,
        "the call must still be running when it is abandoned"
    );
    drop(abandoned);

    // Alice's next call waits for the one slot, which the abandoned call gives back when it
    // ends: it ran to its end and her instance came back whole, her value still in it.
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("alice")).await),
        "alice-kept"
    );
    assert_eq!(p.call_stats().completed, before.completed + 2);
    // Bob runs on an instance with nothing of alice's.
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("bob")).await),
        &Value::Null
    );
    let stats = p.call_stats();
    assert_eq!(stats.failed, before.failed, "{stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");

    // Abandoned again, then unloaded at once: the unload waits for that call (it holds one of
    // the capsule's Stores), and nothing runs afterwards.
    let args = sleep_args(200);
    let mut abandoned = Box::pin(p.invoke("sleep", &args, Some(pid("carol"))));
    assert!(poll_once(&mut abandoned).await);
    drop(abandoned);
    p.unload().await;
    let gone = p.call_stats();
    assert_eq!((gone.warm, gone.spares_ready), (0, 0), "{gone:?}");
    assert!(matches!(
        p.invoke("noop", b"{}", Some(pid("carol"))).await,
        Err(InvokeError::Unloaded(_))
    ));
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_while_queued_still_runs_once_and_leaks_nothing() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("abandon-queued", "prober.wasm", "").await;
    ok(&call_as(&p, "noop", json!({}), Some("alice")).await);
    let before = p.call_stats();
    let args = sleep_args(200);
    let mut running = Box::pin(p.invoke("sleep", &args, Some(pid("alice"))));
    assert!(poll_once(&mut running).await);
    // Bob's call finds the slot taken and queues; its caller gives up on it while it waits.
    let mut queued = Box::pin(p.invoke("set-global", br#"{"value":"bob"}"#, Some(pid("bob"))));
    assert!(poll_once(&mut queued).await);
    assert_eq!(p.call_stats().queued, 1);
    drop(queued);
    running
        .await
        .unwrap_or_else(|e| panic!("alice's call: {e}"));
    // Bob's abandoned call still ran once, on bob's own instance.
    until(&p, "the queued call's end", |s| {
        s.completed >= before.completed + 2 && s.queued == 0
    })
    .await;
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("bob")).await),
        "bob"
    );
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("alice")).await),
        &Value::Null
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_principal_cannot_starve_another_through_inline_calls() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("flooded", "prober.wasm", "").await;
    ok(&call_as(&p, "noop", json!({}), Some("light")).await);
    const FLOOD: usize = 16;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..FLOOD {
        let (p, done) = (p.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let r = p.invoke("sleep", &sleep_args(20), Some(pid("flood"))).await;
            done.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    // Most of the flood waits in the queue; the light principal's one call comes after it.
    until(&p, "the flood queuing", |s| s.queued >= 8).await;
    call_as(&p, "noop", json!({}), Some("light")).await;
    let flood_done = done.load(Ordering::SeqCst);
    assert!(
        flood_done <= 3,
        "the light call waited for {flood_done} of the flood's {FLOOD} calls"
    );
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("flood call: {e}"));
    }
    assert_eq!(done.load(Ordering::SeqCst), FLOOD);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_spinning_call_is_still_interrupted_by_unload() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("abandon-spin", "prober.wasm", "").await;
    ok(&call_as(&p, "noop", json!({}), Some("alice")).await);
    // The spin runs on this task until the epoch makes it yield; then its caller leaves it.
    let mut spinning = Box::pin(p.invoke("spin", b"{}", Some(pid("alice"))));
    assert!(poll_once(&mut spinning).await);
    drop(spinning);
    // The spin now runs on a task of its own and still holds the one slot: the unload must
    // wait for it and interrupt it, not return while it spins or hang behind it.
    p.unload().await;
    let gone = p.call_stats();
    assert_eq!(
        (gone.warm, gone.spares_ready, gone.queued),
        (0, 0, 0),
        "{gone:?}"
    );
    assert!(gone.failed >= 1, "the spin ended interrupted: {gone:?}");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_instance_grown_beyond_a_lowered_quota_is_not_reused() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("shrunk", "prober.wasm", "").await;
    ok(&call_as(
        &p,
        "set-global",
        json!({"value": "kept-warm"}),
        Some("alice"),
    )
    .await);
    let pages = |v: &Value| {
        v["after"]
            .as_u64()
            .unwrap_or_else(|| panic!("no page count in {v}"))
    };
    let start = pages(ok(
        &call_as(&p, "grow", json!({"pages": 0}), Some("alice")).await
    ));
    let grown = ok(&call_as(&p, "grow", json!({"pages": 96}), Some("alice")).await).clone();
    assert_eq!(pages(&grown), start + 96, "{grown}");
    // Alice's quota is lowered below what her warm instance already holds, but well above
    // what a fresh instance needs.
    h.profile(
        "alice",
        &format!("[quotas]\nmax_memory_bytes = {}\n", (start + 8) * 65_536),
    );
    // The next call runs on an instance within the new quota: a fresh one, without the
    // value the over-quota instance kept.
    assert_eq!(
        ok(&call_as(&p, "get-global", json!({}), Some("alice")).await),
        &Value::Null,
        "alice's call ran on an instance beyond her quota"
    );
    let now = pages(ok(
        &call_as(&p, "grow", json!({"pages": 0}), Some("alice")).await
    ));
    assert!(
        now <= start + 8,
        "{now} pages under a quota of {}",
        start + 8
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_planted_before_the_first_log_record_redirects_the_lazily_opened_log() {
    let h = host();
    let p = h
        .load(
            "planter",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n",
        )
        .await;
    let home = h.state().join("home").join("default");
    let log = home.join(".local/log/planter.log");
    assert!(!log.exists(), "the log is opened by the first record only");
    ok(&call(
        &p,
        "write",
        json!({"path": "home://bait.txt", "content": "bait"}),
    )
    .await);
    // Every way of putting something where the log will be opened, or of moving the
    // directories above it, is refused while the log is not open yet.
    let tries = [
        ("mkdir-all", json!({"path": "home://.local/log"})),
        (
            "mkdir-all",
            json!({"path": "home://.local/log/planter.log"}),
        ),
        (
            "write",
            json!({"path": "home://.local/log/planter.log", "content": "x"}),
        ),
        (
            "rename",
            json!({"src": "home://bait.txt", "dst": "home://.local/log/planter.log"}),
        ),
        (
            "link",
            json!({"src": "home://bait.txt", "dst": "home://.local/log/planter.log"}),
        ),
        (
            "copy",
            json!({"src": "home://bait.txt", "dst": "home://.local/log/planter.log"}),
        ),
        (
            "rename",
            json!({"src": "home://.local", "dst": "home://moved"}),
        ),
        ("rmrf", json!({"path": "home://.local"})),
    ];
    for (action, args) in tries {
        let answer = call(&p, action, args.clone()).await;
        assert!(
            answer.get("err").is_some(),
            "{action} {args} was allowed: {answer}"
        );
    }
    assert!(!log.exists(), "something was planted at the log's path");
    assert!(home.join(".local").is_dir() && home.join(".local/tmp").is_dir());
    // The first record opens the host's own regular file there, and nothing else gets it.
    ok(&call(
        &p,
        "log",
        json!({"level": "info", "message": "first-record"}),
    )
    .await);
    let meta = std::fs::symlink_metadata(&log).unwrap_or_else(|e| panic!("{e}"));
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&meta), 1);
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("first-record"), "{text}");
    assert_eq!(
        std::fs::read_to_string(home.join("bait.txt")).unwrap_or_default(),
        "bait"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principals_warm_instance_is_not_dropped_while_the_capsule_is_busy() {
    // One warm instance at most: each new principal's call pushes the previous one's out,
    // which wakes the spare keeper to drop it. That wake is not idleness: the instance just
    // kept for the new principal must survive it.
    let h = host_with(|c| c.handler_pool_size = 1);
    let p = h.load("busy-keeper", "prober.wasm", "").await;
    for round in 0..8 {
        let who = format!("p{round}");
        let mine = format!("{who}-value");
        ok(&call_as(&p, "set-global", json!({ "value": mine }), Some(&who)).await);
        // Gives the keeper its turn to drop the pushed-out instance; what is asserted does
        // not depend on how long this takes.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            ok(&call_as(&p, "get-global", json!({}), Some(&who)).await),
            &json!(mine),
            "round {round}: {:?}",
            p.call_stats()
        );
    }
    h.rt.shutdown().await;
}

fn pooled(pool: PoolingConfig) -> Result<Runtime, ConfigError> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut c = config(dir.path());
    c.pooling = Some(pool);
    Runtime::new(c)
}

fn refused(what: &str, pool: PoolingConfig) {
    match pooled(pool) {
        Err(ConfigError::Invalid(msg)) => assert!(!msg.is_empty()),
        Err(other) => panic!("{what}: refused, but not as a configuration error: {other}"),
        Ok(_) => panic!("{what}: a pool this size must be refused"),
    }
}

/// The default pool with `f` applied (the struct is non-exhaustive).
fn pool(f: impl FnOnce(&mut PoolingConfig)) -> PoolingConfig {
    let mut p = PoolingConfig::default();
    f(&mut p);
    p
}

#[test]
fn hostile_pool_sizes_are_refused_with_a_typed_error_before_any_reservation() {
    // Full 4 GiB slots for twenty thousand memories: some 80 TiB of address space.
    let full = pool(|p| p.max_memories = 20_000);
    assert!(full.reserved_bytes() > MAX_POOL_RESERVATION);
    refused("20 000 full-size memory slots", full);
    // Every count at its maximum, compact or not.
    for compact in [false, true] {
        refused(
            "every count at u32::MAX",
            pool(|p| {
                p.max_instances = u32::MAX;
                p.max_core_instances = u32::MAX;
                p.max_memories = u32::MAX;
                p.max_memory_bytes = 1 << 32;
                p.compact_memories = compact;
            }),
        );
    }
    refused(
        "a pool for u32::MAX capsules",
        PoolingConfig::for_capsules(u32::MAX),
    );
    refused(
        "u32::MAX instances (one async stack each)",
        pool(|p| p.max_instances = u32::MAX),
    );
    // Zero and out-of-range sizes.
    refused("no memories", pool(|p| p.max_memories = 0));
    refused("no instances", pool(|p| p.max_instances = 0));
    refused(
        "zero-byte compact memories",
        pool(|p| {
            p.max_memory_bytes = 0;
            p.compact_memories = true;
        }),
    );
    // The sizes the runtime itself proposes for up to ten thousand capsules stay valid.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for p in [
        PoolingConfig::default(),
        PoolingConfig::for_capsules(0),
        PoolingConfig::for_capsules(100),
        PoolingConfig::for_capsules(10_000),
    ] {
        let mut c = config(dir.path());
        c.pooling = Some(p);
        c.validate().unwrap_or_else(|e| panic!("{p:?}: {e}"));
    }
}
