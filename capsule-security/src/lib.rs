//! `capsule-security`: what a capsule and a principal are allowed to do.
//!
//! Contract: fail-closed. Anything a manifest does not grant is denied with a reason; a
//! malformed manifest or profile is an error naming the file and key, never a silent default;
//! grants of principals (such as the audit firehose) come only from operator-owned profiles,
//! never from a capsule's own manifest. The crate has no WebAssembly dependency.
//!
//! - [`Manifest`]: `Capsule.toml`, parsed once.
//! - [`CapsulePolicy`]: the capsule's gates (IPC ACLs, uplink), built from the manifest.
//! - [`PrincipalProfile`]: a principal's grants and [`Quotas`].

mod capabilities;
mod grants;
mod manifest;
mod policy;
mod profile;

pub use capabilities::{Capabilities, IdentityLevel, KNOWN_CAPABILITIES};
pub use capsule_bus::PrincipalId;
pub use grants::{EndpointGrant, FsGrant, FsRoot, HostGrant, normalize_relative};
pub use manifest::{
    CapsuleName, Component, ComponentHash, DEFAULT_HANDLER_PRIORITY, EnvEntry, EnvKind, Export,
    Handler, INERT_TABLES, Import, MANIFEST_FILE, Manifest, ManifestError, Package, PublishEntry,
    SubscribeEntry,
};
pub use policy::{CapsulePolicy, Decision, FsAccess};
pub use profile::{AUDIT_FIREHOSE_GRANT, PrincipalProfile, ProfileError, Quotas};
