//! Confinement: `..`, absolute paths, NUL and symlinks never lead out of a mount, whatever
//! the guest sends; links are refused where a path must have none.

use super::*;

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

/// A FIFO (which a principal's own processes can create in its home) never parks the calling
/// thread: with nobody at the other end, opening it would wait for a peer forever.
#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_waiting_for_a_peer() {
    let f = fixture();
    let m = mount(&f);
    let made = std::process::Command::new("mkfifo")
        .arg(f.mount.join("pipe"))
        .status()
        .unwrap_or_else(|e| panic!("mkfifo: {e}"));
    assert!(made.success());
    let ctl = Ctl::uncancellable();
    let pipe = Path::new("pipe");
    assert!(matches!(m.read(pipe, 100), Err(VfsError::NotAFile(_))));
    for mode in [OpenMode::Read, OpenMode::ReadWrite] {
        assert!(matches!(
            m.open(pipe, mode, &ctl),
            Err(VfsError::NotAFile(_))
        ));
    }
    // Opening a FIFO only to write fails at once when nobody reads it.
    for mode in [OpenMode::Write, OpenMode::Append] {
        assert!(m.open(pipe, mode, &ctl).is_err());
    }
    for append in [false, true] {
        assert!(m.write(pipe, b"x", append, &ctl).is_err());
    }
    assert!(matches!(
        m.copy(pipe, Path::new("copied"), &ctl),
        Err(VfsError::NotAFile(_))
    ));
    assert!(!f.mount.join("copied").exists());
}
