//! Standing approvals ("allow always"): an (action, resource) a principal's operator allowed a
//! capsule to do without asking again. Contract: an allowance is kept per principal and
//! capsule and covers exactly the (action, resource) it was given for; it lasts, durably,
//! until revoked; a principal's allowances are never read or revoked through another
//! principal's key; every field is validated and each (principal, capsule) holds a bounded
//! number of them.

use std::ops::Bound;
use std::sync::Arc;

use capsule_ids::{CapsuleName, PrincipalId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{InvalidField, KvStore};

/// `principal\0capsule\0action\0resource` → nothing.
const ALLOWANCES: TableDefinition<'_, &str, ()> = TableDefinition::new("approval_allowances");

/// Longest action or resource, in bytes.
pub const MAX_APPROVAL_FIELD_BYTES: usize = 1024;
/// Most allowances one capsule holds for one principal.
pub const MAX_ALLOWANCES: usize = 256;

/// Why an allowance operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllowanceError {
    /// The action or resource is empty, too long, or has control or invisible characters.
    #[error(transparent)]
    InvalidInput(InvalidField),
    /// The capsule holds [`MAX_ALLOWANCES`] for the principal already.
    #[error("at most {MAX_ALLOWANCES} allowances per principal and capsule")]
    Full,
    /// The database failed.
    #[error("allowance storage failure: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> AllowanceError {
    AllowanceError::Storage(e.to_string())
}

/// Checks an action or resource: 1 to [`MAX_APPROVAL_FIELD_BYTES`] bytes, only
/// [`printable`](crate::identity::printable) characters: no control characters (which could
/// forge or hide text on the operator's screen) and nothing invisible (which would let two
/// requests, or two allowances, look alike to the operator while they differ).
pub fn check_field(field: &'static str, text: &str) -> Result<(), AllowanceError> {
    if text.is_empty() || text.len() > MAX_APPROVAL_FIELD_BYTES {
        return Err(AllowanceError::InvalidInput(InvalidField::new(
            field,
            format!(
                "must be 1 to {MAX_APPROVAL_FIELD_BYTES} bytes ({} given)",
                text.len()
            ),
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(AllowanceError::InvalidInput(InvalidField::new(
            field,
            "has control characters",
        )));
    }
    if !text.chars().all(crate::identity::printable) {
        return Err(AllowanceError::InvalidInput(InvalidField::new(
            field,
            "has invisible characters",
        )));
    }
    Ok(())
}

/// One standing approval.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Allowance {
    /// Who it was given for.
    pub principal: PrincipalId,
    /// The capsule it allows.
    pub capsule: CapsuleName,
    /// The action.
    pub action: String,
    /// The resource.
    pub resource: String,
}

impl Allowance {
    /// An allowance, its fields checked.
    pub fn new(
        principal: PrincipalId,
        capsule: CapsuleName,
        action: &str,
        resource: &str,
    ) -> Result<Self, AllowanceError> {
        check_field("action", action)?;
        check_field("resource", resource)?;
        Ok(Self {
            principal,
            capsule,
            action: action.to_string(),
            resource: resource.to_string(),
        })
    }

    fn prefix(principal: &PrincipalId, capsule: &CapsuleName) -> String {
        format!("{principal}\0{capsule}\0")
    }

    fn key(&self) -> String {
        format!(
            "{}{}\0{}",
            Self::prefix(&self.principal, &self.capsule),
            self.action,
            self.resource
        )
    }
}

/// The standing approvals of a runtime, in the KV store's database.
#[derive(Clone, Debug)]
pub struct AllowanceStore {
    db: Arc<Database>,
}

impl AllowanceStore {
    /// The allowances kept in `kv`'s database (the table is created if missing).
    pub fn open(kv: &KvStore) -> Result<Self, AllowanceError> {
        let db = kv.database();
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(ALLOWANCES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self { db })
    }

    /// Whether `allowance` is held.
    pub fn covers(&self, allowance: &Allowance) -> Result<bool, AllowanceError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ALLOWANCES).map_err(storage)?;
        Ok(table
            .get(allowance.key().as_str())
            .map_err(storage)?
            .is_some())
    }

    /// Records `allowance` (holding it already is fine).
    pub fn allow(&self, allowance: &Allowance) -> Result<(), AllowanceError> {
        let key = allowance.key();
        let prefix = Allowance::prefix(&allowance.principal, &allowance.capsule);
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(ALLOWANCES).map_err(storage)?;
            if table.get(key.as_str()).map_err(storage)?.is_some() {
                return Ok(());
            }
            let mut held = 0;
            for item in table
                .range::<&str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .map_err(storage)?
            {
                let (k, _) = item.map_err(storage)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                held += 1;
                if held >= MAX_ALLOWANCES {
                    return Err(AllowanceError::Full);
                }
            }
            table.insert(key.as_str(), ()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Removes `allowance`; answers whether it was held.
    pub fn revoke(&self, allowance: &Allowance) -> Result<bool, AllowanceError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let removed = {
            let mut table = txn.open_table(ALLOWANCES).map_err(storage)?;
            table
                .remove(allowance.key().as_str())
                .map_err(storage)?
                .is_some()
        };
        txn.commit().map_err(storage)?;
        Ok(removed)
    }

    /// The allowances `principal` holds for `capsule`, in order.
    pub fn list(
        &self,
        principal: &PrincipalId,
        capsule: &CapsuleName,
    ) -> Result<Vec<Allowance>, AllowanceError> {
        let prefix = Allowance::prefix(principal, capsule);
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ALLOWANCES).map_err(storage)?;
        let mut out = Vec::new();
        for item in table
            .range::<&str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .map_err(storage)?
        {
            let (k, _) = item.map_err(storage)?;
            let Some(rest) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            let Some((action, resource)) = rest.split_once('\0') else {
                return Err(storage("a stored allowance is malformed"));
            };
            out.push(Allowance {
                principal: principal.clone(),
                capsule: capsule.clone(),
                action: action.to_string(),
                resource: resource.to_string(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> AllowanceStore {
        let kv = KvStore::open(path).unwrap_or_else(|e| panic!("{e}"));
        AllowanceStore::open(&kv).unwrap_or_else(|e| panic!("{e}"))
    }

    fn allowance(principal: &str, capsule: &str, action: &str, resource: &str) -> Allowance {
        Allowance::new(
            PrincipalId::parse(principal).unwrap_or_else(|e| panic!("{e}")),
            CapsuleName::parse(capsule).unwrap_or_else(|e| panic!("{e}")),
            action,
            resource,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn allowances_are_exact_per_principal_and_capsule_and_durable() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("kv.redb");
        {
            let store = open(&path);
            store
                .allow(&allowance("alice", "tool", "delete", "/x"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let store = open(&path);
        let held = |a: &Allowance| store.covers(a).unwrap_or_else(|e| panic!("{e}"));
        assert!(held(&allowance("alice", "tool", "delete", "/x")));
        assert!(!held(&allowance("bob", "tool", "delete", "/x")));
        assert!(!held(&allowance("alice", "other", "delete", "/x")));
        assert!(!held(&allowance("alice", "tool", "delete", "/x/y")));
        let alice = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        let tool = CapsuleName::parse("tool").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store
                .list(&alice, &tool)
                .unwrap_or_else(|e| panic!("{e}"))
                .len(),
            1
        );
        assert!(
            !store
                .revoke(&allowance("bob", "tool", "delete", "/x"))
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(held(&allowance("alice", "tool", "delete", "/x")));
        assert!(
            store
                .revoke(&allowance("alice", "tool", "delete", "/x"))
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(!held(&allowance("alice", "tool", "delete", "/x")));
    }

    #[test]
    fn invisible_characters_make_no_look_alike_allowances() {
        let p = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        let c = CapsuleName::parse("tool").unwrap_or_else(|e| panic!("{e}"));
        // Each of these shows as `/srv/x` (or as `delete`) on most terminals.
        for hidden in [
            "/srv/x\u{200B}",
            "/srv/\u{00AD}x",
            "/srv/x\u{FE0F}",
            "/srv/x\u{E0001}",
            "/srv/\u{2066}x\u{2069}",
            "/srv/x\u{3164}",
            "/srv/x\u{FEFF}",
        ] {
            for (action, resource) in [("delete", hidden), (hidden, "/srv/x")] {
                assert!(
                    matches!(
                        Allowance::new(p.clone(), c.clone(), action, resource),
                        Err(AllowanceError::InvalidInput(_))
                    ),
                    "{action:?} {resource:?}"
                );
            }
        }
        // Visible text outside ASCII stays allowed.
        assert!(Allowance::new(p, c, "löschen", "/srv/données/李").is_ok());
    }

    #[test]
    fn fields_are_checked_and_allowances_bounded() {
        let p = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        let c = CapsuleName::parse("tool").unwrap_or_else(|e| panic!("{e}"));
        for (action, resource) in [
            ("", "r"),
            ("a", ""),
            ("a\0b", "r"),
            ("a", "\u{1b}[2J"),
            ("a", &"r".repeat(MAX_APPROVAL_FIELD_BYTES + 1)),
        ] {
            assert!(
                matches!(
                    Allowance::new(p.clone(), c.clone(), action, resource),
                    Err(AllowanceError::InvalidInput(_))
                ),
                "{action:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = open(&dir.path().join("kv.redb"));
        for i in 0..MAX_ALLOWANCES {
            store
                .allow(&allowance("alice", "tool", "a", &i.to_string()))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(
            store.allow(&allowance("alice", "tool", "a", "one more")),
            Err(AllowanceError::Full)
        ));
        // Holding one already is not a new one.
        store
            .allow(&allowance("alice", "tool", "a", "0"))
            .unwrap_or_else(|e| panic!("{e}"));
        // Another principal has its own bound.
        store
            .allow(&allowance("bob", "tool", "a", "one more"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
