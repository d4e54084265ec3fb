//! The loaded capsules, by session, so one capsule can ask what another holds
//! (`check-capsule-capability`) and the runtime can refuse duplicate names.

use std::collections::HashMap;

use capsule_security::Capabilities;
use parking_lot::RwLock;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    capabilities: Capabilities,
}

/// Loaded capsules by session UUID.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: RwLock<HashMap<Uuid, Entry>>,
}

impl Registry {
    /// Registers a capsule; `false` if a capsule of that name is already loaded.
    pub(crate) fn insert(&self, session: Uuid, name: &str, capabilities: Capabilities) -> bool {
        let mut entries = self.entries.write();
        if entries.values().any(|e| e.name == name) {
            return false;
        }
        entries.insert(
            session,
            Entry {
                name: name.to_string(),
                capabilities,
            },
        );
        true
    }

    pub(crate) fn remove(&self, session: &Uuid) {
        self.entries.write().remove(session);
    }

    /// Whether the capsule loaded as `session` holds `capability`; `None` if no such capsule.
    pub(crate) fn holds(&self, session: &Uuid, capability: &str) -> Option<bool> {
        self.entries
            .read()
            .get(session)
            .map(|e| e.capabilities.has(capability))
    }

    pub(crate) fn contains_name(&self, name: &str) -> bool {
        self.entries.read().values().any(|e| e.name == name)
    }
}
