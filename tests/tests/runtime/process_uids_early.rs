//! What a principal's capsules made through `astrid:fs` before its first-ever spawn (when its
//! children did not yet have a uid, so the files were the host's) becomes the principal's
//! own on that spawn, so its own child can use it; nothing a link or a second name reaches,
//! and none of the host's own places in the home, changes hands. Real guest, real children,
//! real uids (root host only; a host that is not root runs children as its own user, and
//! only that they can use the files is asserted).

use std::os::unix::fs::MetadataExt;

use capsule_runtime::process::namespaces_available;
use serde_json::json;

use crate::common::{err, ok};
use crate::process::call;
use crate::process_uids::{GRANTS, root, uid_host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_capsule_made_before_the_first_spawn_is_handed_to_the_principal() {
    let h = uid_host(3_101_600..=3_101_609);
    h.approve_all();
    let manifest = format!("{GRANTS}fs_read = [\"home://\"]\nfs_write = [\"home://\"]\n");
    let c = h.load("early", "proc-runner.wasm", &manifest).await;
    let write = |path: &str, content: &str| json!({"path": path, "content": content});
    ok(&call(&c, "fs-write", write("home://early.txt", "early"), "alice").await);
    ok(&call(&c, "fs-mkdir-all", json!({"path": "home://d/e"}), "alice").await);
    ok(&call(&c, "fs-write", write("home://d/e/f.txt", "deep"), "alice").await);
    ok(&call(&c, "fs-write", write("/tmp/early-tmp.txt", "tmp"), "alice").await);
    let home = h.state().join("home/alice");
    // What an older root child or the operator could have left in the home: a second name of
    // a host file, links to host files and directories.
    let secret = h.state().join("host-secret");
    let other = h.state().join("host-other");
    let outside = h.state().join("outside");
    std::fs::write(&secret, "host secret").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&other, "host other").unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(&outside).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(outside.join("inner"), "inner").unwrap_or_else(|e| panic!("{e}"));
    std::fs::hard_link(&secret, home.join("hard")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&other, home.join("lnk")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&outside, home.join("dirlnk")).unwrap_or_else(|e| panic!("{e}"));
    if root() {
        let m = std::fs::metadata(home.join("early.txt")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m.uid(),
            0,
            "made before the principal had a uid: the host's"
        );
    }
    // The first-ever spawn of alice.
    let r = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/sh", "args": ["-c",
            "cat early.txt && echo ' more' >> early.txt && echo x >> d/e/f.txt && \
             echo n > d/e/new.txt && echo ok"]}),
        "alice",
    )
    .await;
    if root() && !namespaces_available() {
        assert!(err(&r).contains("namespaces"), "{r}");
        c.unload().await;
        return;
    }
    assert_eq!(ok(&r)["stdout"], "earlyok\n", "{r}");
    let r = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/sh", "args": ["-c", "echo ' t' >> early-tmp.txt"], "cwd": "/tmp"}),
        "alice",
    )
    .await;
    assert_eq!(ok(&r)["exit"]["code"], 0, "{r}");
    let back = call(
        &c,
        "fs-read",
        json!({"path": "/tmp/early-tmp.txt"}),
        "alice",
    )
    .await;
    assert_eq!(ok(&back), "tmp t\n");
    if !root() {
        c.unload().await;
        return;
    }
    let alice = u64::from(
        std::fs::metadata(home.join("d/e/new.txt"))
            .unwrap_or_else(|e| panic!("{e}"))
            .uid(),
    );
    assert_ne!(alice, 0);
    for rel in [
        "early.txt",
        "d",
        "d/e",
        "d/e/f.txt",
        ".local/tmp/early-tmp.txt",
    ] {
        let m = std::fs::metadata(home.join(rel)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u64::from(m.uid()), u64::from(m.gid())),
            (alice, alice),
            "{rel}"
        );
        assert_eq!(m.mode() & 0o077, 0, "{rel} is private to alice");
    }
    for rel in [".local", ".local/log", ".config", ".config/env"] {
        let m = std::fs::metadata(home.join(rel)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.uid(), 0, "{rel} stays the host's");
    }
    for (p, content) in [
        (&secret, "host secret"),
        (&other, "host other"),
        (&outside.join("inner"), "inner"),
    ] {
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.uid(), 0, "{} changed hands", p.display());
        assert_eq!(std::fs::read_to_string(p).unwrap_or_default(), content);
    }
    for link in ["lnk", "dirlnk"] {
        let m = std::fs::symlink_metadata(home.join(link)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.uid(), 0, "{link}");
    }
    // Alice's child still cannot write through the host's second name.
    let r = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/sh", "args": ["-c", "echo pwned > hard"]}),
        "alice",
    )
    .await;
    assert_ne!(ok(&r)["exit"]["code"], 0, "{r}");
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap_or_default(),
        "host secret"
    );
    c.unload().await;
}
