//! `capsule-store`: the host's durable state, apart from the files a guest sees. Contract:
//! whatever a store acknowledged survives a crash of the host; one principal's data is never
//! reachable through another principal's namespace or scope; everything is kept private to
//! the host user (0600 files in 0700 directories) whatever the umask; and no error carries a
//! stored value.
//!
//! - [`KvStore`]: per-principal, per-capsule key-value data on redb, with each principal's
//!   usage kept in the transaction of every write and checked against its storage quota
//!   together with its files ([`quota`]); concurrent writes share one durable commit.
//! - [`SecretStore`]: secrets encrypted at rest under a host key, bound to their scope,
//!   capsule and key.
//! - [`IdentityStore`]: host users and the platform identities linked to them, unique per
//!   (platform, platform user id), in the KV store's database.
//! - [`AllowanceStore`]: standing approvals ("allow always") per principal and capsule.
//! - [`InstalledVersions`]: which version of each capsule each owner installed, so a load
//!   knows whether to run install, upgrade or neither. The one acknowledgement that is not a
//!   durability promise: `write_unsynced` (a first record whose loss changes nothing that
//!   ran) answers once the record is visible; `flush` answers once it is durable.
//!
//! The crate has no WebAssembly dependency; the runtime maps its errors onto WIT error codes.
//!
//! # Example
//!
//! Two principals' data for the same capsule live apart, a write past the quota is refused,
//! and what was acknowledged is there after the store is reopened.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capsule_ids::PrincipalId;
//! use capsule_store::{KvError, KvStore, Namespace};
//!
//! let tmp = tempfile::tempdir()?;
//! let file = tmp.path().join("kv.redb");
//! let alice = Namespace::new(&PrincipalId::parse("alice")?, "notes");
//! let bob = Namespace::new(&PrincipalId::parse("bob")?, "notes");
//! let quota = 64; // bytes per principal
//!
//! let kv = KvStore::open(&file)?;
//! kv.set(&alice, "draft", b"hello", quota)?;
//! assert_eq!(kv.get(&bob, "draft")?, None, "bob's namespace is his own");
//! assert!(matches!(kv.set(&alice, "big", &[0; 100], quota), Err(KvError::Quota { .. })));
//! drop(kv);
//!
//! let kv = KvStore::open(&file)?;
//! assert_eq!(kv.get(&alice, "draft")?.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```

pub mod allowance;
mod field;
mod group;
pub mod identity;
mod installed;
mod installed_sync;
mod kv;
pub mod quota;
mod secrets;

pub use allowance::{Allowance, AllowanceError, AllowanceStore};
pub use field::InvalidField;
pub use group::{CommitStats, Lone, Pending, Ticket};
pub use identity::{IdentityError, IdentityStore, PlatformIdentity};
pub use installed::{InstalledError, InstalledVersions};
pub use kv::{
    KvError, KvStore, MAX_KEY_BYTES, MAX_LIST_KEYS, MAX_PAGE, MAX_VALUE_BYTES, Namespace,
};
pub use secrets::{MAX_SECRET_BYTES, SecretError, SecretScope, SecretStore};

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01, for the RFC 3339
/// timestamps the host writes (records here, log lines in the runtime).
pub fn civil_date(days: u64) -> (i64, u32, u32) {
    // Counted from 0000-03-01 so that the leap day falls last in each year.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}
