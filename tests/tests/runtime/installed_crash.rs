//! Installed-version records across a crash of the host: a first load's record, which is
//! synced in the background, is on disk as soon as the load returns (a `kill -9` of the host
//! right after loses none), and a host that shuts down leaves every record synced, with no
//! temporary file behind.

use std::io::BufRead;
use std::time::Duration;

use capsule_runtime::store::InstalledVersions;

use crate::common::*;

const LOADS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_install_records_survive_kill_dash_nine_of_the_host() {
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dirs: Vec<_> = (0..LOADS)
        .map(|i| {
            let name = format!("first-{i}");
            write_capsule(
                &state.path().join("capsules").join(&name),
                &name,
                "0.3.1",
                "prober.wasm",
                "",
            )
        })
        .collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_capsule-test-host"))
        .arg(state.path())
        .args(&dirs)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    // The child says `ready` once every load has returned; read on a thread of our own so a
    // child that hangs fails the test at the deadline instead of blocking it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let ready = line.trim() == "ready";
            if tx.send(line).is_err() || ready {
                break;
            }
        }
    });
    let mut said = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) if line.trim() == "ready" => break,
            Ok(line) => said.push(line),
            Err(e) => panic!("the child host never got ready ({e}): {said:?}"),
        }
    }
    // SIGKILL: no destructor, no flush, no shutdown runs in the child.
    child.kill().unwrap_or_else(|e| panic!("{e}"));
    child.wait().unwrap_or_else(|e| panic!("{e}"));

    let installed = InstalledVersions::new(state.path());
    for i in 0..LOADS {
        assert_eq!(
            installed
                .read(&pid("default"), &format!("first-{i}"))
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|v| v.to_string())
                .as_deref(),
            Some("0.3.1"),
            "first-{i} was loaded, so its install is recorded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_first_install_records_synced_and_no_temporary_file() {
    let h = host();
    for i in 0..LOADS {
        h.load(&format!("flushed-{i}"), "prober.wasm", "").await;
    }
    h.rt.shutdown().await;
    let records = h.state().join("installed").join("default");
    let mut names: Vec<String> = std::fs::read_dir(&records)
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{e}"))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let expected: Vec<String> = (0..LOADS).map(|i| format!("flushed-{i}.version")).collect();
    assert_eq!(names, expected);
    // A fresh view of the same state finds nothing left to sync and every record readable.
    let installed = InstalledVersions::new(h.state());
    installed.flush().unwrap_or_else(|e| panic!("{e}"));
    for i in 0..LOADS {
        assert!(
            installed
                .read(&pid("default"), &format!("flushed-{i}"))
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some()
        );
    }
}
