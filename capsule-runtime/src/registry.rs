//! The loaded capsules, by session, so one capsule can ask what another holds
//! (`check-capsule-capability`) and the runtime can refuse duplicate names. Both questions
//! are one map lookup, however many capsules are loaded.

use std::collections::HashMap;

use capsule_security::Capabilities;
use parking_lot::RwLock;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    capabilities: Capabilities,
}

/// Loaded capsules by session UUID, and their sessions by name.
#[derive(Debug, Default)]
struct Maps {
    entries: HashMap<Uuid, Entry>,
    names: HashMap<String, Uuid>,
}

/// Loaded capsules by session UUID.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    maps: RwLock<Maps>,
}

impl Registry {
    /// Registers a capsule; `false` if a capsule of that name is already loaded.
    pub(crate) fn insert(&self, session: Uuid, name: &str, capabilities: Capabilities) -> bool {
        let mut maps = self.maps.write();
        if maps.names.contains_key(name) {
            return false;
        }
        maps.names.insert(name.to_string(), session);
        maps.entries.insert(
            session,
            Entry {
                name: name.to_string(),
                capabilities,
            },
        );
        true
    }

    pub(crate) fn remove(&self, session: &Uuid) {
        let mut maps = self.maps.write();
        if let Some(e) = maps.entries.remove(session)
            && maps.names.get(&e.name) == Some(session)
        {
            maps.names.remove(&e.name);
        }
    }

    /// Whether the capsule loaded as `session` holds `capability`; `None` if no such capsule.
    pub(crate) fn holds(&self, session: &Uuid, capability: &str) -> Option<bool> {
        self.maps
            .read()
            .entries
            .get(session)
            .map(|e| e.capabilities.has(capability))
    }

    pub(crate) fn contains_name(&self, name: &str) -> bool {
        self.maps.read().names.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_free_again_only_once_its_session_is_removed() {
        let r = Registry::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(r.insert(a, "echo", Capabilities::default()));
        assert!(!r.insert(b, "echo", Capabilities::default()));
        assert!(r.contains_name("echo"));
        r.remove(&b);
        assert!(
            r.contains_name("echo"),
            "removing an unknown session frees nothing"
        );
        r.remove(&a);
        assert!(!r.contains_name("echo") && r.holds(&a, "x").is_none());
        assert!(r.insert(b, "echo", Capabilities::default()));
    }
}
