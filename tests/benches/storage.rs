//! Storage benchmarks from inside a guest; prints one JSON object per line:
//! `{"group":"storage","name":N,"params":{...},"value":V,"unit":U}`.
//!
//! Run with `cargo xtask bench storage [--quick]` (release build). KV sets are durable commits
//! (fsync per set); figures are medians of timed samples.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsule_runtime::{Capsule, Runtime, RuntimeConfig};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CAPSULE_FIXTURES")).join(file)
}

fn emit(name: &str, params: &str, value: f64, unit: &str) {
    println!(
        "{{\"group\":\"storage\",\"name\":\"{name}\",\"params\":{params},\"value\":{value:.2},\"unit\":\"{unit}\"}}"
    );
}

async fn call(c: &Capsule, action: &str, args: &str) {
    let r = c
        .invoke(action, args.as_bytes(), None)
        .await
        .expect("invoke");
    let data = r.data.unwrap_or_default();
    assert!(!data.contains("\"err\""), "{action}: {data}");
}

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
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Duration::from_millis(1000)
    } else {
        Duration::from_secs(3)
    };
    // On disk under the target directory (not a tmpfs /tmp), so fsync costs what it costs.
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let rt = Runtime::new(RuntimeConfig::new(state.path())).expect("runtime");
    let dir = state.path().join("capsules").join("bench");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"bench\"\nversion = \"0.1.0\"\n[[component]]\nid = \"bench\"\nfile = {:?}\n\
             [capabilities]\nfs_read = [\"*\"]\nfs_write = [\"*\"]\n",
            fixture("prober.wasm").display().to_string()
        ),
    )
    .expect("manifest");
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
    emit("kv_get", "{\"value_bytes\":100}", v, "ops/s");

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
    emit("fs_write", "{\"file_bytes\":1048576}", v, "MiB/s");
    let v = rate(
        &c,
        budget,
        "fs-loop",
        &format!("{{\"mode\":\"read\",\"path\":\"bench.bin\",\"count\":{files},\"size\":0}}"),
        files,
    )
    .await;
    emit("fs_read", "{\"file_bytes\":1048576}", v, "MiB/s");
    rt.shutdown().await;
}
