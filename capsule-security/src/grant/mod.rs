//! Operator grants. A manifest only *requests* the capabilities that reach beyond a capsule's
//! own confinement; the operator's decision is a [`Grant`] stored per capsule, and a capsule
//! may use exactly `requested ∩ granted`. Nothing a capsule author writes grants anything.
//!
//! Requests that need a grant: absolute host directories (`fs_read`/`fs_write`), `uplink`,
//! handler bindings whose pattern reaches beyond the capsule's own topics
//! ([`is_broad_handler`]), `[subscribe]` entries spanning every namespace
//! ([`spans_namespaces`]), `net`, `net_connect`, `net_bind`, `host_process`,
//! `identity` and `allow_persistent`. The rest of the IPC ACLs, KV, `home://`, `/tmp/` and the
//! capsule's own workspace need none.

mod decision;
mod record;
mod request;
mod store;

pub use decision::{Grant, PermissionDiff};
pub use request::{Request, is_broad_handler, requests, spans_namespaces, ungated_summary};
pub use store::{GrantError, GrantStore};

#[cfg(test)]
mod tests;
