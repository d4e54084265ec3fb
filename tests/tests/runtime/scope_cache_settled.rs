//! A warm instance's env overlay, even one whose file has not changed for seconds, is still
//! checked by its content: every change an operator can make to it (a rewrite keeping size and
//! mtime, a new file renamed over it, removal) applies to the principal's next call, and
//! nobody else's call ever sees it.

use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::common::*;

/// A manifest with one env variable, so the principal's overlay decides what the guest sees.
pub(crate) const MANIFEST: &str = "[env.MODEL]\ntype = \"text\"\ndefault = \"m1\"\n";

/// Waits (bounded by the clock) until the file's last change is more than two seconds old, so
/// a host that trusted an unchanged-looking file after a quiet spell would trust this one.
pub(crate) fn settle(path: &std::path::Path) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{e}"));
    let changed = Duration::new(
        u64::try_from(meta.ctime()).unwrap_or(0),
        u32::try_from(meta.ctime_nsec()).unwrap_or(0),
    );
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_else(|e| panic!("{e}"));
        if now > changed + Duration::from_millis(2_300) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_overlay_is_still_checked_and_every_change_applies() {
    let h = host_with(|c| c.handler_pool_size = 1);
    let dir = h.state().join("home/alice/.config/env");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("settled.env.json");
    std::fs::write(&file, r#"{"MODEL": "a1"}"#).unwrap_or_else(|e| panic!("{e}"));
    settle(&file);
    let p = h.load("settled", "prober.wasm", MANIFEST).await;
    let model = |who: &'static str| {
        let p = p.clone();
        async move { ok(&call_as(&p, "config", json!({"key": "MODEL"}), Some(who)).await).clone() }
    };
    assert_eq!(model("alice").await, "a1");
    assert_eq!(model("alice").await, "a1", "the warm instance, same file");
    assert_eq!(p.call_stats().warm, 1);

    // Rewritten in place with its size and mtime kept.
    let mtime = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&file, r#"{"MODEL": "a2"}"#).unwrap_or_else(|e| panic!("{e}"));
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(mtime))
        .unwrap_or_else(|e| panic!("{e}"));
    settle(&file);
    assert_eq!(model("alice").await, "a2");
    assert_eq!(model("alice").await, "a2");

    // A new file of the same size and mtime renamed over it.
    let next = dir.join("next.tmp");
    std::fs::write(&next, r#"{"MODEL": "a3"}"#).unwrap_or_else(|e| panic!("{e}"));
    std::fs::File::options()
        .write(true)
        .open(&next)
        .and_then(|f| f.set_modified(mtime))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&next, &file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model("alice").await, "a3");

    // Bob, on the only slot in between, sees the default, and alice hers after him.
    assert_eq!(model("bob").await, "m1");
    assert_eq!(model("alice").await, "a3");

    // Removed: the default again.
    std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model("alice").await, "m1");
    assert_eq!(p.call_stats().failed, 0);
    h.rt.shutdown().await;
}
