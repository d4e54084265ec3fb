//! Files: traversal and symlinks out of a mount, hard links that would turn read into write,
//! the host-managed parts of a home, and opaque errors. The helpers here serve `disk.rs` too.

use std::path::Path;

use capsule_runtime::Capsule;
use serde_json::{Value, json};

use super::Bystander;
use crate::common::*;

pub(super) fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, content).unwrap_or_else(|e| panic!("{e}"));
}

/// Calls the prober `c` as `principal`.
pub(super) async fn as_(c: &Capsule, principal: &str, action: &str, args: Value) -> Value {
    call_as(c, action, args, Some(principal)).await
}

/// Whether `capsule` emitted an fs audit event for `op` on `path` refused with `code`.
pub(super) fn audited(capsule: &str, op: &str, path: &str, code: &str) -> bool {
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

/// Copying a file onto itself (by name, another spelling or a hard link), or renaming it onto
/// a hard link of itself in an overlay, is refused with `invalid-path` and keeps the data:
/// truncating the destination first would empty the source, and a kernel copy of a file into
/// itself loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_copied_onto_itself_keeps_its_data() {
    for overlay in [false, true] {
        let workspace =
            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(workspace.path().join("out")).unwrap_or_else(|e| panic!("{e}"));
        let root = workspace.path().to_path_buf();
        let h = host_with(move |c| {
            c.workspace_root = Some(root);
            c.overlay_workspace = overlay;
        });
        let bystander = Bystander::start(&h).await;
        let name = if overlay {
            "selfcopy-overlay"
        } else {
            "selfcopy"
        };
        let p = h
            .load(
                name,
                "prober.wasm",
                "[capabilities]\nfs_write = [\"cwd://out\", \"home://\"]\n",
            )
            .await;
        for (path, content) in [("out/f.txt", "data"), ("home://h.txt", "home data")] {
            ok(&as_(
                &p,
                "bob",
                "write",
                json!({"path": path, "content": content}),
            )
            .await);
        }
        ok(&as_(
            &p,
            "bob",
            "link",
            json!({"src": "out/f.txt", "dst": "out/alias.txt"}),
        )
        .await);
        ok(&as_(
            &p,
            "bob",
            "link",
            json!({"src": "home://h.txt", "dst": "home://h2.txt"}),
        )
        .await);
        for (src, dst) in [
            ("out/f.txt", "out/f.txt"),
            ("out/f.txt", "cwd://./out/sub/../f.txt"),
            ("out/f.txt", "out/alias.txt"),
            ("home://h.txt", "home://h.txt"),
            ("home://h.txt", "home://h2.txt"),
        ] {
            assert_eq!(
                err(&as_(&p, "bob", "copy", json!({"src": src, "dst": dst})).await),
                "invalid-path",
                "copy {src} -> {dst} (overlay: {overlay})"
            );
        }
        if overlay {
            assert_eq!(
                err(&as_(
                    &p,
                    "bob",
                    "rename",
                    json!({"src": "out/f.txt", "dst": "out/alias.txt"})
                )
                .await),
                "invalid-path",
                "rename onto a hard link of itself"
            );
        }
        bystander.check("copies onto themselves").await;
        for (path, want) in [
            ("out/f.txt", "data"),
            ("out/alias.txt", "data"),
            ("home://h.txt", "home data"),
            ("home://h2.txt", "home data"),
        ] {
            assert_eq!(
                ok(&as_(&p, "bob", "read", json!({"path": path})).await),
                want,
                "{path} (overlay: {overlay})"
            );
        }
        h.rt.shutdown().await;
    }
}
