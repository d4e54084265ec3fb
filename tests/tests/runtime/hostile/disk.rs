//! Disk: quotas over a principal's home, tmp and workspace together with its KV data, log
//! rotation, deep trees, and private state files whatever the umask.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Bystander;
use super::files::{as_, audited, write};
use crate::common::*;

/// A capsule with no capabilities fills its `/tmp/` only up to its principal's storage quota,
/// shared with KV: writes, appends, `set-len`, positional writes beyond the end, copies and
/// file counts are all charged; the refused write leaves nothing behind, a rename over a file
/// frees its bytes, and another principal is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_quota_bounds_tmp_with_kv_for_a_capsule_without_capabilities() {
    const QUOTA: u64 = 1_000_000;
    let h = host();
    h.profile(
        "mallory",
        &format!("[quotas]\nmax_storage_bytes = {QUOTA}\n"),
    );
    let bystander = Bystander::start(&h).await;
    let hog = h.load("hog", "prober.wasm", "").await;
    let m = |action: &'static str, args: Value| {
        let hog = hog.clone();
        async move { as_(&hog, "mallory", action, args).await }
    };
    ok(&m("write-size", json!({"path": "/tmp/a", "size": 600_000})).await);
    assert_eq!(
        err(&m("write-size", json!({"path": "/tmp/b", "size": 600_000})).await),
        "quota"
    );
    assert!(audited("hog", "write", "/tmp/b", "quota"));
    assert_eq!(ok(&m("exists", json!({"path": "/tmp/b"})).await), false);
    assert_eq!(
        err(&m(
            "append",
            json!({"path": "/tmp/a", "content": "x".repeat(500_000)})
        )
        .await),
        "quota"
    );
    assert_eq!(
        err(&m("copy", json!({"src": "/tmp/a", "dst": "/tmp/c"})).await),
        "quota"
    );
    assert_eq!(ok(&m("exists", json!({"path": "/tmp/c"})).await), false);
    let handle = ok(&m("open", json!({"path": "/tmp/s", "mode": "read-write"})).await).clone();
    assert_eq!(
        err(&m(
            "handle-len",
            json!({"index": handle, "size": 10_000_000_000u64})
        )
        .await),
        "quota"
    );
    assert_eq!(
        err(&m(
            "handle-write",
            json!({"index": handle, "offset": 5_000_000, "data": "x"})
        )
        .await),
        "quota"
    );
    assert_eq!(
        ok(&m("stat", json!({"path": "/tmp/s"})).await)["size"],
        json!(0)
    );
    ok(&m("close-all", json!({})).await);
    assert_eq!(
        err(&m("kv-set-size", json!({"key": "big", "size": 500_000})).await),
        "quota",
        "KV shares the quota with files"
    );
    bystander.check("filling /tmp").await;

    // A rename over a file frees the replaced file's bytes; so does unlinking.
    ok(&m("write", json!({"path": "/tmp/small", "content": "x"})).await);
    ok(&m("rename", json!({"src": "/tmp/small", "dst": "/tmp/a"})).await);
    ok(&m("write-size", json!({"path": "/tmp/d", "size": 600_000})).await);
    ok(&m("unlink", json!({"path": "/tmp/d"})).await);
    ok(&m("write-size", json!({"path": "/tmp/e", "size": 600_000})).await);
    // Empty files are not free: each entry is charged.
    ok(&m("mkdir", json!({"path": "/tmp/many"})).await);
    let touched = ok(&m("touch-many", json!({"dir": "/tmp/many", "count": 5000})).await).clone();
    assert_eq!(touched["error"], "quota", "{touched}");
    assert!(touched["made"].as_u64().unwrap_or(0) < 5000, "{touched}");
    ok(&m("rmrf", json!({"path": "/tmp/many"})).await);
    ok(&m("unlink", json!({"path": "/tmp/e"})).await);
    ok(&m("kv-set-size", json!({"key": "big", "size": 500_000})).await);

    // Another principal's quota is its own.
    ok(&as_(
        &hog,
        "alice",
        "write-size",
        json!({"path": "/tmp/a", "size": 600_000}),
    )
    .await);
    ok(&as_(
        &hog,
        "alice",
        "write-size",
        json!({"path": "/tmp/b", "size": 600_000}),
    )
    .await);
    bystander.check("after the quota attack").await;
    h.rt.shutdown().await;
}

/// What a principal already keeps in its home counts from its first use, workspace writes
/// are charged to the principal who makes them, and a huge sparse file is never copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_quota_counts_the_existing_home_and_workspace_writes() {
    const QUOTA: u64 = 1_000_000;
    let h = host();
    for who in ["bob", "erin"] {
        h.profile(who, &format!("[quotas]\nmax_storage_bytes = {QUOTA}\n"));
    }
    write(&h.state().join("home/erin/big.bin"), &vec![7u8; 900_000]);
    let bystander = Bystander::start(&h).await;
    let p = h
        .load(
            "wsw",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"*\"]\nfs_write = [\"*\"]\n",
        )
        .await;
    assert_eq!(
        err(&as_(
            &p,
            "erin",
            "write-size",
            json!({"path": "/tmp/x", "size": 200_000})
        )
        .await),
        "quota",
        "erin's existing 900 kB count"
    );
    ok(&as_(
        &p,
        "bob",
        "write-size",
        json!({"path": "w1", "size": 600_000}),
    )
    .await);
    assert_eq!(
        err(&as_(
            &p,
            "bob",
            "write-size",
            json!({"path": "w2", "size": 600_000})
        )
        .await),
        "quota"
    );
    assert_eq!(
        err(&as_(&p, "bob", "copy", json!({"src": "w1", "dst": "w3"})).await),
        "quota"
    );
    // alice (default quota) writes what bob may not.
    ok(&as_(
        &p,
        "alice",
        "write-size",
        json!({"path": "w2", "size": 600_000}),
    )
    .await);
    // A huge sparse file is charged what it would become: copying it is refused up front,
    // without reading a byte of it.
    let sparse = std::fs::File::create(h.state().join("workspaces/wsw/sparse"))
        .unwrap_or_else(|e| panic!("{e}"));
    sparse.set_len(64 << 30).unwrap_or_else(|e| panic!("{e}"));
    for who in ["alice", "bob"] {
        assert_eq!(
            err(&as_(&p, who, "copy", json!({"src": "sparse", "dst": "copy"})).await),
            "quota",
            "{who}"
        );
    }
    assert!(!h.state().join("workspaces/wsw/copy").exists());
    bystander.check("workspace quota").await;
    h.rt.shutdown().await;
}

/// A capsule that logs without end fills at most two log files of the documented size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_at_the_documented_size() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h.load("chatty", "prober.wasm", "").await;
    let max = capsule_runtime::MAX_LOG_FILE_BYTES;
    let line = 16_000u64;
    let count = (max + max / 2) / line;
    let r = as_(
        &p,
        "bob",
        "log-flood",
        json!({"count": count, "size": line, "last": "the-last-line"}),
    )
    .await;
    ok(&r);
    bystander.check("log flood").await;
    let dir = h.state().join("home/bob/.local/log");
    let current = std::fs::metadata(dir.join("chatty.log")).map_or(0, |m| m.len());
    let previous = std::fs::metadata(dir.join("chatty.log.1")).map_or(0, |m| m.len());
    let record = line + 128;
    assert!(current <= max + record, "current log is {current} bytes");
    assert!(
        previous > 0 && previous <= max + record,
        "previous log is {previous} bytes"
    );
    let text = std::fs::read_to_string(dir.join("chatty.log")).unwrap_or_default();
    assert!(text.contains("the-last-line"), "the newest record is kept");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chatty"))
        .collect();
    assert_eq!(names.len(), 2, "one previous generation only: {names:?}");
    h.rt.shutdown().await;
}

/// Trees cannot be made deeper or longer than a guest path can name (so every walk of them is
/// bounded), and removing the deepest allowed tree works without recursion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_trees_stay_addressable_and_removable() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h
        .load(
            "digger",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n",
        )
        .await;
    let depth = capsule_runtime::vfs::MAX_GUEST_DEPTH;
    let deep = format!("home://deep/{}", vec!["a"; depth - 1].join("/"));
    ok(&as_(&p, "bob", "mkdir-all", json!({ "path": deep })).await);
    assert_eq!(
        err(&as_(&p, "bob", "mkdir", json!({ "path": format!("{deep}/a") })).await),
        "invalid-path"
    );
    ok(&as_(&p, "bob", "mkdir-all", json!({"path": "home://other/b"})).await);
    let r = as_(
        &p,
        "bob",
        "rename",
        json!({"src": "home://deep", "dst": "home://other/b/deep"}),
    )
    .await;
    assert_eq!(
        err(&r),
        "too-large",
        "moving it deeper than a path can name"
    );
    // Long names: a tree of 200-byte names cannot be moved under a long path either.
    let name = "n".repeat(200);
    let long = format!("home://long/{}", [name.as_str(); 15].join("/"));
    ok(&as_(&p, "bob", "mkdir-all", json!({ "path": long })).await);
    let wide = format!("home://wide/{}", [name.as_str(); 6].join("/"));
    ok(&as_(&p, "bob", "mkdir-all", json!({ "path": wide })).await);
    let r = as_(
        &p,
        "bob",
        "rename",
        json!({"src": "home://long", "dst": format!("{wide}/long")}),
    )
    .await;
    assert_eq!(
        err(&r),
        "too-large",
        "moving it longer than a path can name"
    );
    bystander.check("deepening a tree").await;
    assert_eq!(
        ok(&as_(&p, "bob", "rmrf", json!({"path": "home://deep"})).await),
        &json!(depth)
    );
    for dir in ["home://other", "home://long", "home://wide"] {
        ok(&as_(&p, "bob", "rmrf", json!({ "path": dir })).await);
    }
    h.rt.shutdown().await;
}

fn private_walk(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.push((p.clone(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            private_walk(&p, out);
        }
    }
}

/// Under a umask of 0, every file and directory the host creates in its state directory (KV
/// database, compile cache, installed versions, host key, homes, logs, workspaces) is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_whatever_the_umask() {
    let base = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = base.path().join("state");
    let value = uuid::Uuid::new_v4().to_string();
    let dir = write_capsule(
        &base.path().join("kvwriter"),
        "kvwriter",
        "0.1.0",
        "kvwriter.wasm",
        &format!("[env.value]\ntype = \"text\"\ndefault = {value:?}\n"),
    );
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_capsule-test-host"))
        .arg(&state)
        .arg(&dir)
        .env_remove("CAPSULE_HOST_KEY_FILE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let log = state.join("home/default/.local/log/kvwriter.log");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&format!("acknowledged {value}"))
    {
        assert!(Instant::now() < deadline, "the child never acknowledged");
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the child host exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap_or_else(|e| panic!("{e}"));
    child.wait().unwrap_or_else(|e| panic!("{e}"));
    let mut entries = Vec::new();
    private_walk(&state, &mut entries);
    for expected in [
        "kv.redb",
        "cache",
        "installed",
        "keys/host.key",
        "workspaces",
    ] {
        assert!(
            entries.iter().any(|(p, _)| p.ends_with(expected)),
            "{expected} was not created: {entries:?}"
        );
    }
    let public: Vec<_> = entries
        .iter()
        .filter(|(_, mode)| mode & 0o077 != 0)
        .collect();
    assert!(public.is_empty(), "not private: {public:?}");
}
