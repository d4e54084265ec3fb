//! Where per-principal files live under the host's state directory, and how they are opened:
//! through cap-std directory handles, never following a symlink, private to the host user.

use std::io;
use std::path::{Path, PathBuf};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, DirBuilder, OpenOptions};
use capsule_bus::PrincipalId;

use crate::mount::Mount;

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
    pub log: io::Result<std::fs::File>,
    /// The principal's env overlay for the capsule (`<home>/.config/env/<capsule>.env.json`),
    /// if present, or why it could not be read.
    pub env: io::Result<Option<String>>,
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
        std::fs::create_dir_all(&self.root)?;
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
        let home = self.open_home(principal)?;
        let tmp_rel = Path::new(".local").join("tmp");
        home.create_dir_with(&tmp_rel, &Self::private_dir_builder())?;
        let tmp = Mount::from_dir(
            home.open_dir_nofollow(&tmp_rel)?,
            self.home(principal).join(&tmp_rel),
        );
        let log = Self::open_log_in(&home, capsule);
        let env_file = Path::new(".config")
            .join("env")
            .join(format!("{capsule}.env.json"));
        let env = match home.read_to_string(&env_file) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        Ok(PrincipalFiles {
            home: Mount::from_dir(home, self.home(principal)),
            tmp,
            log,
            env,
        })
    }

    fn open_log_in(home: &Dir, capsule: &str) -> io::Result<std::fs::File> {
        let logs = Path::new(".local").join("log");
        home.create_dir_with(&logs, &Self::private_dir_builder())?;
        let logs = home.open_dir_nofollow(&logs)?;
        let mut opts = OpenOptions::new();
        opts.append(true).create(true);
        opts.follow(FollowSymlinks::No);
        #[cfg(unix)]
        opts.mode(0o600);
        Ok(logs.open_with(format!("{capsule}.log"), &opts)?.into_std())
    }

    /// Opens (creating, mode 0600) the capsule's log file for `principal` in append mode.
    ///
    /// `capsule` must be a capsule name (`[a-z0-9-]+`); anything else is refused. The file and
    /// its directories are resolved inside the principal's home and a symlink in their place
    /// is an error, never followed.
    pub fn open_capsule_log(
        &self,
        principal: &PrincipalId,
        capsule: &str,
    ) -> io::Result<std::fs::File> {
        check_capsule_name(capsule)?;
        let home = self.open_home(principal)?;
        Self::open_log_in(&home, capsule)
    }
}

fn check_capsule_name(capsule: &str) -> io::Result<()> {
    if capsule.is_empty()
        || !capsule
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{capsule:?} is not a capsule name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn log_file_is_created_private_and_appends() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path());
        for line in ["one\n", "two\n"] {
            let mut f = layout
                .open_capsule_log(&pid("alice"), "pong")
                .unwrap_or_else(|e| panic!("{e}"));
            f.write_all(line.as_bytes())
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
    fn capsule_name_must_be_a_name() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path());
        assert!(layout.open_capsule_log(&pid("a"), "../x").is_err());
        assert!(layout.open_capsule_log(&pid("a"), "").is_err());
    }
}
