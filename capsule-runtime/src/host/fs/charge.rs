//! Storage charging around filesystem work: whose quota a call (or a writable handle) spends,
//! growth reserved before the work runs and given back if it fails, shrinkage credited after
//! it succeeded, and a resize settled on what the file really became.

use std::sync::Arc;

use capsule_bus::PrincipalId;
use capsule_vfs::Ctl;
use tokio_util::sync::CancellationToken;

use super::locate::Located;
use super::{FsError, handle::handle_io};
use crate::scope::PrincipalRefusal;
use capsule_store::KvStore;
use capsule_store::quota::Charged;

/// Whose storage one call charges, and how it can be stopped.
pub(super) struct Charge {
    pub(super) storage: Arc<KvStore>,
    pub(super) principal: PrincipalId,
    /// The principal's `max_storage_bytes`, or why it may store nothing.
    pub(super) quota: Result<u64, PrincipalRefusal>,
    pub(super) cancel: CancellationToken,
}

impl Charge {
    /// The same principal, storage and cancellation, under the quota of `profile`.
    pub(super) fn with_profile(&self, profile: &crate::scope::ProfileGrant) -> Self {
        Self {
            storage: Arc::clone(&self.storage),
            principal: self.principal.clone(),
            quota: profile
                .as_ref()
                .map(|p| p.quotas.max_storage_bytes)
                .map_err(Clone::clone),
            cancel: self.cancel.clone(),
        }
    }

    /// Reserves `bytes` of growth in `tree`.
    pub(super) fn reserve(&self, tree: Charged, bytes: u64, ctl: &Ctl<'_>) -> Result<(), FsError> {
        let quota = self
            .quota
            .as_ref()
            .map_err(|r| FsError::Refused(r.clone()))?;
        Ok(self
            .storage
            .reserve_files(&self.principal, tree, bytes, *quota, ctl)?)
    }

    pub(super) fn release(&self, tree: Charged, bytes: u64) {
        self.storage.release_files(&self.principal, tree, bytes);
    }

    /// Runs `f` with `delta` bytes charged to `tree`: growth is reserved first (and given back
    /// if `f` fails), shrinkage is credited once `f` succeeded.
    pub(super) fn around<T>(
        &self,
        tree: Charged,
        delta: i128,
        ctl: &Ctl<'_>,
        f: impl FnOnce() -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let grow = u64::try_from(delta.max(0)).unwrap_or(u64::MAX);
        let shrink = u64::try_from((-delta).max(0)).unwrap_or(u64::MAX);
        if grow > 0 {
            self.reserve(tree, grow, ctl)?;
        }
        match f() {
            Ok(v) => {
                if shrink > 0 {
                    self.release(tree, shrink);
                }
                Ok(v)
            }
            Err(e) => {
                if grow > 0 {
                    self.release(tree, grow);
                }
                Err(e)
            }
        }
    }

    /// Settles a reservation of `reserved` bytes against the growth that really happened.
    pub(super) fn settle(&self, tree: Charged, reserved: u64, grew: u64) {
        if grew < reserved {
            self.release(tree, reserved - grew);
        } else if grew > reserved {
            self.storage
                .force_files(&self.principal, tree, grew - reserved);
        }
    }
}

/// What a filesystem operation works with on the blocking pool.
pub(super) struct Job<'a> {
    pub(super) locs: &'a [Located],
    pub(super) charge: &'a Charge,
    pub(super) ctl: Ctl<'a>,
}

impl Job<'_> {
    pub(super) fn loc(&self, i: usize) -> &Located {
        &self.locs[i]
    }

    /// Runs `f` with `delta` bytes charged to the tree of path `i`.
    pub(super) fn charged<T>(
        &self,
        i: usize,
        delta: i128,
        f: impl FnOnce() -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        self.charge
            .around(self.locs[i].charged(), delta, &self.ctl, f)
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("principal", &self.principal)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

/// Grows or shrinks an open file, charging the growth first: `change` runs only if the
/// growth from `len` to `target` fits the quota, and the charge is settled on what the file
/// really became.
pub(super) fn resize_charged<T>(
    file: &std::fs::File,
    charge: Option<&(Arc<Charge>, Charged)>,
    target: impl FnOnce(u64) -> u64,
    change: impl FnOnce() -> std::io::Result<T>,
) -> Result<T, FsError> {
    let Some((charge, tree)) = charge else {
        return change().map_err(handle_io);
    };
    let before = file.metadata().map_err(handle_io)?.len();
    let grow = target(before).saturating_sub(before);
    let cancel = charge.cancel.clone();
    let cancelled = move || cancel.is_cancelled();
    if grow > 0 {
        charge.reserve(*tree, grow, &Ctl::new(&cancelled))?;
    }
    let result = change().map_err(handle_io);
    let after = file.metadata().map_or(before + grow, |m| m.len());
    charge.settle(*tree, grow, after.saturating_sub(before));
    if after < before {
        charge.release(*tree, before - after);
    }
    result
}
