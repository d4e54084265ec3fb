//! Density figures for the runtime bench: resident memory per loaded idle capsule and the
//! cost of loading ten thousand capsules of one component from the compile cache, both taken
//! through the public API only (`Runtime::load`) and the process's own resident set.

use std::path::Path;
use std::time::Instant;

use capsule_runtime::{Capsule, PoolingConfig, Runtime, RuntimeConfig};

use crate::support::{capsule_dir, emit};

/// The process's resident set, in bytes, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("VmRSS")
}

/// The file descriptors the process holds now, from `/proc/self/fd`.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Loads `count` capsules named `<stem>-<i>` of fixture `wasm`, stopping at the first
/// failure (reported on stderr); returns those loaded.
async fn load_many(
    rt: &Runtime,
    state: &Path,
    stem: &str,
    wasm: &str,
    count: usize,
) -> Vec<Capsule> {
    let mut loaded = Vec::with_capacity(count);
    for i in 0..count {
        let dir = capsule_dir(state, &format!("{stem}-{i}"), wasm, "");
        match rt.load(&dir).await {
            Ok(c) => loaded.push(c),
            Err(e) => {
                eprintln!("density: load {i} of {count} failed: {e}");
                break;
            }
        }
    }
    loaded
}

/// `idle_capsule_bytes` for a handler-only capsule (prober) and a run loop that sleeps
/// (kvwriter), then `load_10k_cached`.
pub(crate) async fn density() {
    const LOADED: usize = 1000;
    for (kind, wasm) in [("handler", "prober.wasm"), ("run-loop", "kvwriter.wasm")] {
        let state = tempfile::tempdir().expect("tempdir");
        let mut config = RuntimeConfig::new(state.path());
        // Every run loop holds an instance while idle: the pool must have room for all.
        config.pooling = Some(PoolingConfig::for_capsules(LOADED as u32));
        let rt = Runtime::new(config).expect("runtime");
        // Prime the compile cache and the runtime's one-off allocations.
        for c in load_many(&rt, state.path(), "prime", wasm, 2).await {
            c.unload().await;
        }
        let before = rss_bytes();
        let loaded = load_many(&rt, state.path(), "idle", wasm, LOADED).await;
        // Let run loops reach their idle wait.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let after = rss_bytes();
        let n = loaded.len().max(1) as f64;
        emit(
            "runtime",
            "idle_capsule_bytes",
            &format!("{{\"loaded\":{},\"kind\":\"{kind}\"}}", loaded.len()),
            after.saturating_sub(before) as f64 / n,
            "bytes",
        );
        for c in loaded {
            c.unload().await;
        }
        rt.shutdown().await;
    }

    const TEN_K: usize = 10_000;
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = RuntimeConfig::new(state.path());
    config.pooling = Some(PoolingConfig::for_capsules(TEN_K as u32));
    let rt = Runtime::new(config).expect("runtime");
    for c in load_many(&rt, state.path(), "prime", "prober.wasm", 1).await {
        c.unload().await;
    }
    // The capsule directories exist before the clock starts: the figure is the loads.
    for i in 0..TEN_K {
        capsule_dir(state.path(), &format!("c-{i}"), "prober.wasm", "");
    }
    // First loads record each capsule's installed version (a durable write each); loads
    // after a restart find the record and write nothing.
    for install in ["first", "recorded"] {
        let loaded = load_ten_k(&rt, state.path(), TEN_K, install).await;
        for c in loaded {
            c.unload().await;
        }
    }
    rt.shutdown().await;
}

/// Loads `c-0` … `c-<count - 1>` from `state`, timed, and emits `load_10k_cached`.
async fn load_ten_k(rt: &Runtime, state: &Path, count: usize, install: &str) -> Vec<Capsule> {
    let fds_before = open_fds();
    let start = Instant::now();
    let mut loaded = Vec::with_capacity(count);
    let mut lap = Instant::now();
    for i in 0..count {
        if i % 1000 == 0 && i > 0 {
            eprintln!(
                "density: {i} loaded ({install}), last 1000 took {:?}, {} fds",
                lap.elapsed(),
                open_fds()
            );
            lap = Instant::now();
        }
        match rt.load(state.join("capsules").join(format!("c-{i}"))).await {
            Ok(c) => loaded.push(c),
            Err(e) => {
                eprintln!("density: load {i} of {count} failed: {e}");
                break;
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64;
    let rss = rss_bytes();
    let fds = open_fds().saturating_sub(fds_before);
    emit(
        "runtime",
        "load_10k_cached",
        &format!(
            "{{\"component\":\"prober\",\"install\":\"{install}\",\"loaded\":{},\"rss_bytes\":{rss},\"fds\":{fds}}}",
            loaded.len()
        ),
        ns,
        "ns",
    );
    loaded
}
