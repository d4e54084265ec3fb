//! Files: log rotation, deep trees, and private state files whatever the umask.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsule_runtime::Capsule;
use serde_json::{Value, json};

use super::Bystander;
use crate::common::*;

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, content).unwrap_or_else(|e| panic!("{e}"));
}

/// Calls the prober `c` as `principal`.
async fn as_(c: &Capsule, principal: &str, action: &str, args: Value) -> Value {
    call_as(c, action, args, Some(principal)).await
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
    let dir = base.path().join("kvwriter");
    write(
        &dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"kvwriter\"\nversion = \"0.1.0\"\n[[component]]\nid = \"kvwriter\"\nfile = {:?}\n\
             [env.value]\ntype = \"text\"\ndefault = {value:?}\n",
            fixture("kvwriter.wasm").display().to_string()
        )
        .as_bytes(),
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
