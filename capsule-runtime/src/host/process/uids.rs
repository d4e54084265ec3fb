//! Which user id a principal's host processes run as. With an operator-configured range
//! ([`RuntimeConfig::process_uids`](crate::RuntimeConfig::process_uids)) and a root host,
//! every principal gets its own user and group id from the range, never another principal's,
//! never 0 and never the host's own, chosen by the host alone (no manifest or request field
//! reaches it). The assignment is recorded in `<state>/process-uids.json` before any child
//! runs under it, so a principal keeps its id across spawns, reloads and host restarts, and an
//! id once given is never given to another principal while the record exists. A record the
//! host cannot read or trust (malformed, two principals on one id) refuses every spawn rather
//! than risk sharing an id. When the range is used up a new principal is refused with
//! `quota`. Without a range, or on a host that is not root, there is nothing to assign: every
//! child runs as the host's user.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use capsule_bus::PrincipalId;
use parking_lot::Mutex;

use super::ProcessError;

mod handover;
mod record;

pub(crate) use handover::hand_over_made;

/// The record's file name inside the state directory.
pub const UID_RECORD_FILE: &str = "process-uids.json";

/// The user and group id a principal's children run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The runtime's assignment of user ids to principals.
#[derive(Debug, Default)]
pub(crate) struct UidMap {
    range: Option<RangeInclusive<u32>>,
    file: PathBuf,
    /// The record, read from `file` on first use.
    table: Mutex<Option<BTreeMap<String, u32>>>,
    /// Principals whose home this host process already handed over (see
    /// `handover`): what their capsules create from then on is theirs as it is made.
    handed: Mutex<std::collections::HashSet<String>>,
}

/// Whether `id` may ever be given to a principal: not root, not the host's own user or
/// group, and not `-1`, which the set-id calls read as "leave unchanged".
fn assignable(id: u32) -> bool {
    // SAFETY: getuid and getgid have no preconditions.
    let (host_uid, host_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    id != 0 && id != u32::MAX && id != host_uid && id != host_gid
}

fn unreadable(file: &Path, why: impl std::fmt::Display) -> ProcessError {
    ProcessError::Unenforceable(format!(
        "the record of process user ids ({}) cannot be used: {why}",
        file.display()
    ))
}

impl UidMap {
    /// An assignment from `range`, recorded under `state_dir`.
    pub(crate) fn new(range: Option<RangeInclusive<u32>>, state_dir: &Path) -> Self {
        Self {
            range,
            file: state_dir.join(UID_RECORD_FILE),
            table: Mutex::new(None),
            handed: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The ids `principal`'s children run as, assigning (and recording) them on first use;
    /// `None` when children run as the host's user (no range, or a host that is not root).
    /// Blocking: file I/O on first use and on every new assignment.
    pub(crate) fn assign(&self, principal: &PrincipalId) -> Result<Option<Ids>, ProcessError> {
        let Some(range) = &self.range else {
            return Ok(None);
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let mut guard = self.table.lock();
        if guard.is_none() {
            *guard = Some(self.read()?);
        }
        let Some(table) = guard.as_mut() else {
            return Err(unreadable(&self.file, "not loaded"));
        };
        let fits = |id: u32| range.contains(&id) && assignable(id);
        if let Some(&id) = table.get(principal.as_str())
            && fits(id)
        {
            return Ok(Some(Ids { uid: id, gid: id }));
        }
        let taken: std::collections::HashSet<u32> = table
            .iter()
            .filter(|(p, _)| p.as_str() != principal.as_str())
            .map(|(_, id)| *id)
            .collect();
        let Some(id) = range.clone().find(|id| fits(*id) && !taken.contains(id)) else {
            return Err(ProcessError::Quota(format!(
                "no user id left for principal `{}`: the {} ids of the range {}-{} are all \
                 assigned",
                principal.as_str(),
                taken.len(),
                range.start(),
                range.end()
            )));
        };
        let previous = table.insert(principal.as_str().to_string(), id);
        if let Err(e) = self.write(table) {
            match previous {
                Some(old) => table.insert(principal.as_str().to_string(), old),
                None => table.remove(principal.as_str()),
            };
            return Err(e);
        }
        Ok(Some(Ids { uid: id, gid: id }))
    }

    /// The ids already recorded for `principal`, assigning nothing; `None` without a range, on
    /// a host that is not root, or when the record cannot be used (a spawn then says why).
    pub(crate) fn recorded(&self, principal: &PrincipalId) -> Option<Ids> {
        let range = self.range.as_ref()?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let mut guard = self.table.lock();
        if guard.is_none() {
            *guard = Some(self.read().ok()?);
        }
        let id = *guard.as_ref()?.get(principal.as_str())?;
        (range.contains(&id) && assignable(id)).then_some(Ids { uid: id, gid: id })
    }

    /// Whether `principal`'s home still has to be handed over by this host process: true once,
    /// until [`Self::handed_over`] records it.
    pub(crate) fn needs_hand_over(&self, principal: &PrincipalId) -> bool {
        !self.handed.lock().contains(principal.as_str())
    }

    /// Records that `principal`'s home was handed over.
    pub(crate) fn handed_over(&self, principal: &PrincipalId) {
        self.handed.lock().insert(principal.as_str().to_string());
    }

    fn read(&self) -> Result<BTreeMap<String, u32>, ProcessError> {
        let Some(range) = &self.range else {
            return Ok(BTreeMap::new());
        };
        record::load(&self.file, range)
    }

    /// Replaces the record atomically (a new file renamed over the old one).
    fn write(&self, table: &BTreeMap<String, u32>) -> Result<(), ProcessError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |e: std::io::Error| unreadable(&self.file, e);
        let text = serde_json::to_string_pretty(table).map_err(|e| unreadable(&self.file, e))?;
        let tmp = self.file.with_extension("json.new");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.file).map_err(fail)
    }
}

/// Sets the owner, group and mode of the directory `dir`. A directory handle may be an
/// `O_PATH` descriptor, which `fchown`/`fchmod` refuse: the owner is changed through the empty
/// path of the descriptor itself, the mode through its `/proc/self/fd` link, which names
/// exactly this directory and is never re-resolved.
fn set_owner(dir: &impl AsFd, uid: u32, gid: u32, mode: u32) -> Result<(), ProcessError> {
    let fail = |e: std::io::Error| {
        tracing::warn!(error = %e, "cannot give a directory to its principal's user");
        ProcessError::Unenforceable(
            "the principal's directories could not be given to its user id".into(),
        )
    };
    let fd = dir.as_fd().as_raw_fd();
    // SAFETY: fchownat on a borrowed descriptor with a valid NUL-terminated empty path.
    if unsafe { libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) } != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    std::fs::set_permissions(
        format!("/proc/self/fd/{fd}"),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .map_err(fail)
}

/// Gives the directory `dir` to `ids` with mode 0700: its owner's children work in it, and
/// no other principal's child can open it.
pub(crate) fn hand_over(dir: &impl AsFd, ids: Ids) -> Result<(), ProcessError> {
    set_owner(dir, ids.uid, ids.gid, 0o700)
}

/// Makes a principal's home root the host's, shared with the principal's group only, and
/// sticky (mode 1770): the principal's children create and remove their own entries in it,
/// while the host's entries (`.local`, `.config`) can be neither renamed, replaced nor
/// removed by them, and no other principal's child can open it.
pub(crate) fn secure_home(dir: &impl AsFd, ids: Ids) -> Result<(), ProcessError> {
    // SAFETY: geteuid has no preconditions.
    let host = unsafe { libc::geteuid() };
    set_owner(dir, host, ids.gid, 0o1770)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn principals_get_distinct_recorded_ids_and_a_full_range_says_quota() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let map = UidMap::new(Some(0..=2), dir.path());
        let a = map.assign(&pid("alice")).unwrap_or_else(|e| panic!("{e}"));
        if !root() {
            assert_eq!(a, None, "a host that is not root assigns nothing");
            return;
        }
        // 0 is never given out, so the range holds 1 and 2 only.
        let a = a.unwrap_or_else(|| panic!("no id"));
        let b = map
            .assign(&pid("bob"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no id"));
        assert_eq!((a.uid, b.uid), (1, 2));
        assert!(matches!(
            map.assign(&pid("carol")),
            Err(ProcessError::Quota(_))
        ));
        // A second runtime on the same state directory reads the same assignment.
        let again = UidMap::new(Some(0..=2), dir.path());
        assert_eq!(again.assign(&pid("bob")).ok().flatten(), Some(b));
        assert_eq!(again.assign(&pid("alice")).ok().flatten(), Some(a));
    }

    #[test]
    fn an_untrustworthy_record_refuses_instead_of_sharing_an_id() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for bad in [r#"{"alice": 5, "bob": 5}"#, "not json", r#"{"alice": -1}"#] {
            std::fs::write(dir.path().join(UID_RECORD_FILE), bad).unwrap_or_else(|e| panic!("{e}"));
            let map = UidMap::new(Some(1..=9), dir.path());
            let r = map.assign(&pid("carol"));
            if root() {
                assert!(matches!(r, Err(ProcessError::Unenforceable(_))), "{bad}");
            } else {
                assert!(matches!(r, Ok(None)), "{bad}");
            }
        }
    }

    #[test]
    fn without_a_range_nothing_is_assigned() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let map = UidMap::new(None, dir.path());
        assert_eq!(map.assign(&pid("alice")).ok().flatten(), None);
        assert!(!dir.path().join(UID_RECORD_FILE).exists());
    }
}
