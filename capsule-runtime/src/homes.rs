//! One home and one tmp handle per principal, however many capsules are loaded for it: every
//! capsule (and every scope) of a principal shares the directory handles the first of them
//! opened, so descriptors grow with the principals acting, never with the capsules loaded.
//! The handles are opened exactly as a single load opens them (from the state directory,
//! refusing a link in place of the home or its tmp) and closed once nothing holds them; held
//! handles are shared only while they are still the directories at the principal's paths. A
//! principal with a recorded user id of its own gets what its capsules create in them owned
//! by that id from the first open on, so its processes can use it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Weak};

use capsule_bus::PrincipalId;
use capsule_vfs::{Mount, PrincipalDirs, StateLayout};
use parking_lot::Mutex;

/// A principal's opened home and tmp.
#[derive(Clone, Debug)]
pub(crate) struct SharedDirs {
    /// `home://`.
    pub(crate) home: Arc<Mount>,
    /// `/tmp/`.
    pub(crate) tmp: Arc<Mount>,
}

/// Weak handles to a principal's home and tmp: usable while some capsule or scope holds them.
type Held = (Weak<Mount>, Weak<Mount>);

/// The homes open now, by principal; an entry lives while some capsule or scope holds it.
#[derive(Debug)]
pub(crate) struct Homes {
    layout: StateLayout,
    open: Mutex<HashMap<PrincipalId, Held>>,
    /// The user ids of principals' processes, if the runtime assigns them.
    owners: Option<Arc<crate::host::process::UidMap>>,
}

impl Homes {
    pub(crate) fn new(layout: StateLayout) -> Self {
        Self {
            layout,
            open: Mutex::new(HashMap::new()),
            owners: None,
        }
    }

    /// Homes whose new files belong to the principal's recorded user id in `owners`.
    pub(crate) fn with_owners(
        layout: StateLayout,
        owners: Arc<crate::host::process::UidMap>,
    ) -> Self {
        Self {
            owners: Some(owners),
            ..Self::new(layout)
        }
    }

    /// The principal's home and tmp: the handles already held for it while they are still the
    /// directories at its paths, else freshly opened.
    pub(crate) fn open(&self, principal: &PrincipalId) -> io::Result<SharedDirs> {
        let mut open = self.open.lock();
        // Handles still held are shared only while they are the directories at the principal's
        // paths: a home the operator moved away or replaced is opened afresh.
        if let Some((home, tmp)) = open.get(principal)
            && let (Some(home), Some(tmp)) = (home.upgrade(), tmp.upgrade())
            && home.still_at_root()
            && tmp.still_at_root()
        {
            return Ok(SharedDirs { home, tmp });
        }
        let PrincipalDirs { home, tmp } = self.layout.open_principal_dirs(principal)?;
        if let Some(ids) = self.owners.as_ref().and_then(|o| o.recorded(principal)) {
            home.give_to(ids.uid, ids.gid);
            tmp.give_to(ids.uid, ids.gid);
        }
        let dirs = SharedDirs {
            home: Arc::new(home),
            tmp: Arc::new(tmp),
        };
        // Entries of principals whose capsules are all gone are dropped as the map grows, so
        // it stays proportional to the principals holding handles.
        if open.len() >= 64 && open.len().is_power_of_two() {
            open.retain(|_, (h, t)| h.strong_count() > 0 && t.strong_count() > 0);
        }
        open.insert(
            principal.clone(),
            (Arc::downgrade(&dirs.home), Arc::downgrade(&dirs.tmp)),
        );
        Ok(dirs)
    }

    /// Principals with an entry now (live or not yet swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_principal_shares_one_home_while_held_and_reopens_after() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let homes = Homes::new(StateLayout::new(dir.path()));
        let a = homes.open(&pid("alice")).unwrap_or_else(|e| panic!("{e}"));
        let b = homes.open(&pid("alice")).unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(&a.home, &b.home) && Arc::ptr_eq(&a.tmp, &b.tmp));
        let other = homes.open(&pid("bob")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!Arc::ptr_eq(&a.home, &other.home));
        let weak = Arc::downgrade(&a.home);
        drop((a, b));
        assert!(
            weak.upgrade().is_none(),
            "the handle closes with its last holder"
        );
        let again = homes.open(&pid("alice")).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.home.root().ends_with("alice"));
    }

    #[test]
    fn a_home_moved_away_while_held_is_opened_afresh() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let homes = Homes::new(StateLayout::new(dir.path()));
        let old = homes.open(&pid("alice")).unwrap_or_else(|e| panic!("{e}"));
        assert!(old.home.still_at_root() && old.tmp.still_at_root());
        let root = old.home.root().to_path_buf();
        std::fs::rename(&root, dir.path().join("archived")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!old.home.still_at_root());
        let new = homes.open(&pid("alice")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!Arc::ptr_eq(&old.home, &new.home) && !Arc::ptr_eq(&old.tmp, &new.tmp));
        assert!(new.home.still_at_root() && new.tmp.still_at_root());
    }

    #[test]
    fn the_map_stays_bounded_under_principal_churn() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let homes = Homes::new(StateLayout::new(dir.path()));
        for i in 0..300 {
            drop(
                homes
                    .open(&pid(&format!("p{i}")))
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        assert!(homes.len() <= 129, "{} entries", homes.len());
    }

    #[test]
    fn a_link_in_place_of_a_home_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("home")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(outside.path(), dir.path().join("home").join("mallory"))
            .unwrap_or_else(|e| panic!("{e}"));
        let homes = Homes::new(StateLayout::new(dir.path()));
        assert!(homes.open(&pid("mallory")).is_err());
        assert!(!outside.path().join(".local").exists());
    }
}
