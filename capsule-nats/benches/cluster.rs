//! Cross-host bus benchmarks through a loopback `nats-server` started by the benchmark; prints
//! one JSON object per line: `{"group":"cluster","name":N,"params":{...},"value":V,"unit":U}`.
//!
//! - `bridged_1k`: 1 KiB messages published on host A's bus and delivered on host B's bus
//!   through two bridges (msgs/s);
//! - `raw_nats_1k`: the same payloads published and received with the same client on plain
//!   subjects in the same run, NATS's own figure for comparison (msgs/s);
//! - `bridged_latency`: one message at a time, bus A to bus B (µs, p50 and p99).
//!
//! Run with `cargo xtask bench cluster [--quick]` (release build). Throughput is the median of
//! several rounds, bridged and raw rounds alternating. With `CLUSTER_BENCH_ONLY=bridged`,
//! `raw` or `none` only that path runs (the others print NaN), so `time` can tell what CPU each
//! path costs per message.

#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::{Duration, Instant};

use capsule_bus::{
    Attribution, Bus, BusConfig, JsonPayload, Outgoing, PrincipalId, Scope, Topic, TopicPattern,
};
use capsule_nats::{Bridge, BridgeConfig, ClusterName, HostId, NatsServer};
use futures::StreamExt;
use uuid::Uuid;

fn emit(name: &str, params: &str, value: f64, unit: &str) {
    println!(
        "{{\"group\":\"cluster\",\"name\":\"{name}\",\"params\":{params},\"value\":{value:.2},\"unit\":\"{unit}\"}}"
    );
}

/// A JSON payload of exactly 1024 bytes.
fn payload_1k() -> String {
    let head = r#"{"pad":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(1024 - head.len() - tail.len()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn big_bus() -> Bus {
    // The benchmark publishes in bursts; room for a whole burst keeps the figure about NATS
    // and the bridge rather than about the local queue bound.
    Bus::with_config(BusConfig {
        route_max_bytes: 256 << 20,
        queue_max_messages: 1 << 20,
        ..BusConfig::default()
    })
    .expect("bus config")
}

fn config(url: &str, host: &str, peer: &str, export: &[&str], import: &[&str]) -> BridgeConfig {
    let mut c = BridgeConfig::new(
        ClusterName::parse("bench").unwrap(),
        HostId::parse(host).unwrap(),
        url,
    );
    c.peers.insert(HostId::parse(peer).unwrap());
    c.export = export
        .iter()
        .map(|p| TopicPattern::parse(p).unwrap())
        .collect();
    c.import = import
        .iter()
        .map(|p| TopicPattern::parse(p).unwrap())
        .collect();
    c.buffer = 16_384;
    c
}

struct Pair {
    a: Bus,
    rx: capsule_bus::Receiver,
    _bridges: (Bridge, Bridge),
}

async fn pair(url: &str) -> Pair {
    let (a, b) = (big_bus(), big_bus());
    let ba = Bridge::start(a.clone(), config(url, "a", "b", &["b.*"], &[]))
        .await
        .expect("bridge a");
    let bb = Bridge::start(b.clone(), config(url, "b", "a", &[], &["b.*"]))
        .await
        .expect("bridge b");
    let rx = b.subscribe(TopicPattern::parse("b.*").unwrap(), Scope::All);
    Pair {
        a,
        rx,
        _bridges: (ba, bb),
    }
}

fn publish(bus: &Bus, payload: &JsonPayload) {
    bus.publish(Outgoing {
        topic: Topic::parse("b.data").unwrap(),
        payload: payload.clone(),
        source: Uuid::from_u128(1),
        attribution: Attribution::Verified(PrincipalId::parse("alice").unwrap()),
        hops: 0,
    });
}

/// Publishes `n` messages on A and returns msgs/s until B's subscriber holds them all.
async fn bridged_round(p: &mut Pair, payload: &JsonPayload, n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        publish(&p.a, payload);
    }
    let mut got = 0u64;
    while got < n {
        let d = p.rx.recv(Duration::from_secs(10), usize::MAX).await;
        assert_eq!(
            d.dropped, 0,
            "the bridge lost messages in a benchmark round"
        );
        assert!(!d.messages.is_empty(), "stalled at {got}/{n}");
        got += d.messages.len() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The same through plain subjects with the same client library.
async fn raw_round(
    publisher: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
    body: &[u8],
    n: u64,
) -> f64 {
    let start = Instant::now();
    let recv = async {
        for i in 0..n {
            tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap_or_else(|_| panic!("raw delivery stalled at {i}/{n}"))
                .unwrap_or_else(|| panic!("raw stream ended at {i}"));
        }
    };
    let send = async {
        for _ in 0..n {
            publisher
                .publish("raw.data", body.to_vec().into())
                .await
                .expect("raw publish");
        }
        publisher.flush().await.expect("flush");
    };
    tokio::join!(recv, send);
    n as f64 / start.elapsed().as_secs_f64()
}

// Measured on the allocator the `capsule` program ships with (README, Benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, rounds, pings) = if quick {
        (5_000u64, 3, 300)
    } else {
        (20_000u64, 5, 2_000)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    rt.block_on(async move {
        let text = payload_1k();
        let payload = JsonPayload::parse(text.clone()).unwrap();
        let body = text.into_bytes();
        let mut p = pair(&url).await;
        let publisher = async_nats::connect(&url).await.expect("raw publisher");
        let subscriber = async_nats::connect(&url).await.expect("raw subscriber");
        let mut sub = subscriber
            .subscribe("raw.data")
            .await
            .expect("raw subscribe");
        subscriber.flush().await.expect("flush");

        // `CLUSTER_BENCH_ONLY=bridged|raw|none` runs one path (or neither), so the CPU time
        // each path costs per message can be told apart with `time`; the ratio below is only
        // meaningful when both ran.
        let only = std::env::var("CLUSTER_BENCH_ONLY").unwrap_or_default();
        let (run_bridged, run_raw) = (
            only.is_empty() || only == "bridged",
            only.is_empty() || only == "raw",
        );
        // Warm-up of both paths.
        if run_bridged {
            bridged_round(&mut p, &payload, n / 10).await;
        }
        if run_raw {
            raw_round(&publisher, &mut sub, &body, n / 10).await;
        }
        let (mut bridged, mut raw) = (vec![f64::NAN], vec![f64::NAN]);
        if run_bridged || run_raw {
            (bridged, raw) = (Vec::new(), Vec::new());
        }
        for _ in 0..rounds {
            if run_bridged {
                bridged.push(bridged_round(&mut p, &payload, n).await);
            }
            if run_raw {
                raw.push(raw_round(&publisher, &mut sub, &body, n).await);
            }
        }
        if bridged.is_empty() {
            bridged.push(f64::NAN);
        }
        if raw.is_empty() {
            raw.push(f64::NAN);
        }
        let (bridged, raw) = (median(bridged), median(raw));
        let params = format!(r#"{{"bytes":1024,"msgs":{n}}}"#);
        emit("bridged_1k", &params, bridged, "msgs/s");
        emit("raw_nats_1k", &params, raw, "msgs/s");
        emit("bridged_vs_raw", &params, 100.0 * bridged / raw, "%");

        let mut lat = Vec::with_capacity(pings);
        for _ in 0..pings {
            let start = Instant::now();
            publish(&p.a, &payload);
            let d = p.rx.recv(Duration::from_secs(10), usize::MAX).await;
            assert_eq!(d.messages.len(), 1, "latency probe lost");
            lat.push(start.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        for (q, at) in [("p50", 0.50), ("p99", 0.99)] {
            let i = ((lat.len() as f64 * at) as usize).min(lat.len() - 1);
            emit(
                "bridged_latency",
                &format!(r#"{{"quantile":"{q}","bytes":1024}}"#),
                lat[i],
                "µs",
            );
        }
    });
    drop(server);
}
