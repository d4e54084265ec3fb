//! Budgets with real guests: CPU (epoch windows), memory (quota-limited growth), deadlines and
//! unload winning over a blocked call. Epochs are advanced by the test where counts matter, so
//! no assertion depends on wall-clock speed.

use std::time::Duration;

use capsule_bus::Attribution;
use capsule_runtime::{Interrupt, InvokeError, RunExit};
use serde_json::json;

use crate::common::*;

const N: u32 = 5;

/// How long an unload may take while a guest sits in a 60 s `recv`: half the recv timeout,
/// so the assertion tells "unload interrupted the recv" from "unload waited for it" without
/// depending on how loaded the machine is.
const UNLOAD_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_run_loop_is_trapped_within_n_windows() {
    let h = manual_host(N);
    let spin = h.load("spin", "spin.wasm", "").await;
    let mut ticks = 0u32;
    let exit = loop {
        h.rt.advance_epoch();
        ticks += 1;
        if let Ok(exit) =
            tokio::time::timeout(Duration::from_millis(200), spin.wait_run_exit()).await
        {
            break exit;
        }
        assert!(ticks < 10 * N, "still running after {ticks} windows");
    };
    assert_eq!(
        exit,
        Some(RunExit::Interrupted(Interrupt::CpuBudget { windows: N }))
    );
    assert!(ticks >= N, "trapped after {ticks} ticks, before its budget");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recv_loop_survives_ten_times_as_long() {
    let h = manual_host(N);
    let mut beats = h.subscribe("pong.beat");
    let manifest = "[publish]\n\"pong.*\" = \"opaque\"\n[subscribe]\n\"ping.*\" = \"opaque\"\n\
                    [env.heartbeat]\ntype = \"text\"\ndefault = \"pong.beat\"\n\
                    [env.timeout_ms]\ntype = \"text\"\ndefault = \"5\"\n";
    let pong = h.load("pong", "pong.wasm", manifest).await;
    assert!(pong.wait_ready(Duration::from_secs(20)).await);
    for _ in 0..10 * N {
        h.rt.advance_epoch();
        // A heartbeat after the tick proves the guest went through recv again.
        next(&mut beats).await;
        beats.try_drain(usize::MAX);
    }
    assert_eq!(pong.run_exit(), None, "the recv loop is still running");
    h.rt.shutdown().await;
    assert_eq!(
        pong.wait_run_exit().await,
        Some(RunExit::Returned),
        "it returns on closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_growth_past_the_quota_fails_inside_the_guest() {
    let h = host();
    h.profile("small", "[quotas]\nmax_memory_bytes = 4194304\n");
    let p = h.load("mem", "prober.wasm", "").await;
    // Default quota: 64 MiB = 1024 pages.
    let r = ok(&call(&p, "grow", json!({"pages": 1100})).await).clone();
    assert_eq!(r["result"], -1, "memory.grow reports failure to the guest");
    assert_eq!(r["after"], r["before"]);
    let r = ok(&call(&p, "grow", json!({"pages": 16})).await).clone();
    assert_eq!(
        r["result"], r["before"],
        "a growth within the quota succeeds"
    );
    let stats = h.rt.memory_stats();
    let owner = stats.get(&pid("default")).copied().unwrap_or_default();
    assert!(owner.refused_grows >= 1);
    assert!(owner.peak_bytes <= 64 * 1024 * 1024);
    assert!(owner.peak_bytes > 0);
    // The quota is the principal's own.
    let r = ok(&call_as(&p, "grow", json!({"pages": 80}), Some("small")).await).clone();
    assert_eq!(r["result"], -1, "4 MiB quota for `small`");
    assert!(h.rt.memory_stats()[&pid("small")].refused_grows >= 1);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_deadline_is_trapped_and_the_next_call_works() {
    let h = manual_host(N);
    // Fuel high enough that the deadline, not the fuel budget, stops the spin.
    h.profile(
        "default",
        "[quotas]\nmax_timeout_secs = 1\nmax_cpu_fuel_per_sec = 1000000000000000\n",
    );
    let p = h.load("spinner", "prober.wasm", "").await;
    ok(&call(&p, "set-global", json!({"value": "before"})).await);
    let mut task = tokio::spawn({
        let p = p.clone();
        async move { p.invoke("spin", b"{}", None).await }
    });
    // 1 s at 20 ms windows is 50 windows.
    let mut ticks = 0;
    let result = loop {
        h.rt.advance_epoch();
        ticks += 1;
        if let Ok(joined) = tokio::time::timeout(Duration::from_millis(50), &mut task).await {
            break joined.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(ticks < 500, "still running after {ticks} windows");
    };
    match result {
        Err(InvokeError::Interrupted(Interrupt::Deadline { windows })) => assert_eq!(windows, 50),
        other => panic!("expected a deadline interrupt, got {other:?}"),
    }
    // The trapped Store was discarded: the next call runs on a fresh instance.
    assert_eq!(
        ok(&call(&p, "get-global", json!({})).await),
        &serde_json::Value::Null
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_wins_over_a_blocked_recv() {
    let h = host();
    let pong = h
        .load(
            "pong",
            "pong.wasm",
            "[publish]\n\"pong.*\" = \"x\"\n[subscribe]\n\"ping.*\" = \"x\"\n",
        )
        .await;
    assert!(pong.wait_ready(Duration::from_secs(20)).await);
    // The loop now sits in recv(60000). Unload must not wait for that timeout; the bound is
    // half of it, so a loaded machine cannot fail the test but a wait for the recv would.
    let unload = tokio::time::timeout(UNLOAD_BOUND, pong.unload()).await;
    assert!(unload.is_ok(), "unload waited for the blocked recv");
    assert_eq!(
        pong.run_exit(),
        Some(RunExit::Returned),
        "recv returned closed and the loop ended"
    );
    assert!(matches!(
        pong.invoke("x", b"{}", None).await,
        Err(InvokeError::NoHook(_) | InvokeError::Unloaded(_))
    ));
    h.publish("ping.late", "{}", Attribution::System);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_recv_answers_closed_on_unload() {
    let h = host();
    let mut waiting = h.subscribe("probe.waiting");
    let p = h.load("closer", "prober.wasm", PROBER_ACL).await;
    let index = ok(&call(&p, "subscribe", json!({"pattern": "probe.never"})).await).clone();
    let blocked = tokio::spawn({
        let p = p.clone();
        async move {
            call(
                &p,
                "recv",
                json!({"index": index, "timeout": 60000, "notify": "probe.waiting"}),
            )
            .await
        }
    });
    next(&mut waiting).await;
    let unload = tokio::time::timeout(UNLOAD_BOUND, p.unload()).await;
    assert!(unload.is_ok(), "unload waited for the blocked recv");
    let answer = blocked.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(err(&answer), "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_runtime_stops_its_capsules() {
    let h = host_with(|c| c.max_busy_windows = 1_000_000);
    let spin = h.load("spin", "spin.wasm", "").await;
    drop(h);
    // The guard bounds a hang; the assertion is on how the loop ended.
    let exit = tokio::time::timeout(Duration::from_secs(30), spin.wait_run_exit()).await;
    assert_eq!(
        exit.ok().flatten(),
        Some(RunExit::Interrupted(Interrupt::Unloaded))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_fuel_budget_is_trapped_and_the_next_call_works() {
    let h = host();
    h.profile(
        "default",
        "[quotas]\nmax_timeout_secs = 1\nmax_cpu_fuel_per_sec = 1000000\n",
    );
    let p = h.load("burner", "prober.wasm", "").await;
    ok(&call(&p, "set-global", json!({"value": "before"})).await);
    match p.invoke("spin", b"{}", None).await {
        Err(InvokeError::Interrupted(Interrupt::OutOfFuel)) => {}
        other => panic!("expected to run out of fuel, got {other:?}"),
    }
    assert_eq!(
        ok(&call(&p, "get-global", json!({})).await),
        &serde_json::Value::Null,
        "the Store that ran dry was discarded"
    );
    assert_eq!(p.call_stats().failed, 1);
    h.rt.shutdown().await;
}
