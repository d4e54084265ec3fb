//! `capsule-security`: what a capsule and a principal are allowed to do.
//!
//! Contract: fail-closed. Anything a manifest does not grant is denied with a reason; a
//! malformed manifest or profile is an error naming the file and key, never a silent default;
//! grants of principals (such as the audit firehose) come only from operator-owned profiles,
//! never from a capsule's own manifest. The crate has no WebAssembly dependency.
//!
//! - [`Manifest`]: `Capsule.toml`, parsed once.
//! - [`CapsulePolicy`]: the capsule's gates (IPC ACLs, uplink), built from the manifest.
//! - [`PrincipalProfile`]: a principal's grants and [`Quotas`]; [`ProfileStore`] reads, lists,
//!   writes (validated, atomically) and deletes them.
//! - [`Request`], [`Grant`], [`GrantStore`]: what a manifest asks for, what the operator
//!   allowed, and where that decision is kept; a capsule uses `requested ∩ granted`.
//! - [`plan_load`]: the order a set of capsules loads in, providers before importers.
//! - [`HostPolicy`]: what may ever be granted on this host (never the state directory, key
//!   material, `/proc`, `/sys`, `/dev` or `/`), and which address ranges it opens to the
//!   network [`Airlock`] (none by default).
//!
//! # Example
//!
//! Parse a manifest, see what it asks the operator for, and evaluate the policy it gets
//! before and after the operator grants it: ACLs apply as written, a gated capability only
//! once granted, and every refusal says why.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::HashMap;
//! use std::path::Path;
//! use capsule_bus::Topic;
//! use capsule_security::{CapsulePolicy, Decision, Grant, HostGrant, Manifest, Request, requests};
//!
//! let manifest = Manifest::parse(
//!     r#"
//!     [package]
//!     name = "weather"
//!     version = "1.0.0"
//!
//!     [[component]]
//!     id = "weather"
//!     file = "weather.wasm"
//!
//!     [capabilities]
//!     net = ["api.weather.example"]
//!
//!     [publish]
//!     "weather.report" = {}
//!
//!     [subscribe]
//!     "weather.ask" = { handler = "ask" }
//!     "#,
//!     Path::new("weather/Capsule.toml"),
//! )?;
//! let asked = requests(&manifest);
//! assert_eq!(asked, [Request::Net(HostGrant::parse("api.weather.example")?)]);
//!
//! let mut grant = Grant::new(&manifest);
//! let before = CapsulePolicy::granted(&manifest, &grant, &HashMap::new());
//! assert!(before.may_publish(&Topic::parse("weather.report")?).is_allowed());
//! assert_eq!(
//!     before.may_publish(&Topic::parse("chat.post")?),
//!     Decision::Denied("no [publish] pattern matches `chat.post`".into())
//! );
//! assert!(!before.may_http("api.weather.example").is_allowed());
//!
//! grant.allow(asked);
//! let after = CapsulePolicy::granted(&manifest, &grant, &HashMap::new());
//! assert!(after.may_http("api.weather.example").is_allowed());
//! assert!(!after.may_http("evil.example").is_allowed());
//! # Ok(()) }
//! ```

mod airlock;
mod grant;
mod grants;
mod host_grant;
mod host_policy;
mod load_order;
mod manifest;
mod mounts;
mod policy;
pub mod private;
mod process_grant;
mod profile;
mod profiles;

pub use airlock::{
    AddressClass, Airlock, AirlockError, Embedding, IpRange, MAX_RESOLVED_ADDRESSES, Refusal,
    ResolveError, Resolver, StaticResolver, SystemResolver, classify, classify_v4, classify_v6_own,
    embedded_v4,
};
pub use capsule_ids::{CapsuleName, CapsuleNameError, PrincipalId};
pub use grant::{
    Grant, GrantError, GrantStore, PermissionDiff, Request, is_broad_handler, requests,
    spans_namespaces, ungated_summary,
};
pub use grants::{EndpointGrant, FsGrant, FsRoot, HostGrant, normalize_relative};
pub use host_policy::{Forbidden, HostPolicy, HostPolicyError, POLICY_FILE, Resolved};
pub use load_order::{GraphError, LoadStep, plan_load};
pub use manifest::{
    Capabilities, Component, ComponentHash, DEFAULT_HANDLER_PRIORITY, Deprecation, EnvEntry,
    EnvKind, Export, Handler, INERT_TABLES, IdentityLevel, Import, KNOWN_CAPABILITIES,
    LegacyConstruct, MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, ManifestDigest, ManifestError,
    Package, Problem, PublishEntry, SubscribeEntry,
};
pub use policy::{CapsulePolicy, Decision, FsAccess};
pub use process_grant::{MAX_PROCESS_GRANT, ProcessGrant};
pub use profile::{AUDIT_FIREHOSE_GRANT, PrincipalProfile, ProfileError, Quotas};
pub use profiles::ProfileStore;
