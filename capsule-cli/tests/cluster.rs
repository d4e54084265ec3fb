//! Two `capsule run` processes, children of the test, joined into one cluster through a real
//! `nats-server` the test starts on a loopback port: a request made on host B as two
//! principals is served by the notes capsule on host A and answered back across the hosts;
//! host A's own policy refuses a principal it disabled; both hosts report the bridge in
//! `capsule ps` and the metrics.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capsule_nats::NatsServer;
use capsule_tests::example;
use common::{BIN, capsule, text};
use serde_json::Value;

/// Bounds a hang, not a speed: a debug host compiling components on a loaded machine is slow.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Compiled components, shared with the other CLI tests.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsule-compile-cache")
}

/// A `capsule run` child whose stdout lines are collected; killed on drop.
struct Host {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn start(state: &Path, url: &str, id: &str, peer: &str, capsule: &str) -> Self {
        let mut child = Command::new(BIN)
            .arg("--state")
            .arg(state)
            .args(["run", "--cache"])
            .arg(shared_cache())
            .args([
                "--cluster",
                "it",
                "--nats",
                url,
                "--host-id",
                id,
                "--peer",
                peer,
            ])
            .arg(example(capsule))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("capsule run: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let pipes: [(Box<dyn Read + Send>, bool); 2] = [
            (
                Box::new(child.stdout.take().unwrap_or_else(|| panic!("stdout"))),
                true,
            ),
            (
                Box::new(child.stderr.take().unwrap_or_else(|| panic!("stderr"))),
                false,
            ),
        ];
        for (pipe, keep) in pipes {
            let lines = Arc::clone(&out);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if keep {
                        lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    }
                }
            });
        }
        let mut h = Self { child, out };
        let deadline = Instant::now() + LOAD_TIMEOUT;
        while !h.lines().iter().any(|l| l.starts_with("serving")) {
            assert!(
                Instant::now() < deadline,
                "host {id} never served: {:?}",
                h.lines()
            );
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("host {id} exited with {status}: {:?}", h.lines());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGINT, then the exit status within the bound.
    fn interrupt(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-s", "INT", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -s INT");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                return s;
            }
            assert!(Instant::now() < deadline, "host still running after SIGINT");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _killed = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn request(state: &Path, who: &str, topic: &str, payload: &str, timeout: &str) -> Output {
    capsule(
        state,
        &[
            "request",
            topic,
            payload,
            "--reply",
            "notes.reply",
            "--as",
            who,
            "--timeout",
            timeout,
        ],
    )
}

#[test]
fn two_hosts_serve_requests_across_the_cluster_and_each_keeps_its_own_policy() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    // Host a serves notes; host b runs only the stats capsule and has no notes of its own.
    let a = Host::start(&state_a, &nats.url(), "a", "b", "notes");
    let b = Host::start(&state_b, &nats.url(), "b", "a", "stats");
    assert!(
        a.lines()
            .iter()
            .any(|l| l.starts_with("joined cluster it as a")),
        "{:?}",
        a.lines()
    );

    // Requests made on b, served on a, answered back on b: per principal, as on one host.
    let saved = request(
        &state_b,
        "alice",
        "notes.add",
        r#"{"text":"buy oat milk"}"#,
        "60s",
    );
    assert_eq!(json(&ok(&saved)), json(r#"{"saved":1}"#));
    let bobs = request(&state_b, "bob", "notes.list", "{}", "60s");
    assert_eq!(
        json(&ok(&bobs)),
        json(r#"{"notes":[]}"#),
        "alice's note is not bob's"
    );
    let alices = request(&state_b, "alice", "notes.list", "{}", "60s");
    assert_eq!(json(&ok(&alices)), json(r#"{"notes":["buy oat milk"]}"#));

    // a's operator disables carol on a: b may still publish as carol, but a refuses the
    // message, counts it and never serves it.
    ok(&capsule(
        &state_a,
        &["profile", "set", "carol", "--enabled", "false"],
    ));
    let refused = request(&state_b, "carol", "notes.add", r#"{"text":"x"}"#, "3s");
    assert!(
        !refused.status.success(),
        "carol was served: {}",
        text(&refused.stdout)
    );
    let snap_a = json(&ok(&capsule(&state_a, &["ps", "--json"])));
    let bridge_a = &snap_a["bridge"];
    assert_eq!(bridge_a["state"], "connected", "{snap_a}");
    assert_eq!(bridge_a["refused"], 1, "{snap_a}");
    assert_eq!(bridge_a["foreign"], 0, "{snap_a}");
    // alice's add and list plus bob's list came in; three replies went out.
    assert!(
        bridge_a["imported"].as_u64().is_some_and(|n| n >= 3),
        "{snap_a}"
    );
    assert!(
        bridge_a["exported"].as_u64().is_some_and(|n| n >= 3),
        "{snap_a}"
    );
    let notes = snap_a["capsules"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "notes"))
        .unwrap_or_else(|| panic!("{snap_a}"));
    assert_eq!(
        notes["calls_completed"], 3,
        "carol's request reached notes: {snap_a}"
    );

    // b's view: the table line and the metrics.
    let ps_b = ok(&capsule(&state_b, &["ps"]));
    assert!(
        ps_b.contains("cluster it as b: connected; peers a;"),
        "{ps_b}"
    );
    let metrics_b = ok(&capsule(&state_b, &["metrics"]));
    for needle in [
        "capsule_bridge_messages_total{direction=\"out\"}",
        "capsule_bridge_messages_total{direction=\"in\"}",
        "capsule_bridge_dropped_total{direction=\"in\"} 0",
        "capsule_bridge_connected 1",
        "capsule_bridge_import_overflow_total{bound=\"messages_or_bytes\"} 0",
        "capsule_bridge_import_buffer_bytes{kind=\"bound\"} 67108864",
    ] {
        assert!(metrics_b.contains(needle), "{needle} missing:\n{metrics_b}");
    }

    assert!(b.interrupt().success());
    assert!(a.interrupt().success());
}
