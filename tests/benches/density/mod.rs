//! Density figures for the runtime bench: resident memory per loaded idle capsule and the
//! cost of loading ten thousand capsules of one component from the compile cache, both taken
//! through the public API only (`Runtime::load`) and the process's own resident set.

use std::path::Path;
use std::time::Instant;

use capsule_runtime::{Capsule, Runtime, RuntimeConfig};

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
        let rt = Runtime::new(RuntimeConfig::new(state.path())).expect("runtime");
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
    let rt = Runtime::new(RuntimeConfig::new(state.path())).expect("runtime");
    for c in load_many(&rt, state.path(), "prime", "prober.wasm", 1).await {
        c.unload().await;
    }
    // The capsule directories exist before the clock starts: the figure is the loads.
    for i in 0..TEN_K {
        capsule_dir(state.path(), &format!("c-{i}"), "prober.wasm", "");
    }
    let start = Instant::now();
    let mut loaded = Vec::with_capacity(TEN_K);
    for i in 0..TEN_K {
        match rt
            .load(state.path().join("capsules").join(format!("c-{i}")))
            .await
        {
            Ok(c) => loaded.push(c),
            Err(e) => {
                eprintln!("density: load {i} of {TEN_K} failed: {e}");
                break;
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64;
    let rss = rss_bytes();
    emit(
        "runtime",
        "load_10k_cached",
        &format!(
            "{{\"component\":\"prober\",\"loaded\":{},\"rss_bytes\":{rss}}}",
            loaded.len()
        ),
        ns,
        "ns",
    );
    for c in loaded {
        c.unload().await;
    }
    rt.shutdown().await;
}
