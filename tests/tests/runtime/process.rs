//! `astrid:process` 1.0 and 1.1 from a real guest (`proc-runner`) running real host programs:
//! grants per program and argument list, the environment and working directory a child gets,
//! every limit with its documented error or signal, output overflow, principals kept apart,
//! and no child left behind by an unload, checked by pid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsule_runtime::Capsule;
use capsule_runtime::security::Request;
use capsule_runtime::vfs::StateLayout;
use serde_json::{Value, json};

use crate::common::{Host, call_as, err, host, ok, pid};
use crate::hostile::Bystander;

/// Programs the operator grants the runner in these tests.
pub(crate) const GRANTS: &str = r#"[capabilities]
host_process = [
    "/bin/true",
    "/bin/sh",
    "/bin/sleep",
    "/bin/cat",
    "/bin/echo hello",
    "/bin/dd if=/dev/zero of=/dev/null bs=* count=1",
]
allow_persistent = true
"#;

pub(crate) async fn runner(h: &Host) -> Capsule {
    h.approve_all();
    h.load("runner", "proc-runner.wasm", GRANTS).await
}

pub(crate) async fn call(c: &Capsule, action: &str, args: Value, who: &str) -> Value {
    call_as(c, action, args, Some(who)).await
}

fn sh(script: &str) -> Value {
    json!({"cmd": "/bin/sh", "args": ["-c", script]})
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Whether the process `pid` is gone: no entry, or the number now names a process outside
/// the group it led.
pub(crate) fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat_fields(&stat).get(2).map(String::as_str) != Some(&pid.to_string()),
    }
}

/// The fields after the command name of a `/proc/<pid>/stat` line (state, ppid, pgrp, …).
fn stat_fields(stat: &str) -> Vec<String> {
    stat.rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Live (not zombie) processes whose process group is `pgid`.
fn group_size(pgid: u64) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .map(|s| stat_fields(&s))
        .filter(|f| f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string())
        .count()
}

/// The `pids.events` file of the pids cgroup `pid` is in, if it has one of its own.
fn pids_events(pid: u64) -> Option<PathBuf> {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    groups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let root = if controllers.split(',').any(|c| c == "pids") {
            Path::new("/sys/fs/cgroup/pids")
        } else if controllers.is_empty() {
            Path::new("/sys/fs/cgroup")
        } else {
            return None;
        };
        let file = root.join(path.trim_start_matches('/')).join("pids.events");
        (path.contains("capsule-") && file.exists()).then_some(file)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn true_and_a_shell_run_in_both_versions_with_only_the_requests_environment() {
    let h = host();
    let c = runner(&h).await;
    // A capsule built against 1.0 runs beside one built against 1.1.
    let old = h.load("old", "proc-v10.wasm", GRANTS).await;
    let r = call(
        &old,
        "spawn",
        json!({"cmd": "/bin/true", "args": []}),
        "alice",
    )
    .await;
    let refused = call(
        &old,
        "spawn",
        json!({"cmd": "/bin/ls", "args": []}),
        "alice",
    )
    .await;
    assert_eq!(err(&refused), "capability-denied");
    assert_eq!(ok(&r)["exit"], json!({"code": 0, "signal": null}));
    old.unload().await;
    let r = call(
        &c,
        "spawn",
        with(
            sh("echo \"$FOO\"; pwd; echo oops >&2; env; exit 3"),
            json!({"env": [["FOO", "bar"]]}),
        ),
        "alice",
    )
    .await;
    let out = ok(&r)["stdout"].as_str().unwrap_or_default().to_string();
    let home = std::fs::canonicalize(StateLayout::new(h.state()).home(&pid("alice")))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("bar"));
    assert_eq!(lines.next(), Some(home.to_string_lossy().as_ref()), "{out}");
    assert_eq!(ok(&r)["stderr"], "oops\n");
    assert_eq!(ok(&r)["exit"]["code"], 3);
    for leaked in ["CARGO", "HOME=", "RUST", "PATH="] {
        assert!(
            !out.contains(leaked),
            "the host's {leaked} reached the child: {out}"
        );
    }
    // A root host's children hold no capabilities.
    let caps = call(
        &c,
        "spawn",
        sh("while read -r k v; do [ \"$k\" = CapEff: ] && echo \"$v\"; done < /proc/self/status"),
        "alice",
    )
    .await;
    assert_eq!(ok(&caps)["stdout"], "0000000000000000\n");
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_programs_argument_lists_and_persistence_are_refused() {
    let h = host();
    let c = runner(&h).await;
    for (req, why) in [
        (
            json!({"cmd": "/bin/ls", "args": []}),
            "an ungranted program",
        ),
        (
            json!({"cmd": "ls", "args": []}),
            "a bare name never granted",
        ),
        (
            json!({"cmd": "/bin/echo", "args": ["bye"]}),
            "an ungranted argument list",
        ),
        (
            json!({"cmd": "/bin/echo", "args": ["hello", "x"]}),
            "an extra argument",
        ),
        (
            json!({"cmd": "/usr/bin/../../bin/true", "args": []}),
            "another spelling",
        ),
    ] {
        let r = call(&c, "spawn", req, "alice").await;
        assert_eq!(err(&r), "capability-denied", "{why}");
    }
    let r = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/echo", "args": ["hello"]}),
        "alice",
    )
    .await;
    assert_eq!(ok(&r)["stdout"], "hello\n");
    c.unload().await;

    // What the operator refused stays refused: here `allow_persistent`, while the programs
    // were granted.
    let h = host();
    h.approver(|r| {
        capsule_runtime::Approval::Grant(
            r.diff
                .added
                .iter()
                .filter(|q| **q != Request::Persistent)
                .cloned()
                .collect(),
        )
    });
    let plain = h.load("runner", "proc-runner.wasm", GRANTS).await;
    let r = call(
        &plain,
        "spawn",
        json!({"cmd": "/bin/true", "args": []}),
        "alice",
    )
    .await;
    assert_eq!(ok(&r)["exit"]["code"], 0);
    let r = call(
        &plain,
        "persist",
        json!({"cmd": "/bin/true", "args": []}),
        "alice",
    )
    .await;
    assert_eq!(err(&r), "capability-denied");
    plain.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_directory_stays_in_the_principals_home_or_tmp() {
    let h = host();
    let c = runner(&h).await;
    for (cwd, code) in [
        ("home://../..", "boundary-escape"),
        ("home://.local/log", "boundary-escape"),
        ("home://.config/env", "boundary-escape"),
        ("/etc", "capability-denied"),
        ("cwd://", "capability-denied"),
        ("home://missing", "invalid-input"),
    ] {
        let r = call(&c, "spawn", with(sh("pwd"), json!({"cwd": cwd})), "alice").await;
        assert_eq!(err(&r), code, "{cwd}");
    }
    let bob = call(&c, "spawn", sh("pwd"), "bob").await;
    let bob_home = std::fs::canonicalize(StateLayout::new(h.state()).home(&pid("bob")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok(&bob)["stdout"].as_str().map(str::trim_end),
        Some(bob_home.to_string_lossy().as_ref())
    );
    let tmp = call(&c, "spawn", with(sh("pwd"), json!({"cwd": "/tmp"})), "bob").await;
    let out = ok(&tmp)["stdout"]
        .as_str()
        .unwrap_or_default()
        .trim_end()
        .to_string();
    assert!(
        out.starts_with(&*bob_home.to_string_lossy()) && out != bob_home.to_string_lossy(),
        "{out}"
    );
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_files_are_read_only_inside_the_working_directory_and_removed_after() {
    let h = host();
    let c = runner(&h).await;
    let r = call(
        &c,
        "spawn",
        with(
            sh("cat cfg.txt; cat \"$SECRET_FILE\"; [ -w cfg.txt ] || stat -c %a cfg.txt"),
            json!({"inject": [
                {"path": "cfg.txt", "content": "fixed\n"},
                {"env": "SECRET_FILE", "content": "pointed\n"},
            ]}),
        ),
        "alice",
    )
    .await;
    let out = ok(&r)["stdout"].as_str().unwrap_or_default().to_string();
    assert_eq!(out, "fixed\npointed\n400\n", "read-only to the child");
    let home = StateLayout::new(h.state()).home(&pid("alice"));
    assert!(
        !home.join("cfg.txt").exists(),
        "injected files go when the process exits"
    );
    for (path, code) in [
        ("../escape.txt", "boundary-escape"),
        ("sub/inner.txt", "boundary-escape"),
        ("/etc/passwd", "boundary-escape"),
        (".local", "invalid-input"),
    ] {
        let r = call(
            &c,
            "spawn",
            with(
                sh("true"),
                json!({"inject": [{"path": path, "content": "x"}]}),
            ),
            "alice",
        )
        .await;
        assert_eq!(err(&r), code, "{path}");
    }
    assert!(!h.state().join("home").join("escape.txt").exists());
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_beyond_the_buffer_drops_the_oldest_or_fails_under_backpressure() {
    let h = host();
    let c = runner(&h).await;
    // 5000 lines of 17 bytes: 85000 bytes against a 4096-byte buffer.
    let flood = "i=0; while [ $i -lt 5000 ]; do echo 0123456789abcdef; i=$((i+1)); done";
    let r = call(&c, "spawn", with(sh(flood), json!({"ring": 4096})), "alice").await;
    let out = ok(&r)["stdout"].as_str().unwrap_or_default();
    assert_eq!(
        out.len(),
        4096,
        "drop-oldest keeps exactly the newest buffer's worth"
    );
    assert!(out.ends_with("0123456789abcdef\n"));
    assert_eq!(ok(&r)["exit"]["code"], 0);

    let r = call(
        &c,
        "spawn",
        with(sh(flood), json!({"ring": 4096, "overflow": "back"})),
        "alice",
    )
    .await;
    assert_eq!(
        err(&r),
        "too-large",
        "a run to completion cannot wait for a reader"
    );

    // Kept under an id, the loss is counted and cursors say where it happened.
    let id = ok(&call(
        &c,
        "persist",
        with(sh(flood), json!({"ring": 4096})),
        "alice",
    )
    .await)
    .as_str()
    .unwrap_or_default()
    .to_string();
    let exit = call(&c, "wait", json!({"id": id}), "alice").await;
    assert_eq!(ok(&exit)["code"], 0);
    let status = call(&c, "status", json!({"id": id}), "alice").await;
    assert_eq!(ok(&status)["dropped"], 85000 - 4096);
    assert_eq!(ok(&status)["buffered"], 4096);
    let chunk = call(
        &c,
        "read-since",
        json!({"id": id, "cursor": "0", "max": 100}),
        "alice",
    )
    .await;
    assert_eq!(ok(&chunk)["dropped"], 85000 - 4096);
    assert_eq!(ok(&chunk)["data"].as_str().map(str::len), Some(100));
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stays_under_its_process_limit_while_another_principal_answers() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let c = runner(&h).await;
    // The leader forks once and then waits on its stdin, so it lives until the wall-time
    // limit; the tree below it forks as fast as the limit lets it.
    let bomb = "f() { while :; do f & done; }; f & read -r line";
    let id = ok(&call(
        &c,
        "persist",
        with(sh(bomb), json!({"pids": 8, "life": 3000, "keep": true})),
        "alice",
    )
    .await)
    .as_str()
    .unwrap_or_default()
    .to_string();
    let status = call(&c, "status", json!({"id": id}), "alice").await;
    let leader = ok(&status)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{status}"));
    let events = pids_events(leader);
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(group_size(leader));
        bystander.check("fork bomb").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most <= 8, "{most} processes in a tree limited to 8");
    let refused_forks = events
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        });
    let exit = call(&c, "wait", json!({"id": id}), "alice").await;
    assert_eq!(ok(&exit)["signal"], 9, "the wall-time limit killed it");
    assert!(gone(leader));
    assert!(
        refused_forks.is_some_and(|n| n > 0),
        "the pids cgroup refused forks: {refused_forks:?}"
    );
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_fails_under_its_address_space_limit() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let c = runner(&h).await;
    let hog =
        json!({"cmd": "/bin/dd", "args": ["if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]});
    let r = call(
        &c,
        "spawn",
        with(hog.clone(), json!({"mem": 64u64 << 20})),
        "alice",
    )
    .await;
    assert_ne!(ok(&r)["exit"]["code"], 0, "{r}");
    assert!(
        ok(&r)["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("memory"),
        "{r}"
    );
    bystander.check("memory hog").await;
    let r = call(&c, "spawn", hog, "alice").await;
    assert_eq!(
        ok(&r)["exit"]["code"],
        0,
        "without the lower limit the same program runs: {r}"
    );
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_kills_every_child_even_one_ignoring_sigterm() {
    let h = host();
    let c = runner(&h).await;
    let sleeper = ok(&call(
        &c,
        "persist",
        json!({"cmd": "/bin/sleep", "args": ["1000"]}),
        "alice",
    )
    .await)
    .as_str()
    .unwrap_or_default()
    .to_string();
    let sleeper_pid = ok(&call(&c, "status", json!({"id": sleeper}), "alice").await)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid"));
    let stubborn = call(
        &c,
        "bg",
        with(
            sh("trap '' TERM; echo ready; read -r line"),
            json!({"keep": true}),
        ),
        "alice",
    )
    .await;
    let stubborn_pid = ok(&stubborn)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{stubborn}"));
    // The trap is installed once it says so.
    let logs = call(
        &c,
        "h-logs",
        json!({"slot": ok(&stubborn)["slot"]}),
        "alice",
    )
    .await;
    assert_eq!(ok(&logs)["stdout"], "ready\n");
    let v10 = h.load("old", "proc-v10.wasm", GRANTS).await;
    let old = call(
        &v10,
        "bg",
        json!({"cmd": "/bin/sleep", "args": ["1000"]}),
        "alice",
    )
    .await;
    let old_pid = ok(&old)["pid"].as_u64().unwrap_or_else(|| panic!("{old}"));
    for p in [sleeper_pid, stubborn_pid, old_pid] {
        assert!(!gone(p), "{p} runs before the unload");
    }
    c.unload().await;
    v10.unload().await;
    for p in [sleeper_pid, stubborn_pid, old_pid] {
        assert!(gone(p), "{p} survived the unload");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principal_cannot_see_attach_signal_or_stop_a_process() {
    let h = host();
    let c = runner(&h).await;
    let id = ok(&call(
        &c,
        "persist",
        json!({"cmd": "/bin/sleep", "args": ["1000"], "label": "mine"}),
        "alice",
    )
    .await)
    .as_str()
    .unwrap_or_default()
    .to_string();
    let listed = call(&c, "list", json!({}), "bob").await;
    assert_eq!(ok(&listed), &json!([]));
    let listed = call(&c, "list", json!({"label": "mine"}), "bob").await;
    assert_eq!(ok(&listed), &json!([]));
    for action in [
        "attach",
        "status",
        "read-logs",
        "signal",
        "stop",
        "release",
        "write-stdin",
        "wait",
        "watch",
    ] {
        let theirs = call(&c, action, json!({"id": id, "timeout": 1}), "bob").await;
        let nobody = call(&c, action, json!({"id": "0000", "timeout": 1}), "bob").await;
        assert_eq!(err(&theirs), "no-such-process", "{action}");
        assert_eq!(
            theirs, nobody,
            "{action}: someone else's process looks like none at all"
        );
    }
    let mine = call(&c, "list", json!({"label": "mine"}), "alice").await;
    assert_eq!(ok(&mine)[0]["id"], json!(id));
    assert_eq!(
        ok(&mine)[0]["running"],
        true,
        "bob's attempts changed nothing"
    );
    let stopped = call(&c, "stop", json!({"id": id, "grace": 10_000}), "alice").await;
    assert_eq!(ok(&stopped)["signal"], 15);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_process_takes_stdin_and_streams_its_output() {
    let h = host();
    let c = runner(&h).await;
    let cat = call(
        &c,
        "bg",
        json!({"cmd": "/bin/cat", "args": [], "keep": true}),
        "alice",
    )
    .await;
    let slot = ok(&cat)["slot"].clone();
    let wrote = call(
        &c,
        "h-write",
        json!({"slot": slot, "data": "hello\n"}),
        "alice",
    )
    .await;
    assert_eq!(ok(&wrote), 6);
    let logs = call(&c, "h-logs", json!({"slot": slot}), "alice").await;
    assert_eq!(ok(&logs)["stdout"], "hello\n");
    let timeout = call(
        &c,
        "h-wait-timeout",
        json!({"slot": slot, "timeout": 1}),
        "alice",
    )
    .await;
    assert_eq!(err(&timeout), "wait-timeout");
    ok(&call(&c, "h-close", json!({"slot": slot}), "alice").await);
    let again = call(&c, "h-close", json!({"slot": slot}), "alice").await;
    assert_eq!(err(&again), "closed");
    let done = call(&c, "h-wait", json!({"slot": slot}), "alice").await;
    assert_eq!(ok(&done)["exit"]["code"], 0);
    // The one principal's limit on processes at once.
    h.profile("carol", "[quotas]\nmax_background_processes = 1\n");
    let first = call(
        &c,
        "bg",
        json!({"cmd": "/bin/sleep", "args": ["1000"]}),
        "carol",
    )
    .await;
    ok(&first);
    let second = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/true", "args": []}),
        "carol",
    )
    .await;
    assert_eq!(err(&second), "quota");
    let killed = call(&c, "h-kill", json!({"slot": ok(&first)["slot"]}), "carol").await;
    assert_eq!(ok(&killed)["killed"], true);
    assert_eq!(ok(&killed)["exit"]["signal"], 9);
    let third = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/true", "args": []}),
        "carol",
    )
    .await;
    assert_eq!(ok(&third)["exit"]["code"], 0);
    c.unload().await;
}
