//! Files, KV and secrets from inside real guests: grants and confinement, the overlay
//! workspace, per-principal isolation, KV limits and CAS, durability across `kill -9`, and no
//! plaintext secret anywhere in the state directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsule_runtime::store::{Namespace, SecretScope};
use serde_json::json;

use crate::common::*;

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, content).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_read_grant_covers_its_subtree_only() {
    let h = host();
    let home = h.state().join("home").join("default");
    write(&home.join("notes/a.txt"), "hello");
    write(&home.join("secret.txt"), "not for capsules");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("../secret.txt", home.join("notes/inner-link"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("/etc/passwd", home.join("notes/out-link"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let p = h
        .load(
            "reader",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"home://notes\"]\n",
        )
        .await;
    let read = |path: &'static str| {
        let p = p.clone();
        async move { call(&p, "read", json!({ "path": path })).await }
    };
    assert_eq!(ok(&read("home://notes/a.txt").await), "hello");
    assert_eq!(ok(&read("home://notes/../notes/a.txt").await), "hello");
    assert_eq!(err(&read("home://secret.txt").await), "capability-denied");
    assert_eq!(
        err(&read("home://../../etc/passwd").await),
        "boundary-escape"
    );
    assert_eq!(err(&read("home://notes/a\u{0}").await), "invalid-path");
    assert_eq!(
        err(&read("/etc/passwd").await),
        "capability-denied",
        "no absolute grant"
    );
    assert_eq!(
        err(&read("cwd://anything").await),
        "capability-denied",
        "no workspace grant"
    );
    assert_eq!(err(&read("home://notes/missing").await), "not-found");
    assert_eq!(err(&read("ftp://x").await), "invalid-path");
    #[cfg(unix)]
    {
        assert_eq!(
            err(&read("home://notes/inner-link").await),
            "capability-denied",
            "a symlink is judged by where it leads"
        );
        let out = read("home://notes/out-link").await;
        assert!(["boundary-escape", "access"].contains(&err(&out)), "{out}");
    }
    // Writing needs fs_write.
    let w = call(
        &p,
        "write",
        json!({"path": "home://notes/b.txt", "content": "x"}),
    )
    .await;
    assert_eq!(err(&w), "capability-denied");
    assert!(!home.join("notes/b.txt").exists());
    // The principal's /tmp/ is always its own scratch space.
    ok(&call(
        &p,
        "write",
        json!({"path": "/tmp/scratch.txt", "content": "s"}),
    )
    .await);
    assert_eq!(ok(&read("/tmp/scratch.txt").await), "s");
    assert_eq!(
        std::fs::read_to_string(home.join(".local/tmp/scratch.txt")).unwrap_or_default(),
        "s"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_managed_home_files_are_out_of_reach() {
    let h = host();
    let p = h
        .load(
            "nosy",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n",
        )
        .await;
    ok(&call(&p, "log", json!({"message": "x"})).await);
    for path in [
        "home://.local/log/nosy.log",
        "home://.config/env/nosy.env.json",
    ] {
        assert_eq!(
            err(&call(&p, "read", json!({ "path": path })).await),
            "capability-denied",
            "{path}"
        );
        assert_eq!(
            err(&call(&p, "write", json!({ "path": path, "content": "forged" })).await),
            "capability-denied",
            "{path}"
        );
    }
    ok(&call(
        &p,
        "write",
        json!({"path": "home://ok.txt", "content": "fine"}),
    )
    .await);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fs_function_works_on_the_workspace() {
    let h = host();
    let ws = h.state().join("workspaces").join("fsall");
    write(&ws.join("src.txt"), "source");
    for i in 0..4097 {
        write(&ws.join("many").join(format!("f{i}")), "");
    }
    std::fs::write(ws.join("big"), vec![b'x'; 10 * 1024 * 1024 + 1])
        .unwrap_or_else(|e| panic!("{e}"));
    let p = h
        .load(
            "fsall",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"*\"]\nfs_write = [\"cwd://out\", \"home://\"]\n",
        )
        .await;
    let c = |action: &'static str, args: serde_json::Value| {
        let p = p.clone();
        async move { call(&p, action, args).await }
    };
    assert_eq!(
        err(&c("write", json!({"path": "src.txt", "content": "x"})).await),
        "capability-denied"
    );
    ok(&c("mkdir-all", json!({"path": "out/a/b"})).await);
    assert_eq!(
        err(&c("mkdir", json!({"path": "out/a"})).await),
        "already-exists"
    );
    ok(&c("mkdir", json!({"path": "out/c"})).await);
    ok(&c("copy", json!({"src": "src.txt", "dst": "out/copy.txt"})).await);
    ok(&c("append", json!({"path": "out/copy.txt", "content": "+"})).await);
    assert_eq!(
        ok(&c("read", json!({"path": "out/copy.txt"})).await),
        "source+"
    );
    ok(&c(
        "rename",
        json!({"src": "out/copy.txt", "dst": "out/c/moved.txt"}),
    )
    .await);
    assert_eq!(
        ok(&c("exists", json!({"path": "out/copy.txt"})).await),
        false
    );
    assert_eq!(
        ok(&c("exists", json!({"path": "cwd://out/c/moved.txt"})).await),
        true
    );
    ok(&c(
        "link",
        json!({"src": "out/c/moved.txt", "dst": "out/c/link.txt"}),
    )
    .await);
    assert_eq!(
        ok(&c("read", json!({"path": "out/c/link.txt"})).await),
        "source+"
    );
    assert_eq!(ok(&c("stat", json!({"path": "out/c"})).await)["dir"], true);
    assert_eq!(
        ok(&c("stat", json!({"path": "out/c/moved.txt"})).await)["size"],
        7
    );
    assert_eq!(
        ok(&c("readdir", json!({"path": "out"})).await),
        &json!(["a", "c"])
    );
    assert_eq!(
        ok(&c("canon", json!({"path": "cwd://out/./c/../c/moved.txt"})).await),
        "cwd://out/c/moved.txt"
    );
    ok(&c("unlink", json!({"path": "out/c/link.txt"})).await);
    assert_eq!(
        err(&c("unlink", json!({"path": "out/c"})).await),
        "is-directory"
    );
    assert_eq!(ok(&c("rmrf", json!({"path": "out/a"})).await), 2);
    assert_eq!(
        err(&c("rmrf", json!({"path": "out/c/moved.txt"})).await),
        "not-directory"
    );
    assert!(ws.join("out/c/moved.txt").is_file() && !ws.join("out/a").exists());

    // File handles.
    let w = ok(&c("open", json!({"path": "out/h.txt", "mode": "write"})).await).clone();
    assert_eq!(
        ok(&c(
            "handle-write",
            json!({"index": w, "offset": 0, "data": "hello"})
        )
        .await),
        5
    );
    ok(&c("handle-len", json!({"index": w, "size": 3})).await);
    let r = ok(&c("open", json!({"path": "out/h.txt", "mode": "read"})).await).clone();
    assert_eq!(
        ok(&c("handle-read", json!({"index": r, "offset": 1, "max": 10})).await),
        "el"
    );
    assert_eq!(
        err(&c(
            "handle-write",
            json!({"index": r, "offset": 0, "data": "x"})
        )
        .await),
        "access"
    );
    assert_eq!(
        err(&c("open", json!({"path": "src.txt", "mode": "append"})).await),
        "capability-denied"
    );
    ok(&c("close-all", json!({})).await);
    for _ in 0..16 {
        ok(&c("open", json!({"path": "src.txt", "mode": "read"})).await);
    }
    assert_eq!(
        err(&c("open", json!({"path": "src.txt", "mode": "read"})).await),
        "quota"
    );
    ok(&c("close-all", json!({})).await);
    ok(&c("open", json!({"path": "src.txt", "mode": "read"})).await);

    // Limits and mount boundaries.
    assert_eq!(
        err(&c("readdir", json!({"path": "many"})).await),
        "too-large"
    );
    assert_eq!(err(&c("read", json!({"path": "big"})).await), "too-large");
    assert_eq!(
        err(&c("copy", json!({"src": "src.txt", "dst": "home://x.txt"})).await),
        "cross-vfs"
    );
    assert_eq!(
        err(&c("read", json!({"path": "../x"})).await),
        "boundary-escape"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_grant_mounts_that_directory_only() {
    let h = host();
    let shadowed = h.capsule_dir(
        "shadow",
        "prober.wasm",
        "[capabilities]\nfs_read = [\"/tmp/x\"]\n",
    );
    let e =
        h.rt.load(&shadowed)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(e.contains("fs_read") && e.contains("scratch space"), "{e}");

    let base = outside_tmp();
    let data = base.path().join("data");
    write(&data.join("words"), "apple");
    write(&base.path().join("private"), "no");
    let grant = format!(
        "[capabilities]\nfs_read = [{:?}]\n",
        data.display().to_string()
    );
    h.approve_all();
    let p = h.load("abs", "prober.wasm", &grant).await;
    let read = |path: String| {
        let p = p.clone();
        async move { call(&p, "read", json!({ "path": path })).await }
    };
    assert_eq!(
        ok(&read(data.join("words").display().to_string()).await),
        "apple"
    );
    assert_eq!(
        err(&read(base.path().join("private").display().to_string()).await),
        "capability-denied"
    );
    assert_eq!(
        err(&read(format!("{}/../private", data.display())).await),
        "capability-denied",
        "`..` is resolved before the mount is chosen"
    );
    let canon = call(
        &p,
        "canon",
        json!({"path": data.join("words").display().to_string()}),
    )
    .await;
    assert_eq!(ok(&canon), &json!(data.join("words").display().to_string()));
    h.rt.shutdown().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = walk(dir)
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(dir)
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            (rel, std::fs::read_to_string(&p).unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

async fn overlay_edits(p: &capsule_runtime::Capsule) {
    ok(&call(p, "write", json!({"path": "edit.txt", "content": "v2"})).await);
    ok(&call(p, "unlink", json!({"path": "doomed.txt"})).await);
    ok(&call(p, "mkdir-all", json!({"path": "new/dir"})).await);
    ok(&call(
        p,
        "write",
        json!({"path": "new/dir/n.txt", "content": "new"}),
    )
    .await);
    assert_eq!(
        ok(&call(p, "read", json!({"path": "edit.txt"})).await),
        "v2"
    );
    assert_eq!(
        err(&call(p, "read", json!({"path": "doomed.txt"})).await),
        "not-found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_commit_and_rollback_from_guest_writes() {
    let workspace =
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
    write(&workspace.path().join("keep.txt"), "keep");
    write(&workspace.path().join("doomed.txt"), "doomed");
    write(&workspace.path().join("edit.txt"), "v1");
    let root = workspace.path().to_path_buf();
    let h = host_with(move |c| {
        c.workspace_root = Some(root);
        c.overlay_workspace = true;
    });
    let p = h
        .load(
            "editor",
            "prober.wasm",
            "[capabilities]\nfs_read = [\"*\"]\nfs_write = [\"*\"]\n",
        )
        .await;
    let before = snapshot(workspace.path());
    overlay_edits(&p).await;
    assert_eq!(
        snapshot(workspace.path()),
        before,
        "nothing lands before commit"
    );
    p.rollback_workspace().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        snapshot(workspace.path()),
        before,
        "rollback leaves the workspace untouched"
    );
    assert_eq!(
        ok(&call(&p, "read", json!({"path": "edit.txt"})).await),
        "v1"
    );

    overlay_edits(&p).await;
    p.commit_workspace().unwrap_or_else(|e| panic!("{e}"));
    let expected: Vec<(String, String)> = vec![
        ("edit.txt".to_string(), "v2".to_string()),
        ("keep.txt".to_string(), "keep".to_string()),
        ("new/dir/n.txt".to_string(), "new".to_string()),
    ];
    assert_eq!(
        snapshot(workspace.path()),
        expected,
        "commit applies exactly the edits"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_never_see_each_others_keys_files_logs_or_secrets() {
    let h = host();
    let manifest = "[capabilities]\nfs_read = [\"home://\"]\nfs_write = [\"home://\"]\n\
                    [env.TOKEN]\ntype = \"secret\"\n";
    let p = h.load("shared", "prober.wasm", manifest).await;
    let secrets = h.rt.secrets();
    secrets
        .set(
            &SecretScope::Principal(pid("alice")),
            "shared",
            "TOKEN",
            b"alice-token",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    secrets
        .set(
            &SecretScope::Principal(pid("bob")),
            "shared",
            "TOKEN",
            b"bob-token",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    for who in ["alice", "bob"] {
        let me = Some(who);
        ok(&call_as(
            &p,
            "kv-set",
            json!({"key": "k", "value": format!("{who}-value")}),
            me,
        )
        .await);
        ok(&call_as(
            &p,
            "kv-set",
            json!({"key": format!("only-{who}"), "value": "x"}),
            me,
        )
        .await);
        ok(&call_as(
            &p,
            "write",
            json!({"path": "home://mine.txt", "content": format!("{who}-file")}),
            me,
        )
        .await);
        ok(&call_as(&p, "log", json!({"message": format!("{who}-log")}), me).await);
    }
    for (who, other) in [("alice", "bob"), ("bob", "alice")] {
        let me = Some(who);
        assert_eq!(
            ok(&call_as(&p, "kv-get", json!({"key": "k"}), me).await),
            &json!(format!("{who}-value"))
        );
        let keys = ok(&call_as(&p, "kv-list", json!({"prefix": ""}), me).await).clone();
        assert_eq!(keys, json!(["k", format!("only-{who}")]));
        assert_eq!(
            ok(&call_as(&p, "kv-get", json!({"key": format!("only-{other}")}), me).await),
            &json!(null)
        );
        assert_eq!(
            ok(&call_as(&p, "read", json!({"path": "home://mine.txt"}), me).await),
            &json!(format!("{who}-file"))
        );
        assert_eq!(
            ok(&call_as(&p, "config", json!({"key": "TOKEN"}), me).await),
            &json!(format!("{who}-token"))
        );
        let log = std::fs::read_to_string(
            h.state()
                .join("home")
                .join(who)
                .join(".local/log/shared.log"),
        )
        .unwrap_or_default();
        assert!(log.contains(&format!("{who}-log")) && !log.contains(&format!("{other}-log")));
    }
    // A principal with no secret of its own gets the host-wide one, or nothing.
    assert_eq!(
        ok(&call_as(&p, "config", json!({"key": "TOKEN"}), Some("carol")).await),
        &json!(null)
    );
    secrets
        .set(&SecretScope::Host, "shared", "TOKEN", b"host-token")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(&call_as(&p, "config", json!({"key": "TOKEN"}), Some("carol")).await),
        &json!("host-token")
    );
    assert_eq!(
        ok(&call_as(&p, "config", json!({"key": "TOKEN"}), Some("alice")).await),
        &json!("alice-token")
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_limits_and_cas_from_a_guest() {
    let h = host();
    h.profile("default", "[quotas]\nmax_storage_bytes = 2000\n");
    let p = h.load("kvlimits", "prober.wasm", "").await;
    let c = |action: &'static str, args: serde_json::Value| {
        let p = p.clone();
        async move { call(&p, action, args).await }
    };
    assert_eq!(
        err(&c("kv-set", json!({"key": "", "value": "v"})).await),
        "invalid-key"
    );
    assert_eq!(
        err(&c("kv-set", json!({"key": "a\u{0}b", "value": "v"})).await),
        "invalid-key"
    );
    assert_eq!(
        err(&c("kv-set", json!({"key": "k".repeat(257), "value": "v"})).await),
        "invalid-key"
    );
    ok(&c("kv-set", json!({"key": "k".repeat(256), "value": "v"})).await);
    ok(&c("kv-delete", json!({"key": "k".repeat(256)})).await);
    assert_eq!(
        err(&c(
            "kv-set-size",
            json!({"key": "big", "size": 1024 * 1024 + 1})
        )
        .await),
        "too-large"
    );
    ok(&c("kv-set-size", json!({"key": "a", "size": 1500})).await);
    assert_eq!(
        err(&c("kv-set-size", json!({"key": "b", "size": 600})).await),
        "quota"
    );
    ok(&c("kv-set-size", json!({"key": "a", "size": 1900})).await);

    assert_eq!(
        err(&c("kv-cas", json!({"key": "c", "expected": "x", "new": "1"})).await),
        "cas-mismatch"
    );
    ok(&c("kv-cas", json!({"key": "c", "expected": null, "new": "1"})).await);
    assert_eq!(
        err(&c("kv-cas", json!({"key": "c", "expected": null, "new": "2"})).await),
        "cas-mismatch"
    );
    ok(&c("kv-cas", json!({"key": "c", "expected": "1", "new": "2"})).await);
    assert_eq!(ok(&c("kv-get", json!({"key": "c"})).await), "2");

    ok(&c("kv-delete", json!({"key": "a"})).await);
    for i in 0..7 {
        ok(&c("kv-set", json!({"key": format!("p/{i}"), "value": "v"})).await);
    }
    let first = ok(&c("kv-page", json!({"prefix": "p/", "limit": 3})).await).clone();
    assert_eq!(first["keys"], json!(["p/0", "p/1", "p/2"]));
    let second = ok(&c(
        "kv-page",
        json!({"prefix": "p/", "limit": 3, "cursor": first["next"]}),
    )
    .await)
    .clone();
    assert_eq!(second["keys"], json!(["p/3", "p/4", "p/5"]));
    let third = ok(&c(
        "kv-page",
        json!({"prefix": "p/", "limit": 3, "cursor": second["next"]}),
    )
    .await)
    .clone();
    assert_eq!(third, json!({"keys": ["p/6"], "next": null}));
    assert_eq!(
        err(&c(
            "kv-page",
            json!({"prefix": "p/", "limit": 3, "cursor": "zz"})
        )
        .await),
        "invalid-key"
    );
    assert_eq!(ok(&c("kv-clear", json!({"prefix": "p/"})).await), 7);
    assert_eq!(
        ok(&c("kv-list", json!({"prefix": ""})).await),
        &json!(["c"])
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_set_survives_kill_dash_nine() {
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let value = uuid::Uuid::new_v4().to_string();
    let dir = write_capsule(
        &state.path().join("capsules").join("kvwriter"),
        "kvwriter",
        "0.1.0",
        "kvwriter.wasm",
        &format!("[env.value]\ntype = \"text\"\ndefault = {value:?}\n"),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_capsule-test-host"))
        .arg(state.path())
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let log = state.path().join("home/default/.local/log/kvwriter.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&format!("acknowledged {value}"))
    {
        assert!(
            Instant::now() < deadline,
            "the child never acknowledged its write"
        );
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the child host exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no destructor, no flush, no shutdown runs in the child.
    child.kill().unwrap_or_else(|e| panic!("{e}"));
    child.wait().unwrap_or_else(|e| panic!("{e}"));

    let rt = capsule_runtime::Runtime::new(config(state.path())).unwrap_or_else(|e| panic!("{e}"));
    let got = rt
        .kv()
        .get(&Namespace::new(&pid("default"), "kvwriter"), "acked")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.as_deref(), Some(value.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_secret_is_left_in_state_or_logs() {
    let h = host();
    let plaintext = format!("sk-PLAINTEXT-{}", uuid::Uuid::new_v4().simple());
    let p = h
        .load("vault", "prober.wasm", "[env.API_KEY]\ntype = \"secret\"\n")
        .await;
    h.rt.secrets()
        .set(
            &SecretScope::Principal(pid("default")),
            "vault",
            "API_KEY",
            plaintext.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(&call(&p, "config", json!({"key": "API_KEY"})).await),
        &json!(plaintext)
    );
    ok(&call(&p, "log", json!({"message": "used the key"})).await);
    h.rt.shutdown().await;

    let needle = plaintext.as_bytes();
    for file in walk(h.state()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plaintext secret found in {}",
            file.display()
        );
    }
    let reveals: Vec<_> = audit_events("vault")
        .into_iter()
        .filter(|e| {
            e.get("target").map(String::as_str) == Some(capsule_runtime::AUDIT_SECRET_TARGET)
        })
        .collect();
    assert_eq!(reveals.len(), 1, "every reveal is audited");
    assert_eq!(reveals[0]["key"], "API_KEY");
    assert_eq!(reveals[0]["principal"], "default");
    assert!(
        reveals
            .iter()
            .all(|e| e.values().all(|v| !v.contains(&plaintext)))
    );
}
