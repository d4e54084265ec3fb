//! The cluster bridge's admission check: a message imported from another host acts for its
//! principal here only while this host's profile for that principal is enabled. The verdict
//! is exactly what reading the profile file now would give: a profile is read again whenever
//! its file's identity (device, inode, size, modification and change times) differs from the
//! one it was read under, and a verdict is kept at all only for a file whose last change is
//! old enough that a later change must show up as a different change time (file times are
//! coarse: two writes within one clock tick can share them). A profile rewritten in place
//! with its old modification time (`cp -p`) still changes the change time, which no user can
//! set, so it is always seen.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use capsule_runtime::bus::PrincipalId;
use capsule_runtime::security::PrincipalProfile;

/// How long ago a profile file must have last changed for its verdict to be kept: well above
/// the granularity of file times, so a change after the read cannot carry the same change
/// time as the file had when it was read.
const SETTLED: Duration = Duration::from_secs(2);

/// Principals whose verdicts are kept; the table starts over when it is full.
const KEPT: usize = 4096;

/// What identifies one version of a profile file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    /// No file: the defaults apply.
    Missing,
    /// The file as `stat` sees it.
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i128,
        ctime_ns: i128,
    },
}

fn nanos(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

/// The stamp of `path` now; `None` when it cannot be told (the read then decides, uncached).
fn stamp(path: &Path) -> Option<Stamp> {
    match std::fs::metadata(path) {
        Ok(m) => Some(Stamp::File {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: nanos(m.mtime(), m.mtime_nsec()),
            ctime_ns: nanos(m.ctime(), m.ctime_nsec()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Stamp::Missing),
        Err(_) => None,
    }
}

/// Whether a verdict read under `stamp` may be kept: the file is absent, or its last change
/// is at least `settled` in the past.
fn keepable(stamp: Stamp, settled: Duration) -> bool {
    match stamp {
        Stamp::Missing => true,
        Stamp::File { ctime_ns, .. } => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
            let settled = i128::try_from(settled.as_nanos()).unwrap_or(i128::MAX);
            now.saturating_sub(ctime_ns) >= settled
        }
    }
}

/// One kept verdict.
struct Kept {
    stamp: Stamp,
    verdict: Result<(), String>,
}

/// The admission check of imported messages against this host's principal profiles, reading
/// each profile only when its file may have changed.
pub(crate) struct ProfileGate {
    state: PathBuf,
    settled: Duration,
    kept: Mutex<HashMap<PrincipalId, Kept>>,
    reads: AtomicU64,
}

impl ProfileGate {
    /// A gate over the profiles under `state`.
    pub(crate) fn new(state: PathBuf) -> Self {
        Self::with_settled(state, SETTLED)
    }

    fn with_settled(state: PathBuf, settled: Duration) -> Self {
        Self {
            state,
            settled,
            kept: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
        }
    }

    /// The kept verdicts; a panic elsewhere while holding them leaves nothing half-done.
    fn kept(&self) -> MutexGuard<'_, HashMap<PrincipalId, Kept>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `principal` may act on this host: `Err` says why not.
    pub(crate) fn check(&self, principal: &PrincipalId) -> Result<(), String> {
        let path = PrincipalProfile::path(&self.state, principal);
        // Taken before the read: a change during or after the read gives another stamp, so
        // the next check reads again.
        let before = stamp(&path);
        if let Some(s) = before
            && let Some(k) = self.kept().get(principal)
            && k.stamp == s
        {
            return k.verdict.clone();
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let verdict = match PrincipalProfile::load(&self.state, principal) {
            Ok(profile) if profile.enabled => Ok(()),
            Ok(_) => Err(format!(
                "the profile of {principal} is disabled on this host"
            )),
            Err(e) => Err(format!(
                "the profile of {principal} is unreadable on this host: {e}"
            )),
        };
        let mut kept = self.kept();
        match before {
            Some(stamp) if keepable(stamp, self.settled) => {
                if kept.len() >= KEPT && !kept.contains_key(principal) {
                    kept.clear();
                }
                kept.insert(
                    principal.clone(),
                    Kept {
                        stamp,
                        verdict: verdict.clone(),
                    },
                );
            }
            _ => {
                kept.remove(principal);
            }
        }
        verdict
    }

    /// Profile reads so far.
    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn profile_file(state: &Path, p: &PrincipalId) -> PathBuf {
        let file = PrincipalProfile::path(state, p);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        }
        file
    }

    /// The `cp -p` shape: same inode, same size, the old modification time put back.
    fn rewrite_in_place_keeping_mtime(file: &Path, text: &str) {
        let mtime = std::fs::metadata(file)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(file)
            .unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        f.set_modified(mtime).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_profile_rewritten_in_place_with_its_old_mtime_is_seen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let alice = pid("alice");
        let file = profile_file(dir.path(), &alice);
        // Same length, so size does not tell the versions apart either.
        std::fs::write(&file, "enabled = true \n").unwrap_or_else(|e| panic!("{e}"));
        let gate = ProfileGate::new(dir.path().to_path_buf());
        assert_eq!(gate.check(&alice), Ok(()));
        rewrite_in_place_keeping_mtime(&file, "enabled = false\n");
        let refused = gate.check(&alice);
        assert!(
            matches!(&refused, Err(m) if m.contains("disabled")),
            "{refused:?}"
        );
        rewrite_in_place_keeping_mtime(&file, "enabled = true \n");
        assert_eq!(gate.check(&alice), Ok(()));
    }

    #[test]
    fn an_unchanged_profile_is_read_once_and_every_change_is_read_again() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (alice, bob) = (pid("alice"), pid("bob"));
        let file = profile_file(dir.path(), &alice);
        std::fs::write(&file, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        // Every file counts as settled here, so what is kept is decided by the stamp alone.
        let gate = ProfileGate::with_settled(dir.path().to_path_buf(), Duration::ZERO);
        for _ in 0..5 {
            assert!(gate.check(&alice).is_err());
        }
        assert_eq!(gate.reads(), 1);
        // Replaced atomically, as `capsule profile set` does: a new inode.
        let tmp = dir.path().join("new.toml");
        std::fs::write(&tmp, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gate.check(&alice), Ok(()));
        assert_eq!(gate.check(&alice), Ok(()));
        assert_eq!(gate.reads(), 2);
        // A missing profile is the defaults (enabled), kept until a file appears.
        assert_eq!(gate.check(&bob), Ok(()));
        assert_eq!(gate.check(&bob), Ok(()));
        assert_eq!(gate.reads(), 3);
        let bob_file = profile_file(dir.path(), &bob);
        std::fs::write(&bob_file, "enabled = false\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(gate.check(&bob).is_err());
        // A malformed profile refuses, and so does it once it is deleted and written again.
        std::fs::write(&tmp, "enabled = 3\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
        let unreadable = gate.check(&alice);
        assert!(
            matches!(&unreadable, Err(m) if m.contains("unreadable")),
            "{unreadable:?}"
        );
        std::fs::remove_file(&bob_file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gate.check(&bob), Ok(()));
    }

    #[test]
    fn a_freshly_changed_profile_is_not_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let alice = pid("alice");
        let file = profile_file(dir.path(), &alice);
        std::fs::write(&file, "enabled = true\n").unwrap_or_else(|e| panic!("{e}"));
        let gate = ProfileGate::with_settled(dir.path().to_path_buf(), Duration::from_secs(3600));
        assert_eq!(gate.check(&alice), Ok(()));
        assert_eq!(gate.check(&alice), Ok(()));
        assert_eq!(gate.reads(), 2);
    }
}
