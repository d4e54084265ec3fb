//! Confinement and overlay semantics on real directories: `..`, absolute paths, NUL and symlinks
//! never leave a mount; overlay commit and rollback leave the workspace exactly as expected.

use std::path::{Path, PathBuf};

use capsule_vfs::{GuestPath, Mount, OpenMode, Overlay, Scheme, Tree, VfsError, read_to_string};
use proptest::prelude::*;

struct Fixture {
    _tmp: tempfile::TempDir,
    mount: PathBuf,
    outside: PathBuf,
}

/// A mount holding `inside.txt`, `dir/nested.txt` and symlinks pointing inside and outside, next
/// to an `outside` directory holding `secret.txt`.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mount = tmp.path().join("mount");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(mount.join("dir")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(&outside).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(mount.join("inside.txt"), "inside").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(mount.join("dir/nested.txt"), "inside").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap_or_else(|e| panic!("{e}"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink(outside.join("secret.txt"), mount.join("abs-link"))
            .unwrap_or_else(|e| panic!("{e}"));
        symlink("../outside/secret.txt", mount.join("rel-link")).unwrap_or_else(|e| panic!("{e}"));
        symlink("../outside", mount.join("dir-link")).unwrap_or_else(|e| panic!("{e}"));
        symlink("inside.txt", mount.join("ok-link")).unwrap_or_else(|e| panic!("{e}"));
    }
    Fixture {
        _tmp: tmp,
        mount,
        outside,
    }
}

fn mount(f: &Fixture) -> Mount {
    Mount::open(&f.mount).unwrap_or_else(|e| panic!("{e}"))
}

fn rel(s: &str) -> PathBuf {
    GuestPath::parse(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .rel
}

#[test]
fn dot_dot_absolute_and_nul_never_reach_outside() {
    let f = fixture();
    let m = mount(&f);
    for bad in ["../outside/secret.txt", "dir/../../outside/secret.txt"] {
        assert!(
            matches!(GuestPath::parse(bad), Err(VfsError::BoundaryEscape(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        GuestPath::parse("inside.txt\0"),
        Err(VfsError::InvalidPath(_))
    ));
    // An absolute path is its own scheme, never a path inside the workspace.
    let abs = GuestPath::parse("/etc/passwd").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(abs.scheme, Scheme::Absolute);
    // Host paths under /tmp are the principal's scratch mount, not the host's /tmp.
    let tmp = GuestPath::parse(&f.outside.join("secret.txt").display().to_string());
    assert!(tmp.is_err() || tmp.is_ok_and(|p| p.scheme != Scheme::Absolute));
    // Even handed to a mount directly, a rooted path stays inside it.
    assert!(m.read(Path::new("/etc/passwd"), 1 << 20).is_err());
    assert_eq!(
        read_to_string(&m, &rel("dir/../inside.txt")).unwrap_or_default(),
        "inside"
    );
}

#[cfg(unix)]
#[test]
fn symlinks_pointing_out_are_refused_as_escapes() {
    let f = fixture();
    let m = mount(&f);
    for link in ["abs-link", "rel-link", "dir-link/secret.txt"] {
        match m.read(Path::new(link), 1 << 20) {
            Err(VfsError::BoundaryEscape(_) | VfsError::Access(_)) => {}
            other => panic!("{link}: expected an escape error, got {other:?}"),
        }
    }
    assert!(
        m.write(Path::new("dir-link/planted.txt"), b"x", false)
            .is_err()
    );
    assert!(!f.outside.join("planted.txt").exists());
    // A symlink that stays inside works, and gates see its resolved target.
    assert_eq!(
        read_to_string(&m, Path::new("ok-link")).unwrap_or_default(),
        "inside"
    );
    assert_eq!(
        m.resolve_for_gate(Path::new("ok-link")).ok(),
        Some(PathBuf::from("inside.txt"))
    );
    assert_eq!(
        m.resolve_for_gate(Path::new("dir/new/file.txt")).ok(),
        Some(PathBuf::from("dir/new/file.txt"))
    );
}

#[test]
fn limits_and_kinds() {
    let f = fixture();
    let m = mount(&f);
    assert!(matches!(
        m.read(Path::new("inside.txt"), 3),
        Err(VfsError::TooLarge { .. })
    ));
    assert!(matches!(
        m.read(Path::new("dir"), 100),
        Err(VfsError::IsDirectory(_))
    ));
    assert!(matches!(
        m.read(Path::new("missing"), 100),
        Err(VfsError::NotFound(_))
    ));
    for i in 0..5 {
        m.write(&Path::new("dir").join(format!("f{i}")), b"", false)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(matches!(
        m.read_dir(Path::new("dir"), 3),
        Err(VfsError::TooLarge { .. })
    ));
    assert_eq!(
        m.read_dir(Path::new("dir"), 10).map(|v| v.len()).ok(),
        Some(6)
    );
    assert_eq!(
        m.remove_dir_all(Path::new("dir")).ok(),
        Some(7),
        "six entries and the directory"
    );
    assert!(matches!(
        m.remove_dir_all(Path::new("")),
        Err(VfsError::Access(_))
    ));
    assert!(matches!(
        m.open(Path::new("nope"), OpenMode::Read),
        Err(VfsError::NotFound(_))
    ));
}

fn tree_of(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = p
                .strip_prefix(base)
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            if p.is_dir() {
                out.push((name, "<dir>".into()));
                walk(base, &p, out);
            } else {
                out.push((name, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

fn overlay() -> (tempfile::TempDir, PathBuf, Overlay) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let lower = tmp.path().join("workspace");
    std::fs::create_dir_all(lower.join("src/deep")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(lower.join("README"), "readme v1").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(lower.join("src/main.rs"), "fn main() {}").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(lower.join("src/deep/a.txt"), "a").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(lower.join("old.txt"), "old").unwrap_or_else(|e| panic!("{e}"));
    let o = Overlay::new(
        Mount::open(&lower).unwrap_or_else(|e| panic!("{e}")),
        Mount::create(&tmp.path().join("upper")).unwrap_or_else(|e| panic!("{e}")),
    );
    (tmp, lower, o)
}

fn mutate(o: &Overlay) {
    let ok = |r: Result<(), VfsError>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(o.write(Path::new("README"), b"readme v2", false));
    ok(o.write(Path::new("src/main.rs"), b"\n// more", true));
    ok(o.create_dir(Path::new("new/dir"), true));
    ok(o.write(Path::new("new/dir/file.txt"), b"fresh", false));
    ok(o.remove_file(Path::new("old.txt")));
    ok(o.rename(Path::new("src/deep"), Path::new("moved")));
    ok(o.copy(Path::new("README"), Path::new("README.bak")));
}

#[test]
fn overlay_reads_see_pending_changes_but_the_workspace_does_not() {
    let (_tmp, lower, o) = overlay();
    let before = tree_of(&lower);
    mutate(&o);
    assert_eq!(
        tree_of(&lower),
        before,
        "nothing reaches the workspace before commit"
    );
    assert_eq!(
        read_to_string(&o, Path::new("README")).unwrap_or_default(),
        "readme v2"
    );
    assert_eq!(
        read_to_string(&o, Path::new("src/main.rs")).unwrap_or_default(),
        "fn main() {}\n// more"
    );
    assert!(
        !o.exists(Path::new("old.txt")).unwrap_or(true),
        "deleted lower file is whited out"
    );
    assert!(!o.exists(Path::new("src/deep/a.txt")).unwrap_or(true));
    assert_eq!(
        read_to_string(&o, Path::new("moved/a.txt")).unwrap_or_default(),
        "a"
    );
    assert_eq!(
        o.read_dir(Path::new(""), 100).unwrap_or_default(),
        vec!["README", "README.bak", "moved", "new", "src"]
    );
    assert_eq!(
        o.read_dir(Path::new("src"), 100).unwrap_or_default(),
        vec!["main.rs"]
    );
    assert!(o.has_changes().unwrap_or(false));
}

#[test]
fn overlay_commit_applies_exactly_the_changes() {
    let (_tmp, lower, o) = overlay();
    mutate(&o);
    o.commit().unwrap_or_else(|e| panic!("{e}"));
    let expected: Vec<(String, String)> = vec![
        ("README", "readme v2"),
        ("README.bak", "readme v2"),
        ("moved", "<dir>"),
        ("moved/a.txt", "a"),
        ("new", "<dir>"),
        ("new/dir", "<dir>"),
        ("new/dir/file.txt", "fresh"),
        ("src", "<dir>"),
        ("src/main.rs", "fn main() {}\n// more"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(tree_of(&lower), expected);
    assert!(!o.has_changes().unwrap_or(true));
    assert_eq!(
        read_to_string(&o, Path::new("README")).unwrap_or_default(),
        "readme v2"
    );
}

#[test]
fn overlay_rollback_leaves_the_workspace_untouched() {
    let (_tmp, lower, o) = overlay();
    let before = tree_of(&lower);
    mutate(&o);
    o.rollback().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree_of(&lower), before);
    assert!(!o.has_changes().unwrap_or(true));
    assert_eq!(
        read_to_string(&o, Path::new("old.txt")).unwrap_or_default(),
        "old"
    );
}

#[test]
fn a_directory_recreated_over_a_deleted_one_hides_the_old_contents() {
    let (_tmp, lower, o) = overlay();
    assert_eq!(
        o.remove_dir_all(Path::new("src")).ok(),
        Some(4),
        "src, main.rs, deep, a.txt"
    );
    o.create_dir(Path::new("src"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        o.read_dir(Path::new("src"), 10)
            .unwrap_or_default()
            .is_empty()
    );
    o.write(Path::new("src/lib.rs"), b"lib", false)
        .unwrap_or_else(|e| panic!("{e}"));
    o.commit().unwrap_or_else(|e| panic!("{e}"));
    let src: Vec<_> = tree_of(&lower)
        .into_iter()
        .filter(|(p, _)| p.starts_with("src"))
        .collect();
    assert_eq!(
        src,
        vec![
            ("src".into(), "<dir>".into()),
            ("src/lib.rs".into(), "lib".into())
        ]
    );
}

#[test]
fn overlay_handles_keep_writes_in_the_upper_layer() {
    use std::io::{Read, Write};
    let (_tmp, lower, o) = overlay();
    let mut f = o
        .open(Path::new("README"), OpenMode::Append)
        .unwrap_or_else(|e| panic!("{e}"));
    f.write_all(b"+").unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    assert_eq!(
        std::fs::read_to_string(lower.join("README")).unwrap_or_default(),
        "readme v1"
    );
    let mut s = String::new();
    o.open(Path::new("README"), OpenMode::Read)
        .and_then(|mut f| {
            f.read_to_string(&mut s)
                .map_err(|e| VfsError::from_io(Path::new("README"), e))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s, "readme v1+");
    o.hard_link(Path::new("README"), Path::new("LINK"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read_to_string(&o, Path::new("LINK")).unwrap_or_default(),
        "readme v1+"
    );
    assert!(matches!(
        o.rename(Path::new("src"), Path::new("src/inner")),
        Err(VfsError::InvalidPath(_))
    ));
}

fn guest_path_string() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("inside.txt".to_string()),
        Just("dir".to_string()),
        Just("nested.txt".to_string()),
        Just("abs-link".to_string()),
        Just("rel-link".to_string()),
        Just("dir-link".to_string()),
        Just("secret.txt".to_string()),
        Just("outside".to_string()),
        Just("\0".to_string()),
        "[a-z]{1,3}",
    ];
    let prefix = prop_oneof![
        Just(String::new()),
        Just("/".to_string()),
        Just("cwd://".to_string()),
        Just("home://".to_string()),
        Just("/tmp/".to_string()),
    ];
    (prefix, prop::collection::vec(segment, 0..8))
        .prop_map(|(p, segs)| format!("{p}{}", segs.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Whatever string a guest sends, the parsed path is relative and `..`-free, and no
    /// operation through the mount ever reads or creates anything outside it.
    #[test]
    fn arbitrary_guest_paths_stay_inside_their_mount(s in guest_path_string(), data in "[a-z]{0,4}") {
        let f = fixture();
        let m = mount(&f);
        if let Ok(gp) = GuestPath::parse(&s) {
            prop_assert!(gp.rel.is_relative());
            prop_assert!(!gp.rel.components().any(|c| matches!(c, std::path::Component::ParentDir)));
            if let Ok(bytes) = m.read(&gp.rel, 1 << 20) {
                prop_assert!(!bytes.starts_with(b"SECRET"), "read outside content through {}", s);
            }
            let _ = m.write(&gp.rel, data.as_bytes(), false);
            let _ = m.create_dir(&gp.rel.join("made"), true);
            let _ = m.remove_file(&gp.rel);
        }
        let outside: Vec<_> = std::fs::read_dir(&f.outside)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        prop_assert_eq!(outside, vec![std::ffi::OsString::from("secret.txt")]);
        prop_assert_eq!(std::fs::read_to_string(f.outside.join("secret.txt")).unwrap_or_default(), "SECRET");
    }
}

/// Runs `f` on its own thread and waits a generous minute: the copies below looped forever on
/// some file systems, and a hang must fail the test instead of stalling the run.
fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the operation did not finish within a minute"))
}

fn same_file_refused(r: Result<(), VfsError>, what: &str) {
    assert!(
        matches!(&r, Err(VfsError::InvalidPath(m)) if m.contains("same file")),
        "{what}: {r:?}"
    );
}

#[cfg(unix)]
#[test]
fn copying_a_file_onto_itself_is_refused_and_keeps_it() {
    let f = fixture();
    let m = std::sync::Arc::new(mount(&f));
    std::fs::hard_link(f.mount.join("inside.txt"), f.mount.join("alias.txt"))
        .unwrap_or_else(|e| panic!("{e}"));
    for to in ["inside.txt", "./inside.txt", "alias.txt", "ok-link"] {
        let m2 = std::sync::Arc::clone(&m);
        let r = finishes(move || m2.copy(Path::new("inside.txt"), Path::new(to)));
        same_file_refused(r, to);
    }
    assert_eq!(
        std::fs::read_to_string(f.mount.join("inside.txt")).unwrap_or_default(),
        "inside"
    );
}

#[test]
fn overlay_copies_and_renames_onto_the_same_file_are_refused() {
    let (_tmp, lower, o) = overlay();
    let o = std::sync::Arc::new(o);
    o.write(Path::new("up.txt"), b"upper", false)
        .unwrap_or_else(|e| panic!("{e}"));
    o.hard_link(Path::new("up.txt"), Path::new("alias.txt"))
        .unwrap_or_else(|e| panic!("{e}"));
    for (from, to) in [
        ("up.txt", "up.txt"),
        ("up.txt", "alias.txt"),
        ("README", "README"),
    ] {
        let o2 = std::sync::Arc::clone(&o);
        let r = finishes(move || o2.copy(Path::new(from), Path::new(to)));
        same_file_refused(r, &format!("copy {from} {to}"));
    }
    let o2 = std::sync::Arc::clone(&o);
    let r = finishes(move || o2.rename(Path::new("up.txt"), Path::new("alias.txt")));
    same_file_refused(r, "rename onto a hard link of itself");
    for (p, want) in [
        ("up.txt", "upper"),
        ("alias.txt", "upper"),
        ("README", "readme v1"),
    ] {
        assert_eq!(
            read_to_string(&*o, Path::new(p)).unwrap_or_default(),
            want,
            "{p}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(lower.join("README")).unwrap_or_default(),
        "readme v1"
    );
}

/// A write through a dangling symlink creates the symlink's target, so the gate must judge the
/// target: with `fs_write` on `pub` only, `pub/link -> ../priv/planted` must not pass as
/// `pub/link`.
#[cfg(unix)]
#[test]
fn a_dangling_symlink_is_judged_by_where_it_points() {
    let f = fixture();
    std::fs::create_dir_all(f.mount.join("pub")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(f.mount.join("priv")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("../priv/planted", f.mount.join("pub/link"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("link", f.mount.join("pub/chain")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("../../outside/new", f.mount.join("pub/out"))
        .unwrap_or_else(|e| panic!("{e}"));
    let m = mount(&f);
    for (p, want) in [
        ("pub/link", "priv/planted"),
        ("pub/chain", "priv/planted"),
        ("pub/link/below", "priv/planted/below"),
    ] {
        assert_eq!(
            m.resolve_for_gate(Path::new(p)).ok(),
            Some(PathBuf::from(want)),
            "{p}"
        );
    }
    assert!(matches!(
        m.resolve_for_gate(Path::new("pub/out")),
        Err(VfsError::BoundaryEscape(_))
    ));
}
