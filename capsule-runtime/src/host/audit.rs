//! Structured audit events. Every IPC host call emits exactly one event under the target
//! `capsule::audit::ipc` naming the capsule, the principal in scope, the operation, the topic
//! or pattern, a size or count, and the error if the call failed. A message stopped by a
//! handler is also published on the bus's audit topic, attributed like the message itself, so
//! an audit subscriber scoped to a principal sees exactly that principal's denials.

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

/// Publishes the denial of `msg` by a handler on [`AUDIT_TOPIC`](capsule_bus::AUDIT_TOPIC),
/// with the message's own attribution: `{kind: "dispatch.denied", capsule, action, decision,
/// topic, principal, reason}`. A denial of an audit entry is not re-published, so a handler
/// that denies audit entries cannot start a loop.
pub(crate) fn publish_denial(
    bus: &capsule_bus::Bus,
    msg: &capsule_bus::Message,
    capsule: &str,
    action: &str,
    response: &crate::HookResponse,
) {
    if msg.topic.as_str() == capsule_bus::AUDIT_TOPIC {
        return;
    }
    let attribution = msg.attribution();
    let body = serde_json::json!({
        "kind": "dispatch.denied",
        "capsule": capsule,
        "action": action,
        "decision": response.action,
        "topic": msg.topic.as_str(),
        "principal": attribution.principal().map(PrincipalId::as_str),
        "reason": response.data.as_deref().unwrap_or(""),
    });
    let (Ok(topic), Ok(payload)) = (
        capsule_bus::Topic::parse(capsule_bus::AUDIT_TOPIC),
        capsule_bus::JsonPayload::parse(body.to_string()),
    ) else {
        tracing::error!("audit entry could not be formed");
        return;
    };
    bus.publish(capsule_bus::Outgoing {
        topic,
        payload,
        source: uuid::Uuid::nil(),
        attribution,
    });
}
