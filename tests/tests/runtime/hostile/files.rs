//! Files: traversal and symlinks out of a mount, hard links that would turn read into write,
//! the host-managed parts of a home, disk quotas (home, tmp, workspace, with KV), log rotation,
//! deep trees, opaque errors, and private state files whatever the umask.

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

/// Whether `capsule` emitted an fs audit event for `op` on `path` refused with `code`.
fn audited(capsule: &str, op: &str, path: &str, code: &str) -> bool {
    audit_events(capsule).iter().any(|e| {
        e.get("target").map(String::as_str) == Some(capsule_runtime::AUDIT_FS_TARGET)
            && e.get("op").map(String::as_str) == Some(op)
            && e.get("path").map(String::as_str) == Some(path)
            && e.get("code").map(String::as_str) == Some(code)
    })
}

/// `..` and symlinks never lead out of a mount, whatever the grant; each refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_symlinks_never_leave_a_mount() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let home = h.state().join("home").join("bob");
    write(&home.join("notes/a.txt"), b"hello");
    std::os::unix::fs::symlink("/etc/passwd", home.join("notes/out-link"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("../../../../..", home.join("notes/up-link"))
        .unwrap_or_else(|e| panic!("{e}"));
    let p = h
        .load(
            "climber",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"*\", \"home://\"]\nfs_write = [\"*\", \"home://\"]\n",
        )
        .await;
    for path in [
        "home://../../etc/passwd",
        "home://notes/../../x",
        "/tmp/../../etc/passwd",
        "cwd://a/../../etc/passwd",
        "../x",
    ] {
        assert_eq!(
            err(&as_(&p, "bob", "read", json!({ "path": path })).await),
            "boundary-escape",
            "{path}"
        );
    }
    assert!(audited(
        "climber",
        "read",
        "home://../../etc/passwd",
        "boundary-escape"
    ));
    for path in ["home://notes/out-link", "home://notes/up-link/etc/passwd"] {
        assert_eq!(
            err(&as_(&p, "bob", "read", json!({ "path": path })).await),
            "boundary-escape",
            "{path}"
        );
        assert_eq!(
            err(&as_(&p, "bob", "write", json!({ "path": path, "content": "x" })).await),
            "boundary-escape",
            "{path}"
        );
    }
    bystander.check("traversal and symlinks out").await;
    assert_eq!(
        ok(&as_(&p, "bob", "read", json!({"path": "home://notes/a.txt"})).await),
        "hello"
    );
    h.rt.shutdown().await;
}

/// A hard link from a file the capsule may only read into a place it may write is refused, so
/// the file cannot be rewritten through the link, neither directly nor by an overlay commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_cannot_turn_read_into_write() {
    for overlay in [false, true] {
        let workspace =
            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
        write(&workspace.path().join("ro.txt"), b"original");
        std::fs::create_dir_all(workspace.path().join("out")).unwrap_or_else(|e| panic!("{e}"));
        let root = workspace.path().to_path_buf();
        let h = host_with(move |c| {
            c.workspace_root = Some(root);
            c.overlay_workspace = overlay;
        });
        let bystander = Bystander::start(&h).await;
        let name = if overlay { "linker-overlay" } else { "linker" };
        let p = h
            .load(
                name,
                "prober.wasm",
                "[capabilities]\nfs_read = [\"*\"]\nfs_write = [\"cwd://out\"]\n",
            )
            .await;
        for (src, dst) in [
            ("ro.txt", "out/l.txt"),
            ("cwd://./ro.txt", "cwd://out/l.txt"),
            ("out/../ro.txt", "out/sub/../l.txt"),
        ] {
            assert_eq!(
                err(&as_(&p, "bob", "link", json!({"src": src, "dst": dst})).await),
                "capability-denied",
                "{src} -> {dst} (overlay: {overlay})"
            );
        }
        assert!(audited(name, "hard-link", "ro.txt", "capability-denied"));
        bystander.check("hard link attempts").await;
        // Writing where the link would have been makes a new file; the original is untouched.
        ok(&as_(
            &p,
            "bob",
            "write",
            json!({"path": "out/l.txt", "content": "rewritten"}),
        )
        .await);
        assert_eq!(
            ok(&as_(&p, "bob", "read", json!({"path": "ro.txt"})).await),
            "original"
        );
        if overlay {
            p.commit_workspace().unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("ro.txt")).unwrap_or_default(),
            "original",
            "overlay: {overlay}"
        );
        // A link between two writable places still works.
        ok(&as_(
            &p,
            "bob",
            "write",
            json!({"path": "out/a.txt", "content": "a"}),
        )
        .await);
        ok(&as_(
            &p,
            "bob",
            "link",
            json!({"src": "out/a.txt", "dst": "out/b.txt"}),
        )
        .await);
        assert_eq!(
            ok(&as_(&p, "bob", "read", json!({"path": "out/b.txt"})).await),
            "a"
        );
        h.rt.shutdown().await;
    }
}

/// `.local`, `.local/log`, `.config`, `.config/env` (and the home itself) cannot be renamed,
/// removed, replaced or linked by a guest under any spelling, so no capsule reads another
/// capsule's log or forges an env overlay through a renamed directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_managed_parts_of_a_home_cannot_be_moved_or_replaced() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let victim = h
        .load(
            "victim",
            "prober.wasm",
            "[env.greeting]\ntype = \"text\"\ndefault = \"manifest\"\n",
        )
        .await;
    let nosy = h
        .load(
            "nosy",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n",
        )
        .await;
    ok(&as_(
        &victim,
        "bob",
        "log",
        json!({"message": "bob-private-line"}),
    )
    .await);
    write(
        &h.state().join("home/bob/.config/env/victim.env.json"),
        br#"{"greeting": "operator"}"#,
    );
    let denied = |v: Value, what: &str| assert_eq!(err(&v), "capability-denied", "{what}");

    for src in [
        ".local",
        "./.local",
        "a/../.local",
        ".local/",
        ".local/.",
        ".local/log",
        ".local/tmp",
        ".config",
        "./.config/",
        ".config/env",
    ] {
        let src = format!("home://{src}");
        let r = as_(
            &nosy,
            "bob",
            "rename",
            json!({"src": src, "dst": "home://stolen"}),
        )
        .await;
        denied(r, &format!("rename {src}"));
    }
    assert!(audited(
        "nosy",
        "rename",
        "home://.local",
        "capability-denied"
    ));
    bystander.check("renaming host-managed directories").await;
    assert_eq!(
        err(&as_(
            &nosy,
            "bob",
            "read",
            json!({"path": "home://stolen/log/victim.log"})
        )
        .await),
        "not-found"
    );
    for path in [
        "home://",
        "home://.",
        "home://.local",
        "home://x/../.local/",
        "home://.config",
        "home://.local/log",
    ] {
        denied(
            as_(&nosy, "bob", "rmrf", json!({ "path": path })).await,
            &format!("rmrf {path}"),
        );
    }
    for path in [
        "home://.local",
        "home://.local/log/victim.log",
        "home://.config",
    ] {
        denied(
            as_(&nosy, "bob", "unlink", json!({ "path": path })).await,
            &format!("unlink {path}"),
        );
    }
    // Replacing: a directory renamed over them, a file written in their place, links and
    // copies into and out of them.
    ok(&as_(
        &nosy,
        "bob",
        "mkdir-all",
        json!({"path": "home://fake/env"}),
    )
    .await);
    ok(&as_(
        &nosy,
        "bob",
        "write",
        json!({"path": "home://fake/env/victim.env.json", "content": "{\"greeting\":\"forged\"}"}),
    )
    .await);
    ok(&as_(
        &nosy,
        "bob",
        "write",
        json!({"path": "home://mine.txt", "content": "m"}),
    )
    .await);
    for (src, dst) in [
        ("home://fake", "home://.config"),
        ("home://fake", "home://.local"),
        ("home://fake/env", "home://.config/env"),
        ("home://mine.txt", "home://.local/log/victim.log"),
        ("home://mine.txt", "home://.config/env/victim.env.json"),
    ] {
        denied(
            as_(&nosy, "bob", "rename", json!({"src": src, "dst": dst})).await,
            &format!("rename {src} -> {dst}"),
        );
    }
    for (action, src, dst) in [
        (
            "link",
            "home://mine.txt",
            "home://.config/env/victim.env.json",
        ),
        ("link", "home://.local/log/victim.log", "home://copy"),
        ("copy", "home://.local/log/victim.log", "home://copy"),
        (
            "copy",
            "home://mine.txt",
            "home://.config/env/victim.env.json",
        ),
    ] {
        denied(
            as_(&nosy, "bob", action, json!({"src": src, "dst": dst})).await,
            &format!("{action} {src} -> {dst}"),
        );
    }
    // dave has no `.config` yet: it cannot be created as a file, nor by renaming a forged tree.
    ok(&as_(
        &nosy,
        "dave",
        "mkdir-all",
        json!({"path": "home://fake/env"}),
    )
    .await);
    ok(&as_(
        &nosy,
        "dave",
        "write",
        json!({"path": "home://fake/env/victim.env.json", "content": "{\"greeting\":\"forged\"}"}),
    )
    .await);
    denied(
        as_(
            &nosy,
            "dave",
            "rename",
            json!({"src": "home://fake", "dst": "home://.config"}),
        )
        .await,
        "dave: rename a forged tree to .config",
    );
    denied(
        as_(
            &nosy,
            "dave",
            "write",
            json!({"path": "home://.config", "content": "x"}),
        )
        .await,
        "dave: .config as a file",
    );
    denied(
        as_(
            &nosy,
            "dave",
            "mkdir-all",
            json!({"path": "home://.config/env"}),
        )
        .await,
        "dave: .config/env",
    );
    bystander.check("replacing host-managed directories").await;

    // Nothing moved: the victim's env overlays and log are what the operator and host made.
    assert_eq!(
        ok(&as_(&victim, "bob", "config", json!({"key": "greeting"})).await),
        "operator"
    );
    assert_eq!(
        ok(&as_(&victim, "dave", "config", json!({"key": "greeting"})).await),
        "manifest"
    );
    let log = std::fs::read_to_string(h.state().join("home/bob/.local/log/victim.log"))
        .unwrap_or_default();
    assert!(log.contains("bob-private-line"), "{log}");
    // What the guest may do with its home still works, `.config/<own dir>` included.
    ok(&as_(
        &nosy,
        "bob",
        "write",
        json!({"path": "/tmp/ok", "content": "t"}),
    )
    .await);
    ok(&as_(
        &nosy,
        "bob",
        "mkdir-all",
        json!({"path": "home://.config/myapp"}),
    )
    .await);
    ok(&as_(
        &nosy,
        "bob",
        "write",
        json!({"path": "home://.config/myapp/settings", "content": "s"}),
    )
    .await);
    h.rt.shutdown().await;
}

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

/// Errors never carry host paths or backend text: an unopenable file, a name the filesystem
/// refuses and a secret key too long for a file name all answer typed codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_leak_host_paths_or_backend_text() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let home = h.state().join("home").join("bob");
    std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("{e}"));
    let _socket =
        std::os::unix::net::UnixListener::bind(home.join("sock")).unwrap_or_else(|e| panic!("{e}"));
    let long_key = "K".repeat(200);
    let manifest = format!(
        "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n\
         [env.{long_key}]\ntype = \"secret\"\n"
    );
    let p = h.load("leaky", "prober.wasm", &manifest).await;
    let state = h.state().display().to_string();
    let clean = |v: &Value| {
        let text = v.to_string();
        assert!(
            !text.contains(&state) && !text.contains("os error") && !text.contains("redb"),
            "{text}"
        );
    };
    let r = as_(&p, "bob", "read", json!({"path": "home://sock"})).await;
    clean(&r);
    assert_eq!(err(&r), "unknown:I/O failure (details are in the host log)");
    let r = as_(
        &p,
        "bob",
        "write",
        json!({"path": format!("home://{}", "n".repeat(300)), "content": "x"}),
    )
    .await;
    clean(&r);
    assert_eq!(err(&r), "invalid-path");
    let r = as_(&p, "bob", "config", json!({ "key": long_key })).await;
    clean(&r);
    assert_eq!(ok(&r), &Value::Null, "no secret stored yet");
    h.rt.secrets()
        .set(
            &capsule_runtime::store::SecretScope::Principal(pid("bob")),
            "leaky",
            &long_key,
            b"long-key-value",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(&as_(&p, "bob", "config", json!({ "key": long_key })).await),
        "long-key-value"
    );
    bystander.check("error probing").await;
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
