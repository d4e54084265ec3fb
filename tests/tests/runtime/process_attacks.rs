//! Hostile children of `astrid:process`, driven from a real guest: a child running as the
//! host's root user (without capabilities) trying to lift its process-count limit or leave the
//! pids cgroup the host kills it through, and a request whose variables make a granted
//! program run code nobody granted.

use serde_json::{Value, json};

use crate::common::{call_as, err, host, ok};

const SHELL: &str = r#"[capabilities]
host_process = ["/bin/sh"]
allow_persistent = true
"#;

fn sh(script: &str) -> Value {
    json!({"cmd": "/bin/sh", "args": ["-c", script]})
}

/// The host path of the pids cgroup directory of the shell running this snippet (v1 or v2).
const OWN_CGROUP: &str = r#"
v1=$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup)
if [ -n "$v1" ]; then root=/sys/fs/cgroup/pids; cg=$root$v1
else root=/sys/fs/cgroup; cg=$root$(sed -n 's/^0:://p' /proc/self/cgroup); fi
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_lift_its_process_limit_or_leave_its_cgroup() {
    let h = host();
    h.approve_all();
    let c = h.load("runner", "proc-runner.wasm", SHELL).await;
    let script = format!(
        "{OWN_CGROUP}
case $cg in *capsule-*) echo confined;; esac
(echo max > $cg/pids.max) 2>/dev/null && echo raised
(mkdir $cg/nested) 2>/dev/null && echo nested
(echo $$ > $root/cgroup.procs) 2>/dev/null && echo moved
true"
    );
    let r = call_as(&c, "spawn", sh(&script), Some("alice")).await;
    let out = ok(&r)["stdout"].as_str().unwrap_or_default().to_string();
    if out.contains("confined") {
        assert_eq!(
            out, "confined\n",
            "a child changed the cgroup that holds it: {r}"
        );
    }
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_leaves_its_cgroup_and_session_dies_with_the_unload() {
    let h = host();
    h.approve_all();
    let c = h.load("runner", "proc-runner.wasm", SHELL).await;
    let script = format!(
        "{OWN_CGROUP}
(echo $$ > $root/cgroup.procs) 2>/dev/null
setsid sleep 1000 </dev/null >/dev/null 2>&1 &
echo $!
read -r line"
    );
    let id = ok(&call_as(
        &c,
        "persist",
        json!({"cmd": "/bin/sh", "args": ["-c", script], "keep": true}),
        Some("alice"),
    )
    .await)
    .as_str()
    .unwrap_or_default()
    .to_string();
    let mut escaped = None;
    for _ in 0..200 {
        let logs = call_as(&c, "read-logs", json!({"id": id}), Some("alice")).await;
        if let Some(n) = ok(&logs)["stdout"]
            .as_str()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            escaped = Some(n);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let escaped = escaped.unwrap_or_else(|| panic!("the child never printed its pid"));
    c.unload().await;
    // A SIGKILL takes effect once the target is scheduled: give it a bounded while.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{escaped}/stat"))
            .is_ok_and(|s| s.contains("(sleep)") && !s.contains(") Z "))
    };
    for _ in 0..1000 {
        if !alive() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let alive = alive();
    if alive {
        let _ = std::process::Command::new("kill")
            .args(["-9", &escaped.to_string()])
            .status();
    }
    assert!(!alive, "sleep {escaped} survived the unload of its capsule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_that_make_a_granted_program_run_other_code_are_refused() {
    let h = host();
    h.approve_all();
    let grants = r#"[capabilities]
host_process = ["/bin/bash -c true"]
"#;
    let c = h.load("runner", "proc-runner.wasm", grants).await;
    let granted = json!({"cmd": "/bin/bash", "args": ["-c", "true"]});
    let plain = call_as(&c, "spawn", granted.clone(), Some("alice")).await;
    assert_eq!(ok(&plain)["exit"]["code"], 0, "{plain}");
    let mut attempts = Vec::new();
    let mut with = |extra: Value| {
        let mut req = granted.clone();
        if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        attempts.push(req);
    };
    with(json!({"env": [["BASH_FUNC_true%%", "() { echo pwned; }"]]}));
    with(json!({"env": [["LD_PRELOAD", "/nonexistent/evil.so"]]}));
    with(json!({"inject": [{"env": "BASH_ENV", "content": "echo pwned"}]}));
    with(json!({"env": [["SHELLOPTS", "xtrace"], ["PS4", "$(echo pwned)"]]}));
    for req in attempts {
        let r = call_as(&c, "spawn", req.clone(), Some("alice")).await;
        assert_eq!(err(&r), "capability-denied", "{req} ran: {r}");
    }
    c.unload().await;
}
