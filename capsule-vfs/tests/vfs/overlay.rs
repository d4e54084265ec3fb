//! The overlay workspace: reads see pending changes, commit applies exactly them, rollback
//! leaves the workspace untouched, and whiteouts and opaque directories hide what they should.

use super::*;

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
