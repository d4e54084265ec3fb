//! Storage benchmarks from inside a guest; prints one JSON object per line:
//! `{"group":"storage","name":N,"params":{...},"value":V,"unit":U}`.
//!
//! Run with `cargo xtask bench storage [--quick]` (release build). KV sets are durable commits
//! (fsync per set); figures are medians of timed samples.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

// Measured on the allocator the `capsule` program ships with (README, Benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Capsules setting keys at once in `kv_set_concurrent`, each acting for its own principal.
const WRITERS: usize = 64;

/// Acknowledged sets per second while [`WRITERS`] capsules, each acting for a principal of
/// its own, run durable set loops at the same time (median over rounds), and what the timed
/// rounds' commits were like: writes per commit and mean commit time (JSON params).
async fn concurrent_sets(rt: &Runtime, state: &std::path::Path, budget: Duration) -> (f64, String) {
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let dir = capsule_dir(state, &format!("writer-{i}"), "prober.wasm", "");
        writers.push(rt.load(&dir).await.expect("load writer"));
    }
    let sets = 20u64;
    let args = format!("{{\"mode\":\"set\",\"count\":{sets},\"size\":100}}");
    let principals: Vec<_> = (0..WRITERS)
        .map(|i| capsule_runtime::PrincipalId::parse(&format!("writer{i}")).expect("principal"))
        .collect();
    let round = || {
        futures::future::join_all(writers.iter().zip(&principals).map(|(c, p)| {
            let args = args.as_str();
            async move {
                let r = c
                    .invoke("kv-loop", args.as_bytes(), Some(p.clone()))
                    .await
                    .expect("invoke");
                let data = r.data.unwrap_or_default();
                assert!(!data.contains("\"err\""), "kv-loop: {data}");
            }
        }))
    };
    round().await;
    let mut samples = Vec::new();
    let before = rt.kv().commit_stats();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        let t = Instant::now();
        round().await;
        samples.push((sets * WRITERS as u64) as f64 / t.elapsed().as_secs_f64());
    }
    let busy = start.elapsed();
    let after = rt.kv().commit_stats();
    for w in writers {
        w.unload().await;
    }
    let groups = (after.group_commits - before.group_commits).max(1) as f64;
    let commit_ns = (after.group_commit_ns - before.group_commit_ns) as f64;
    let shape = format!(
        "\"commits\":{},\"grouped_writes\":{},\"writes_per_group\":{:.1},\"group_commit_us\":{:.0},\"committer_busy\":{:.2}",
        after.commits - before.commits,
        after.grouped_writes - before.grouped_writes,
        (after.grouped_writes - before.grouped_writes) as f64 / groups,
        commit_ns / groups / 1e3,
        commit_ns / busy.as_nanos() as f64,
    );
    (median(samples), shape)
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

    let (v, shape) = concurrent_sets(&rt, state.path(), budget).await;
    emit(
        "storage",
        "kv_set_concurrent",
        &format!("{{\"writers\":{WRITERS},\"value_bytes\":100,\"durable\":true,{shape}}}"),
        v,
        "ops/s",
    );

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
