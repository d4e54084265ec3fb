//! Grouped durable KV commits seen from real guests: many capsules writing at once are all
//! acknowledged only once durable (checked across `kill -9` of the host), share one
//! principal's storage quota exactly, and a refused or invalid write in the crowd fails alone.

use std::time::{Duration, Instant};

use capsule_runtime::store::Namespace;
use capsule_runtime::vfs::Ctl;
use serde_json::json;

use crate::common::*;

/// The indices `i` of every `acknowledged k<i>` line in a kvwriter log.
fn acknowledged(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("acknowledged k")? + "acknowledged k".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_acknowledged_to_concurrent_writers_survives_kill_dash_nine() {
    const WRITERS: usize = 8;
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let value = uuid::Uuid::new_v4().to_string();
    let dirs: Vec<_> = (0..WRITERS)
        .map(|i| {
            let name = format!("kvwriter-{i}");
            write_capsule(
                &state.path().join("capsules").join(&name),
                &name,
                "0.1.0",
                "kvwriter.wasm",
                &format!(
                    "[env.value]\ntype = \"text\"\ndefault = \"{value}-{i}\"\n\
                     [env.count]\ntype = \"text\"\ndefault = \"1000000\"\n"
                ),
            )
        })
        .collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_capsule-test-host"))
        .arg(state.path())
        .args(&dirs)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let log = |i: usize| {
        std::fs::read_to_string(
            state
                .path()
                .join(format!("home/default/.local/log/kvwriter-{i}.log")),
        )
        .unwrap_or_default()
    };
    // Kill while every writer is mid-stream: each has had some sets acknowledged.
    let deadline = Instant::now() + Duration::from_secs(180);
    while (0..WRITERS).any(|i| acknowledged(&log(i)).len() < 5) {
        assert!(Instant::now() < deadline, "the writers never got going");
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the child host exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap_or_else(|e| panic!("{e}"));
    child.wait().unwrap_or_else(|e| panic!("{e}"));

    let rt = capsule_runtime::Runtime::new(config(state.path())).unwrap_or_else(|e| panic!("{e}"));
    let mut checked = 0;
    for i in 0..WRITERS {
        let ns = Namespace::new(&pid("default"), &format!("kvwriter-{i}"));
        for n in acknowledged(&log(i)) {
            let got = rt
                .kv()
                .get(&ns, &format!("k{n}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                got.as_deref(),
                Some(format!("{value}-{i}-{n}").as_bytes()),
                "writer {i} was told k{n} was stored"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5 * WRITERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guest_writers_share_one_quota_exactly_and_bad_writes_fail_alone() {
    const WRITERS: usize = 6;
    const SETS: usize = 10;
    let h = host();
    h.profile("default", "[quotas]\nmax_storage_bytes = 3000\n");
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        writers.push(h.load(&format!("quota-{i}"), "prober.wasm", "").await);
    }
    let junk = h.load("junk", "prober.wasm", "").await;
    let sets = futures::future::join_all(writers.iter().map(|c| async move {
        let mut accepted = 0usize;
        for j in 0..SETS {
            let r = call(
                c,
                "kv-set-size",
                json!({"key": format!("k{j}"), "size": 100}),
            )
            .await;
            if r.get("err").is_none() {
                accepted += 1;
            } else {
                assert_eq!(err(&r), "quota");
            }
        }
        accepted
    }));
    // Invalid and mismatched writes interleaved with the others are refused on their own.
    let bad = async {
        for _ in 0..SETS {
            assert_eq!(
                err(&call(&junk, "kv-set", json!({"key": "", "value": "v"})).await),
                "invalid-key"
            );
            assert_eq!(
                err(&call(
                    &junk,
                    "kv-cas",
                    json!({"key": "c", "expected": "x", "new": "1"})
                )
                .await),
                "cas-mismatch"
            );
        }
    };
    let (accepted, ()) = futures::join!(sets, bad);
    let accepted: usize = accepted.iter().sum();

    let default = pid("default");
    let files =
        h.rt.kv()
            .file_usage(&default, &Ctl::uncancellable())
            .unwrap_or_else(|e| panic!("{e}"));
    // Each entry costs its 2-byte key plus 100 bytes: exactly as many fit as the quota allows.
    assert!(files < 3000, "{files}");
    assert_eq!(accepted as u64, (3000 - files) / 102);
    assert_eq!(h.rt.kv().usage(&default).ok(), Some(accepted as u64 * 102));
    let mut stored = 0;
    for c in &writers {
        stored += ok(&call(c, "kv-list", json!({"prefix": ""})).await)
            .as_array()
            .map_or(0, Vec::len);
    }
    assert_eq!(stored, accepted);
    assert_eq!(
        ok(&call(&junk, "kv-list", json!({"prefix": ""})).await),
        &json!([])
    );
    h.rt.shutdown().await;
}
