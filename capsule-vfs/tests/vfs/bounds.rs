//! Bounded tree work and copies: deep trees are walked without recursion and within bounds,
//! copies keep holes and stop when cancelled, and nothing is copied or renamed onto itself.

use super::*;

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
