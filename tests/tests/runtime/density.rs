//! Density: a loaded idle capsule holds no file descriptor of its own (its owner's home and
//! tmp are shared with every capsule of that owner, its workspace and log are opened by their
//! first use), and what is opened late is opened as confined as what used to be opened at load.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::common::*;

const FILES: &str =
    "[capabilities]\nfs_read = [\"*\", \"home://\"]\nfs_write = [\"*\", \"home://\"]\n";

/// What this process's descriptors under `dir` point at now.
fn fds_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        panic!("cannot read /proc/self/fd");
    };
    // Descriptors of tests running beside this one never point into this test's state. The
    // install-record sync opens records and their directories for a moment, whatever is
    // loaded: those are the runtime's, never held by an idle capsule.
    let records = dir.join("installed");
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir) && !target.starts_with(&records))
        .collect()
}

/// Twenty more idle capsules of the same owner add no descriptor; a capsule's workspace is
/// opened by its first file call, and its log by its first record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_capsules_hold_no_descriptors_of_their_own() {
    let h = host();
    let state = std::fs::canonicalize(h.state()).unwrap_or_else(|e| panic!("{e}"));
    let first = h.load("idle-0", "prober.wasm", FILES).await;
    let one = fds_under(&state);
    let mut idle = Vec::new();
    for i in 1..=20 {
        idle.push(h.load(&format!("idle-{i}"), "prober.wasm", FILES).await);
    }
    let many = fds_under(&state);
    assert!(
        many.len() <= one.len(),
        "20 more idle capsules added descriptors: {one:?} -> {many:?}"
    );
    let workspace = state.join("workspaces").join("idle-0");
    assert!(!many.iter().any(|p| p.starts_with(&workspace)), "{many:?}");
    assert!(!many.iter().any(|p| p.ends_with("idle-0.log")), "{many:?}");

    ok(&call(
        &first,
        "write",
        json!({ "path": "cwd://a.txt", "content": "x" }),
    )
    .await);
    ok(&call(
        &first,
        "log",
        json!({ "level": "info", "message": "hello" }),
    )
    .await);
    let used = fds_under(&state);
    assert!(used.iter().any(|p| p.starts_with(&workspace)), "{used:?}");
    assert!(used.iter().any(|p| p.ends_with("idle-0.log")), "{used:?}");
    assert_eq!(
        std::fs::read_to_string(workspace.join("a.txt")).unwrap_or_else(|e| panic!("{e}")),
        "x"
    );
    h.rt.shutdown().await;
}

/// A link put in place of a capsule's workspace or log directory after the load and before
/// the first use is refused, never followed: nothing outside is read or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_planted_before_first_use_does_not_escape() {
    let h = host();
    let outside = outside_tmp();
    std::fs::write(outside.path().join("secret"), "s").unwrap_or_else(|e| panic!("{e}"));
    let p = h.load("planted", "prober.wasm", FILES).await;
    let workspace = h.state().join("workspaces").join("planted");
    std::fs::remove_dir_all(&workspace).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(outside.path(), &workspace).unwrap_or_else(|e| panic!("{e}"));
    let owner_local = h.state().join("home").join("default").join(".local");
    let logs = owner_local.join("log");
    if logs.exists() {
        std::fs::remove_dir_all(&logs).unwrap_or_else(|e| panic!("{e}"));
    }
    std::os::unix::fs::symlink(outside.path(), &logs).unwrap_or_else(|e| panic!("{e}"));

    let read = call(&p, "read", json!({ "path": "cwd://secret" })).await;
    assert!(read.get("ok").is_none(), "read through the link: {read}");
    let wrote = call(
        &p,
        "write",
        json!({ "path": "cwd://planted.txt", "content": "x" }),
    )
    .await;
    assert!(wrote.get("ok").is_none(), "wrote through the link: {wrote}");
    call(&p, "log", json!({ "level": "info", "message": "escaped" })).await;

    let mut names: Vec<String> = std::fs::read_dir(outside.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"], "something was written outside");
    h.rt.shutdown().await;
}
