//! `capsule run --metrics` refuses to start when `<state>/metrics.token` is not a private
//! regular file holding a usable token: a link, a file group or other users could read, or a
//! guessable token stops the host with one line naming the file and the fault, before anything
//! starts, and leaves the file as it was.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use capsule_tests::example;

/// The `capsule` binary cargo built for these tests.
const BIN: &str = env!("CARGO_BIN_EXE_capsule");
/// Bounds a hang, not a speed: a debug host compiling a component on a loaded machine is slow.
const TIMEOUT: Duration = Duration::from_secs(600);

/// Compiled components shared with the other CLI tests (entries are keyed by engine and
/// component, so sharing is safe).
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsule-compile-cache")
}

/// A pipe of the child and how its lines are tagged.
type Pipe = (Box<dyn Read + Send>, fn(String) -> Line);
/// A test case: its name, what it plants at the token's path, and a phrase of the error.
type Case<'a> = (&'a str, &'a dyn Fn(&Path), &'a str);

/// One line of the child's output.
enum Line {
    Out(String),
    Err(String),
}

/// `capsule run --metrics` on one example where it must stop before serving: its exit status
/// and stderr lines. A host that serves metrics anyway fails the test as soon as it says so.
fn run_refused(state: &Path) -> (ExitStatus, Vec<String>) {
    let mut child = Command::new(BIN)
        .arg("--state")
        .arg(state)
        .arg("run")
        .arg("--cache")
        .arg(shared_cache())
        .args(["--metrics", "127.0.0.1:0"])
        .arg(example("notes"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"));
    let (tx, lines) = mpsc::channel();
    let pipes: [Pipe; 2] = [
        (
            Box::new(child.stdout.take().unwrap_or_else(|| panic!("stdout"))),
            Line::Out,
        ),
        (
            Box::new(child.stderr.take().unwrap_or_else(|| panic!("stderr"))),
            Line::Err,
        ),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .map(|(pipe, tag)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _sent = tx.send(tag(line));
                }
            })
        })
        .collect();
    drop(tx);
    let deadline = Instant::now() + TIMEOUT;
    let mut err = Vec::new();
    // The channel ends once both pipes are closed, which the child's exit does.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(Line::Out(l)) if l.starts_with("metrics on") || l.starts_with("serving") => {
                let _killed = child.kill();
                let _reaped = child.wait();
                panic!("the host started serving: {l}\nstderr: {err:?}");
            }
            Ok(Line::Out(_)) => {}
            Ok(Line::Err(l)) => err.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _killed = child.kill();
                let _reaped = child.wait();
                panic!("still running after {TIMEOUT:?}; stderr: {err:?}");
            }
        }
    }
    for r in readers {
        let _joined = r.join();
    }
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    (status, err)
}

/// A fresh private state directory under `root`.
fn state_dir(root: &Path, name: &str) -> PathBuf {
    let state = root.join(name);
    std::fs::create_dir(&state).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("{e}"));
    state
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_metrics_token_others_could_read_or_a_link_stops_the_host_at_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = "f".repeat(64);
    let elsewhere = dir.path().join("elsewhere.token");
    write(&elsewhere, &token, 0o600);
    let link = |f: &Path| {
        std::os::unix::fs::symlink(&elsewhere, f).unwrap_or_else(|e| panic!("{e}"));
    };
    let cases: [Case<'_>; 4] = [
        ("link", &link, "is a symbolic link"),
        ("group", &|f| write(f, &token, 0o640), "(mode 640)"),
        ("world", &|f| write(f, &token, 0o604), "(mode 604)"),
        (
            "short",
            &|f| write(f, "secret\n", 0o600),
            "holds no usable bearer token",
        ),
    ];
    for (name, plant, needle) in cases {
        let state = state_dir(dir.path(), name);
        let file = state.join("metrics.token");
        plant(&file);
        let before = std::fs::symlink_metadata(&file).unwrap_or_else(|e| panic!("{e}"));
        let (status, err) = run_refused(&state);
        assert_eq!(status.code(), Some(1), "{name}: {err:?}");
        let lines: Vec<&String> = err.iter().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one line expected: {err:?}");
        assert!(
            lines[0].starts_with("capsule: cannot serve metrics: "),
            "{name}: {err:?}"
        );
        assert!(
            lines[0].contains(needle),
            "{name}: {needle:?} missing: {err:?}"
        );
        assert!(
            lines[0].contains(&file.display().to_string()),
            "{name}: {err:?}"
        );
        assert!(
            !state.join("control.sock").exists(),
            "{name}: nothing started"
        );
        let after = std::fs::symlink_metadata(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (after.file_type(), after.permissions().mode()),
            (before.file_type(), before.permissions().mode()),
            "{name}: the file is left as it was"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&elsewhere).unwrap_or_default(),
        token,
        "the link's target is untouched"
    );
}
