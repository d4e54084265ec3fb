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
pub use profile::{AUDIT_FIREHOSE_GRANT, PrincipalProfile, ProfileError, Quotas};
pub use profiles::ProfileStore;
