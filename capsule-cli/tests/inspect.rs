//! `capsule inspect` as a capsule author uses it to migrate: a manifest in an earlier astrid
//! layout is shown with one deprecation line per construct and rewritten in the current
//! layout, and a manifest with several mistakes names all of them in one run.

mod common;

use std::path::Path;

use capsule_tests::example;
use common::{capsule, text};

/// A copy of the notes example whose manifest is `manifest`.
fn notes_with(root: &Path, manifest: &str) -> std::path::PathBuf {
    let dir = root.join("notes");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(example("notes").join("notes.wasm"), dir.join("notes.wasm"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("Capsule.toml"), manifest).unwrap_or_else(|e| panic!("{e}"));
    dir
}

const HEAD: &str = "[package]\nname = \"notes\"\nversion = \"0.1.0\"\n\n[[component]]\nid = \"notes\"\nfile = \"notes.wasm\"\n";

#[test]
fn inspect_shows_each_deprecation_and_the_migrated_manifest() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = notes_with(
        root.path(),
        &format!(
            "{HEAD}\n[[interceptor]]\nevent = \"notes.add\"\naction = \"add\"\n\
             [[interceptor]]\nevent = \"notes.list\"\naction = \"list\"\npriority = 5\n\
             [capabilities]\nipc_publish = [\"notes.reply\"]\n[[topic]]\nname = \"notes.add\"\n"
        ),
    );
    let state = root.path().join("state");
    let out = capsule(&state, &["inspect", &dir.to_string_lossy()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    let deprecated: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("deprecated "))
        .collect();
    assert_eq!(deprecated.len(), 3, "{stdout}");
    assert!(
        deprecated[0].contains("[[interceptor]]") && deprecated[0].contains("`interceptor[1]`")
    );
    assert!(deprecated[1].contains("capabilities.ipc_publish"));
    assert!(deprecated[2].contains("[[topic]]"));
    assert!(
        stdout.contains("handler   notes.list -> list (priority 5)"),
        "{stdout}"
    );
    // The migrated manifest is a current one: written back, it inspects without deprecations
    // and with the same handlers and ACLs.
    let (_, migrated) = stdout
        .split_once("in the current layout:\n")
        .unwrap_or_else(|| panic!("no migrated manifest in:\n{stdout}"));
    assert!(!migrated.contains("interceptor") && !migrated.contains("ipc_publish"));
    let again = notes_with(&root.path().join("again"), migrated);
    let out = capsule(&state, &["inspect", &again.to_string_lossy()]);
    let second = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!second.contains("deprecated"), "{second}");
    let acl = |s: &str| {
        s.lines()
            .filter(|l| {
                l.starts_with("handler") || l.starts_with("publish") || l.starts_with("subscribe")
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let report = stdout.split("\n# ").next().unwrap_or_default();
    assert_eq!(acl(report), acl(&second));
}

#[test]
fn inspect_names_every_manifest_mistake_at_once() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = notes_with(
        root.path(),
        "[package]\nname = \"Notes!\"\nversion = \"0.1.0\"\n\n[[component]]\nid = \"notes\"\nfile = \"notes.wasm\"\n\
         [publish]\n\"a..b\" = \"x\"\n[capabilities]\nteleport = true\n",
    );
    let out = capsule(
        &root.path().join("state"),
        &["inspect", &dir.to_string_lossy()],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for needle in [
        "package.name",
        "publish.\"a..b\"",
        "capabilities.teleport",
        "3 problems",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
}

#[test]
fn profiles_are_set_read_listed_and_deleted_from_the_command_line() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = root.path().join("state");
    let run = |args: &[&str]| {
        let out = capsule(&state, args);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, _) = run(&["profile", "get", "alice"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("the defaults") && stdout.contains("max_storage_bytes = 268435456"));
    let (code, _, err) = run(&[
        "profile",
        "set",
        "alice",
        "--quota",
        "max_storage_bytes=4096",
        "--grant",
        "audit:read_all",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, stdout, _) = run(&["profile", "get", "alice"]);
    assert!(stdout.contains("max_storage_bytes = 4096"), "{stdout}");
    assert!(stdout.contains("\"audit:read_all\""), "{stdout}");
    // The host reads what the command wrote.
    let stored = capsule_runtime::security::ProfileStore::new(&state)
        .get(&capsule_runtime::PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored.quotas.max_storage_bytes, 4096);
    assert!(stored.audit_firehose());
    // Refused: nothing changes.
    for bad in [
        vec!["profile", "set", "alice", "--quota", "max_memory_bytes=0"],
        vec!["profile", "set", "alice", "--quota", "teleports=1"],
        vec!["profile", "set", "alice", "--quota", "max_storage_bytes"],
        vec!["profile", "set", "../etc", "--enabled", "false"],
    ] {
        let (code, _, err) = run(&bad);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
    }
    let (_, again, _) = run(&["profile", "get", "alice"]);
    assert_eq!(again, stdout);
    run(&["profile", "set", "bob", "--enabled", "false"]);
    let (_, list, _) = run(&["profile", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("alice  enabled") && lines[1].starts_with("bob  disabled"));
    let (code, _, _) = run(&["profile", "delete", "bob"]);
    assert_eq!(code, Some(0));
    let (_, list, _) = run(&["profile", "list"]);
    assert_eq!(list.lines().count(), 1);
}

#[test]
fn inspect_names_aliased_stub_exports_and_why() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = capsule_tests::write_capsule(
        &root.path().join("stubs"),
        "stubs",
        "0.1.0",
        "stubs.wasm",
        "",
    );
    let out = capsule(
        &root.path().join("state"),
        &["inspect", &dir.to_string_lossy()],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let absent: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("absent "))
        .collect();
    assert_eq!(absent.len(), 3, "{stdout}");
    assert!(
        absent
            .iter()
            .any(|l| l.contains("run is treated as absent") && l.contains("astrid-install"))
    );
    assert!(
        stdout.contains("exports   astrid-hook-trigger\n"),
        "{stdout}"
    );
}
