//! Attacks on a root host child's own namespaces from inside real children: walking `..` up
//! from the working directory to the host's `/tmp` under the fresh one, the size a child's
//! private scratch space may take, System V objects of another principal's child, mounts or
//! namespaces left on the host by many spawns, and what a planted FIFO or a deep tree does to
//! the hand-over walk. Root host with working namespaces only; the other modes are asserted
//! in `process_ns`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use capsule_runtime::Capsule;
use capsule_runtime::process::namespaces_available;
use serde_json::{Value, json};

use crate::common::{Host, host, ok};
use crate::process::call;
use crate::process_uids::{GRANTS, root, uid_host, uid_of};

/// Whether this host gives children namespaces of their own (the only mode attacked here).
fn isolated() -> bool {
    root() && namespaces_available()
}

fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

async fn load(h: &Host, name: &str) -> Capsule {
    h.approve_all();
    h.load(name, "proc-runner.wasm", GRANTS).await
}

async fn sh_with(c: &Capsule, who: &str, script: &str, extra: Value) -> Value {
    let mut args = json!({"cmd": "/bin/sh", "args": ["-c", script]});
    if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    call(c, "spawn", args, who).await
}

async fn sh(c: &Capsule, who: &str, script: &str) -> Value {
    sh_with(c, who, script, json!({})).await
}

fn stdout(r: &Value) -> String {
    ok(r)["stdout"].as_str().unwrap_or_default().to_string()
}

/// Walks `..` up from the working directory eight times, listing and reading at every step.
fn climb(needle: &str) -> String {
    format!(
        "d=..; i=0; while [ $i -lt 8 ]; do ls -a $d 2>/dev/null; cat $d/{needle} 2>/dev/null; \
         echo x > $d/{needle}-from-child 2>/dev/null; d=$d/..; i=$((i+1)); done; \
         ls -a /proc/self/cwd/../../.. 2>/dev/null; echo end"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_directory_does_not_lead_back_to_the_hosts_tmp() {
    if !isolated() {
        return;
    }
    let t = tag();
    let needle = format!("capsule-atk-cwd-{t}");
    let host_file = PathBuf::from("/tmp").join(&needle);
    std::fs::write(&host_file, "host only").unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&host_file, PermissionsExt::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    // With a uid of its own in a state directory the operator made traversable, and as the
    // host's root user without capabilities; from the home and from the principal's tmp.
    for (h, who) in [(uid_host(3_101_700..=3_101_709), "uid"), (host(), "root")] {
        let c = load(&h, "runner").await;
        if who == "uid" {
            uid_of(&c, "alice").await;
            for d in [h.state().to_path_buf(), h.state().join("home")] {
                std::fs::set_permissions(&d, PermissionsExt::from_mode(0o711))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        for cwd in ["home://", "/tmp/"] {
            let r = sh_with(&c, "alice", &climb(&needle), json!({"cwd": cwd})).await;
            if who == "root" && r.get("err").is_some() {
                // A root host without a pids cgroup refuses every spawn without uids.
                continue;
            }
            let out = stdout(&r);
            assert!(out.ends_with("end\n"), "{who} {cwd}: {r}");
            assert!(
                // What the child wrote in its own /tmp may show; the host's file may not.
                !out.lines().any(|l| l == needle) && !out.contains("host only"),
                "{who} {cwd}: the host's /tmp showed through `..`: {out}"
            );
            let planted = PathBuf::from("/tmp").join(format!("{needle}-from-child"));
            assert!(
                !planted.exists(),
                "{who} {cwd}: a child wrote into the host's /tmp"
            );
        }
        c.unload().await;
    }
    let _ = std::fs::remove_file(&host_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_scratch_space_is_bounded_and_no_one_elses() {
    if !isolated() {
        return;
    }
    let h = uid_host(3_101_710..=3_101_719);
    let c = load(&h, "runner").await;
    let mem = 48u64 << 20;
    // Filling every scratch place past the child's memory limit stops before the places
    // together exceed that limit: a child cannot park more RAM in scratch files than it may map.
    let fill = "for d in /tmp /var/tmp /dev/shm /run/lock; do \
                head -c 50331649 /dev/zero > $d/fill 2>/dev/null && echo unbounded $d; \
                echo $d $(stat -c %s $d/fill); done";
    let r = sh_with(&c, "alice", fill, json!({"mem": mem})).await;
    let out = stdout(&r);
    assert!(!out.contains("unbounded"), "{r}");
    let mut held = 0;
    for d in ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"] {
        let size = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{d} ")))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{d}: {out}"));
        assert!(size > 0, "{d} holds nothing: {out}");
        held += size;
    }
    assert!(
        held <= mem,
        "scratch places together hold {held} bytes: {out}"
    );
    // Bob's child sees none of it and has its whole bound to itself.
    let b = sh_with(
        &c,
        "bob",
        "ls /tmp /var/tmp /dev/shm /run/lock; head -c 1048576 /dev/zero > /tmp/f && echo wrote",
        json!({"mem": mem}),
    )
    .await;
    assert_eq!(
        stdout(&b).lines().filter(|l| l.contains("fill")).count(),
        0,
        "{b}"
    );
    assert!(stdout(&b).ends_with("wrote\n"), "{b}");
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_v_objects_of_one_principals_child_are_out_of_reach_of_another() {
    if !isolated() || !std::path::Path::new("/usr/bin/ipcmk").exists() {
        return;
    }
    let h = uid_host(3_101_720..=3_101_729);
    let c = load(&h, "runner").await;
    let key = 0x5eed_0000u32 + u32::from(uuid::Uuid::new_v4().as_bytes()[0]);
    let r = call(
        &c,
        "persist",
        json!({"cmd": "/bin/sh", "args": ["-c", format!(
            "ipcmk -M 4096 -p 0666; ipcmk -Q -p 0666; \
             perl -e 'use IPC::SysV qw(IPC_CREAT); shmget({key}, 4096, IPC_CREAT|0666) or die'; \
             ipcs; exec sleep 1000")]}),
        "alice",
    )
    .await;
    let id = ok(&r).as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    // Wait (bounded) until alice's child made its objects.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let logs = call(&c, "read-logs", json!({"id": id}), "alice").await;
        if ok(&logs)["stdout"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("{key:08x}")))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{logs}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = stdout(&sh(&c, "bob", "ipcs -m; ipcs -q").await);
    assert!(!seen.contains(&format!("{key:08x}")), "{seen}");
    let host = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    assert!(!host.contains(&key.to_string()), "{host}");
    ok(&call(&c, "stop", json!({"id": id}), "alice").await);
    c.unload().await;
}

/// The host's mount points, one per line of its `mountinfo`.
fn host_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_spawns_leave_no_mount_on_the_host_and_none_of_theirs_reaches_it() {
    if !isolated() {
        return;
    }
    let h = uid_host(3_101_730..=3_101_739);
    let c = load(&h, "runner").await;
    uid_of(&c, "alice").await;
    let before = host_mounts();
    for _ in 0..12 {
        // Mount attempts fail without capabilities; the namespace's own mounts die with it.
        let r = sh(&c, "alice", "mount -t tmpfs x /mnt 2>/dev/null; echo done").await;
        assert_eq!(stdout(&r), "done\n", "{r}");
    }
    assert_eq!(host_mounts(), before, "spawns left mounts on the host");
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_deep_tree_in_the_home_neither_hangs_nor_misleads_the_hand_over() {
    if !isolated() {
        return;
    }
    let h = uid_host(3_101_740..=3_101_749);
    h.approve_all();
    let manifest = format!("{GRANTS}fs_read = [\"home://\"]\nfs_write = [\"home://\"]\n");
    let c = h.load("walk", "proc-runner.wasm", &manifest).await;
    ok(&call(
        &c,
        "fs-write",
        json!({"path": "home://made.txt", "content": "x"}),
        "alice",
    )
    .await);
    let home = h.state().join("home/alice");
    let fifo = home.join("fifo");
    let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    let mut deep = home.join("deep");
    for _ in 0..140 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(deep.join("bottom.txt"), "x").unwrap_or_else(|e| panic!("{e}"));
    // The first spawn hands over what it can and returns: a FIFO is never opened.
    let r = sh(&c, "alice", "cat made.txt && echo ok").await;
    assert_eq!(stdout(&r), "xok\n", "{r}");
    let alice = uid_of(&c, "alice").await;
    let owner = |p: &std::path::Path| {
        std::fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .uid()
    };
    assert_eq!(u64::from(owner(&home.join("made.txt"))), alice);
    assert_eq!(owner(&fifo), 0, "a FIFO stays the host's");
    assert_eq!(
        owner(&deep.join("bottom.txt")),
        0,
        "what lies below the walk's depth stays the host's"
    );
    assert_eq!(u64::from(owner(&home.join("deep"))), alice);
    c.unload().await;
}
