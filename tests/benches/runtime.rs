//! Runtime benchmarks with real components; prints one JSON object per line:
//! `{"group":"runtime","name":N,"params":{...},"value":V,"unit":U}`.
//!
//! Run with `cargo xtask bench runtime [--quick]` (release build). Each figure is the median of
//! timed samples; `--quick` spends about a second per figure.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use capsule_bus::{Scope, TopicPattern};
use capsule_runtime::{Runtime, RuntimeConfig};
use support::{budget, call, capsule_dir, emit, median};

/// Repeats `f` (which reports the duration of `ops` operations) for the budget; median ns/op.
async fn measure<F, Fut>(budget: Duration, ops: u64, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        f().await;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        samples.push(f().await.as_nanos() as f64 / ops as f64);
    }
    median(samples)
}

/// Approves every request (only the first load of the granted capsule asks).
struct ApproveAll;

impl capsule_runtime::Approver for ApproveAll {
    fn approve(
        &self,
        request: capsule_runtime::ApprovalRequest,
    ) -> futures::future::BoxFuture<'static, capsule_runtime::Approval> {
        let answer = capsule_runtime::Approval::all(&request);
        Box::pin(async move { answer })
    }
}

const ACL: &str = "[publish]\n\"bench.*\" = \"opaque\"\n\"ping.*\" = \"opaque\"\n[subscribe]\n\"bench.*\" = \"opaque\"\n\"ping.*\" = \"opaque\"\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let budget = budget();
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(state.path().join("profiles")).expect("profiles");
    // Publishing benchmarks must not be cut short by the default 10 MiB/s budget.
    std::fs::write(
        state.path().join("profiles").join("default.toml"),
        "[quotas]\nmax_ipc_throughput_bytes = 1099511627776\n",
    )
    .expect("profile");
    let mut config = RuntimeConfig::new(state.path());
    // One pooled instance, so alternating principals reset it on every call.
    config.handler_pool_size = 1;
    let rt = Runtime::new(config).expect("runtime");

    // Prime the cache, then measure loads that deserialize: the prober (an interceptor) and
    // the SDK capsule (all four entry points, so the stub analysis runs too).
    let dir = capsule_dir(state.path(), "prober", "prober.wasm", ACL);
    let sdk_dir = capsule_dir(
        state.path(),
        "sdk-echo",
        "sdk-echo.wasm",
        "[publish]\n\"sdk.*\" = \"opaque\"\n[subscribe]\n\"sdk.*\" = \"opaque\"\n",
    );
    // A capsule whose requests the operator granted: each load reads the one grant file and
    // checks the granted directory against the host policy.
    let granted_dir = capsule_dir(
        state.path(),
        "granted",
        "prober.wasm",
        &format!("{ACL}[capabilities]\nuplink = true\nfs_read = [\"/usr/share\"]\n"),
    );
    rt.set_approver(std::sync::Arc::new(ApproveAll));
    for (component, grant, dir) in [
        ("prober", "none", &dir),
        ("sdk-echo", "none", &sdk_dir),
        ("prober", "stored", &granted_dir),
    ] {
        rt.load(dir).await.expect("load").unload().await;
        let mut samples = Vec::new();
        let start = Instant::now();
        while start.elapsed() < budget || samples.len() < 5 {
            let t = Instant::now();
            let c = rt.load(dir).await.expect("load");
            samples.push(t.elapsed().as_nanos() as f64);
            assert_eq!(c.report().cache, capsule_runtime::CacheOutcome::Hit);
            c.unload().await;
        }
        emit(
            "runtime",
            "load_cached",
            &format!("{{\"component\":\"{component}\",\"grant\":\"{grant}\"}}"),
            median(samples),
            "ns",
        );
    }

    let prober = rt.load(&dir).await.expect("load");
    let ns = measure(budget, 1, || {
        let p = prober.clone();
        async move {
            let t = Instant::now();
            p.check_instantiate().await.expect("instantiate");
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "instantiate",
        "{\"component\":\"prober\",\"pooling\":true}",
        ns,
        "ns",
    );

    const CALLS: u64 = 100_000;
    let noop = measure(budget, CALLS, || {
        let p = prober.clone();
        async move {
            let t = Instant::now();
            call(&p, "noop", &format!("{{\"count\":{CALLS}}}")).await;
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "host_call_noop",
        "{\"function\":\"sys.clock-monotonic-ns\"}",
        noop,
        "ns",
    );

    // A handler call through the queue and the pooled instance, with the same principal every
    // time (the instance is reused) and with two alternating principals (it is reset from the
    // `InstancePre` before every call, so one principal's guest memory never reaches the other).
    const HANDLER_CALLS: u64 = 200;
    let principals = [
        capsule_bus::PrincipalId::parse("alice").expect("principal"),
        capsule_bus::PrincipalId::parse("bob").expect("principal"),
    ];
    let mut per_call = [0.0f64; 2];
    for (i, alternate) in [false, true].into_iter().enumerate() {
        let before = prober.call_stats().resets;
        let mut calls = 0u64;
        per_call[i] = measure(budget, HANDLER_CALLS, || {
            let p = prober.clone();
            let principals = principals.clone();
            calls += HANDLER_CALLS;
            async move {
                let t = Instant::now();
                for n in 0..HANDLER_CALLS {
                    let who = if alternate { n as usize % 2 } else { 0 };
                    let r = p
                        .invoke("noop", b"{\"count\":1}", Some(principals[who].clone()))
                        .await
                        .expect("invoke");
                    assert!(!r.data.unwrap_or_default().contains("\"err\""));
                }
                t.elapsed()
            }
        })
        .await;
        let resets = (prober.call_stats().resets - before) as f64 / calls as f64;
        emit(
            "runtime",
            "handler_call",
            &format!(
                "{{\"principals\":\"{}\",\"resets_per_call\":{resets:.2}}}",
                if alternate { "alternating" } else { "same" }
            ),
            per_call[i],
            "ns",
        );
    }
    emit(
        "runtime",
        "principal_reset_cost",
        "{\"component\":\"prober\",\"derived\":\"alternating - same\"}",
        per_call[1] - per_call[0],
        "ns",
    );

    let mut sink = rt
        .bus()
        .subscribe(TopicPattern::parse("bench.*").expect("pattern"), Scope::All);
    const PUBLISHES: u64 = 10_000;
    let args = format!("{{\"topic\":\"bench.t\",\"payload\":\"{{}}\",\"count\":{PUBLISHES}}}");
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut warmed = false;
    while start.elapsed() < budget || samples.len() < 5 {
        let t = Instant::now();
        call(&prober, "publish-loop", &args).await;
        let elapsed = t.elapsed();
        sink.try_drain(usize::MAX);
        if warmed {
            samples.push(elapsed.as_nanos() as f64 / PUBLISHES as f64);
        }
        warmed = true;
    }
    let publish = median(samples);
    drop(sink);
    emit(
        "runtime",
        "host_call_publish",
        "{\"payload_bytes\":2,\"subscribers\":1,\"noop_ns\":NOOP}"
            .replace("NOOP", &format!("{noop:.2}"))
            .as_str(),
        publish,
        "ns",
    );

    // Guest to guest: the prober publishes, pong's run loop receives in batches.
    let pong_dir = capsule_dir(
        state.path(),
        "counter",
        "pong.wasm",
        &format!(
            "{ACL}\n[env.in]\ntype = \"text\"\ndefault = \"ping.*\"\n[env.out]\ntype = \"text\"\ndefault = \"-\"\n[env.count]\ntype = \"text\"\ndefault = \"bench.count\"\n"
        ),
    );
    let counter = rt.load(&pong_dir).await.expect("load pong");
    assert!(counter.wait_ready(Duration::from_secs(30)).await);
    let mut counts = rt.bus().subscribe(
        TopicPattern::parse("bench.count").expect("pattern"),
        Scope::All,
    );
    const MESSAGES: u64 = 10_000;
    let mut expected = 0u64;
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        expected += MESSAGES;
        let t = Instant::now();
        call(
            &prober,
            "publish-loop",
            &format!("{{\"topic\":\"ping.x\",\"payload\":\"{{}}\",\"count\":{MESSAGES}}}"),
        )
        .await;
        'wait: loop {
            let d = counts.recv(Duration::from_secs(30), usize::MAX).await;
            assert!(!d.messages.is_empty(), "the counter stopped reporting");
            for m in &d.messages {
                let n: serde_json::Value = serde_json::from_str(m.payload.as_str()).expect("json");
                if n["n"].as_u64() == Some(expected) {
                    break 'wait;
                }
            }
        }
        samples.push(MESSAGES as f64 / t.elapsed().as_secs_f64());
    }
    emit(
        "runtime",
        "guest_to_guest",
        "{\"payload_bytes\":2,\"batch\":10000}",
        median(samples),
        "msgs/s",
    );

    // Host processes from a guest: spawn and wait of `/bin/true`, `SPAWNS` per handler call.
    let runner_dir = capsule_dir(
        state.path(),
        "runner",
        "proc-runner.wasm",
        "[capabilities]\nhost_process = [\"/bin/true\"]\n",
    );
    let runner = rt.load(&runner_dir).await.expect("load runner");
    const SPAWNS: u64 = 20;
    let per_spawn = measure(budget, SPAWNS, || {
        let r = runner.clone();
        async move {
            let t = Instant::now();
            let out = r
                .invoke(
                    "spawn-n",
                    format!("{{\"cmd\":\"/bin/true\",\"args\":[],\"n\":{SPAWNS}}}").as_bytes(),
                    None,
                )
                .await
                .expect("invoke");
            let data = out.data.unwrap_or_default();
            assert!(data.contains(&format!("\"ok\":{SPAWNS}")), "{data}");
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "spawn_wait_true",
        "{\"program\":\"/bin/true\",\"from\":\"guest\",\"interface\":\"astrid:process@1.1.0\"}",
        1e9 / per_spawn,
        "spawns/s",
    );
    rt.shutdown().await;
}
