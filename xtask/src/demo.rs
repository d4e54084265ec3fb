//! `cargo xtask examples` and `cargo xtask demo`. The examples are built for `wasm32-wasip2`
//! in their own workspace (the same command the test build uses, so either build caches the
//! other) and each component is copied into its capsule directory. The demo starts
//! `capsule run` on them with a fresh state directory and plays a scripted conversation as
//! two principals through the `capsule` client commands, checking every expectation and
//! saying what it saw; any unmet expectation ends it with the reason and a non-zero exit.

// The demo's narration is its output, on stdout by design.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The example capsules, in the order `capsule run` is given them (it orders them itself).
pub(crate) const EXAMPLES: &[&str] = &["notes", "moderation", "chat", "stats"];

/// The wasm target the examples are built for.
const TARGET: &str = "wasm32-wasip2";

/// The compile cache under `<target>/tmp` shared with `capsule-cli`'s tests.
const COMPILE_CACHE: &str = "capsule-compile-cache";

/// How long the host may take to compile and load the examples (debug builds on a busy
/// machine are slow; this bounds a hang, it is not a speed target).
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one expected event may take to show up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn say(line: &str) {
    println!("demo: {line}");
    let _flushed = std::io::stdout().flush();
}

/// Installs `targets` through rustup when they are missing (without rustup, the build that
/// needs them says so).
pub(crate) fn ensure_targets(targets: &[&str]) -> Result<(), String> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if !out.status.success() {
        return Ok(());
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    for target in targets {
        if installed.lines().any(|l| l.trim() == *target) {
            continue;
        }
        let mut c = Command::new("rustup");
        c.args(["target", "add", target]);
        crate::run(&format!("rustup target add {target}"), c)?;
    }
    Ok(())
}

/// Builds the examples and copies each component into its capsule directory.
pub(crate) fn examples() -> Result<(), String> {
    ensure_targets(&[TARGET])?;
    let dir = root().join("examples");
    // The guest build cache the test build uses too (tests/build.rs): one SDK build serves the
    // fixtures and the examples.
    let target_dir = root().join("tests").join("capsules").join("target");
    let mut cmd = crate::cargo();
    // The same clean environment the test build uses, so the two share one cache.
    cmd.env_clear();
    for key in crate::GUEST_BUILD_ENV {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.current_dir(&dir).args([
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "--target-dir",
    ]);
    cmd.arg(&target_dir);
    crate::run("build the example capsules", cmd)?;
    for name in EXAMPLES {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let bytes = std::fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
        let into = dir.join(name).join(format!("{name}.wasm"));
        if std::fs::read(&into).is_ok_and(|old| old == bytes) {
            continue;
        }
        std::fs::write(&into, bytes).map_err(|e| format!("{}: {e}", into.display()))?;
    }
    Ok(())
}

/// Builds the `capsule` binary (debug, like the test build) and returns its path.
fn host_binary() -> Result<PathBuf, String> {
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "--locked",
        "--package",
        "capsule-cli",
        "--bin",
        "capsule",
    ]);
    crate::run("build the capsule host", cmd)?;
    Ok(debug_binary())
}

/// Where the debug `capsule` binary is built.
fn debug_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("debug")
        .join("capsule")
}

/// Lines collected from one pipe.
type Lines = Arc<Mutex<Vec<String>>>;

/// A child process whose output lines are collected as they come.
struct Proc {
    child: Child,
    out: Lines,
    err: Lines,
    news: mpsc::Receiver<()>,
}

impl Proc {
    fn spawn(mut cmd: Command, echo: Option<&'static str>) -> Result<Self, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let (tx, news) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let pipes: [(Box<dyn std::io::Read + Send>, Lines, bool); 2] = [
            (
                Box::new(child.stdout.take().ok_or("no stdout")?),
                Arc::clone(&out),
                true,
            ),
            (
                Box::new(child.stderr.take().ok_or("no stderr")?),
                Arc::clone(&err),
                false,
            ),
        ];
        for (pipe, lines, is_out) in pipes {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let (Some(prefix), true) = (echo, is_out) {
                        println!("{prefix}{line}");
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                    let _woken = tx.send(());
                }
            });
        }
        Ok(Self {
            child,
            out,
            err,
            news,
        })
    }

    fn lines(&self, stdout: bool) -> Vec<String> {
        let lines = if stdout { &self.out } else { &self.err };
        lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for the collected stdout and stderr lines.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[String], &[String]) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.lines(true), &self.lines(false)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            // Woken by new output; the timeout also notices a process that died silently.
            let _news = self.news.recv_timeout(left.min(Duration::from_millis(500)));
        }
    }

    /// Sends SIGINT to this child (ours, by its pid).
    fn interrupt(&self) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-s", "INT", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -s INT {} failed", self.child.id()))
        }
    }

    /// Waits up to `timeout` for the child to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| format!("waiting for the child: {e}"))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!("still running after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A child left over after a failed expectation is ours to stop.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _killed = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

/// Runs the `capsule` client command `args` and returns its stdout, or why it failed.
fn client(bin: &Path, state: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--state")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run capsule {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`capsule {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `capsule request … --as who` and its reply payload as JSON.
fn request(
    bin: &Path,
    state: &Path,
    who: &str,
    topic: &str,
    payload: &Value,
    reply: &str,
) -> Result<Value, String> {
    let text = payload.to_string();
    let out = client(
        bin,
        state,
        &[
            "request",
            topic,
            &text,
            "--reply",
            reply,
            "--as",
            who,
            "--timeout",
            "30s",
            "--json",
        ],
    )?;
    let message: Value =
        serde_json::from_str(&out).map_err(|e| format!("reply is not JSON ({e}): {out}"))?;
    Ok(message)
}

fn expect(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        say(&format!("  ✓ {what}"));
        Ok(())
    } else {
        Err(format!("expected {what}"))
    }
}

/// Follows `pattern` as `who` with `capsule tail --json`, once the host confirmed it.
fn tail(bin: &Path, state: &Path, pattern: &str, who: &str) -> Result<Proc, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("--state")
        .arg(state)
        .args(["tail", pattern, "--json", "--as", who]);
    let p = Proc::spawn(cmd, None)?;
    p.wait_for(
        &format!("{who}'s tail of {pattern}"),
        EVENT_TIMEOUT,
        |_, err| err.iter().any(|l| l.starts_with("following")),
    )?;
    Ok(p)
}

fn messages(p: &Proc) -> Vec<Value> {
    p.lines(true)
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `cargo xtask demo`.
pub(crate) fn demo() -> Result<(), String> {
    examples()?;
    let bin = host_binary()?;
    demo_with(&bin)
}

/// The demo in CI: against the `capsule` binary `cargo test --workspace` just built (building
/// it alone would resolve features differently and rebuild much of the dependency tree).
pub(crate) fn demo_after_tests() -> Result<(), String> {
    examples()?;
    let bin = debug_binary();
    if bin.is_file() {
        demo_with(&bin)
    } else {
        demo_with(&host_binary()?)
    }
}

/// The demo against an already built `capsule` binary.
pub(crate) fn demo_with(bin: &Path) -> Result<(), String> {
    let base = std::env::temp_dir().join(format!(
        "capsule-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let state = base.join("state");
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let result = script(bin, &base, &state);
    match &result {
        Ok(()) => {
            let _removed = std::fs::remove_dir_all(&base);
        }
        Err(_) => say(&format!(
            "the state directory and host log are kept in {}",
            base.display()
        )),
    }
    result
}

fn script(bin: &Path, base: &Path, state: &Path) -> Result<(), String> {
    let examples = root().join("examples");
    let log = base.join("host.log");
    say(&format!(
        "starting `capsule run` on {} with a fresh state directory ({})",
        EXAMPLES.join(", "),
        state.display()
    ));
    say(&format!("host log: {}", log.display()));
    // Compiled components are kept between demos (the state directory is fresh each time), in
    // the cache the CLI tests fill too, so CI compiles each example once.
    let cache = debug_binary()
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| base.join("cache"), |t| t.join("tmp").join(COMPILE_CACHE));
    let mut cmd = Command::new(bin);
    cmd.arg("--state")
        .arg(state)
        .arg("run")
        .arg("--cache")
        .arg(&cache);
    for name in EXAMPLES {
        cmd.arg(examples.join(name));
    }
    let mut host = Proc::spawn(cmd, Some("  host │ "))?;
    let loaded = host.wait_for("the host to load the examples", LOAD_TIMEOUT, |out, _| {
        out.iter().any(|l| l.starts_with("serving"))
    });
    if let Err(e) = loaded {
        let errors = host.lines(false);
        let _written = std::fs::write(&log, errors.join("\n"));
        let last = errors.last().cloned().unwrap_or_default();
        return Err(format!("{e}; the host said: {last}"));
    }
    let outcome = conversation(bin, state);
    let stopped = stop(&mut host);
    let _written = std::fs::write(&log, host.lines(false).join("\n"));
    outcome?;
    stopped?;
    say("every expectation was met");
    Ok(())
}

fn conversation(bin: &Path, state: &Path) -> Result<(), String> {
    say("1. notes are kept per principal");
    for (n, text) in ["buy oat milk", "call the plumber"].iter().enumerate() {
        let reply = request(
            bin,
            state,
            "alice",
            "notes.add",
            &json!({ "text": text }),
            "notes.reply",
        )?;
        say(&format!("alice adds \"{text}\" → {}", reply["payload"]));
        expect(
            reply["payload"]["saved"] == json!(n + 1),
            &format!("alice has {} note(s)", n + 1),
        )?;
    }
    let bob = request(bin, state, "bob", "notes.list", &json!({}), "notes.reply")?;
    say(&format!("bob lists his notes → {}", bob["payload"]));
    expect(
        bob["payload"]["notes"] == json!([]),
        "alice's notes are invisible to bob",
    )?;
    let alice = request(bin, state, "alice", "notes.list", &json!({}), "notes.reply")?;
    say(&format!("alice lists her notes → {}", alice["payload"]));
    expect(
        alice["payload"]["notes"] == json!(["buy oat milk", "call the plumber"]),
        "alice sees both of her notes",
    )?;

    say("2. a post fans out to everyone in the room");
    let alice_room = tail(bin, state, "chat.room.*", "alice")?;
    let bob_room = tail(bin, state, "chat.room.*", "bob")?;
    let summaries = tail(bin, state, "stats.summary", "alice")?;
    let alice_audit = tail(bin, state, "astrid.v1.audit.entry", "alice")?;
    let bob_audit = tail(bin, state, "astrid.v1.audit.entry", "bob")?;
    let echo = request(
        bin,
        state,
        "alice",
        "chat.post",
        &json!({ "text": "  hello bob  " }),
        "chat.room.message",
    )?;
    say(&format!(
        "alice posts \"  hello bob  \" → {}",
        echo["payload"]
    ));
    expect(
        echo["payload"] == json!({ "from": "alice", "text": "hello bob" }),
        "moderation trimmed the post and chat published it as alice's",
    )?;
    for (who, tail) in [("alice", &alice_room), ("bob", &bob_room)] {
        tail.wait_for(
            &format!("{who}'s tail to see the post"),
            EVENT_TIMEOUT,
            |out, _| !out.is_empty(),
        )?;
        let seen = messages(tail);
        expect(
            seen.len() == 1 && seen[0]["payload"]["text"] == json!("hello bob"),
            &format!("the post reached {who}'s tail"),
        )?;
    }
    summaries.wait_for("a stats summary", EVENT_TIMEOUT, |out, _| !out.is_empty())?;
    let summary = messages(&summaries).first().cloned().unwrap_or_default();
    say(&format!("stats publishes → {}", summary["payload"]));
    expect(
        summary["payload"]["by_sender"]["alice"] == json!(1),
        "the run-loop capsule counted alice's post",
    )?;

    say("3. moderation denies a post, with its reason");
    let denial = request(
        bin,
        state,
        "bob",
        "chat.post",
        &json!({ "text": "cheap SPAM here" }),
        "astrid.v1.audit.entry",
    )?;
    let reason = denial["payload"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    say(&format!("bob posts \"cheap SPAM here\" → denied: {reason}"));
    expect(
        denial["payload"]["capsule"] == json!("moderation")
            && denial["payload"]["decision"] == json!("deny")
            && reason.contains("spam"),
        "the denial names the capsule and the reason",
    )?;
    bob_audit.wait_for("bob's audit tail", EVENT_TIMEOUT, |out, _| !out.is_empty())?;
    // A later post by alice proves the room moved on without bob's denied one.
    request(
        bin,
        state,
        "alice",
        "chat.post",
        &json!({ "text": "bye" }),
        "chat.room.message",
    )?;
    for (who, tail) in [("alice", &alice_room), ("bob", &bob_room)] {
        tail.wait_for(
            &format!("{who}'s tail to see \"bye\""),
            EVENT_TIMEOUT,
            |out, _| out.len() >= 2,
        )?;
        let texts: Vec<Value> = messages(tail)
            .iter()
            .map(|m| m["payload"]["text"].clone())
            .collect();
        expect(
            texts == [json!("hello bob"), json!("bye")],
            &format!("{who}'s room shows \"hello bob\" and \"bye\", never the denied post"),
        )?;
    }
    expect(
        messages(&bob_audit).len() == 1 && messages(&alice_audit).is_empty(),
        "bob's denial is in bob's audit view and not in alice's",
    )?;

    say("4. the operator's view");
    let ps = client(bin, state, &["ps"])?;
    for line in ps.lines() {
        println!("  ps │ {line}");
    }
    let metrics = client(bin, state, &["metrics"])?;
    expect(
        metrics
            .lines()
            .any(|l| l == "capsule_handler_denials_total{capsule=\"moderation\"} 1"),
        "`capsule metrics` counts the one denial by moderation",
    )?;
    for t in [alice_room, bob_room, summaries, alice_audit, bob_audit] {
        t.interrupt()?;
    }
    Ok(())
}

/// Stops the host with SIGINT and checks it unloaded every capsule, importers first.
fn stop(host: &mut Proc) -> Result<(), String> {
    say("5. stopping the host with SIGINT");
    let asked = Instant::now();
    host.interrupt()?;
    let status = host.wait_exit(Duration::from_secs(60))?;
    let took = asked.elapsed();
    let out = host.lines(true);
    let position = |name: &str| out.iter().position(|l| l == &format!("unloaded {name}"));
    say(&format!(
        "the host exited ({status}) after {} ms",
        took.as_millis()
    ));
    expect(status.success(), "the host exits 0 on SIGINT")?;
    expect(
        EXAMPLES.iter().all(|n| position(n).is_some()),
        "every capsule was unloaded",
    )?;
    expect(
        position("chat") < position("stats"),
        "chat (the importer) was unloaded before stats (its provider)",
    )
}
