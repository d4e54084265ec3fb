//! Runtime benchmarks with real components; prints one JSON object per line:
//! `{"group":"runtime","name":N,"params":{...},"value":V,"unit":U}`.
//!
//! Run with `cargo xtask bench runtime [--quick]` (release build). Each figure is the median of
//! timed samples; `--quick` spends about a second per figure. Names given after `--` (e.g.
//! `-- --quick handler_call guest_to_guest`) run only the figures whose name contains one of
//! them; `-- density` runs only the density figures.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "density/mod.rs"]
mod density;
#[path = "net/mod.rs"]
mod net;
mod support;

use std::time::{Duration, Instant};

use capsule_bus::{Scope, TopicPattern};
use capsule_runtime::{Runtime, RuntimeConfig};
use support::{budget, call, capsule_dir, emit, median};

// Measured on the allocator the `capsule` program ships with (README, Benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Whether the figure `name` was asked for: every figure when no name was given.
fn wanted(name: &str) -> bool {
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    names.is_empty() || names.iter().any(|n| name.contains(n.as_str()))
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
    // `-- density` runs only the density figures (they take the longest and share nothing).
    if std::env::args().any(|a| a == "density") {
        density::density().await;
        return;
    }
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
    let loads = [
        ("prober", "none", &dir),
        ("sdk-echo", "none", &sdk_dir),
        ("prober", "stored", &granted_dir),
    ];
    for (component, grant, dir) in loads.into_iter().filter(|_| wanted("load_cached")) {
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
    if wanted("instantiate") {
        instantiate(budget, &prober).await;
    }

    let noop = if wanted("host_call") {
        host_call_noop(budget, &prober).await
    } else {
        0.0
    };
    if wanted("handler_call") || wanted("principal_reset_cost") {
        handler_calls(budget, &prober).await;
    }
    if wanted("task_round_trip") {
        task_round_trip(budget).await;
    }
    if wanted("host_call_publish") {
        host_call_publish(budget, &rt, &prober, noop).await;
    }
    if wanted("guest_to_guest") {
        guest_to_guest(budget, &rt, state.path(), &prober).await;
    }
    if wanted("spawn_wait_true") {
        spawn_wait_true(budget, &rt, state.path()).await;
    }
    rt.shutdown().await;
    if wanted("http_get_loopback") {
        http_get_loopback(budget).await;
    }
    if wanted("http_get_loopback") || wanted("tcp_echo_loopback") {
        net::net_benches(budget).await;
    }
    if wanted("density") || wanted("idle_capsule_bytes") || wanted("load_10k_cached") {
        density::density().await;
    }
}

/// `instantiate`: a fresh instance of the prober in a fresh Store, then discarded.
async fn instantiate(budget: Duration, prober: &capsule_runtime::Capsule) {
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
}

/// `host_call_noop`: one `sys.clock-monotonic-ns` from a guest loop; returns ns per call.
async fn host_call_noop(budget: Duration, prober: &capsule_runtime::Capsule) -> f64 {
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
    noop
}

/// `handler_call` with the same principal every call and with two principals alternating,
/// called from the benchmark's own task and from a task on the runtime (as the dispatcher and
/// the control socket call), and `principal_reset_cost`, the difference of the first two.
async fn handler_calls(budget: Duration, prober: &capsule_runtime::Capsule) {
    // With one warm instance (`handler_pool_size = 1`), alternating principals never find
    // their own: every call takes a spare or instantiates, so one principal's guest memory
    // never reaches the other.
    const HANDLER_CALLS: u64 = 200;
    let principals = [
        capsule_bus::PrincipalId::parse("alice").expect("principal"),
        capsule_bus::PrincipalId::parse("bob").expect("principal"),
    ];
    let mut per_call = [0.0f64; 2];
    for on_task in [false, true] {
        for (i, alternate) in [false, true].into_iter().enumerate() {
            let before = prober.call_stats();
            let mut calls = 0u64;
            let ns = measure(budget, HANDLER_CALLS, || {
                let p = prober.clone();
                let principals = principals.clone();
                calls += HANDLER_CALLS;
                let run = async move {
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
                };
                async move {
                    if on_task {
                        tokio::spawn(run).await.expect("caller task")
                    } else {
                        run.await
                    }
                }
            })
            .await;
            let after = prober.call_stats();
            let resets = (after.resets - before.resets) as f64 / calls as f64;
            let spares = (after.spares_used - before.spares_used) as f64 / calls as f64;
            emit(
                "runtime",
                "handler_call",
                &format!(
                    "{{\"principals\":\"{}\",\"resets_per_call\":{resets:.2},\"spares_per_call\":{spares:.2}{}}}",
                    if alternate { "alternating" } else { "same" },
                    if on_task {
                        ",\"caller\":\"runtime task\""
                    } else {
                        ""
                    }
                ),
                ns,
                "ns",
            );
            if !on_task {
                per_call[i] = ns;
            }
        }
    }
    // The capsule's owner calling: its scope needs none of another principal's resources.
    let ns = measure(budget, HANDLER_CALLS, || {
        let p = prober.clone();
        async move {
            let t = Instant::now();
            for _ in 0..HANDLER_CALLS {
                call(&p, "noop", "{\"count\":1}").await;
            }
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "handler_call",
        "{\"principals\":\"owner\"}",
        ns,
        "ns",
    );
    emit(
        "runtime",
        "principal_reset_cost",
        "{\"component\":\"prober\",\"derived\":\"alternating - same\"}",
        per_call[1] - per_call[0],
        "ns",
    );
}

/// `task_round_trip`: the floor of one hand-off to another task and back.
async fn task_round_trip(budget: Duration) {
    const HANDLER_CALLS: u64 = 200;
    // The floor of a call handed to another task and answered back: a bare tokio channel
    // round trip on this machine, with nothing run in between.
    let (to_task, mut task_rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    tokio::spawn(async move {
        while let Some(reply) = task_rx.recv().await {
            let _ = reply.send(());
        }
    });
    let hop = measure(budget, HANDLER_CALLS, || {
        let to_task = to_task.clone();
        async move {
            let t = Instant::now();
            for _ in 0..HANDLER_CALLS {
                let (tx, rx) = tokio::sync::oneshot::channel();
                to_task.send(tx).await.expect("task");
                rx.await.expect("reply");
            }
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "task_round_trip",
        "{\"what\":\"mpsc to a spawned task, oneshot back\"}",
        hop,
        "ns",
    );
}

/// `host_call_publish`: one publish from a guest loop to one host subscriber.
async fn host_call_publish(
    budget: Duration,
    rt: &Runtime,
    prober: &capsule_runtime::Capsule,
    noop: f64,
) {
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
        call(prober, "publish-loop", &args).await;
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
}

/// `guest_to_guest`: the prober publishes, pong's run loop counts what it receives.
async fn guest_to_guest(
    budget: Duration,
    rt: &Runtime,
    state: &std::path::Path,
    prober: &capsule_runtime::Capsule,
) {
    // Guest to guest: the prober publishes, pong's run loop receives in batches.
    let pong_dir = capsule_dir(
        state,
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
    // The publishing call made by the benchmark's own task (outside the runtime's worker
    // threads), then from a task spawned on the runtime, as the dispatcher and the control
    // socket make theirs.
    for on_task in [false, true] {
        let mut samples = Vec::new();
        let start = Instant::now();
        while start.elapsed() < budget || samples.len() < 5 {
            expected += MESSAGES;
            let t = Instant::now();
            let p = prober.clone();
            let publish = async move {
                call(
                    &p,
                    "publish-loop",
                    &format!("{{\"topic\":\"ping.x\",\"payload\":\"{{}}\",\"count\":{MESSAGES}}}"),
                )
                .await;
            };
            if on_task {
                tokio::spawn(publish).await.expect("publisher");
            } else {
                publish.await;
            }
            'wait: loop {
                let d = counts.recv(Duration::from_secs(30), usize::MAX).await;
                assert!(!d.messages.is_empty(), "the counter stopped reporting");
                for m in &d.messages {
                    let n: serde_json::Value =
                        serde_json::from_str(m.payload.as_str()).expect("json");
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
            if on_task {
                "{\"payload_bytes\":2,\"batch\":10000,\"caller\":\"runtime task\"}"
            } else {
                "{\"payload_bytes\":2,\"batch\":10000}"
            },
            median(samples),
            "msgs/s",
        );
    }
}

/// `spawn_wait_true`: spawns of `/bin/true` from a guest, each waited for.
async fn spawn_wait_true(budget: Duration, rt: &Runtime, state: &std::path::Path) {
    // Host processes from a guest: spawn and wait of `/bin/true`, `SPAWNS` per handler call.
    let runner_dir = capsule_dir(
        state,
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
}

/// A loopback HTTP/1.1 server answering every request with a 2-byte body; with `keep_alive`
/// it keeps the connection for the next request, else it says `Connection: close` and closes
/// it, so every request needs a fresh one.
async fn tiny_server(keep_alive: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let reply: &[u8] = if keep_alive {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        };
                        if sock.write_all(reply).await.is_err() || !keep_alive {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The same GET without a guest or the host's checks: a fresh connection and a raw HTTP/1.1
/// exchange, the floor the host's per-request connection is measured against.
async fn direct_get(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut tmp = [0u8; 256];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = s.read(&mut tmp).await.expect("read");
        assert!(n > 0, "the server closed early");
        got.extend_from_slice(&tmp[..n]);
    }
}

/// `http_get_loopback`: GETs per second from a guest (`astrid:http` through the grant, the
/// airlock and a fresh connection per request) next to the same exchange made directly.
async fn http_get_loopback(budget: Duration) {
    let addr = tiny_server(false).await;
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        state.path().join("policy.toml"),
        "[net]\nopen_ranges = [\"127.0.0.0/8\"]\n",
    )
    .expect("policy");
    let rt = Runtime::new(RuntimeConfig::new(state.path())).expect("runtime");
    rt.set_approver(std::sync::Arc::new(ApproveAll));
    let dir = capsule_dir(
        state.path(),
        "netprobe",
        "netprobe.wasm",
        "[capabilities]\nnet = [\"127.0.0.1\"]\n",
    );
    let probe = rt.load(&dir).await.expect("load");
    let args = format!("{{\"url\":\"http://{addr}/x\"}}");
    let ns = measure(budget, 1, || {
        let (p, args) = (probe.clone(), args.clone());
        async move {
            let t = Instant::now();
            call(&p, "get", &args).await;
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "http_get_loopback",
        "{\"path\":\"guest\",\"connection\":\"fresh\"}",
        1e9 / ns,
        "requests/s",
    );
    let ns = measure(budget, 1, || async move {
        let t = Instant::now();
        direct_get(addr).await;
        t.elapsed()
    })
    .await;
    emit(
        "runtime",
        "http_get_loopback",
        "{\"path\":\"direct\",\"connection\":\"fresh\"}",
        1e9 / ns,
        "requests/s",
    );
    probe.unload().await;
    rt.shutdown().await;
}
