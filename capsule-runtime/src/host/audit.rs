//! Structured audit events. Every IPC host call emits exactly one event under the target
//! `capsule::audit::ipc` naming the capsule, the principal in scope, the operation, the topic
//! or pattern, a size or count, and the error if the call failed.

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

/// Records that resolving a secret failed: who asked for which key, and the store's reason
/// (which never contains a value). The guest only learns that the store is unavailable.
pub(crate) fn secret_failed(capsule: &str, principal: &PrincipalId, key: &str, reason: &str) {
    tracing::warn!(
        target: "capsule::audit::secret",
        capsule,
        principal = principal.as_str(),
        key,
        reason,
        "secret lookup failed"
    );
}

/// Tracing target of interceptor dispatch decisions (denials, aborts, drops).
pub const DISPATCH_TARGET: &str = "capsule::audit::dispatch";
