//! Storage benchmarks from inside a guest; prints one JSON object per line:
//! `{"group":"storage","name":N,"params":{...},"value":V,"unit":U}`.
//!
//! Run with `cargo xtask bench storage [--quick]` (release build). KV sets are durable commits
//! (fsync per set); figures are medians of timed samples.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use capsule_runtime::{Capsule, Runtime, RuntimeConfig};
use support::{budget, call, capsule_dir, emit, median};

/// Runs `action` with `args` (performing `ops` operations) for the budget; median ops/s.
async fn rate(c: &Capsule, budget: Duration, action: &str, args: &str, ops: u64) -> f64 {
    call(c, action, args).await;
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        let t = Instant::now();
        call(c, action, args).await;
        samples.push(ops as f64 / t.elapsed().as_secs_f64());
    }
    median(samples)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let budget = budget();
    // On disk under the target directory (not a tmpfs /tmp), so fsync costs what it costs.
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let rt = Runtime::new(RuntimeConfig::new(state.path())).expect("runtime");
    let dir = capsule_dir(
        state.path(),
        "bench",
        "prober.wasm",
        "[capabilities]\nfs_read = [\"*\"]\nfs_write = [\"*\"]\n",
    );
    let c = rt.load(&dir).await.expect("load");

    let sets = 50;
    let v = rate(
        &c,
        budget,
        "kv-loop",
        &format!("{{\"mode\":\"set\",\"count\":{sets},\"size\":100}}"),
        sets,
    )
    .await;
    emit(
        "storage",
        "kv_set",
        "{\"value_bytes\":100,\"durable\":true}",
        v,
        "ops/s",
    );
    let gets = 2000;
    let v = rate(
        &c,
        budget,
        "kv-loop",
        &format!("{{\"mode\":\"get\",\"count\":{gets},\"size\":100}}"),
        gets,
    )
    .await;
    emit("storage", "kv_get", "{\"value_bytes\":100}", v, "ops/s");

    const MIB: u64 = 1024 * 1024;
    let files = 16;
    let v = rate(
        &c,
        budget,
        "fs-loop",
        &format!("{{\"mode\":\"write\",\"path\":\"bench.bin\",\"count\":{files},\"size\":{MIB}}}"),
        files,
    )
    .await;
    emit(
        "storage",
        "fs_write",
        "{\"file_bytes\":1048576}",
        v,
        "MiB/s",
    );
    let v = rate(
        &c,
        budget,
        "fs-loop",
        &format!("{{\"mode\":\"read\",\"path\":\"bench.bin\",\"count\":{files},\"size\":0}}"),
        files,
    )
    .await;
    emit("storage", "fs_read", "{\"file_bytes\":1048576}", v, "MiB/s");
    rt.shutdown().await;
}
