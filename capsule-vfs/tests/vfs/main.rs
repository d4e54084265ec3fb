//! Confinement and overlay semantics on real directories: `..`, absolute paths, NUL and symlinks
//! never leave a mount; overlay commit and rollback leave the workspace exactly as expected.

use std::path::{Path, PathBuf};

use capsule_vfs::{
    Ctl, GuestPath, Mount, OpenMode, Overlay, Scheme, Tree, Usage, VfsError, read_to_string,
};
use proptest::prelude::*;

mod bounds;
mod confinement;
mod overlay;

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
