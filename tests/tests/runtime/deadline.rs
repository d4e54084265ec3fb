//! A handler call's deadline (its principal's `max_timeout_secs`) covers the time it spends
//! parked in host waits, not only the time its wasm runs: from a real guest
//! (`hostile-waiter`), every kind of wait nobody ends (a socket whose peer never writes, a
//! pollable nobody readies, long `recv`s and sleeps, an hour of WASI clock sleep) ends the
//! call with the typed deadline interrupt, and the capsule's one worker slot then serves
//! another principal. A run loop has no deadline: its wait outlives any call's, and unload
//! still ends it.

use std::time::Duration;

use capsule_bus::Attribution;
use capsule_runtime::security::StaticResolver;
use capsule_runtime::{Capsule, Interrupt, InvokeError, RunExit};
use tokio::net::TcpListener;

use crate::common::*;
use crate::loopback::{OPEN_LOOPBACK, policy_host};

/// Bounds every awaited outcome, so a wait the deadline does not end fails the test instead
/// of hanging it; far beyond the 1 s deadline under test.
const GUARD: Duration = Duration::from_secs(60);

const ACL: &str = "[publish]\n\"deadline.*\" = \"x\"\n[subscribe]\n\"deadline.*\" = \"x\"\n";

/// A loopback listener that accepts every connection and never writes to it.
async fn silent_peer() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    port
}

async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {GUARD:?}"))
}

/// Runs `action` as alice and, queued behind it on the one worker, `ok` as bob: alice's call
/// must end with the deadline interrupt and bob's must then succeed.
async fn cut_then_served(c: &Capsule, action: &str, payload: &str) {
    let hostile = tokio::spawn({
        let (c, action, payload) = (c.clone(), action.to_string(), payload.to_string());
        async move {
            c.invoke(&action, payload.as_bytes(), Some(pid("alice")))
                .await
        }
    });
    let polite = tokio::spawn({
        let c = c.clone();
        async move { c.invoke("ok", b"{}", Some(pid("bob"))).await }
    });
    let cut = guarded(action, hostile)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match cut {
        Err(InvokeError::Interrupted(Interrupt::Deadline { windows })) => {
            // 1 s of 20 ms epoch windows: the same deadline the epoch counter enforces.
            assert_eq!(windows, 50, "{action}");
        }
        other => panic!("{action}: expected the deadline interrupt, got {other:?}"),
    }
    let served = guarded("bob after alice", polite)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("bob after {action}: {e}"));
    assert_eq!(served.data.as_deref(), Some("\"ok\""), "bob after {action}");
}

fn waiter_host() -> Host {
    let h = policy_host(OPEN_LOOPBACK, StaticResolver::new());
    // The owner (`default`) and both callers get the same 1 s.
    for who in ["default", "alice", "bob"] {
        h.profile(who, "[quotas]\nmax_timeout_secs = 1\n");
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_wait_of_a_handler_ends_at_its_deadline_and_frees_the_slot() {
    let port = silent_peer().await;
    let h = waiter_host();
    h.approve_all();
    let c = h
        .load(
            "waiter",
            "hostile-waiter.wasm",
            &format!(
                "{ACL}[capabilities]\nnet = [\"127.0.0.1\"]\nnet_connect = [\"127.0.0.1:{port}\"]\n"
            ),
        )
        .await;
    let peer = format!("\"127.0.0.1:{port}\"");
    let mut failed = c.call_stats().failed;
    for (action, payload) in [
        ("block", "{}"),
        ("poll", "{}"),
        ("recv", "{}"),
        ("sleep", "{}"),
        ("wasi-sleep", "{}"),
        ("short-sleeps", "{}"),
        ("wasi-short-sleeps", "{}"),
        ("tcp-stream", peer.as_str()),
        ("tcp-read", peer.as_str()),
    ] {
        cut_then_served(&c, action, payload).await;
        // Counted as a failed call, like an epoch-deadline overrun.
        let now = c.call_stats().failed;
        assert_eq!(now, failed + 1, "{action}");
        failed = now;
    }
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_loop_wait_outlives_a_call_deadline_and_unload_still_ends_it() {
    let h = waiter_host();
    let mut woke = h.subscribe("deadline.woke");
    let blocker = h
        .load(
            "run-block",
            "hostile-waiter.wasm",
            &format!("{ACL}[env.run]\ntype = \"text\"\ndefault = \"block\"\n"),
        )
        .await;
    let sleeper = h
        .load(
            "run-sleep",
            "hostile-waiter.wasm",
            &format!("{ACL}[env.run]\ntype = \"text\"\ndefault = \"wasi-sleep\"\n"),
        )
        .await;
    assert!(blocker.wait_ready(GUARD).await);
    assert!(sleeper.wait_ready(GUARD).await);
    // A handler call of the same capsule, under the same 1 s quota, is cut: by the time it
    // is, both run loops have been waiting longer than any call may.
    cut_then_served(&blocker, "block", "{}").await;
    assert_eq!(blocker.run_exit(), None, "the run loop's wait was cut");
    assert_eq!(
        sleeper.run_exit(),
        None,
        "the run loop's WASI sleep was cut"
    );
    // Its wait still ends the ordinary way: a message arrives.
    h.publish("deadline.wake", "{}", Attribution::System);
    let m = guarded("the run loop's wake-up", next(&mut woke)).await;
    assert_eq!(m.payload.as_str(), "{\"woke\":\"Ok(())\"}");
    // And unload ends an hour of WASI sleep at once.
    guarded("unloading a run loop asleep in WASI", sleeper.unload()).await;
    assert_eq!(
        sleeper.run_exit(),
        Some(RunExit::Interrupted(Interrupt::Unloaded))
    );
    h.rt.shutdown().await;
}
