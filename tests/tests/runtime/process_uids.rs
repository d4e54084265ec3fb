//! Host processes under per-principal user ids, with real children: on a root host with a
//! configured range each principal's children run as a uid (and gid) of their own, which the
//! host alone chooses, keeps across spawns, capsules, reloads and restarts, and refuses with
//! `quota` once the range is used up; one principal's child can then neither signal another
//! principal's child nor open its home. A host that is not root runs every child as its own
//! user, as documented, and these tests assert that instead.

use std::ops::RangeInclusive;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use capsule_runtime::Capsule;
use capsule_runtime::process::UID_RECORD_FILE;
use capsule_runtime::vfs::StateLayout;
use serde_json::{Value, json};

use crate::common::{Host, audit_events, err, host_in, host_with, ok, pid};
use crate::process::{call, gone};

/// Programs the operator grants in these tests.
pub(crate) const GRANTS: &str = r#"[capabilities]
host_process = ["/usr/bin/id", "/bin/kill", "/bin/cat", "/bin/sleep", "/bin/sh"]
allow_persistent = true
"#;

/// Whether this test process is root, and so whether children take a uid of their own.
pub(crate) fn root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub(crate) fn host_uid() -> u64 {
    std::fs::metadata("/proc/self")
        .map(|m| u64::from(m.uid()))
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn uid_host(range: RangeInclusive<u32>) -> Host {
    host_with(move |c| c.process_uids = Some(range))
}

pub(crate) async fn load(h: &Host, name: &str) -> Capsule {
    h.approve_all();
    h.load(name, "proc-runner.wasm", GRANTS).await
}

/// Runs `cmd args…` to completion for `who` and returns its answer.
pub(crate) async fn run(c: &Capsule, who: &str, cmd: &str, args: &[&str]) -> Value {
    call(c, "spawn", json!({"cmd": cmd, "args": args}), who).await
}

/// The user id `who`'s child reports (`id -u`).
pub(crate) async fn uid_of(c: &Capsule, who: &str) -> u64 {
    let r = run(c, who, "/usr/bin/id", &["-u"]).await;
    ok(&r)["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no uid in {r}"))
}

/// The real, effective, saved and filesystem ids on one `/proc/<pid>/status` line.
pub(crate) fn proc_ids(pid: u64, key: &str) -> Vec<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("{pid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| panic!("no {key} for {pid}"))
}

pub(crate) async fn persist_sleeper(c: &Capsule, who: &str) -> (String, u64) {
    let r = call(
        c,
        "persist",
        json!({"cmd": "/bin/sleep", "args": ["1000"]}),
        who,
    )
    .await;
    let id = ok(&r)
        .as_str()
        .unwrap_or_else(|| panic!("no id in {r}"))
        .to_string();
    let s = call(c, "status", json!({"id": id}), who).await;
    let pid = ok(&s)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {s}"));
    (id, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_principal_runs_as_its_own_uid_and_cannot_signal_or_read_another() {
    let range = 3_100_000..=3_100_009;
    let h = uid_host(range.clone());
    let c = load(&h, "runner").await;
    let alice = uid_of(&c, "alice").await;
    let bob = uid_of(&c, "bob").await;
    if !root() {
        // The documented fallback: one shared uid, the host's, and nothing recorded.
        assert_eq!((alice, bob), (host_uid(), host_uid()));
        assert!(!h.state().join(UID_RECORD_FILE).exists());
        c.unload().await;
        return;
    }
    assert_ne!(alice, bob);
    for u in [alice, bob] {
        assert_ne!(u, 0);
        assert_ne!(u, host_uid());
        assert!(range.contains(&u32::try_from(u).unwrap_or(0)), "{u}");
    }
    // Its own group too, and no supplementary groups or capabilities.
    let groups = run(&c, "alice", "/usr/bin/id", &["-G"]).await;
    assert_eq!(ok(&groups)["stdout"], format!("{alice}\n"));
    let caps = run(
        &c,
        "alice",
        "/bin/sh",
        &[
            "-c",
            "while read -r k v; do [ \"$k\" = CapEff: ] && echo \"$v\"; done < /proc/self/status",
        ],
    )
    .await;
    assert_eq!(ok(&caps)["stdout"], "0000000000000000\n");

    // Bob's long-running child, under bob's ids on every id slot.
    let (bobs, bobs_pid) = persist_sleeper(&c, "bob").await;
    assert_eq!(proc_ids(bobs_pid, "Uid:"), vec![bob; 4]);
    assert_eq!(proc_ids(bobs_pid, "Gid:"), vec![bob; 4]);

    // Alice's child cannot signal it, by program or by shell.
    let target = bobs_pid.to_string();
    let killed = run(&c, "alice", "/bin/kill", &["-9", &target]).await;
    assert_ne!(ok(&killed)["exit"]["code"], 0, "{killed}");
    let killed = run(
        &c,
        "alice",
        "/bin/sh",
        &["-c", &format!("kill -9 {target}")],
    )
    .await;
    assert_ne!(ok(&killed)["exit"]["code"], 0, "{killed}");
    assert!(!gone(bobs_pid), "alice's child killed bob's");

    // Bob's home holds a file of his; even with the state directory opened up to everyone,
    // alice's child cannot read it, while bob's own child can.
    let wrote = run(&c, "bob", "/bin/sh", &["-c", "echo s3cret > secret.txt"]).await;
    assert_eq!(ok(&wrote)["exit"]["code"], 0, "{wrote}");
    let layout = StateLayout::new(h.state());
    let bob_home =
        std::fs::canonicalize(layout.home(&pid("bob"))).unwrap_or_else(|e| panic!("{e}"));
    for open in [h.state().to_path_buf(), h.state().join("home")] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // The home itself stays the host's, open to bob's group only (see `process_uids_home`).
    let meta = std::fs::metadata(&bob_home).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (meta.uid(), u64::from(meta.gid()), meta.mode() & 0o7777),
        (0, bob, 0o1770)
    );
    let secret = bob_home.join("secret.txt");
    let secret = secret.to_string_lossy();
    let read = run(&c, "alice", "/bin/cat", &[&secret]).await;
    assert_ne!(ok(&read)["exit"]["code"], 0, "{read}");
    assert_eq!(ok(&read)["stdout"], "", "alice read bob's file");
    let own = run(&c, "bob", "/bin/cat", &["secret.txt"]).await;
    assert_eq!(ok(&own)["stdout"], "s3cret\n");
    // Bob's tmp is his as well.
    let tmp = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/sh", "args": ["-c", "echo x > x && cat x"], "cwd": "/tmp"}),
        "bob",
    )
    .await;
    assert_eq!(ok(&tmp)["stdout"], "x\n");

    // A file injected for alice's child is hers to read.
    let injected = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/cat", "args": ["note"], "inject": [{"path": "note", "content": "hi"}]}),
        "alice",
    )
    .await;
    assert_eq!(ok(&injected)["stdout"], "hi");

    // Bob's own child may signal his.
    let killed = run(&c, "bob", "/bin/kill", &["-9", &target]).await;
    assert_eq!(ok(&killed)["exit"]["code"], 0, "{killed}");
    let waited = call(&c, "wait", json!({"id": bobs}), "bob").await;
    assert_eq!(ok(&waited)["signal"], 9);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principals_uid_is_chosen_by_the_host_and_stable_across_spawns_capsules_and_restarts() {
    let range = 3_100_100..=3_100_109;
    let h = uid_host(range.clone());
    let c = load(&h, "runner").await;
    let first = uid_of(&c, "alice").await;
    assert_eq!(uid_of(&c, "alice").await, first, "a second spawn");
    let bob = uid_of(&c, "bob").await;
    // Another capsule, with a manifest of its own, gets the same ids for the same principal:
    // nothing a capsule declares or asks for picks them.
    let other = load(&h, "other").await;
    assert_eq!(uid_of(&other, "alice").await, first);
    other.unload().await;
    c.unload().await;
    drop((other, c));
    h.rt.shutdown().await;
    let Host { rt, dir } = h;
    drop(rt);
    if !root() {
        assert_eq!((first, bob), (host_uid(), host_uid()));
        return;
    }
    // A restart on the same state directory, with principals seen in another order.
    let h = host_in(dir, move |c| c.process_uids = Some(range));
    let c = load(&h, "runner").await;
    assert_eq!(uid_of(&c, "bob").await, bob);
    assert_eq!(uid_of(&c, "alice").await, first);
    let carol = uid_of(&c, "carol").await;
    assert!(carol != first && carol != bob);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_range_refuses_a_new_principal_with_quota_and_audits_it() {
    let h = uid_host(3_100_200..=3_100_200);
    let c = load(&h, "uidfull").await;
    let alice = uid_of(&c, "alice").await;
    let r = run(&c, "bob", "/usr/bin/id", &["-u"]).await;
    if !root() {
        assert_eq!(ok(&r)["stdout"], format!("{}\n", host_uid()));
        return;
    }
    assert_eq!(alice, 3_100_200);
    assert_eq!(err(&r), "quota");
    assert!(
        audit_events("uidfull").iter().any(|e| {
            e.get("principal").map(String::as_str) == Some("bob")
                && e.get("reason")
                    .is_some_and(|r| r.contains("no user id left"))
        }),
        "the refusal is audited"
    );
    // The principal holding the id goes on as before.
    assert_eq!(uid_of(&c, "alice").await, alice);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_child_keeps_its_uid_across_a_reload() {
    let h = uid_host(3_100_300..=3_100_309);
    let c = load(&h, "runner").await;
    let alice = uid_of(&c, "alice").await;
    let (id, child) = persist_sleeper(&c, "alice").await;
    assert_eq!(proc_ids(child, "Uid:"), vec![alice; 4]);
    let dir = h.capsule_dir_at("runner", "proc-runner.wasm", "0.2.0", GRANTS);
    let c2 =
        h.rt.reload("runner", &dir)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let s = call(&c2, "status", json!({"id": id}), "alice").await;
    assert_eq!(ok(&s)["running"], true);
    assert_eq!(ok(&s)["pid"], json!(child));
    assert_eq!(proc_ids(child, "Uid:"), vec![alice; 4]);
    assert_eq!(uid_of(&c2, "alice").await, alice);
    if !root() {
        assert_eq!(alice, host_uid());
    }
    assert!(h.rt.unload("runner").await);
    assert!(gone(child));
}
