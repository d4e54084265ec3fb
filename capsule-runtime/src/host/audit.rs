//! Structured audit events. Every IPC host call emits exactly one event under the target
//! `capsule::audit::ipc` naming the capsule, the principal in scope, the operation, the topic
//! or pattern, a size or count, and the error if the call failed. Filesystem calls refused by
//! policy (a grant, the host-managed parts of a home, a path escaping its mount, the storage
//! quota) emit one event under `capsule::audit::fs`.

use std::fmt::Display;

use capsule_bus::PrincipalId;

/// Tracing target of IPC audit events.
pub const IPC_TARGET: &str = "capsule::audit::ipc";

/// Emits one IPC audit event.
pub(crate) fn ipc(
    capsule: &str,
    principal: &PrincipalId,
    op: &'static str,
    topic: &str,
    size: u64,
    error: Option<&dyn Display>,
) {
    match error {
        None => tracing::info!(
            target: "capsule::audit::ipc",
            capsule,
            principal = principal.as_str(),
            op,
            topic,
            size,
            "ipc"
        ),
        Some(e) => tracing::info!(
            target: "capsule::audit::ipc",
            capsule,
            principal = principal.as_str(),
            op,
            topic,
            size,
            error = %e,
            "ipc"
        ),
    }
}

/// Tracing target of secret reveals.
pub const SECRET_TARGET: &str = "capsule::audit::secret";

/// Records that a secret was revealed to a capsule: never the value, only who and which.
pub(crate) fn secret_revealed(capsule: &str, principal: &PrincipalId, key: &str, scope: &str) {
    tracing::info!(
        target: "capsule::audit::secret",
        capsule,
        principal = principal.as_str(),
        key,
        scope,
        "secret revealed"
    );
}

/// Tracing target of interceptor dispatch decisions (denials, aborts, drops).
pub const DISPATCH_TARGET: &str = "capsule::audit::dispatch";

/// Tracing target of filesystem refusals.
pub const FS_TARGET: &str = "capsule::audit::fs";

/// Records a filesystem call refused by policy: the operation, the path as the guest gave it,
/// the error code the guest saw and the host's reason.
pub(crate) fn fs_refused(
    capsule: &str,
    principal: &PrincipalId,
    op: &'static str,
    path: &str,
    code: &'static str,
    reason: &dyn Display,
) {
    tracing::info!(
        target: "capsule::audit::fs",
        capsule,
        principal = principal.as_str(),
        op,
        path,
        code,
        reason = %reason,
        "fs refused"
    );
}
