//! Durable per-principal key-value storage on redb. One namespace per
//! `<principal>:capsule:<capsule>`; every write is part of one ACID transaction committed with
//! immediate durability before the call returns `Ok`, so an acknowledged write survives a
//! crash of the host; concurrent sets, CAS and deletes share one such transaction (see
//! `group.rs`). Each principal's stored bytes (keys plus values, across all its namespaces)
//! are tracked in the same transaction; the storage quota is checked against them plus the
//! principal's files, whose usage the store keeps beside it (see `quota.rs`). The database
//! file is private to the host user (0600) whatever the umask.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use capsule_ids::PrincipalId;
use capsule_vfs::{Ctl, StateLayout};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::group::{Change, GroupCommit, Ticket, Write};
use crate::quota::{Charged, FileLedger, QuotaError};

pub(crate) const ENTRIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("entries");
pub(crate) const USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("usage");

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most keys `list-keys` returns; larger listings must page.
pub const MAX_LIST_KEYS: usize = 10_000;
/// Most keys one page holds.
pub const MAX_PAGE: u32 = 1000;

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key (or prefix, or cursor) is empty, too long or contains NUL.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The value (or listing) is over its limit.
    #[error("{what} is {size}; the limit is {limit}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The principal's storage quota would be exceeded.
    #[error("storage quota of {quota} bytes exceeded ({needed} needed)")]
    Quota {
        /// Bytes the principal would hold.
        needed: u64,
        /// Its quota.
        quota: u64,
    },
    /// `cas` found a different current value.
    #[error("the current value does not match the expected one")]
    CasMismatch,
    /// The principal's files could not be accounted, so nothing more is stored for it.
    #[error("the principal's storage cannot be accounted: {0}")]
    Unaccounted(String),
    /// The database failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

/// One principal's namespace for one capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    principal: PrincipalId,
    prefix: String,
}

impl Namespace {
    /// The namespace `<principal>:capsule:<capsule>`.
    pub fn new(principal: &PrincipalId, capsule: &str) -> Self {
        Self {
            principal: principal.clone(),
            prefix: format!("{principal}:capsule:{capsule}\0"),
        }
    }

    pub(crate) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn check_key(key: &str, what: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\0') {
        return Err(KvError::InvalidKey(format!(
            "{what} must be 1 to {MAX_KEY_BYTES} bytes without NUL ({} bytes given)",
            key.len()
        )));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), KvError> {
    if prefix.len() > MAX_KEY_BYTES || prefix.contains('\0') {
        return Err(KvError::InvalidKey(format!(
            "a prefix must be at most {MAX_KEY_BYTES} bytes without NUL"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::TooLarge {
            what: "value",
            size: value.len() as u64,
            limit: MAX_VALUE_BYTES as u64,
        });
    }
    Ok(())
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The KV database of a runtime, and the file usage of each principal beside it.
#[derive(Debug)]
pub struct KvStore {
    db: Arc<Database>,
    files: FileLedger,
    group: GroupCommit,
}

/// Creates `path` (0600) if it is missing, and takes group and other access away from an
/// existing one, before redb opens it.
fn private_db_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

impl KvStore {
    /// Opens (creating it, 0600, if missing) the database file at `path`. Principals' files
    /// count as empty until a guest writes some; see [`KvStore::open_in`].
    pub fn open(path: &Path) -> Result<Self, KvError> {
        Self::open_with(path, None)
    }

    /// Opens `<state>/kv.redb` for the runtime whose state directory `layout` describes:
    /// principals' homes there are measured for the storage quota.
    pub fn open_in(layout: &StateLayout) -> Result<Self, KvError> {
        Self::open_with(&layout.root().join("kv.redb"), Some(layout.clone()))
    }

    fn open_with(path: &Path, homes: Option<StateLayout>) -> Result<Self, KvError> {
        private_db_file(path).map_err(storage)?;
        let db = Database::create(path).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(ENTRIES).map_err(storage)?;
        txn.open_table(USAGE).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let group = GroupCommit::start(Arc::clone(&db))?;
        Ok(Self {
            db,
            files: FileLedger::new(homes),
            group,
        })
    }

    /// The database itself, for the other host tables kept in the same file.
    pub(crate) fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Bytes of files charged to `principal`: its home (measured on first use) and what it
    /// grew shared trees by.
    pub fn file_usage(&self, principal: &PrincipalId, ctl: &Ctl<'_>) -> Result<u64, KvError> {
        self.files
            .files(principal, ctl)
            .map_err(|e| KvError::Unaccounted(e.to_string()))
    }

    /// [`KvStore::file_usage`] when it is known without measuring the home (the fast path of a
    /// write: `None` means ask `file_usage`, which may walk the disk).
    pub fn measured_file_usage(&self, principal: &PrincipalId) -> Option<u64> {
        self.files.files_if_measured(principal)
    }

    /// Reserves `bytes` of file growth for `principal` in `tree` if its KV data, its files and
    /// the growth fit in `quota`.
    pub fn reserve_files(
        &self,
        principal: &PrincipalId,
        tree: Charged,
        bytes: u64,
        quota: u64,
        ctl: &Ctl<'_>,
    ) -> Result<(), QuotaError> {
        self.files.reserve(
            principal,
            tree,
            bytes,
            quota,
            || self.usage(principal).map_err(|e| e.to_string()),
            ctl,
        )
    }

    /// Credits `bytes` of files freed (or reserved and unused) by `principal` in `tree`.
    pub fn release_files(&self, principal: &PrincipalId, tree: Charged, bytes: u64) {
        self.files.release(principal, tree, bytes);
    }

    /// Charges file growth that already happened, without a quota check.
    pub fn force_files(&self, principal: &PrincipalId, tree: Charged, bytes: u64) {
        self.files.force(principal, tree, bytes);
    }

    /// The value of `key`, if set.
    pub fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key, "a key")?;
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENTRIES).map_err(storage)?;
        Ok(table
            .get(ns.key(key).as_str())
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    /// Bytes stored by `principal` across its namespaces.
    pub fn usage(&self, principal: &PrincipalId) -> Result<u64, KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(USAGE).map_err(storage)?;
        Ok(table
            .get(principal.as_str())
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    /// Writes `new` at `key` if `expected` matches the current value (always, for a plain set),
    /// charging the difference against `quota`. Durable when it returns `Ok`: committed in the
    /// group transaction of the writes queued with it.
    fn put(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<Option<&[u8]>>,
        new: &[u8],
        quota: u64,
    ) -> Result<(), KvError> {
        check_key(key, "a key")?;
        check_value(new)?;
        self.group.submit(Self::write(
            ns,
            key,
            Change::Put {
                expected: expected.map(|e| e.map(<[u8]>::to_vec)),
                new: new.to_vec(),
                quota,
            },
        ))
    }

    fn write(ns: &Namespace, key: &str, change: Change) -> Write {
        Write {
            principal: ns.principal.clone(),
            full: ns.key(key),
            key_len: key.len(),
            change,
        }
    }

    /// Checks a set of `key` to `value` without blocking the caller. The returned [`Ticket`]
    /// is either a `Pending` that resolves once the write is durable (or refused), queued
    /// behind a commit in flight, or, when no other write was in flight, a `Lone` write the
    /// caller commits on a thread that may block. For async hosts that must not hold a thread
    /// while a commit is in flight.
    pub fn queue_set(
        &self,
        ns: &Namespace,
        key: &str,
        value: Vec<u8>,
        quota: u64,
    ) -> Result<Ticket, KvError> {
        self.queue_put(ns, key, None, value, quota)
    }

    /// [`KvStore::cas`] queued like [`KvStore::queue_set`].
    pub fn queue_cas(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        quota: u64,
    ) -> Result<Ticket, KvError> {
        self.queue_put(ns, key, Some(expected), new, quota)
    }

    /// [`KvStore::delete`] queued like [`KvStore::queue_set`].
    pub fn queue_delete(&self, ns: &Namespace, key: &str) -> Result<Ticket, KvError> {
        check_key(key, "a key")?;
        self.group.enqueue(Self::write(ns, key, Change::Delete))
    }

    fn queue_put(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<Option<Vec<u8>>>,
        new: Vec<u8>,
        quota: u64,
    ) -> Result<Ticket, KvError> {
        check_key(key, "a key")?;
        check_value(&new)?;
        self.group.enqueue(Self::write(
            ns,
            key,
            Change::Put {
                expected,
                new,
                quota,
            },
        ))
    }

    /// Durable write transactions the KV writes (sets, CAS, deletes) took so far; fewer than
    /// the writes when concurrent writes were grouped.
    pub fn write_commits(&self) -> u64 {
        self.group.commits()
    }

    /// What the KV writes cost so far: transactions, grouped writes and commit time.
    pub fn commit_stats(&self) -> crate::CommitStats {
        self.group.stats()
    }

    /// Sets `key` to `value`.
    pub fn set(&self, ns: &Namespace, key: &str, value: &[u8], quota: u64) -> Result<(), KvError> {
        self.put(ns, key, None, value, quota)
    }

    /// Sets `key` to `new` only if its current value is `expected` (`None` = absent).
    pub fn cas(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        quota: u64,
    ) -> Result<(), KvError> {
        self.put(ns, key, Some(expected), new, quota)
    }

    /// Removes `key` (absent keys are fine).
    pub fn delete(&self, ns: &Namespace, key: &str) -> Result<(), KvError> {
        check_key(key, "a key")?;
        self.group.submit(Self::write(ns, key, Change::Delete))
    }

    /// Keys starting with `prefix`, sorted, from just after `after` (exclusive), at most `limit`,
    /// plus whether more follow.
    fn scan(
        &self,
        ns: &Namespace,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENTRIES).map_err(storage)?;
        let start_key = ns.key(prefix);
        let from = match after {
            Some(a) => ns.key(a),
            None => start_key.clone(),
        };
        let lower = match after {
            Some(_) => Bound::Excluded(from.as_str()),
            None => Bound::Included(from.as_str()),
        };
        let mut keys = Vec::new();
        for item in table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(storage)?
        {
            let (k, _) = item.map_err(storage)?;
            let k = k.value();
            if !k.starts_with(&start_key) {
                break;
            }
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(k[ns.prefix.len()..].to_string());
        }
        Ok((keys, false))
    }

    /// Every key starting with `prefix` (at most [`MAX_LIST_KEYS`]; more is an error).
    pub fn list_keys(&self, ns: &Namespace, prefix: &str) -> Result<Vec<String>, KvError> {
        check_prefix(prefix)?;
        let (keys, more) = self.scan(ns, prefix, None, MAX_LIST_KEYS)?;
        if more {
            return Err(KvError::TooLarge {
                what: "key listing",
                size: MAX_LIST_KEYS as u64 + 1,
                limit: MAX_LIST_KEYS as u64,
            });
        }
        Ok(keys)
    }

    /// One page of keys starting with `prefix`, resuming after `cursor`; the returned cursor is
    /// `None` on the last page. `limit` is clamped to 1..=[`MAX_PAGE`].
    pub fn list_page(
        &self,
        ns: &Namespace,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        check_prefix(prefix)?;
        let after = match cursor {
            None => None,
            Some(c) => {
                let key = unhex(c).ok_or_else(|| KvError::InvalidKey("malformed cursor".into()))?;
                if !key.starts_with(prefix) || key.contains('\0') {
                    return Err(KvError::InvalidKey(
                        "the cursor belongs to another listing".into(),
                    ));
                }
                Some(key)
            }
        };
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let (keys, more) = self.scan(ns, prefix, after.as_deref(), limit)?;
        let next = if more {
            keys.last().map(|k| hex(k))
        } else {
            None
        };
        Ok((keys, next))
    }

    /// Removes every key starting with `prefix`; returns how many went.
    pub fn clear_prefix(&self, ns: &Namespace, prefix: &str) -> Result<u64, KvError> {
        check_prefix(prefix)?;
        let start = ns.key(prefix);
        let txn = self.db.begin_write().map_err(storage)?;
        let (count, freed) = {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let mut doomed: Vec<(String, u64)> = Vec::new();
            for item in entries
                .range::<&str>((Bound::Included(start.as_str()), Bound::Unbounded))
                .map_err(storage)?
            {
                let (k, v) = item.map_err(storage)?;
                let k = k.value();
                if !k.starts_with(&start) {
                    break;
                }
                let user_key_len = k.len() - ns.prefix.len();
                doomed.push((k.to_string(), (user_key_len + v.value().len()) as u64));
            }
            for (k, _) in &doomed {
                entries.remove(k.as_str()).map_err(storage)?;
            }
            (
                doomed.len() as u64,
                doomed.iter().map(|(_, n)| n).sum::<u64>(),
            )
        };
        if count > 0 {
            let mut usage = txn.open_table(USAGE).map_err(storage)?;
            let used = usage
                .get(ns.principal.as_str())
                .map_err(storage)?
                .map_or(0, |v| v.value());
            usage
                .insert(ns.principal.as_str(), used.saturating_sub(freed))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let kv = KvStore::open(&dir.path().join("kv.redb")).unwrap_or_else(|e| panic!("{e}"));
        (dir, kv)
    }

    fn ns(p: &str, c: &str) -> Namespace {
        Namespace::new(&PrincipalId::parse(p).unwrap_or_else(|e| panic!("{e}")), c)
    }

    const Q: u64 = 1 << 30;

    #[test]
    fn namespaces_are_disjoint() {
        let (_d, kv) = store();
        let (a, b, c) = (ns("alice", "x"), ns("bob", "x"), ns("alice", "y"));
        kv.set(&a, "k", b"A", Q).unwrap_or_else(|e| panic!("{e}"));
        kv.set(&b, "k", b"B", Q).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kv.get(&a, "k").ok().flatten(), Some(b"A".to_vec()));
        assert_eq!(kv.get(&b, "k").ok().flatten(), Some(b"B".to_vec()));
        assert_eq!(kv.get(&c, "k").ok().flatten(), None);
        assert_eq!(kv.list_keys(&c, "").ok(), Some(vec![]));
    }

    #[test]
    fn key_and_value_limits() {
        let (_d, kv) = store();
        let a = ns("a", "x");
        assert!(matches!(
            kv.set(&a, "", b"v", Q),
            Err(KvError::InvalidKey(_))
        ));
        assert!(matches!(
            kv.set(&a, "a\0b", b"v", Q),
            Err(KvError::InvalidKey(_))
        ));
        assert!(matches!(
            kv.set(&a, &"k".repeat(257), b"v", Q),
            Err(KvError::InvalidKey(_))
        ));
        assert!(kv.set(&a, &"k".repeat(256), b"v", Q).is_ok());
        assert!(matches!(
            kv.set(&a, "k", &vec![0; MAX_VALUE_BYTES + 1], Q),
            Err(KvError::TooLarge { .. })
        ));
        assert!(kv.set(&a, "k", &vec![0; MAX_VALUE_BYTES], Q).is_ok());
        assert!(matches!(kv.get(&a, ""), Err(KvError::InvalidKey(_))));
    }

    #[test]
    fn quota_counts_keys_and_values_per_principal() {
        let (_d, kv) = store();
        let (a1, a2) = (ns("a", "one"), ns("a", "two"));
        kv.set(&a1, "k", &[0; 90], 100)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            kv.usage(&PrincipalId::parse("a").unwrap_or_else(|e| panic!("{e}")))
                .ok(),
            Some(91)
        );
        assert!(
            matches!(kv.set(&a2, "k", &[0; 10], 100), Err(KvError::Quota { .. })),
            "quota spans capsules"
        );
        // Replacing a value charges only the difference.
        kv.set(&a1, "k", &[0; 99], 100)
            .unwrap_or_else(|e| panic!("{e}"));
        kv.delete(&a1, "k").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            kv.usage(&PrincipalId::parse("a").unwrap_or_else(|e| panic!("{e}")))
                .ok(),
            Some(0)
        );
        kv.set(&a2, "k", &[0; 10], 100)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn cas_is_atomic_compare_and_set() {
        let (_d, kv) = store();
        let a = ns("a", "x");
        assert!(
            kv.cas(&a, "k", None, b"1", Q).is_ok(),
            "absent expected, absent found"
        );
        assert!(matches!(
            kv.cas(&a, "k", None, b"2", Q),
            Err(KvError::CasMismatch)
        ));
        assert!(matches!(
            kv.cas(&a, "k", Some(b"0"), b"2", Q),
            Err(KvError::CasMismatch)
        ));
        assert!(kv.cas(&a, "k", Some(b"1"), b"2", Q).is_ok());
        assert_eq!(kv.get(&a, "k").ok().flatten(), Some(b"2".to_vec()));
    }

    #[test]
    fn paging_uses_a_real_cursor() {
        let (_d, kv) = store();
        let a = ns("a", "x");
        for i in 0..25 {
            kv.set(&a, &format!("item/{i:02}"), b"v", Q)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        kv.set(&a, "other", b"v", Q)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let (keys, next) = kv
                .list_page(&a, "item/", cursor.as_deref(), 10)
                .unwrap_or_else(|e| panic!("{e}"));
            pages += 1;
            all.extend(keys);
            // A key inserted behind the cursor does not disturb the remaining pages.
            if pages == 1 {
                kv.set(&a, "item/00a", b"v", Q)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(all.len(), 25);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(matches!(
            kv.list_page(&a, "item/", Some("zz"), 10),
            Err(KvError::InvalidKey(_))
        ));
        assert!(matches!(
            kv.list_page(&a, "item/", Some(&hex("other")), 10),
            Err(KvError::InvalidKey(_))
        ));
        assert_eq!(kv.clear_prefix(&a, "item/").ok(), Some(26));
        assert_eq!(kv.list_keys(&a, "").ok(), Some(vec!["other".to_string()]));
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("kv.redb");
        {
            let kv = KvStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
            kv.set(&ns("a", "x"), "k", b"v", Q)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let kv = KvStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            kv.get(&ns("a", "x"), "k").ok().flatten(),
            Some(b"v".to_vec())
        );
    }
}
