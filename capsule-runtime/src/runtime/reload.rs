//! Reloading a capsule in place: the loaded instance unloads and the one in the given
//! directory loads for the same owner, as with `unload` then `load`, except that the old
//! instance's persistent host processes are handed to the new one when it loads under the
//! same name and is still granted them (see `host::process::keeper`); otherwise they are
//! killed when the reload ends. Reloads run one at a time, and only the reload's own load
//! takes the children: another load of the same name racing it gets none.

use std::path::Path;

use crate::capsule::Capsule;
use crate::error::LoadError;

use super::Runtime;

impl Runtime {
    /// Replaces the loaded capsule `name` with the capsule in `dir` (a new build or version
    /// of it: `astrid-upgrade` runs as on any load that finds a newer version), for the same
    /// owner. Its persistent processes keep running and keep their output and exit records;
    /// the new capsule finds them by id, each for the principal that started it only, if it
    /// loads under the same name, is still granted `allow_persistent` and still grants each
    /// one's program and arguments. Processes not taken over (the load failed, the capsule in
    /// `dir` has another name, or lost those grants) are killed with their trees before this
    /// returns. Everything else unloads as with [`Runtime::unload`]. When `name` is not
    /// loaded this is a plain [`Runtime::load`].
    pub async fn reload(&self, name: &str, dir: impl AsRef<Path>) -> Result<Capsule, LoadError> {
        let mut reload = self.inner.services.processes.begin(name).await;
        let owner = self
            .capsule(name)
            .map_or_else(|| self.inner.config.owner.clone(), |c| c.owner().clone());
        self.unload(name).await;
        let loaded = reload.load(self.load_as(dir, owner)).await;
        if loaded.is_ok() {
            reload.loaded();
        }
        drop(reload);
        loaded
    }
}
