//! The metrics endpoint's bearer token, `<state>/metrics.token`: created 0600 from the OS
//! random source when it is missing, kept across restarts (so a scraper's copy stays valid),
//! and used only if it is what the host itself would have written — a regular file (never
//! followed through a symbolic link, never a FIFO) owned by the host's user, with no group or
//! other permission bits, holding one RFC 6750 bearer token. Anything else refuses to serve
//! the metrics with an error naming the fault, so a token others could read never guards the
//! counters. The token grants reading the counters and nothing else; the control socket has a
//! token of its own.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// The token's file name in the state directory.
pub(crate) const TOKEN_FILE: &str = "metrics.token";
/// Fewest characters accepted in a token an operator wrote.
const MIN_TOKEN_CHARS: usize = 32;
/// Most characters accepted in a token (and read from the file, plus a line end).
const MAX_TOKEN_CHARS: usize = 1024;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// The file is a symbolic link; it is never followed.
    #[error("{} is a symbolic link; remove it and the host creates a fresh token", path.display())]
    Link {
        /// The token file.
        path: PathBuf,
    },
    /// The file is a FIFO, directory, socket or device.
    #[error("{} is not a regular file; remove it and the host creates a fresh token", path.display())]
    NotAFile {
        /// The token file.
        path: PathBuf,
    },
    /// Group or other users may read or write it.
    #[error(
        "{} is open to group or other users (mode {mode:03o}); `chmod 600` it, or remove it and the host creates a fresh token",
        path.display()
    )]
    Exposed {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another user owns it.
    #[error("{} belongs to user id {owner}, not to the host's user {host}", path.display())]
    Foreign {
        /// The token file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The host's effective user id.
        host: u32,
    },
    /// Its content is not one bearer token.
    #[error("{} holds no usable bearer token: {reason}", path.display())]
    Malformed {
        /// The token file.
        path: PathBuf,
        /// What is wrong with the content.
        reason: String,
    },
    /// Reading, creating or generating it failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The token file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bearer token the endpoint accepts. Its `Debug` form never shows the secret.
pub(crate) struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Whether `presented` is this token, compared in constant time for equal lengths (the
    /// length of a token is not secret: generated ones are always 64 characters).
    pub(crate) fn admits(&self, presented: &str) -> bool {
        let (a, b) = (presented.as_bytes(), self.0.as_bytes());
        a.len() == b.len()
            && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
    }
}

/// Where the metrics token of `state` lives.
pub(crate) fn token_path(state: &Path) -> PathBuf {
    state.join(TOKEN_FILE)
}

/// The token of `state`, created (0600, 32 random bytes as hex) if there is none yet.
pub(crate) fn load_or_create(state: &Path) -> Result<Token, TokenError> {
    let path = token_path(state);
    let io = |action, source| TokenError::Io {
        action,
        path: path.clone(),
        source,
    };
    if let Some(token) = load(&path)? {
        return Ok(token);
    }
    capsule_runtime::security::private::create_private_dir(state)
        .map_err(|e| io("create the directory of", e))?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| io("generate", std::io::Error::other(e.to_string())))?;
    let fresh: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    match capsule_runtime::security::private::create_new(&path, format!("{fresh}\n").as_bytes()) {
        Ok(()) => Ok(Token(fresh)),
        // Another host starting on this state directory created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load(&path)?.ok_or_else(|| io("read", e))
        }
        Err(e) => Err(io("create", e)),
    }
}

/// The token at `path` if the file exists and passes every check; `None` if it is missing.
fn load(path: &Path) -> Result<Option<Token>, TokenError> {
    let at = || path.to_path_buf();
    // Non-blocking, so a FIFO planted here is refused at once instead of waiting for a writer.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(TokenError::Link { path: at() }),
        Err(e) => {
            return Err(TokenError::Io {
                action: "open",
                path: at(),
                source: e.into(),
            });
        }
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|source| TokenError::Io {
        action: "inspect",
        path: at(),
        source,
    })?;
    if !meta.is_file() {
        return Err(TokenError::NotAFile { path: at() });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed { path: at(), mode });
    }
    let host = rustix::process::geteuid().as_raw();
    if meta.uid() != host {
        return Err(TokenError::Foreign {
            path: at(),
            owner: meta.uid(),
            host,
        });
    }
    let mut bytes = Vec::with_capacity(128);
    file.take(MAX_TOKEN_CHARS as u64 + 2)
        .read_to_end(&mut bytes)
        .map_err(|source| TokenError::Io {
            action: "read",
            path: at(),
            source,
        })?;
    let malformed = |reason: String| TokenError::Malformed { path: at(), reason };
    let text = std::str::from_utf8(&bytes).map_err(|_| malformed("it is not text".into()))?;
    let token = text.strip_suffix('\n').unwrap_or(text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    check(token).map_err(malformed)?;
    Ok(Some(Token(token.to_string())))
}

/// Checks that `token` is one RFC 6750 `b64token` of a guessing-resistant length.
fn check(token: &str) -> Result<(), String> {
    let n = token.chars().count();
    if n < MIN_TOKEN_CHARS {
        return Err(format!(
            "it has {n} characters; a token needs at least {MIN_TOKEN_CHARS}"
        ));
    }
    if n > MAX_TOKEN_CHARS {
        return Err(format!("it is longer than {MAX_TOKEN_CHARS} characters"));
    }
    let body = token.trim_end_matches('=');
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    if body.is_empty() || !body.chars().all(allowed) {
        return Err(
            "only letters, digits and `-._~+/` (then `=` padding) may appear, on one line".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn state() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_fresh_token_is_private_random_and_kept_across_starts() {
        let dir = state();
        let state = dir.path().join("state");
        let first = load_or_create(&state).unwrap_or_else(|e| panic!("{e}"));
        let meta = std::fs::metadata(token_path(&state)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(first.0.len(), 64);
        assert!(
            first.0.chars().all(|c| c.is_ascii_hexdigit()),
            "{}",
            first.0
        );
        let again = load_or_create(&state).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.0, first.0, "a restart keeps the token");
        let other = load_or_create(&dir.path().join("other")).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(other.0, first.0);
        assert!(!format!("{first:?}").contains(&first.0), "Debug hides it");
    }

    #[test]
    fn an_operators_own_token_is_used_with_or_without_a_line_end() {
        let dir = state();
        let chosen = "Zm9vYmFyYmF6cXV4LWNhcHN1bGUtbWV0cmljcw==";
        for text in [
            chosen.to_string(),
            format!("{chosen}\n"),
            format!("{chosen}\r\n"),
        ] {
            write(&token_path(dir.path()), &text, 0o600);
            let t = load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            assert!(t.admits(chosen), "{text:?}");
        }
    }

    #[test]
    fn the_token_admits_itself_only() {
        let t = Token("a".repeat(64));
        assert!(t.admits(&"a".repeat(64)));
        for wrong in [
            String::new(),
            "a".repeat(63),
            "a".repeat(65),
            format!("{}b", "a".repeat(63)),
        ] {
            assert!(!t.admits(&wrong), "{wrong}");
        }
    }

    #[test]
    fn a_link_to_a_private_token_is_refused_and_not_followed() {
        let dir = state();
        let real = dir.path().join("elsewhere");
        write(&real, &"a".repeat(64), 0o600);
        std::os::unix::fs::symlink(&real, token_path(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        let e = load_or_create(dir.path()).err();
        assert!(matches!(e, Some(TokenError::Link { .. })), "{e:?}");
        let dangling = state();
        std::os::unix::fs::symlink(dangling.path().join("nowhere"), token_path(dangling.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = load_or_create(dangling.path()).err();
        assert!(matches!(e, Some(TokenError::Link { .. })), "{e:?}");
        assert!(
            !dangling.path().join("nowhere").exists(),
            "nothing created through the link"
        );
    }

    #[test]
    fn a_token_others_could_read_or_write_is_refused_and_left_alone() {
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644, 0o666] {
            let dir = state();
            let path = token_path(dir.path());
            write(&path, &"a".repeat(64), mode);
            let e = load_or_create(dir.path()).err();
            assert!(
                matches!(e, Some(TokenError::Exposed { mode: m, .. }) if m == mode),
                "{mode:o}: {e:?}"
            );
            let message = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("chmod 600"), "{message}");
            let left = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(left.permissions().mode() & 0o777, mode, "unchanged");
        }
    }

    #[test]
    fn a_fifo_or_directory_is_refused_without_waiting() {
        let dir = state();
        let path = token_path(dir.path());
        let made = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("mkfifo: {e}"));
        assert!(made.success());
        let e = load_or_create(dir.path()).err();
        assert!(matches!(e, Some(TokenError::NotAFile { .. })), "{e:?}");
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = load_or_create(dir.path()).err();
        assert!(matches!(e, Some(TokenError::NotAFile { .. })), "{e:?}");
    }

    #[test]
    fn a_short_or_strange_token_is_refused() {
        let long = "a".repeat(MAX_TOKEN_CHARS + 1);
        for (text, why) in [
            ("", "0 characters"),
            ("\n", "0 characters"),
            ("abc\n", "3 characters"),
            (long.as_str(), "longer than"),
            ("aaaaaaaaaaaaaaaa aaaaaaaaaaaaaaaa", "only letters"),
            ("aaaaaaaaaaaaaaaa\naaaaaaaaaaaaaaaa\n", "only letters"),
            ("=================================", "only letters"),
            ("aaaaaaaaaaaaaaaa=aaaaaaaaaaaaaaaa", "only letters"),
            ("\u{1b}[2Jaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "only letters"),
        ] {
            let dir = state();
            write(&token_path(dir.path()), text, 0o600);
            let e = load_or_create(dir.path()).err();
            assert!(
                matches!(&e, Some(TokenError::Malformed { reason, .. }) if reason.contains(why)),
                "{text:?}: {e:?}"
            );
        }
        let dir = state();
        std::fs::write(token_path(dir.path()), [0xffu8; 40]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(
            token_path(dir.path()),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = load_or_create(dir.path()).err();
        assert!(matches!(e, Some(TokenError::Malformed { .. })), "{e:?}");
    }
}
