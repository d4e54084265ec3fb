//! `capsule-store`: the host's durable state, apart from the files a guest sees. Contract:
//! whatever a store acknowledged survives a crash of the host; one principal's data is never
//! reachable through another principal's namespace or scope; everything is kept private to
//! the host user (0600 files in 0700 directories) whatever the umask; and no error carries a
//! stored value.
//!
//! - [`KvStore`]: per-principal, per-capsule key-value data on redb, with each principal's
//!   usage kept in the transaction of every write and checked against its storage quota
//!   together with its files ([`quota`]).
//! - [`SecretStore`]: secrets encrypted at rest under a host key, bound to their scope,
//!   capsule and key.
//! - [`IdentityStore`]: host users and the platform identities linked to them, unique per
//!   (platform, platform user id), in the KV store's database.
//! - [`AllowanceStore`]: standing approvals ("allow always") per principal and capsule.
//! - [`InstalledVersions`]: which version of each capsule each owner installed, so a load
//!   knows whether to run install, upgrade or neither.
//!
//! The crate has no WebAssembly dependency; the runtime maps its errors onto WIT error codes.

pub mod allowance;
mod field;
pub mod identity;
mod installed;
mod kv;
pub mod quota;
mod secrets;

pub use allowance::{Allowance, AllowanceError, AllowanceStore};
pub use field::InvalidField;
pub use identity::{IdentityError, IdentityStore, PlatformIdentity};
pub use installed::{InstalledError, InstalledVersions};
pub use kv::{
    KvError, KvStore, MAX_KEY_BYTES, MAX_LIST_KEYS, MAX_PAGE, MAX_VALUE_BYTES, Namespace,
};
pub use secrets::{MAX_SECRET_BYTES, SecretError, SecretScope, SecretStore};
