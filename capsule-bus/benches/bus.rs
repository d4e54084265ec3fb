//! Bus benchmarks; prints one JSON object per line:
//! `{"group":"bus","name":N,"params":{...},"value":V,"unit":U}`.
//!
//! Run with `cargo xtask bench bus [--quick]` (release build). Each figure is the median of
//! several timed samples; `--quick` spends about a second per figure.

#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use capsule_bus::{
    Attribution, Bus, JsonPayload, Outgoing, PrincipalId, Receiver, Scope, Topic, TopicPattern,
};
use uuid::Uuid;

/// Counts live heap bytes (requested sizes) while [`COUNTING`] is on, so retained memory can
/// be measured exactly without the timed figures paying for the count. Allocates through
/// mimalloc, the allocator the `capsule` program ships with (README, Benchmarks).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Whether allocations are counted (only while `retained_bytes_per_msg` is measured).
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count(bytes: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to mimalloc unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Opts {
    /// Wall time spent per figure.
    budget: Duration,
}

fn emit(name: &str, params: &str, value: f64, unit: &str) {
    println!(
        "{{\"group\":\"bus\",\"name\":\"{name}\",\"params\":{params},\"value\":{value:.2},\"unit\":\"{unit}\"}}"
    );
}

/// Runs `batch` (which performs `ops` operations and returns the time they took) repeatedly
/// for the time budget and returns the median nanoseconds per operation.
fn measure(opts: &Opts, ops: u64, mut batch: impl FnMut() -> Duration) -> f64 {
    // Warm-up.
    let warm = Instant::now();
    while warm.elapsed() < opts.budget / 10 {
        batch();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < opts.budget || samples.len() < 5 {
        let d = batch();
        samples.push(d.as_nanos() as f64 / ops as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn topic(s: &str) -> Topic {
    Topic::parse(s).expect("bench topic")
}

fn pattern(s: &str) -> TopicPattern {
    TopicPattern::parse(s).expect("bench pattern")
}

fn payload(len: usize) -> JsonPayload {
    JsonPayload::parse(format!("\"{}\"", "x".repeat(len - 2))).expect("bench payload")
}

fn outgoing(topic: &Topic, payload: &JsonPayload, who: &Attribution) -> Outgoing {
    Outgoing {
        topic: topic.clone(),
        payload: payload.clone(),
        source: Uuid::nil(),
        attribution: who.clone(),
        hops: 0,
    }
}

/// Parsing a topic and a pattern of five segments, as the host does for every publish and
/// every subscribe a guest makes.
fn bench_parse(opts: &Opts) {
    const N: u64 = 10_000;
    let t = "chat.v1.room-42.message.sent";
    let ns = measure(opts, N, || {
        let start = Instant::now();
        for _ in 0..N {
            black_box(Topic::parse(black_box(t)).expect("topic"));
        }
        start.elapsed()
    });
    emit("topic_parse", "{\"segments\":5}", ns, "ns");
    let p = "chat.v1.*.message.*";
    let ns = measure(opts, N, || {
        let start = Instant::now();
        for _ in 0..N {
            black_box(TopicPattern::parse(black_box(p)).expect("pattern"));
        }
        start.elapsed()
    });
    emit("pattern_parse", "{\"segments\":5}", ns, "ns");
}

fn bench_match(opts: &Opts) {
    let cases = [
        ("exact", "chat.v1.room.message", "chat.v1.room.message"),
        ("trailing", "chat.v1.*", "chat.v1.room.message"),
        ("mid", "chat.*.room.message", "chat.v1.room.message"),
    ];
    for (kind, p, t) in cases {
        let (p, t) = (pattern(p), topic(t));
        assert!(p.matches(&t));
        const N: u64 = 10_000;
        let ns = measure(opts, N, || {
            let start = Instant::now();
            for _ in 0..N {
                black_box(black_box(&p).matches(black_box(&t)));
            }
            start.elapsed()
        });
        emit("match", &format!("{{\"kind\":\"{kind}\"}}"), ns, "ns");
    }
}

fn bench_publish_one_match(opts: &Opts) {
    let who = Attribution::Verified(PrincipalId::parse("alice").expect("principal"));
    let body = payload(16);
    for subs in [10usize, 1000, 10_000] {
        let bus = Bus::new();
        // Subscriptions on distinct topics, a realistic mix of exact and wildcard patterns;
        // exactly one of them matches the published topic.
        let mut receivers: Vec<Receiver> = (0..subs)
            .map(|i| {
                let p = match i % 3 {
                    0 => format!("svc{i}.v1.event"),
                    1 => format!("svc{i}.v1.*"),
                    _ => format!("svc{i}.*.event"),
                };
                bus.subscribe(pattern(&p), Scope::All)
            })
            .collect();
        let t = topic("svc0.v1.event");
        const N: u64 = 500;
        let ns = measure(opts, N, || {
            let start = Instant::now();
            for _ in 0..N {
                black_box(bus.publish(outgoing(&t, &body, &who)));
            }
            let elapsed = start.elapsed();
            receivers[0].try_drain(usize::MAX);
            elapsed
        });
        assert_eq!(receivers[0].stats().dropped, 0);
        emit(
            "publish_one_match",
            &format!("{{\"subs\":{subs}}}"),
            ns,
            "ns",
        );
    }
}

fn bench_publish_drain(opts: &Opts) {
    let who = Attribution::Verified(PrincipalId::parse("alice").expect("principal"));
    let body = payload(1024);
    let bus = Bus::new();
    let mut rx = bus.subscribe(pattern("bench.*"), Scope::All);
    let t = topic("bench.stream");
    const N: u64 = 256;
    let ns = measure(opts, N, || {
        let start = Instant::now();
        for _ in 0..N {
            bus.publish(outgoing(&t, &body, &who));
        }
        let mut got = 0;
        while got < N as usize {
            got += black_box(rx.try_drain(1024 * 1024)).messages.len();
        }
        start.elapsed()
    });
    assert_eq!(rx.stats().dropped, 0);
    emit("publish_drain_1k", "{}", 1e9 / ns, "msgs/s");
}

/// As [`bench_publish_drain`], but each publish starts from text as the host's publish path
/// does: the topic is parsed and the 1 KiB payload (a fresh copy, as a guest's string arrives)
/// is validated as JSON.
fn bench_publish_drain_parsed(opts: &Opts) {
    let who = Attribution::Verified(PrincipalId::parse("alice").expect("principal"));
    let text = format!("\"{}\"", "x".repeat(1022));
    let bus = Bus::new();
    let mut rx = bus.subscribe(pattern("bench.*"), Scope::All);
    let t = "bench.v1.room-42.stream.sent";
    const N: u64 = 256;
    let ns = measure(opts, N, || {
        let start = Instant::now();
        for _ in 0..N {
            bus.publish(Outgoing {
                topic: Topic::parse(black_box(t)).expect("topic"),
                payload: JsonPayload::parse(black_box(&text).clone()).expect("payload"),
                source: Uuid::nil(),
                attribution: who.clone(),
                hops: 0,
            });
        }
        let mut got = 0;
        while got < N as usize {
            got += black_box(rx.try_drain(1024 * 1024)).messages.len();
        }
        start.elapsed()
    });
    assert_eq!(rx.stats().dropped, 0);
    emit(
        "publish_drain_1k_parsed",
        "{\"topic_segments\":5}",
        1e9 / ns,
        "msgs/s",
    );
}

/// The floor under [`bench_publish_drain_parsed`], in the same 256-message batches: what the
/// payload copy alone costs (allocate, copy 1 KiB, free, as a guest's string arrives and its
/// message is dropped after the drain), and the copy with the JSON validation. The bus's own
/// share is `publish_drain_1k` (which also copies the payload) minus the copy.
fn bench_publish_drain_floor(opts: &Opts) {
    let text = format!("\"{}\"", "x".repeat(1022));
    const N: usize = 256;
    let mut held: Vec<String> = Vec::with_capacity(N);
    let ns = measure(opts, N as u64, || {
        let start = Instant::now();
        for _ in 0..N {
            held.push(black_box(&text).clone());
        }
        black_box(&mut held).clear();
        start.elapsed()
    });
    emit(
        "publish_drain_1k_floor",
        "{\"part\":\"copy\"}",
        1e9 / ns,
        "msgs/s",
    );
    let mut held: Vec<JsonPayload> = Vec::with_capacity(N);
    let ns = measure(opts, N as u64, || {
        let start = Instant::now();
        for _ in 0..N {
            held.push(JsonPayload::parse(black_box(&text).clone()).expect("payload"));
        }
        black_box(&mut held).clear();
        start.elapsed()
    });
    emit(
        "publish_drain_1k_floor",
        "{\"part\":\"copy_validate\"}",
        1e9 / ns,
        "msgs/s",
    );
}

fn bench_fanout(opts: &Opts) {
    let who = Attribution::Verified(PrincipalId::parse("alice").expect("principal"));
    let body = payload(1024);
    let bus = Bus::new();
    let mut rxs: Vec<Receiver> = (0..256)
        .map(|_| bus.subscribe(pattern("fan.out"), Scope::All))
        .collect();
    let t = topic("fan.out");
    const N: u64 = 64;
    let ns = measure(opts, N, || {
        let start = Instant::now();
        for _ in 0..N {
            let r = bus.publish(outgoing(&t, &body, &who));
            debug_assert_eq!(r.delivered, 256);
        }
        let elapsed = start.elapsed();
        for rx in &mut rxs {
            rx.try_drain(usize::MAX);
        }
        elapsed
    });
    assert!(rxs.iter().all(|r| r.stats().dropped == 0));
    emit("fanout_256_1k", "{}", ns, "ns");
}

fn bench_retained() {
    const N: usize = 10_000;
    const PAYLOAD: usize = 64;
    let who = Attribution::Verified(PrincipalId::parse("alice").expect("principal"));
    let bus = Bus::new();
    let mut rx = bus.subscribe(pattern("mem.*"), Scope::All);
    let text = format!("\"{}\"", "x".repeat(PAYLOAD - 2));
    // As on the host's publish path: the topic arrives as a string and is parsed per publish,
    // and the payload is a fresh allocation.
    let topics: Vec<String> = (0..N).map(|_| "mem.usage.sample".to_string()).collect();
    // The figure is the difference across this window, the only one counted.
    COUNTING.store(true, Ordering::SeqCst);
    let before = LIVE.load(Ordering::SeqCst);
    for t in &topics {
        bus.publish(Outgoing {
            topic: topic(t),
            payload: JsonPayload::parse(text.clone()).expect("payload"),
            source: Uuid::nil(),
            attribution: who.clone(),
            hops: 0,
        });
    }
    let after = LIVE.load(Ordering::SeqCst);
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(rx.stats().queued, N as u64);
    let per_msg = (after - before) as f64 / N as f64 - PAYLOAD as f64;
    rx.try_drain(usize::MAX);
    emit(
        "retained_bytes_per_msg",
        &format!("{{\"payload\":{PAYLOAD},\"messages\":{N}}}"),
        per_msg,
        "bytes",
    );
}

/// One figure's benchmark.
type Figure = dyn Fn(&Opts);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let opts = Opts {
        budget: if quick {
            Duration::from_millis(1000)
        } else {
            Duration::from_secs(3)
        },
    };
    // Any other argument names the figures to run (a prefix of their function's name, as
    // `publish_drain`), so one figure can be profiled alone.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str()));
    let figures: [(&str, &Figure); 7] = [
        ("parse", &bench_parse),
        ("match", &bench_match),
        ("publish_one_match", &bench_publish_one_match),
        ("publish_drain_1k", &bench_publish_drain),
        ("publish_drain_1k_parsed", &bench_publish_drain_parsed),
        ("publish_drain_1k_floor", &bench_publish_drain_floor),
        ("fanout", &bench_fanout),
    ];
    for (name, figure) in figures {
        if run(name) {
            figure(&opts);
        }
    }
    if run("retained") {
        bench_retained();
    }
}
