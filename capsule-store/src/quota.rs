//! The file side of the per-principal storage quota. A principal's `max_storage_bytes` covers
//! its KV data (kept in redb by [`KvStore`](crate::KvStore), in the same transaction as
//! each write) and its files, accounted here:
//!
//! - its **home** (`home://`, `/tmp/` included; the host-managed logs and env overlays left
//!   out) is measured from disk the first time the principal stores anything in this host
//!   run, then kept up to date by the deltas of every guest operation on it;
//! - what it grows **shared trees** by (the capsule workspace, overlay or not, and granted
//!   host directories) is charged to it as those deltas, never below zero, for this host run.
//!
//! Every file, directory or link costs [`ENTRY_BYTES`] besides its contents, so empty files
//! are not free; a file with several names is charged its bytes once. Growth is reserved
//! before the operation runs and refused with the whole operation if it does not fit, so a
//! refused write leaves nothing behind; space is credited only after an operation freed it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use capsule_ids::PrincipalId;
use capsule_vfs::{Ctl, Mount, StateLayout, Tree, Usage, VfsError, home_usage_visit};
use parking_lot::Mutex;

/// What one file, directory or link costs on top of its contents.
pub const ENTRY_BYTES: u64 = 512;

/// Accounts kept before idle ones (re-measurable from disk) are dropped.
const MAX_ACCOUNTS: usize = 4096;

/// Which kind of tree an operation charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charged {
    /// The principal's own home (and tmp).
    Home,
    /// A tree other principals use too (workspace, granted host directory).
    Shared,
}

/// Why storage could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The principal would hold more than its quota.
    #[error("storage quota of {quota} bytes exceeded ({needed} needed)")]
    Exceeded {
        /// Bytes the principal would hold.
        needed: u64,
        /// Its quota.
        quota: u64,
    },
    /// The principal's home could not be measured, so nothing more is stored for it.
    #[error("the principal's stored files cannot be measured: {0}")]
    Unmeasured(VfsError),
    /// The KV database could not report the principal's KV usage.
    #[error("the principal's KV usage is unavailable: {0}")]
    Kv(String),
}

#[derive(Debug, Default)]
struct Account {
    /// The home's usage, once measured.
    home: Option<u64>,
    /// Growth of shared trees charged to the principal.
    shared: u64,
}

impl Account {
    fn files(&self) -> u64 {
        self.home.unwrap_or(0).saturating_add(self.shared)
    }
}

/// Cost of what a walk found or removed.
pub fn cost(u: &Usage) -> u64 {
    u.bytes
        .saturating_add(u.entries.saturating_mul(ENTRY_BYTES))
}

/// File usage per principal.
#[derive(Debug, Default)]
pub(crate) struct FileLedger {
    /// Where homes are, to measure them; `None` counts homes as empty until a guest writes.
    homes: Option<StateLayout>,
    accounts: Mutex<HashMap<PrincipalId, Arc<Mutex<Account>>>>,
}

impl FileLedger {
    /// A ledger measuring homes under `layout`.
    pub(crate) fn new(homes: Option<StateLayout>) -> Self {
        Self {
            homes,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    fn account(&self, principal: &PrincipalId) -> Arc<Mutex<Account>> {
        let mut accounts = self.accounts.lock();
        if accounts.len() >= MAX_ACCOUNTS && !accounts.contains_key(principal) {
            // An idle account whose home can be measured again and that holds no shared
            // charge loses nothing by being forgotten.
            accounts.retain(|_, a| {
                Arc::strong_count(a) > 1 || a.try_lock().is_none_or(|a| a.shared > 0)
            });
        }
        Arc::clone(accounts.entry(principal.clone()).or_default())
    }

    fn measure(&self, principal: &PrincipalId, ctl: &Ctl<'_>) -> Result<u64, QuotaError> {
        let Some(layout) = &self.homes else {
            return Ok(0);
        };
        let dir = layout
            .open_home(principal)
            .map_err(|e| QuotaError::Unmeasured(VfsError::from_io(Path::new("home"), e)))?;
        let home = Mount::from_dir(dir, layout.home(principal));
        let usage = home
            .usage(Path::new(""), ctl, &home_usage_visit)
            .map_err(QuotaError::Unmeasured)?;
        Ok(cost(&usage))
    }

    fn measured(
        &self,
        principal: &PrincipalId,
        account: &mut Account,
        ctl: &Ctl<'_>,
    ) -> Result<u64, QuotaError> {
        if account.home.is_none() {
            let measured = self.measure(principal, ctl)?;
            tracing::debug!(%principal, bytes = measured, "measured the principal's home");
            account.home = Some(measured);
        }
        Ok(account.files())
    }

    /// Bytes of files charged to `principal` (measuring its home first if needed).
    pub(crate) fn files(&self, principal: &PrincipalId, ctl: &Ctl<'_>) -> Result<u64, QuotaError> {
        let account = self.account(principal);
        let mut account = account.lock();
        self.measured(principal, &mut account, ctl)
    }

    /// Bytes of files charged to `principal` if that needs no measuring (its home was
    /// measured already, or homes are not measured), without touching the disk.
    pub(crate) fn files_if_measured(&self, principal: &PrincipalId) -> Option<u64> {
        let account = self.account(principal);
        let account = account.lock();
        (account.home.is_some() || self.homes.is_none()).then(|| account.files())
    }

    /// Charges `bytes` of growth in `tree` to `principal` if its files, its KV data
    /// (`kv_used`, read while the account is locked) and the growth fit in `quota`.
    pub(crate) fn reserve(
        &self,
        principal: &PrincipalId,
        tree: Charged,
        bytes: u64,
        quota: u64,
        kv_used: impl FnOnce() -> Result<u64, String>,
        ctl: &Ctl<'_>,
    ) -> Result<(), QuotaError> {
        let account = self.account(principal);
        let mut account = account.lock();
        let files = self.measured(principal, &mut account, ctl)?;
        if bytes == 0 {
            return Ok(());
        }
        let needed = kv_used()
            .map_err(QuotaError::Kv)?
            .saturating_add(files)
            .saturating_add(bytes);
        if needed > quota {
            return Err(QuotaError::Exceeded { needed, quota });
        }
        Self::add(&mut account, tree, bytes);
        Ok(())
    }

    /// Charges `bytes` to `principal` without checking the quota (growth that already
    /// happened, such as a concurrent writer's).
    pub(crate) fn force(&self, principal: &PrincipalId, tree: Charged, bytes: u64) {
        let account = self.account(principal);
        Self::add(&mut account.lock(), tree, bytes);
    }

    fn add(account: &mut Account, tree: Charged, bytes: u64) {
        match tree {
            Charged::Home => account.home = Some(account.home.unwrap_or(0).saturating_add(bytes)),
            Charged::Shared => account.shared = account.shared.saturating_add(bytes),
        }
    }

    /// Credits `bytes` freed (or reserved and not used) in `tree` to `principal`.
    pub(crate) fn release(&self, principal: &PrincipalId, tree: Charged, bytes: u64) {
        let account = self.account(principal);
        let mut account = account.lock();
        match tree {
            Charged::Home => {
                if let Some(home) = account.home.as_mut() {
                    *home = home.saturating_sub(bytes);
                }
            }
            Charged::Shared => account.shared = account.shared.saturating_sub(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn homes_are_measured_once_then_kept_by_deltas() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = StateLayout::new(dir.path());
        let home = layout.home(&pid("a"));
        std::fs::create_dir_all(home.join(".local/log")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(home.join(".local/tmp")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(home.join(".local/log/x.log"), [0u8; 5000])
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(home.join(".local/tmp/t"), [0u8; 100]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(home.join("f"), [0u8; 1000]).unwrap_or_else(|e| panic!("{e}"));
        let ledger = FileLedger::new(Some(layout));
        let ctl = Ctl::uncancellable();
        let files = ledger
            .files(&pid("a"), &ctl)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            files,
            1100 + 2 * ENTRY_BYTES,
            "logs and host directories are not charged"
        );
        let kv = || Ok(0);
        assert!(matches!(
            ledger.reserve(&pid("a"), Charged::Home, 5000, 6000, kv, &ctl),
            Err(QuotaError::Exceeded { .. })
        ));
        ledger
            .reserve(&pid("a"), Charged::Shared, 3000, 6000, || Ok(500), &ctl)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ledger.files(&pid("a"), &ctl).ok(), Some(files + 3000));
        // Credits never go below zero, and shared credits never reduce the home.
        ledger.release(&pid("a"), Charged::Shared, 1 << 40);
        assert_eq!(ledger.files(&pid("a"), &ctl).ok(), Some(files));
        // A file written behind the ledger's back is not seen until the next host run.
        std::fs::write(home.join("g"), [0u8; 1000]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ledger.files(&pid("a"), &ctl).ok(), Some(files));
    }
}
