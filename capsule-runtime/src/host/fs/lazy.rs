//! A capsule's workspace, opened by its first file call rather than at load, so a capsule
//! that never touches `cwd://` holds no descriptor for it. The directories are created and
//! resolved to their canonical form at load (so a load that cannot have a workspace still
//! fails); the first use opens exactly those directories one component at a time, refusing a
//! link in any component, so a link planted in the meantime fails the call instead of
//! redirecting it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use capsule_vfs::{Mount, Overlay, VfsError, Workspace};

/// The workspace directories of one capsule and, once used, the workspace itself.
#[derive(Debug)]
pub(crate) struct LazyWorkspace {
    /// The real workspace, canonical.
    lower: PathBuf,
    /// The overlay's upper layer, canonical, for an overlay workspace.
    upper: Option<PathBuf>,
    opened: OnceLock<Arc<Workspace>>,
}

impl LazyWorkspace {
    /// Creates (mode 0700) and resolves the workspace `lower` and, for an overlay, its
    /// `upper` layer; opens nothing.
    pub(crate) fn prepare(
        lower: &Path,
        upper: Option<&Path>,
    ) -> Result<Self, (PathBuf, std::io::Error)> {
        let resolve = |dir: &Path| {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir)
                .and_then(|()| std::fs::canonicalize(dir))
                .map_err(|e| (dir.to_path_buf(), e))
        };
        Ok(Self {
            lower: resolve(lower)?,
            upper: upper.map(resolve).transpose()?,
            opened: OnceLock::new(),
        })
    }

    /// The workspace, opened by the first call that needs it.
    pub(crate) fn get(&self) -> Result<Arc<Workspace>, VfsError> {
        if let Some(w) = self.opened.get() {
            return Ok(Arc::clone(w));
        }
        // The guest learns only that the workspace failed; the host log gets why.
        let open = |dir: &Path| {
            Mount::open_no_links(dir).map_err(|source| VfsError::Io {
                path: dir.display().to_string(),
                source,
            })
        };
        let lower = open(&self.lower)?;
        let workspace = match &self.upper {
            Some(upper) => Workspace::Overlay(Overlay::new(lower, open(upper)?)),
            None => Workspace::Plain(lower),
        };
        // Two first calls racing both open; one handle is kept, the other closed here.
        let _ = self.opened.set(Arc::new(workspace));
        self.opened
            .get()
            .map(Arc::clone)
            .ok_or_else(|| VfsError::Io {
                path: self.lower.display().to_string(),
                source: std::io::ErrorKind::Other.into(),
            })
    }

    /// Whether the workspace has been opened.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.opened.get().is_some()
    }

    /// Applies pending overlay changes; an overlay never opened has none.
    pub(crate) fn commit(&self) -> Result<(), VfsError> {
        match (self.opened.get(), &self.upper) {
            (Some(w), _) => w.commit(),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(VfsError::NotOverlay),
        }
    }

    /// Discards pending overlay changes; an overlay never opened has none.
    pub(crate) fn rollback(&self) -> Result<(), VfsError> {
        match (self.opened.get(), &self.upper) {
            (Some(w), _) => w.rollback(),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(VfsError::NotOverlay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_opened_until_the_first_use() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ws = LazyWorkspace::prepare(&dir.path().join("w"), None)
            .unwrap_or_else(|(p, e)| panic!("{}: {e}", p.display()));
        assert!(dir.path().join("w").is_dir());
        assert!(!ws.is_open());
        assert!(matches!(ws.commit(), Err(VfsError::NotOverlay)));
        ws.get().unwrap_or_else(|e| panic!("{e}"));
        assert!(ws.is_open());
    }

    #[test]
    fn a_link_planted_before_the_first_use_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(outside.path().join("secret"), "s").unwrap_or_else(|e| panic!("{e}"));
        let w = dir.path().join("w");
        let ws = LazyWorkspace::prepare(&w, None)
            .unwrap_or_else(|(p, e)| panic!("{}: {e}", p.display()));
        std::fs::remove_dir(&w).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(outside.path(), &w).unwrap_or_else(|e| panic!("{e}"));
        assert!(ws.get().is_err(), "the link was followed");
        assert!(!ws.is_open());
    }
}
