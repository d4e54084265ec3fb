//! The `capsule` program as an operator uses it: `capsule run` as a child process on the
//! example capsules (built from `examples/` by the capsule-tests build script), driven through
//! the client commands over the control socket, stopped with SIGINT; and the failures an
//! operator meets (bad flags, a missing directory, a malformed manifest, a bad token), each
//! with its one-line message and documented exit code.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capsule_tests::example;
use common::{BIN, capsule, text};
use serde_json::Value;

/// Bounds a hang, not a speed: a debug host compiling components on a loaded machine is slow.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Compiled components shared by every host these tests start and by `cargo xtask demo`
/// (one compile per run; entries are keyed by engine and component, so sharing is safe).
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsule-compile-cache")
}

/// Asserts `out` failed with `code` and exactly one line on stderr containing `needle`.
fn one_line_failure(out: &Output, code: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    assert!(lines[0].starts_with("capsule: "), "{err}");
    assert!(lines[0].contains(needle), "{needle:?} missing from: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

/// Lines collected from one pipe.
type Lines = Arc<Mutex<Vec<String>>>;

/// A child whose output lines are collected as they arrive.
struct Proc {
    child: Child,
    out: Lines,
    err: Lines,
    news: mpsc::Receiver<()>,
    /// One message per pipe read to its end, so a caller that saw the child exit can wait
    /// until everything it wrote has been collected.
    ends: mpsc::Receiver<()>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let (tx, news) = mpsc::channel();
        let (ended, ends) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let pipes: [(Box<dyn Read + Send>, Lines); 2] = [
            (
                Box::new(child.stdout.take().unwrap_or_else(|| panic!("stdout"))),
                Arc::clone(&out),
            ),
            (
                Box::new(child.stderr.take().unwrap_or_else(|| panic!("stderr"))),
                Arc::clone(&err),
            ),
        ];
        for (pipe, lines) in pipes {
            let tx = tx.clone();
            let ended = ended.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    let _woken = tx.send(());
                }
                let _done = ended.send(());
            });
        }
        Self {
            child,
            out,
            err,
            news,
            ends,
        }
    }

    fn out(&self) -> Vec<String> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn err(&self) -> Vec<String> {
        self.err.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[String], &[String]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.out(), &self.err()) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                self.out().join("\n"),
                self.err().join("\n")
            );
            let _news = self.news.recv_timeout(left.min(Duration::from_millis(500)));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {sig}");
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                // Both pipes close when the child exits; wait until their readers have
                // collected everything it wrote.
                for _pipe in 0..2 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    assert!(
                        self.ends.recv_timeout(left).is_ok(),
                        "output not collected after {timeout:?}"
                    );
                }
                return s;
            }
            assert!(Instant::now() < deadline, "still running after {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _killed = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

/// `capsule run` on `dirs` with `extra` flags, once it says it is serving.
fn host(state: &Path, dirs: &[PathBuf], extra: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("--state")
        .arg(state)
        .arg("run")
        .arg("--cache")
        .arg(shared_cache())
        .args(extra)
        .args(dirs);
    let p = Proc::spawn(&mut cmd);
    p.wait_for("the host to serve", LOAD_TIMEOUT, |out, _| {
        out.iter().any(|l| l.starts_with("serving"))
    });
    p
}

fn examples() -> Vec<PathBuf> {
    ["notes", "moderation", "chat", "stats"]
        .iter()
        .map(|n| example(n))
        .collect()
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

fn request(state: &Path, who: &str, topic: &str, payload: &str, reply: &str) -> Value {
    json(&ok(&capsule(
        state,
        &[
            "request",
            topic,
            payload,
            "--reply",
            reply,
            "--as",
            who,
            "--timeout",
            "30s",
        ],
    )))
}

fn tail(state: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("--state").arg(state).arg("tail").args(args);
    let p = Proc::spawn(&mut cmd);
    p.wait_for("the tail to follow", EVENT_TIMEOUT, |_, err| {
        err.iter().any(|l| l.starts_with("following"))
    });
    p
}

fn snapshot(state: &Path) -> Value {
    json(&ok(&capsule(state, &["ps", "--json"])))
}

fn capsule_row<'a>(snap: &'a Value, name: &str) -> Option<&'a Value> {
    snap["capsules"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
}

#[test]
fn a_running_host_is_operated_through_its_control_socket() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");
    let mut h = host(&state, &examples(), &["--metrics", "127.0.0.1:0"]);

    // The control files and the metrics token are private.
    for (file, mode) in [
        ("control.sock", 0o600),
        ("control.token", 0o600),
        ("metrics.token", 0o600),
    ] {
        let meta = std::fs::metadata(state.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    let state_mode = std::fs::metadata(&state)
        .unwrap_or_else(|e| panic!("{e}"))
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o700);
    // One line per capsule, with handlers and run loop.
    let out = h.out();
    for needle in [
        "  notes 0.1.0: handlers notes.add→add, notes.list→list; no run loop",
        "  stats 0.1.0: no handlers; run loop",
        "  chat 0.1.0: handlers chat.post→deliver; no run loop",
    ] {
        assert!(
            out.iter().any(|l| l.starts_with(needle)),
            "{needle:?} missing:\n{}",
            out.join("\n")
        );
    }

    // request: notes are per principal.
    let saved = request(
        &state,
        "alice",
        "notes.add",
        r#"{"text":"buy oat milk"}"#,
        "notes.reply",
    );
    assert_eq!(saved, json(r#"{"saved":1}"#));
    let bobs = request(&state, "bob", "notes.list", "{}", "notes.reply");
    assert_eq!(bobs, json(r#"{"notes":[]}"#), "alice's note is not bob's");
    let alices = request(&state, "alice", "notes.list", "{}", "notes.reply");
    assert_eq!(alices, json(r#"{"notes":["buy oat milk"]}"#));

    // tail + publish: a post fans out to two principals' tails, and the host's events are
    // followed for the shutdown check below.
    let alice_room = tail(
        &state,
        &["chat.room.*", "--as", "alice", "--json", "--count", "1"],
    );
    let bob_room = tail(
        &state,
        &["chat.room.*", "--as", "bob", "--json", "--count", "1"],
    );
    let published = ok(&capsule(
        &state,
        &[
            "publish",
            "chat.post",
            r#"{"text":" hi all "}"#,
            "--as",
            "alice",
        ],
    ));
    assert!(
        published.starts_with("published on chat.post"),
        "{published}"
    );
    for (who, mut t) in [("alice", alice_room), ("bob", bob_room)] {
        let status = t.wait_exit(EVENT_TIMEOUT);
        assert!(status.success(), "{who}'s tail: {status}");
        let m = json(&t.out().join("\n"));
        assert_eq!(m["topic"], "chat.room.message");
        assert_eq!(
            m["payload"],
            json(r#"{"from":"alice","text":"hi all"}"#),
            "{who}"
        );
        assert_eq!(m["attribution"], "verified");
    }

    // A denied post: the reason reaches bob's audit view, and the counters see it.
    let denial = request(
        &state,
        "bob",
        "chat.post",
        r#"{"text":"buy scam coins"}"#,
        "astrid.v1.audit.entry",
    );
    assert_eq!(denial["capsule"], "moderation");
    assert_eq!(denial["principal"], "bob");
    assert!(
        denial["reason"]
            .as_str()
            .is_some_and(|r| r.contains("scam")),
        "{denial}"
    );

    // ps: counters per capsule.
    let snap = snapshot(&state);
    let moderation = capsule_row(&snap, "moderation").unwrap_or_else(|| panic!("{snap}"));
    assert_eq!(moderation["handler_denials"], 1, "{snap}");
    let chat = capsule_row(&snap, "chat").unwrap_or_else(|| panic!("{snap}"));
    assert_eq!(chat["published"], 1, "{snap}");
    assert_eq!(
        chat["calls_completed"], 1,
        "the denied post never reached chat: {snap}"
    );
    let stats = capsule_row(&snap, "stats").unwrap_or_else(|| panic!("{snap}"));
    assert_eq!(stats["state"], "running", "{snap}");
    assert_eq!(stats["subscriptions"], 1, "{snap}");
    let notes = capsule_row(&snap, "notes").unwrap_or_else(|| panic!("{snap}"));
    let principals: Vec<&str> = notes["memory"]
        .as_array()
        .map(|m| m.iter().filter_map(|r| r["principal"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        principals.contains(&"alice") && principals.contains(&"bob"),
        "per-principal memory peaks: {snap}"
    );
    let table = ok(&capsule(&state, &["ps"]));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("moderation ")),
        "{table}"
    );

    // metrics: the same counters, over the socket and over HTTP on loopback.
    let metrics = ok(&capsule(&state, &["metrics"]));
    assert!(
        metrics
            .lines()
            .any(|l| l == "capsule_handler_denials_total{capsule=\"moderation\"} 1"),
        "{metrics}"
    );
    let line = h
        .out()
        .iter()
        .find_map(|l| l.strip_prefix("metrics on http://").map(str::to_string))
        .unwrap_or_else(|| panic!("no metrics line"));
    let (url, token_file) = line
        .split_once("; bearer token in ")
        .unwrap_or_else(|| panic!("no token file named: {line}"));
    assert_eq!(Path::new(token_file), state.join("metrics.token"));
    let token = std::fs::read_to_string(token_file).unwrap_or_else(|e| panic!("{e}"));
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    let addr = url.trim_end_matches("/metrics").to_string();
    let scrape = |host: &str, auth: Option<&str>| {
        let mut conn =
            std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        let auth = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
        conn.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut scraped = String::new();
        conn.read_to_string(&mut scraped)
            .unwrap_or_else(|e| panic!("{e}"));
        scraped
    };
    let bearer = format!("Bearer {token}");
    let scraped = scrape(&addr, Some(&bearer));
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(scraped.contains("capsule_loaded 4"), "{scraped}");
    assert!(scraped.contains("principal=\"alice\""), "{scraped}");
    // Any other local user (or a principal's process with a uid of its own) reaches the port
    // but, without the token in the state directory, reads no tenant's name.
    let wrong = format!("Bearer {}", "0".repeat(64));
    for auth in [None, Some(wrong.as_str())] {
        let refused = scrape(&addr, auth);
        assert!(refused.starts_with("HTTP/1.1 401"), "{auth:?}: {refused}");
        assert!(
            refused
                .to_ascii_lowercase()
                .contains("\r\nwww-authenticate: bearer"),
            "{refused}"
        );
        assert!(
            !refused.contains("capsule_") && !refused.contains("alice"),
            "{refused}"
        );
    }
    // The control socket's token is no metrics token, and the metrics token no control token.
    let control = std::fs::read_to_string(state.join("control.token")).unwrap_or_default();
    assert_ne!(control.trim(), token);
    let as_control = scrape(&addr, Some(&format!("Bearer {}", control.trim())));
    assert!(as_control.starts_with("HTTP/1.1 401"), "{as_control}");
    let scraper = Command::new(BIN)
        .arg("--state")
        .arg(&state)
        .arg("ps")
        .env("CAPSULE_TOKEN", token)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    one_line_failure(&scraper, 4, "wrong session token");
    let counted = ok(&capsule(&state, &["metrics"]));
    assert!(
        counted
            .lines()
            .any(|l| l == "capsule_metrics_refused_total 3"),
        "{counted}"
    );
    // A page whose name was rebound to loopback reaches the port but reads nothing.
    let rebound = scrape("attacker.example:80", Some(&bearer));
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(!rebound.contains("capsule_"), "{rebound}");

    // Bad tokens are refused with exit 4, one line, and counted.
    let wrong = Command::new(BIN)
        .arg("--state")
        .arg(&state)
        .arg("ps")
        .env("CAPSULE_TOKEN", "00")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    one_line_failure(&wrong, 4, "wrong session token");
    let missing = Command::new(BIN)
        .arg("--state")
        .arg(&state)
        .args(["publish", "chat.post", "{}"])
        .env("CAPSULE_TOKEN", "")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    one_line_failure(&missing, 4, "missing session token");
    assert_eq!(snapshot(&state)["control_refused"], 3);
    assert_eq!(snapshot(&state)["metrics_refused"], 3);

    // unload and load.
    assert_eq!(
        ok(&capsule(&state, &["unload", "notes"])).trim(),
        "unloaded notes"
    );
    assert!(capsule_row(&snapshot(&state), "notes").is_none());
    one_line_failure(
        &capsule(&state, &["unload", "notes"]),
        1,
        "no capsule named `notes`",
    );
    let notes_dir = example("notes");
    let notes_arg = notes_dir.to_string_lossy().to_string();
    assert_eq!(
        ok(&capsule(&state, &["load", &notes_arg])).trim(),
        "loaded notes 0.1.0"
    );
    let kept = request(&state, "alice", "notes.list", "{}", "notes.reply");
    assert_eq!(
        kept,
        json(r#"{"notes":["buy oat milk"]}"#),
        "KV outlives a reload"
    );
    one_line_failure(
        &capsule(
            &state,
            &["load", &dir.path().join("absent").to_string_lossy()],
        ),
        3,
        "cannot load",
    );

    // SIGINT: exit 0, every capsule unloaded (last loaded first), control files removed.
    let events = tail(&state, &["runtime.capsule.*", "--json"]);
    let asked = Instant::now();
    h.signal("INT");
    let status = h.wait_exit(Duration::from_secs(60));
    let took = asked.elapsed();
    eprintln!("capsule run stopped {} ms after SIGINT", took.as_millis());
    assert!(status.success(), "exit {status}\n{}", h.err().join("\n"));
    let out = h.out();
    let at = |line: &str| {
        out.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line:?} missing:\n{}", out.join("\n")))
    };
    // notes was reloaded last, so it goes first; chat (an importer of stats) before stats.
    assert_eq!(
        at("unloaded notes"),
        out.iter()
            .position(|l| l.starts_with("unloaded "))
            .unwrap_or(0)
    );
    assert!(at("unloaded notes") < at("unloaded chat"));
    assert!(at("unloaded chat") < at("unloaded stats"));
    assert!(at("unloaded moderation") > at("unloaded notes"));
    assert!(!state.join("control.sock").exists());
    assert!(!state.join("control.token").exists());
    // The tail saw the host's own unload events, in the same order, then the goodbye.
    let mut events = events;
    assert!(events.wait_exit(EVENT_TIMEOUT).success());
    let unloaded: Vec<String> = events
        .out()
        .iter()
        .map(|l| json(l))
        .filter(|m| m["topic"] == "runtime.capsule.unloaded")
        .filter_map(|m| m["payload"]["capsule"].as_str().map(str::to_string))
        .collect();
    let printed: Vec<String> = out
        .iter()
        .filter_map(|l| l.strip_prefix("unloaded ").map(str::to_string))
        .collect();
    assert_eq!(printed.len(), 4, "{out:?}");
    assert_eq!(
        unloaded,
        printed,
        "events in the order printed: {:?}",
        events.out()
    );
    assert!(events.err().iter().any(|l| l.contains("tail ended")));
    // The refusals were audited in the host's log.
    let log = h.err().join("\n");
    assert_eq!(
        log.matches("control request refused").count(),
        3,
        "audit lines:\n{log}"
    );
    assert!(log.contains("capsule::audit::control"), "{log}");
    assert_eq!(
        log.matches("capsule::audit::metrics: metrics scrape refused")
            .count(),
        3,
        "audit lines:\n{log}"
    );
    // The host let go of its state: the KV database opens again.
    capsule_runtime_kv_opens(&state);
}

fn capsule_runtime_kv_opens(state: &Path) {
    let kv = capsule_runtime::store::KvStore::open(&state.join("kv.redb"));
    assert!(kv.is_ok(), "{:?}", kv.err());
}

#[test]
fn operator_mistakes_get_one_line_and_their_exit_code() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");

    // Usage errors: exit 2.
    let out = capsule(&state, &["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = capsule(&state, &["publsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("similar subcommand exists: 'publish'"),
        "typo suggestion: {}",
        text(&out.stderr)
    );
    let out = capsule(&state, &["run", "--metrics", "0.0.0.0:9184", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a loopback address"),
        "{}",
        text(&out.stderr)
    );
    let out = capsule(&state, &["publish", "t", "not json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Load failures: exit 3, one line.
    let absent = dir.path().join("no-such-capsule");
    one_line_failure(
        &capsule(&state, &["run", &absent.to_string_lossy()]),
        3,
        "no-such-capsule",
    );
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        bad.join("Capsule.toml"),
        "[package]\nname = 7\nversion = \"0.1.0\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    one_line_failure(
        &capsule(&state, &["run", &bad.to_string_lossy()]),
        3,
        "package.name",
    );

    // No host: exit 1, one line.
    one_line_failure(&capsule(&state, &["ps"]), 1, "no capsule host is serving");

    // --help and completions work without a host.
    assert!(capsule(&state, &["--help"]).status.success());
    assert!(ok(&capsule(&state, &["tail", "--help"])).contains("--count"));
    assert!(ok(&capsule(&state, &["completions", "bash"])).contains("capsule"));
}

#[test]
fn sigterm_also_stops_the_host_cleanly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");
    let mut h = host(&state, &[example("stats"), example("chat")], &[]);
    h.signal("TERM");
    let status = h.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", h.err().join("\n"));
    let out = h.out();
    let at = |line: &str| out.iter().position(|l| l == line);
    assert!(
        at("unloaded chat").is_some() && at("unloaded chat") < at("unloaded stats"),
        "{out:?}"
    );
    assert!(!state.join("control.sock").exists());
}

#[test]
fn capsule_approve_lists_and_decides_what_a_capsule_asks() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");
    let asker = capsule_tests::write_capsule(
        &dir.path().join("asker"),
        "asker",
        "0.1.0",
        "registrar.wasm",
        "[subscribe]\n\"ask.it\" = { wit = \"ask\", handler = \"approve\" }\n",
    );
    let mut h = host(&state, &[asker], &[]);
    let audit = tail(
        &state,
        &["astrid.v1.audit.entry", "--as", "alice", "--json"],
    );
    let ask = r#"{"action":"delete","resource":"/srv/x"}"#;
    ok(&capsule(
        &state,
        &["publish", "ask.it", ask, "--as", "alice"],
    ));
    h.wait_for("the request to wait", EVENT_TIMEOUT, |_, err| {
        err.iter().any(|l| l.contains("approval #1 pending"))
    });
    let listed = ok(&capsule(&state, &["approve"]));
    assert!(
        listed.contains("#1 asker for alice: delete /srv/x"),
        "{listed}"
    );
    for (args, needle) in [
        (["approve", "1", "yes"], "`yes` is not a decision"),
        (
            ["approve", "99", "once"],
            "no approval request #99 is pending",
        ),
    ] {
        let out = capsule(&state, &args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).starts_with(&format!("capsule: {needle}")));
    }
    assert!(ok(&capsule(&state, &["approve", "1", "always"])).contains("approval #1: always"));
    audit.wait_for("the decision", EVENT_TIMEOUT, |out, _| {
        out.iter()
            .any(|l| l.contains("approval.decided") && l.contains("always"))
    });
    // The stored allowance answers the same request without asking anyone.
    ok(&capsule(
        &state,
        &["publish", "ask.it", ask, "--as", "alice"],
    ));
    audit.wait_for("the allowance", EVENT_TIMEOUT, |out, _| {
        out.iter()
            .any(|l| l.contains("approval.decided") && l.contains("allowance"))
    });
    assert!(
        !h.err().iter().any(|l| l.contains("approval #2 pending")),
        "{:?}",
        h.err()
    );
    assert!(ok(&capsule(&state, &["approve"])).contains("no approval requests are pending"));
    h.signal("INT");
    assert!(h.wait_exit(EVENT_TIMEOUT).success());
}
