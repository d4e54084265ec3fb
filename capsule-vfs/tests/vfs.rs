//! Confinement and overlay semantics on real directories: `..`, absolute paths, NUL and symlinks
//! never leave a mount; overlay commit and rollback leave the workspace exactly as expected.

use std::path::{Path, PathBuf};

use capsule_vfs::{
    Ctl, GuestPath, Mount, OpenMode, Overlay, Scheme, Tree, Usage, VfsError, read_to_string,
};
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

/// Removes a tree and answers how many entries went.
fn rmrf(t: &dyn Tree, p: &Path) -> Result<u64, VfsError> {
    let mut done = Usage::default();
    t.remove_dir_all(p, &Ctl::uncancellable(), &mut done)
        .map(|()| done.entries)
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
        m.write(
            Path::new("dir-link/planted.txt"),
            b"x",
            false,
            &Ctl::uncancellable()
        )
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
        m.write(
            &Path::new("dir").join(format!("f{i}")),
            b"",
            false,
            &Ctl::uncancellable(),
        )
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
        rmrf(&m, Path::new("dir")).ok(),
        Some(7),
        "six entries and the directory"
    );
    assert!(matches!(rmrf(&m, Path::new("")), Err(VfsError::Access(_))));
    assert!(matches!(
        m.open(Path::new("nope"), OpenMode::Read, &Ctl::uncancellable()),
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
    ok(o.write(
        Path::new("README"),
        b"readme v2",
        false,
        &Ctl::uncancellable(),
    ));
    ok(o.write(
        Path::new("src/main.rs"),
        b"\n// more",
        true,
        &Ctl::uncancellable(),
    ));
    ok(o.create_dir(Path::new("new/dir"), true));
    ok(o.write(
        Path::new("new/dir/file.txt"),
        b"fresh",
        false,
        &Ctl::uncancellable(),
    ));
    ok(o.remove_file(Path::new("old.txt")));
    ok(o.rename(
        Path::new("src/deep"),
        Path::new("moved"),
        &Ctl::uncancellable(),
    ));
    ok(o.copy(
        Path::new("README"),
        Path::new("README.bak"),
        &Ctl::uncancellable(),
    ));
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
        rmrf(&o, Path::new("src")).ok(),
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
    o.write(
        Path::new("src/lib.rs"),
        b"lib",
        false,
        &Ctl::uncancellable(),
    )
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
        .open(Path::new("README"), OpenMode::Append, &Ctl::uncancellable())
        .unwrap_or_else(|e| panic!("{e}"));
    f.write_all(b"+").unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    assert_eq!(
        std::fs::read_to_string(lower.join("README")).unwrap_or_default(),
        "readme v1"
    );
    let mut s = String::new();
    o.open(Path::new("README"), OpenMode::Read, &Ctl::uncancellable())
        .and_then(|mut f| {
            f.read_to_string(&mut s)
                .map_err(|e| VfsError::from_io(Path::new("README"), e))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s, "readme v1+");
    o.hard_link(
        Path::new("README"),
        Path::new("LINK"),
        &Ctl::uncancellable(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read_to_string(&o, Path::new("LINK")).unwrap_or_default(),
        "readme v1+"
    );
    assert!(matches!(
        o.rename(
            Path::new("src"),
            Path::new("src/inner"),
            &Ctl::uncancellable()
        ),
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
            let _ = m.write(&gp.rel, data.as_bytes(), false, &Ctl::uncancellable());
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

/// Builds `levels` nested directories named `name` below `root` one handle at a time (as an
/// operator or another program could), so their paths may exceed what a guest can name.
fn nest(root: &Path, name: &str, levels: usize) {
    use cap_std::ambient_authority;
    use cap_std::fs::Dir;
    let mut dir =
        Dir::open_ambient_dir(root, ambient_authority()).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..levels {
        dir.create_dir(name).unwrap_or_else(|e| panic!("{e}"));
        dir = dir.open_dir(name).unwrap_or_else(|e| panic!("{e}"));
    }
    dir.write("leaf.txt", b"leaf")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn deep_trees_are_walked_without_recursion_and_within_bounds() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = tmp.path().join("m");
    std::fs::create_dir_all(root.join("ok")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(root.join("far")).unwrap_or_else(|e| panic!("{e}"));
    // The deepest tree a guest path can name: removed entry by entry, leaf and all.
    nest(&root.join("ok"), "a", 126);
    // Deeper than any guest path (and than PATH_MAX): refused cleanly, never a crash.
    nest(&root.join("far"), "dd", 3000);
    let m = Mount::open(&root).unwrap_or_else(|e| panic!("{e}"));
    let everything = |_: &Path| capsule_vfs::Visit::Enter;
    assert!(matches!(
        m.usage(Path::new("far"), &Ctl::uncancellable(), &everything),
        Err(VfsError::TooLarge { .. })
    ));
    assert!(matches!(
        rmrf(&m, Path::new("far")),
        Err(VfsError::TooLarge { .. })
    ));
    let usage = m
        .usage(Path::new("ok"), &Ctl::uncancellable(), &everything)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        usage,
        Usage {
            entries: 127,
            bytes: 4
        }
    );
    // Moving the tree one level deeper would push its leaf beyond a guest path; so would
    // moving a tree with long names under a long name.
    m.create_dir(Path::new("x"), true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        m.rename(Path::new("ok"), Path::new("x/ok"), &Ctl::uncancellable()),
        Err(VfsError::TooLarge { .. })
    ));
    let long = "n".repeat(200);
    nest(&root.join("x"), &long, 15);
    let name = "y".repeat(200);
    let deeper: PathBuf = std::iter::repeat_n(name.as_str(), 6).collect();
    m.create_dir(&deeper, true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        m.rename(Path::new("x"), &deeper.join("x"), &Ctl::uncancellable()),
        Err(VfsError::TooLarge { .. })
    ));
    m.rename(
        Path::new("x"),
        &Path::new(&name).join("x"),
        &Ctl::uncancellable(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rmrf(&m, Path::new("ok")).ok(), Some(128));
    assert!(!root.join("ok").exists());
    // A cancelled walk stops at once.
    let cancelled = || true;
    assert!(matches!(
        m.usage(Path::new(""), &Ctl::new(&cancelled), &everything),
        Err(VfsError::Cancelled)
    ));
}

#[test]
fn copies_keep_holes_appear_whole_and_stop_when_cancelled() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = tmp.path().join("m");
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{e}"));
    let sparse = std::fs::File::create(root.join("sparse")).unwrap_or_else(|e| panic!("{e}"));
    sparse.set_len(1 << 30).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 1 << 29)
        .unwrap_or_else(|e| panic!("{e}"));
    let m = Mount::open(&root).unwrap_or_else(|e| panic!("{e}"));
    let cancelled = || true;
    assert!(matches!(
        m.copy(
            Path::new("sparse"),
            Path::new("copy"),
            &Ctl::new(&cancelled)
        ),
        Err(VfsError::Cancelled)
    ));
    assert_eq!(
        m.read_dir(Path::new(""), 10).unwrap_or_default(),
        vec!["sparse".to_string()],
        "a cancelled copy leaves nothing behind"
    );
    m.copy(
        Path::new("sparse"),
        Path::new("copy"),
        &Ctl::uncancellable(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let meta = std::fs::metadata(root.join("copy")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(meta.len(), 1 << 30);
    assert!(meta.blocks() * 512 < 16 << 20, "the copy stayed sparse");
    let mut middle = [0u8; 6];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(root.join("copy")).unwrap_or_else(|e| panic!("{e}")),
        &mut middle,
        1 << 29,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&middle, b"middle");
}

#[test]
fn what_a_mount_creates_is_private_and_usage_counts_each_file_once() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = tmp.path().join("m");
    let m = Mount::create(&root).unwrap_or_else(|e| panic!("{e}"));
    let ctl = Ctl::uncancellable();
    m.create_dir(Path::new("d/e"), true)
        .unwrap_or_else(|e| panic!("{e}"));
    m.write(Path::new("d/f"), b"12345", false, &ctl)
        .unwrap_or_else(|e| panic!("{e}"));
    m.copy(Path::new("d/f"), Path::new("d/e/g"), &ctl)
        .unwrap_or_else(|e| panic!("{e}"));
    m.hard_link(Path::new("d/f"), Path::new("d/h"), &ctl)
        .unwrap_or_else(|e| panic!("{e}"));
    for p in ["d", "d/e"] {
        let mode = std::fs::metadata(root.join(p)).map_or(0, |m| m.permissions().mode());
        assert_eq!(mode & 0o777, 0o700, "{p}");
    }
    for p in ["d/f", "d/e/g"] {
        let mode = std::fs::metadata(root.join(p)).map_or(0, |m| m.permissions().mode());
        assert_eq!(mode & 0o777, 0o600, "{p}");
    }
    let all = |_: &Path| capsule_vfs::Visit::Enter;
    assert_eq!(
        m.usage(Path::new(""), &ctl, &all).ok(),
        Some(Usage {
            entries: 5,
            bytes: 10
        }),
        "d, d/e, d/f, d/e/g, d/h; f and h are one file"
    );
    let skip_e = |p: &Path| {
        if p.starts_with("d/e") {
            capsule_vfs::Visit::Skip
        } else if p == Path::new("d") {
            capsule_vfs::Visit::Through
        } else {
            capsule_vfs::Visit::Enter
        }
    };
    assert_eq!(
        m.usage(Path::new(""), &ctl, &skip_e).ok(),
        Some(Usage {
            entries: 2,
            bytes: 5
        })
    );
}

#[test]
fn overlay_moves_and_removals_are_bounded_and_counted() {
    let (_tmp, lower, o) = overlay();
    let ctl = Ctl::uncancellable();
    nest(&lower, "a", 127);
    o.create_dir(Path::new("x"), true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        o.rename(Path::new("a"), Path::new("x/a"), &ctl),
        Err(VfsError::TooLarge { .. })
    ));
    let all = |_: &Path| capsule_vfs::Visit::Enter;
    let before = o
        .usage(Path::new("a"), &ctl, &all)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        before,
        Usage {
            entries: 127,
            bytes: 4
        }
    );
    let mut done = Usage::default();
    o.remove_dir_all(Path::new("a"), &ctl, &mut done)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        done,
        Usage {
            entries: 128,
            bytes: 4
        }
    );
    o.commit().unwrap_or_else(|e| panic!("{e}"));
    assert!(!lower.join("a").exists());
}

#[cfg(unix)]
#[test]
fn opening_without_links_refuses_a_link_in_any_component() {
    let f = fixture();
    let real = std::fs::canonicalize(&f.mount).unwrap_or_else(|e| panic!("{e}"));
    let linked = real.parent().unwrap_or(Path::new("/")).join("linked");
    std::os::unix::fs::symlink(&f.mount, &linked).unwrap_or_else(|e| panic!("{e}"));
    let m = Mount::open_no_links(&real).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read_to_string(&m, Path::new("inside.txt")).ok().as_deref(),
        Some("inside")
    );
    for bad in [
        linked.clone(),              // the last component is a link
        linked.join("dir"),          // a link on the way
        real.join("dir-link"),       // a link out of the tree
        real.join("dir").join(".."), // not a plain path
        PathBuf::from("relative/dir"),
    ] {
        assert!(Mount::open_no_links(&bad).is_err(), "{}", bad.display());
    }
    let file = capsule_vfs::open_file_no_links(&real.join("dir").join("nested.txt"));
    assert!(file.is_ok(), "{file:?}");
    for bad in [
        linked.join("inside.txt"),
        real.join("ok-link"),
        real.join("dir-link").join("secret.txt"),
    ] {
        assert!(
            capsule_vfs::open_file_no_links(&bad).is_err(),
            "{}",
            bad.display()
        );
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
        let r = finishes(move || {
            m2.copy(
                Path::new("inside.txt"),
                Path::new(to),
                &Ctl::uncancellable(),
            )
        });
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
    o.write(Path::new("up.txt"), b"upper", false, &Ctl::uncancellable())
        .unwrap_or_else(|e| panic!("{e}"));
    o.hard_link(
        Path::new("up.txt"),
        Path::new("alias.txt"),
        &Ctl::uncancellable(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for (from, to) in [
        ("up.txt", "up.txt"),
        ("up.txt", "alias.txt"),
        ("README", "README"),
    ] {
        let o2 = std::sync::Arc::clone(&o);
        let r = finishes(move || o2.copy(Path::new(from), Path::new(to), &Ctl::uncancellable()));
        same_file_refused(r, &format!("copy {from} {to}"));
    }
    let o2 = std::sync::Arc::clone(&o);
    let r = finishes(move || {
        o2.rename(
            Path::new("up.txt"),
            Path::new("alias.txt"),
            &Ctl::uncancellable(),
        )
    });
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
