//! `capsule-ids`: the two names every part of the host keys things by, each with exactly one
//! type and one grammar, checked once at parse.
//!
//! - [`PrincipalId`]: who a call, a message or a stored byte belongs to (a user or an agent):
//!   1–64 characters of `[A-Za-z0-9_-]`.
//! - [`CapsuleName`]: a capsule's name and id (grants, KV namespaces, secrets and log files are
//!   keyed by it): 1–64 characters of `[a-z0-9-]`.
//!
//! Both grammars leave out `/`, `.`, `:` and NUL, so either may be used as one file name or one
//! separator-free part of a storage key as it is. The crate has no dependency beyond
//! `thiserror`; the bus, the file system layer, the security crate and the stores all take
//! these types from here.
//!
//! # Example
//!
//! ```
//! use capsule_ids::{CapsuleName, PrincipalId};
//!
//! let alice = PrincipalId::parse("alice")?;
//! assert_eq!(alice.as_str(), "alice");
//! // Nothing that could climb a directory or split a storage key gets in.
//! assert!(PrincipalId::parse("../bob").is_err());
//! assert!(PrincipalId::parse("").is_err());
//!
//! let notes = CapsuleName::parse("notes")?;
//! assert_eq!(notes.as_str(), "notes");
//! assert!(CapsuleName::parse("Notes").is_err(), "capsule names are lower case");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod capsule;
mod principal;

pub use capsule::{CapsuleName, CapsuleNameError, MAX_CAPSULE_NAME_BYTES};
pub use principal::{MAX_PRINCIPAL_BYTES, PrincipalError, PrincipalId};
