//! Where per-principal files live under the host's state directory, and how they are opened:
//! through cap-std directory handles, never following a symlink, private to the host user.
//! Which parts of a home the host manages (and guests may not touch) is defined here, once.

use std::io;
use std::path::{Path, PathBuf};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, DirBuilder, OpenOptions};
use capsule_ids::{CapsuleName, PrincipalId};

use crate::hostfile::{host_file, open_host_dir};
use crate::mount::Mount;
use crate::walk::Visit;

/// Home entries the host creates and relies on: a guest may never rename, remove or replace
/// them (nor any directory above them, the home itself included).
pub const HOST_ANCHORS: &[&str] = &[
    ".local",
    ".local/log",
    ".local/tmp",
    ".config",
    ".config/env",
];

/// Home subtrees only the host reads and writes: capsule logs and env overlays. Guests never
/// reach anything at or below them, under any path.
pub const HOST_SUBTREES: &[&str] = &[".local/log", ".config/env"];

/// Whether `rel` (relative to a home) is at or below a host-only subtree.
pub fn is_host_only(rel: &Path) -> bool {
    HOST_SUBTREES.iter().any(|m| rel.starts_with(m))
}

/// Whether `rel` (relative to a home) is a host anchor or a directory above one (the home
/// itself is `""`): replacing, moving or removing it would move what the host relies on.
pub fn holds_host_anchor(rel: &Path) -> bool {
    HOST_ANCHORS.iter().any(|a| Path::new(a).starts_with(rel))
}

/// How a home is measured for its principal's storage quota: host-only subtrees are left
/// out, the host's own directories are walked through without being counted.
pub fn home_usage_visit(rel: &Path) -> Visit {
    if is_host_only(rel) {
        Visit::Skip
    } else if holds_host_anchor(rel) {
        Visit::Through
    } else {
        Visit::Enter
    }
}

/// An open capsule log file and the directory it lives in, so the host can rotate it.
#[derive(Debug)]
pub struct LogFile {
    dir: Dir,
    name: String,
    file: std::fs::File,
}

impl LogFile {
    /// The file records are appended to.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Opens (creating, mode 0600) the capsule's log file in an opened home, in append mode,
    /// relative to that handle: a link in place of `.local/log` or the file is refused, never
    /// followed. `capsule` must be a [`CapsuleName`].
    pub fn open_in_home(home: &Mount, capsule: &str) -> io::Result<Self> {
        check_capsule_name(capsule)?;
        StateLayout::open_log_in(home.dir(), capsule)
    }

    /// Moves the current log to `<name>.1` (replacing the previous generation) and starts a
    /// fresh one. If another handle rotated it already, only reopens the current file.
    pub fn rotate(&mut self) -> io::Result<()> {
        use cap_std::fs::MetadataExt as _;
        use std::os::unix::fs::MetadataExt as _;
        let mine = self.file.metadata()?;
        let still_current = self
            .dir
            .symlink_metadata(&self.name)
            .is_ok_and(|m| m.is_file() && m.ino() == mine.ino() && m.dev() == mine.dev());
        if still_current {
            self.dir
                .rename(&self.name, &self.dir, format!("{}.1", self.name))?;
        }
        self.file = open_log_file(&self.dir, &self.name)?;
        Ok(())
    }
}

fn open_log_file(logs: &Dir, name: &str) -> io::Result<std::fs::File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    opts.follow(FollowSymlinks::No);
    #[cfg(unix)]
    opts.mode(0o600);
    host_file(logs.open_with(name, opts.nonblock(true))?, Path::new(name))
}

/// Largest host-written file (an env overlay) read back from a home.
const MAX_HOST_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a host-written UTF-8 file under `home`, following no symlink on the way, refusing
/// anything but a regular file of at most [`MAX_HOST_FILE_BYTES`] that the host made (see
/// [`host_file`]).
fn read_host_file(home: &Dir, rel: &Path) -> io::Result<String> {
    use std::io::Read;
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a host file is named by a path with a parent",
        ));
    };
    let dir = open_host_dir(home, parent, false)?;
    let mut opts = OpenOptions::new();
    opts.read(true).follow(FollowSymlinks::No).nonblock(true);
    let file = host_file(dir.open_with(name, &opts)?, rel)?;
    let mut text = String::new();
    file.take(MAX_HOST_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_HOST_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_HOST_FILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

use cap_fs_ext::OpenOptionsSyncExt;
#[cfg(unix)]
use cap_std::fs::{DirBuilderExt, OpenOptionsExt};

/// Everything the host opens for one principal and one capsule, from a single home handle.
#[derive(Debug)]
pub struct PrincipalFiles {
    /// `home://`.
    pub home: Mount,
    /// `/tmp/` (`<home>/.local/tmp`).
    pub tmp: Mount,
    /// The capsule's log file for this principal, or why it could not be opened.
    pub log: io::Result<LogFile>,
    /// The principal's env overlay for the capsule (`<home>/.config/env/<capsule>.env.json`),
    /// if present, or why it could not be read.
    pub env: io::Result<Option<String>>,
}

/// A principal's home and tmp, opened together from the state directory.
#[derive(Debug)]
pub struct PrincipalDirs {
    /// `home://`.
    pub home: Mount,
    /// `/tmp/` (`<home>/.local/tmp`).
    pub tmp: Mount,
}

/// The host's state directory and the paths inside it.
#[derive(Clone, Debug)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    /// A layout rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<state>/home/<principal>`.
    pub fn home(&self, principal: &PrincipalId) -> PathBuf {
        self.root.join("home").join(principal.as_str())
    }

    /// `<state>/home/<principal>/.local/log/<capsule>.log`.
    pub fn capsule_log_path(&self, principal: &PrincipalId, capsule: &str) -> PathBuf {
        self.home(principal)
            .join(".local")
            .join("log")
            .join(format!("{capsule}.log"))
    }

    fn private_dir_builder() -> DirBuilder {
        let mut b = DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        b.mode(0o700);
        b
    }

    /// Opens the principal's home as a directory handle, creating it (mode 0700) if needed.
    pub fn open_home(&self, principal: &PrincipalId) -> io::Result<Dir> {
        let mut root = std::fs::DirBuilder::new();
        root.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut root, 0o700);
        root.create(&self.root)?;
        let state = Dir::open_ambient_dir(&self.root, ambient_authority())?;
        let rel = Path::new("home").join(principal.as_str());
        state.create_dir_with(&rel, &Self::private_dir_builder())?;
        state.open_dir_nofollow(&rel)
    }

    /// Opens the principal's home once and derives its tmp mount, the capsule's log file and
    /// the capsule's env overlay from that handle.
    pub fn open_principal(
        &self,
        principal: &PrincipalId,
        capsule: &str,
    ) -> io::Result<PrincipalFiles> {
        check_capsule_name(capsule)?;
        let PrincipalDirs { home, tmp } = self.open_principal_dirs(principal)?;
        let log = LogFile::open_in_home(&home, capsule);
        let env = Self::read_env_overlay(&home, capsule);
        Ok(PrincipalFiles {
            home,
            tmp,
            log,
            env,
        })
    }

    /// Opens the principal's home (creating it, mode 0700) and its tmp (`.local/tmp`, created
    /// the same way) from that handle, following no link in place of either.
    pub fn open_principal_dirs(&self, principal: &PrincipalId) -> io::Result<PrincipalDirs> {
        let home = self.open_home(principal)?;
        let tmp_rel = Path::new(".local").join("tmp");
        home.create_dir_with(&tmp_rel, &Self::private_dir_builder())?;
        // The host's own places exist before any child of the principal runs, so none can
        // make them first; one that is not the host's is refused when it is used.
        for own in HOST_SUBTREES {
            if let Err(e) = open_host_dir(&home, Path::new(own), true) {
                tracing::warn!(%principal, dir = own, error = %e, "a host directory of a home is not the host's");
            }
        }
        let tmp = Mount::from_dir(
            home.open_dir_nofollow(&tmp_rel)?,
            self.home(principal).join(&tmp_rel),
        );
        Ok(PrincipalDirs {
            home: Mount::from_dir(home, self.home(principal)),
            tmp,
        })
    }

    /// Reads the capsule's env overlay (`.config/env/<capsule>.env.json`) inside an opened
    /// home; `None` when there is none. `capsule` must be a [`CapsuleName`].
    pub fn read_env_overlay(home: &Mount, capsule: &str) -> io::Result<Option<String>> {
        check_capsule_name(capsule)?;
        match read_host_file(home.dir(), &env_overlay_file(capsule)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The capsule's env overlay inside an opened home as it is now, read like
    /// [`Self::read_env_overlay`]; `None` when there is none. Two stamps are equal exactly when
    /// the content is: the file is small and re-read, since no `stat` field proves a file
    /// unchanged (a copy that keeps times or two writes in one clock tick keep size and mtime,
    /// and a store through a shared writable mapping moves no time at all once its page is
    /// writable). `capsule` must be a [`CapsuleName`].
    pub fn env_overlay_stamp(home: &Mount, capsule: &str) -> io::Result<Option<OverlayStamp>> {
        Ok(Self::read_env_overlay(home, capsule)?.map(|text| OverlayStamp { text: text.into() }))
    }

    /// Whether the capsule's env overlay is still `seen` (what [`Self::env_overlay_stamp`]
    /// returned earlier): still no file there (one `stat`), or a file with the same content
    /// (re-read). Any error reads as changed.
    pub fn env_overlay_unchanged(home: &Mount, capsule: &str, seen: Option<&OverlayStamp>) -> bool {
        if check_capsule_name(capsule).is_err() {
            return false;
        }
        if seen.is_none() {
            let now = rustix::fs::statat(
                home.dir(),
                env_overlay_file(capsule).as_path(),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            );
            if matches!(
                now,
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)
            ) {
                return true;
            }
        }
        match Self::env_overlay_stamp(home, capsule) {
            Ok(now) => now.as_ref() == seen,
            Err(_) => false,
        }
    }

    fn open_log_in(home: &Dir, capsule: &str) -> io::Result<LogFile> {
        let dir = open_host_dir(home, &Path::new(".local").join("log"), true)?;
        let name = format!("{capsule}.log");
        let file = open_log_file(&dir, &name)?;
        Ok(LogFile { dir, name, file })
    }

    /// Opens (creating, mode 0600) the capsule's log file for `principal` in append mode.
    ///
    /// `capsule` must be a [`CapsuleName`]; anything else is refused. The file and
    /// its directories are resolved inside the principal's home and a symlink in their place
    /// is an error, never followed.
    pub fn open_capsule_log(&self, principal: &PrincipalId, capsule: &str) -> io::Result<LogFile> {
        check_capsule_name(capsule)?;
        let home = self.open_home(principal)?;
        Self::open_log_in(&home, capsule)
    }
}

/// One version of an env overlay file: its content (see [`StateLayout::env_overlay_stamp`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayStamp {
    text: std::sync::Arc<str>,
}

impl OverlayStamp {
    /// The overlay's text as read.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Where a capsule's env overlay lives inside a principal's home.
fn env_overlay_file(capsule: &str) -> PathBuf {
    Path::new(".config")
        .join("env")
        .join(format!("{capsule}.env.json"))
}

fn check_capsule_name(capsule: &str) -> io::Result<()> {
    CapsuleName::parse(capsule).map(drop).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{capsule:?} is not a capsule name: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_overlay_is_known_unchanged_only_by_its_content_and_every_change_shows() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let home = Mount::create(&dir.path().join("home")).unwrap_or_else(|e| panic!("{e}"));
        let env = dir.path().join("home/.config/env");
        std::fs::create_dir_all(&env).unwrap_or_else(|e| panic!("{e}"));
        let file = env.join("cap.env.json");
        let write = |text: &str| std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            StateLayout::env_overlay_unchanged(&home, "cap", None),
            "still none"
        );
        write(r#"{"A":"1"}"#);
        assert!(
            !StateLayout::env_overlay_unchanged(&home, "cap", None),
            "one appeared"
        );
        let seen = StateLayout::env_overlay_stamp(&home, "cap")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("an overlay is there"));
        assert!(StateLayout::env_overlay_unchanged(
            &home,
            "cap",
            Some(&seen)
        ));
        // Same size, mtime put back.
        let mtime = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{e}"));
        write(r#"{"A":"2"}"#);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(mtime))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!StateLayout::env_overlay_unchanged(
            &home,
            "cap",
            Some(&seen)
        ));
        // A rewrite back to the very text read is the same content.
        write(r#"{"A":"1"}"#);
        assert!(StateLayout::env_overlay_unchanged(
            &home,
            "cap",
            Some(&seen)
        ));
        // A link on the way is refused, as on the first read.
        let moved = dir.path().join("home/.config-moved");
        std::fs::rename(dir.path().join("home/.config"), &moved).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&moved, dir.path().join("home/.config"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!StateLayout::env_overlay_unchanged(
            &home,
            "cap",
            Some(&seen)
        ));
        std::fs::remove_file(dir.path().join("home/.config")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&moved, dir.path().join("home/.config")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!StateLayout::env_overlay_unchanged(
            &home,
            "cap",
            Some(&seen)
        ));
        assert!(StateLayout::env_overlay_unchanged(&home, "cap", None));
    }

    #[test]
    fn log_file_is_created_private_and_appends() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path());
        for line in ["one\n", "two\n"] {
            let f = layout
                .open_capsule_log(&pid("alice"), "pong")
                .unwrap_or_else(|e| panic!("{e}"));
            f.file()
                .write_all(line.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let path = layout.capsule_log_path(&pid("alice"), "pong");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            "one\ntwo\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// A principal's own processes can put a FIFO where the host keeps its log or env
    /// overlay; opening either must fail at once instead of waiting for a peer.
    #[cfg(unix)]
    #[test]
    fn a_fifo_in_place_of_a_log_or_env_overlay_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path());
        let alice = pid("alice");
        drop(
            layout
                .open_principal(&alice, "pong")
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let home = layout.home(&alice);
        std::fs::remove_file(layout.capsule_log_path(&alice, "pong"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(home.join(".config/env")).unwrap_or_else(|e| panic!("{e}"));
        for fifo in [
            layout.capsule_log_path(&alice, "pong"),
            home.join(".config/env/pong.env.json"),
        ] {
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap_or_else(|e| panic!("mkfifo: {e}"));
            assert!(made.success());
        }
        let files = layout
            .open_principal(&alice, "pong")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(files.log.is_err());
        assert!(files.env.is_err());
        assert!(layout.open_capsule_log(&alice, "pong").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_log_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path().join("state"));
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap_or_else(|e| panic!("{e}"));
        let path = layout.capsule_log_path(&pid("bob"), "pong");
        std::fs::create_dir_all(path.parent().unwrap_or(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&victim, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(layout.open_capsule_log(&pid("bob"), "pong").is_err());
        // A symlinked directory on the way is refused too.
        let path2 = layout.capsule_log_path(&pid("carol"), "pong");
        let local = path2.parent().and_then(Path::parent).unwrap_or(dir.path());
        std::fs::create_dir_all(local).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(dir.path(), local.join("log")).unwrap_or_else(|e| panic!("{e}"));
        assert!(layout.open_capsule_log(&pid("carol"), "pong").is_err());
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap_or_default(),
            "untouched"
        );
    }

    #[test]
    fn rotation_keeps_one_previous_generation_and_follows_other_handles() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path());
        let open = || {
            layout
                .open_capsule_log(&pid("alice"), "pong")
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (mut a, mut b) = (open(), open());
        let path = layout.capsule_log_path(&pid("alice"), "pong");
        let old = path.with_extension("log.1");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        a.file()
            .write_all(b"first\n")
            .unwrap_or_else(|e| panic!("{e}"));
        a.rotate().unwrap_or_else(|e| panic!("{e}"));
        // `b` still writes the rotated file until it rotates too: then it only reopens.
        b.file()
            .write_all(b"late\n")
            .unwrap_or_else(|e| panic!("{e}"));
        b.rotate().unwrap_or_else(|e| panic!("{e}"));
        a.file()
            .write_all(b"second\n")
            .unwrap_or_else(|e| panic!("{e}"));
        b.file()
            .write_all(b"third\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&old), "first\nlate\n");
        assert_eq!(read(&path), "second\nthird\n");
        a.rotate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read(&old),
            "second\nthird\n",
            "one previous generation only"
        );
        assert_eq!(read(&path), "");
    }

    #[test]
    fn host_managed_paths_are_recognised_by_their_normal_form() {
        for p in [
            ".local/log",
            ".local/log/x.log",
            ".config/env",
            ".config/env/a/b",
        ] {
            assert!(is_host_only(Path::new(p)), "{p}");
        }
        for p in [
            ".local",
            ".local/tmp",
            ".config",
            ".configs",
            "x/.local/log",
        ] {
            assert!(!is_host_only(Path::new(p)), "{p}");
        }
        for p in [
            "",
            ".local",
            ".config",
            ".local/log",
            ".local/tmp",
            ".config/env",
        ] {
            assert!(holds_host_anchor(Path::new(p)), "{p:?}");
        }
        for p in [
            "a",
            ".local/tmp/x",
            ".config/app",
            ".localx",
            ".local/log/x",
        ] {
            assert!(!holds_host_anchor(Path::new(p)), "{p}");
        }
        assert_eq!(home_usage_visit(Path::new(".local/log/p.log")), Visit::Skip);
        assert_eq!(home_usage_visit(Path::new(".local/tmp")), Visit::Through);
        assert_eq!(home_usage_visit(Path::new(".local/tmp/a")), Visit::Enter);
    }

    #[test]
    fn capsule_name_must_be_a_name() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path());
        assert!(layout.open_capsule_log(&pid("a"), "../x").is_err());
        assert!(layout.open_capsule_log(&pid("a"), "").is_err());
    }
}
