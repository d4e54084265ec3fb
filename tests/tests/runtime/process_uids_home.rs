//! Attacks by a principal's own host processes, running under its own uid, on what the host
//! keeps for that principal and on other principals: the host's places in the home (capsule
//! log, env overlay) can be neither moved, replaced nor planted by a child, also in a home of
//! the older layout the child owned outright; what the principal's capsules create through
//! `astrid:fs` is the principal's children's to use and nobody else's; a FIFO, socket, symlink
//! or hard link a child plants is refused by the guest at once; a child inherits nothing of the
//! host (environment, descriptors), reaches nothing of another principal's child through
//! `/proc`, gains nothing from a set-id binary, and a daemon it leaves behind dies with its
//! group while its uid stays reserved. Real guests, real children, real uids (root host only;
//! elsewhere children run as the host's user, as documented, and only that is asserted).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use capsule_runtime::Capsule;
use capsule_runtime::process::UID_RECORD_FILE;
use serde_json::{Value, json};

use crate::common::{Host, err, host_in, ok};
use crate::process::{call, gone};
use crate::process_uids::{GRANTS, root, run, uid_host, uid_of};

/// The grants, the home, and one declared config key, so an env overlay is observable by the
/// guest.
fn manifest() -> String {
    format!(
        "{GRANTS}fs_read = [\"home://\"]\nfs_write = [\"home://\"]\n\n\
         [env.greeting]\ntype = \"text\"\ndefault = \"hello\"\n"
    )
}

async fn load(h: &Host, name: &str) -> Capsule {
    h.approve_all();
    h.load(name, "proc-runner.wasm", &manifest()).await
}

async fn sh(c: &Capsule, who: &str, script: &str) -> Value {
    run(c, who, "/bin/sh", &["-c", script]).await
}

fn code(r: &Value) -> &Value {
    &ok(r)["exit"]["code"]
}

async fn greeting(c: &Capsule, who: &str) -> Value {
    ok(&call(c, "config", json!({"key": "greeting"}), who).await).clone()
}

fn home(h: &Host, who: &str) -> std::path::PathBuf {
    h.state().join("home").join(who)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_can_neither_move_nor_plant_the_hosts_places_in_its_home() {
    let h = uid_host(3_100_400..=3_100_409);
    let c = load(&h, "runner").await;
    let alice = uid_of(&c, "alice").await;
    if !root() {
        c.unload().await;
        return;
    }
    let meta = std::fs::metadata(home(&h, "alice")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (meta.uid(), u64::from(meta.gid()), meta.mode() & 0o7777),
        (0, alice, 0o1770),
        "the home is the host's, open to alice's group, sticky"
    );
    assert_eq!(greeting(&c, "alice").await, "hello");
    // Move the host's directories aside and put the child's own in their place.
    for script in [
        "mv .config .config.old",
        "mv .local .local.old",
        "rm -rf .config",
        "mkdir -p .config/env && echo '{\"greeting\":\"forged\"}' > .config/env/other.env.json",
        "mkdir -p .local/log && echo planted > .local/log/other.log",
    ] {
        let r = sh(&c, "alice", script).await;
        assert_ne!(code(&r), 0, "{script}: {r}");
    }
    // Nor by being given one of them as its working directory.
    for cwd in ["home://.config", "home://.local", "home://.config/env"] {
        let r = call(
            &c,
            "spawn",
            json!({"cmd": "/bin/sh", "args": ["-c", "mv env x; mv log x"], "cwd": cwd}),
            "alice",
        )
        .await;
        assert_eq!(err(&r), "boundary-escape", "{cwd}");
    }
    let tmp = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/sh", "args": ["-c", "echo t > t && cat t"], "cwd": "home://.local/tmp"}),
        "alice",
    )
    .await;
    assert_eq!(ok(&tmp)["stdout"], "t\n", "its tmp stays its own");
    // Another capsule reads alice's overlay and writes her log only where the host put them.
    let other = load(&h, "other").await;
    assert_eq!(greeting(&other, "alice").await, "hello");
    ok(&call(
        &other,
        "log",
        json!({"message": "for the host only"}),
        "alice",
    )
    .await);
    let read = sh(&other, "alice", "cat .local/log/other.log").await;
    assert_ne!(code(&read), 0, "{read}");
    let log = home(&h, "alice").join(".local/log/other.log");
    let meta = std::fs::metadata(&log).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("for the host only") && !text.contains("planted"),
        "{text}"
    );
    other.unload().await;
    c.unload().await;
}

/// A home left by the older layout, owned outright by its principal's uid, still loads; what
/// a child of that time planted in the host's places (a directory and overlay of its own) is
/// refused, what the host made there is used, and the home is the host's again on the next
/// spawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_layout_home_loads_and_what_its_child_planted_is_refused() {
    let (alice, bob) = (3_100_500u32, 3_100_501u32);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path();
    let plant = |who: &str, uid: u32, owner_of_config: u32, greeting: &str| {
        let home = state.join("home").join(who);
        std::fs::create_dir_all(home.join(".config/env")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(home.join(".local/tmp")).unwrap_or_else(|e| panic!("{e}"));
        let overlay = home.join(".config/env/runner.env.json");
        std::fs::write(&overlay, json!({ "greeting": greeting }).to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(home.join("mine.txt"), "kept").unwrap_or_else(|e| panic!("{e}"));
        if root() {
            for (p, u) in [
                (home.clone(), uid),
                (home.join("mine.txt"), uid),
                (home.join(".local/tmp"), uid),
                (home.join(".config"), owner_of_config),
                (home.join(".config/env"), owner_of_config),
                (overlay, owner_of_config),
            ] {
                std::os::unix::fs::chown(&p, Some(u), Some(u)).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    // Alice's overlay is the operator's; bob's child replaced his `.config` with its own.
    plant("alice", alice, 0, "operator hi");
    plant("bob", bob, bob, "forged");
    std::fs::write(
        state.join(UID_RECORD_FILE),
        json!({"alice": alice, "bob": bob}).to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let h = host_in(dir, |c| c.process_uids = Some(3_100_500..=3_100_509));
    let c = load(&h, "runner").await;
    assert_eq!(greeting(&c, "alice").await, "operator hi");
    if !root() {
        c.unload().await;
        return;
    }
    assert_eq!(
        greeting(&c, "bob").await,
        "hello",
        "an overlay the host did not make is ignored"
    );
    assert_eq!(uid_of(&c, "alice").await, u64::from(alice));
    let meta = std::fs::metadata(home(&h, "alice")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o1770));
    let mine = sh(&c, "alice", "cat mine.txt && echo more >> mine.txt").await;
    assert_eq!(ok(&mine)["stdout"], "kept", "{mine}");
    assert_eq!(code(&mine), 0);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_capsule_makes_for_its_principal_is_that_principals_processes_to_use() {
    let h = uid_host(3_100_600..=3_100_609);
    let c = load(&h, "runner").await;
    let alice = uid_of(&c, "alice").await;
    let bob = uid_of(&c, "bob").await;
    let write = |path: &str, content: &str| json!({"path": path, "content": content});
    ok(&call(
        &c,
        "fs-write",
        write("home://made.txt", "by the capsule"),
        "alice",
    )
    .await);
    ok(&call(&c, "fs-mkdir-all", json!({"path": "home://d/e"}), "alice").await);
    ok(&call(&c, "fs-write", write("home://d/e/f.txt", "deep"), "alice").await);
    ok(&call(&c, "fs-write", write("/tmp/scratch.txt", "tmp"), "alice").await);
    let used = sh(
        &c,
        "alice",
        "cat made.txt && echo ' and the child' >> made.txt && cat d/e/f.txt && \
         echo new > d/e/new.txt && cat d/e/new.txt",
    )
    .await;
    assert_eq!(code(&used), 0, "{used}");
    let back = call(&c, "fs-read", json!({"path": "home://made.txt"}), "alice").await;
    assert_eq!(ok(&back), "by the capsule and the child\n");
    if !root() {
        c.unload().await;
        return;
    }
    assert!(
        ok(&used)["stdout"]
            .as_str()
            .is_some_and(|s| s.contains("deep"))
    );
    for rel in [
        "made.txt",
        "d",
        "d/e",
        "d/e/f.txt",
        ".local/tmp/scratch.txt",
    ] {
        let m = std::fs::metadata(home(&h, "alice").join(rel)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u64::from(m.uid()), u64::from(m.gid())),
            (alice, alice),
            "{rel}"
        );
        assert_eq!(m.mode() & 0o077, 0, "{rel} is private to alice");
    }
    // Bob's child reaches none of it, even with the state directory opened up.
    for open in [h.state().to_path_buf(), h.state().join("home")] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let target = home(&h, "alice").join("made.txt");
    let theirs = sh(
        &c,
        "bob",
        &format!("cat {0}; echo x >> {0}", target.display()),
    )
    .await;
    assert_eq!(ok(&theirs)["stdout"], "", "{theirs}");
    assert_ne!(code(&theirs), 0);
    assert_ne!(bob, alice);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_child_plants_in_its_home_is_refused_by_the_guest_at_once() {
    let h = uid_host(3_100_700..=3_100_709);
    let c = load(&h, "runner").await;
    uid_of(&c, "alice").await;
    let planted = sh(
        &c,
        "alice",
        "mkfifo fifo && ln -s /etc/hostname outside && ln -s fifo inside && echo mine > plain",
    )
    .await;
    assert_eq!(code(&planted), 0, "{planted}");
    // A socket bound where the child could have bound it, and a hard link to a host file that
    // the child could make on a host without `protected_hardlinks`.
    let listener = std::os::unix::net::UnixListener::bind(home(&h, "alice").join("sock"))
        .unwrap_or_else(|e| panic!("{e}"));
    let victim = h.state().join("host-secret");
    std::fs::write(&victim, "host secret").unwrap_or_else(|e| panic!("{e}"));
    std::fs::hard_link(&victim, home(&h, "alice").join("linked")).unwrap_or_else(|e| panic!("{e}"));
    // Without uids of their own, children run as the host's user and could write the host
    // file directly; the link check is for a principal with its own uid.
    let planted: &[&str] = if root() {
        &["fifo", "inside", "outside", "sock", "linked"]
    } else {
        &["fifo", "inside", "outside", "sock"]
    };
    let plain = call(&c, "fs-read", json!({"path": "home://plain"}), "alice").await;
    assert_eq!(ok(&plain), "mine\n", "what the child made is readable");
    let refused = |r: &Value| {
        let e = err(r);
        e.starts_with("fs:") && !e.contains("CapabilityDenied")
    };
    for path in planted {
        let path = format!("home://{path}");
        let r = call(&c, "fs-read", json!({"path": path}), "alice").await;
        assert!(refused(&r), "{path}: {r}");
        let w = call(
            &c,
            "fs-write",
            json!({"path": path, "content": "x"}),
            "alice",
        )
        .await;
        assert!(refused(&w), "{path}: {w}");
    }
    if root() {
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap_or_default(),
            "host secret"
        );
    }
    drop(listener);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_inherits_nothing_of_the_host_and_reaches_nothing_of_another_principals_child() {
    // A descriptor the host holds without close-on-exec, as one inherited from whoever
    // started it would be.
    let leaked = {
        let f = std::fs::File::open("/dev/null").unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: dup onto an unused high descriptor without close-on-exec.
        let fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_DUPFD, 900) };
        assert!(fd >= 900);
        fd
    };
    let h = uid_host(3_100_800..=3_100_809);
    let c = load(&h, "runner").await;
    let env = sh(&c, "alice", "exec env").await;
    let env = ok(&env)["stdout"].as_str().unwrap_or("").to_string();
    assert!(
        !env.contains("HOME=") && !env.contains("SSH_AUTH_SOCK") && !env.contains("/root"),
        "{env}"
    );
    let fds = sh(&c, "alice", "exec ls /proc/self/fd").await;
    let fds: Vec<u32> = ok(&fds)["stdout"]
        .as_str()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(
        fds.iter().all(|fd| *fd <= 3),
        "the child holds host descriptors: {fds:?}"
    );
    // SAFETY: closing the descriptor this test opened.
    unsafe { libc::close(leaked) };
    if !root() {
        c.unload().await;
        return;
    }
    // Bob's child with a secret in its environment and a working directory of its own.
    let r = call(
        &c,
        "persist",
        json!({"cmd": "/bin/sleep", "args": ["1000"], "env": [["SECRET", "bobs-secret"]]}),
        "bob",
    )
    .await;
    let id = ok(&r).as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let s = call(&c, "status", json!({"id": id}), "bob").await;
    let pid = ok(&s)["pid"].as_u64().unwrap_or_else(|| panic!("{s}"));
    for probe in [
        "cat /proc/PID/environ",
        "head -c 64 /proc/PID/mem",
        "ls /proc/PID/root/",
        "ls /proc/PID/cwd/",
        "ls /proc/PID/fd/",
    ] {
        let probe = probe.replace("PID", &pid.to_string());
        let r = sh(&c, "alice", &probe).await;
        let out = ok(&r)["stdout"].as_str().unwrap_or("");
        assert!(
            !out.contains("bobs-secret") && out.is_empty(),
            "{probe}: {r}"
        );
    }
    // Nor can it trace or signal it.
    let r = sh(&c, "alice", &format!("kill -STOP {pid}")).await;
    assert_ne!(code(&r), 0);
    // A set-user-id binary in alice's home (the host's, made before children were the
    // principal's) runs with alice's ids only.
    let planted = home(&h, "alice").join("setid");
    std::fs::copy("/usr/bin/id", &planted).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o6755))
        .unwrap_or_else(|e| panic!("{e}"));
    let alice = uid_of(&c, "alice").await;
    let ids = sh(&c, "alice", "./setid -u; ./setid -g").await;
    assert_eq!(ok(&ids)["stdout"], format!("{alice}\n{alice}\n"), "{ids}");
    let stopped = call(&c, "stop", json!({"id": id}), "bob").await;
    ok(&stopped);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_a_child_leaves_behind_dies_and_its_uid_stays_reserved() {
    let h = uid_host(3_100_900..=3_100_901);
    let c = load(&h, "runner").await;
    let alice = uid_of(&c, "alice").await;
    let r = sh(
        &c,
        "alice",
        "setsid /bin/sleep 1000 </dev/null >/dev/null 2>&1 & echo $!",
    )
    .await;
    let daemon: u64 = ok(&r)["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    // The leader is gone; whatever it left in its group is killed with it (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !gone(daemon) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone(daemon), "the daemon outlived its leader");
    c.unload().await;
    drop(c);
    if !root() {
        return;
    }
    // Its uid is still alice's: bob gets the other one, carol none.
    let c = load(&h, "again").await;
    assert_eq!(uid_of(&c, "alice").await, alice);
    let bob = uid_of(&c, "bob").await;
    assert_ne!(bob, alice);
    let carol = run(&c, "carol", "/usr/bin/id", &["-u"]).await;
    assert_eq!(err(&carol), "quota");
    assert!(Path::new(&h.state().join(UID_RECORD_FILE)).exists());
    c.unload().await;
}
