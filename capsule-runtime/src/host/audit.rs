//! Structured audit events. Every IPC host call emits exactly one event under the target
//! `capsule::audit::ipc` naming the capsule, the principal in scope, the operation, the topic
//! or pattern, a size or count, and the error if the call failed. Filesystem calls refused by
//! policy (a grant, the host-managed parts of a home, a path escaping its mount, the storage
//! quota) emit one event under `capsule::audit::fs`. Whatever a guest supplied is
//! bounded before it is logged: a topic is logged as given only once it parses (valid topics
//! are short and plain), and every guest-supplied field is escaped and cut at
//! [`MAX_AUDIT_FIELD_BYTES`], so one call never writes more than a few hundred bytes of it.
//! A message stopped by a handler is also published on the bus's audit topic, attributed like
//! the message itself, so an audit subscriber scoped to a principal sees exactly that
//! principal's denials.

use std::borrow::Cow;
use std::fmt::Display;

use capsule_bus::{PrincipalId, TopicPattern};

/// Most bytes of guest-supplied text one audit or host log field carries; longer text is cut
/// and marked with its full length.
pub const MAX_AUDIT_FIELD_BYTES: usize = 256;

/// `text` as a log field: control characters escaped (so it stays on one line), cut at
/// [`MAX_AUDIT_FIELD_BYTES`] and marked with its full length when cut.
pub(crate) fn field(text: &str) -> Cow<'_, str> {
    let plain = text.len() <= MAX_AUDIT_FIELD_BYTES && !text.chars().any(char::is_control);
    if plain {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(MAX_AUDIT_FIELD_BYTES + 32);
    for c in text.chars() {
        if out.len() >= MAX_AUDIT_FIELD_BYTES {
            out.push_str(&format!("…({} bytes)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A topic or pattern as a log field: as given when it parses, otherwise marked invalid and
/// bounded like any [`field`].
pub(crate) fn topic_field(topic: &str) -> Cow<'_, str> {
    if TopicPattern::parse(topic).is_ok() {
        Cow::Borrowed(topic)
    } else {
        Cow::Owned(format!("<invalid: {}>", field(topic)))
    }
}

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
    // Fields are computed only when the event is recorded.
    match error {
        None => tracing::info!(
            target: "capsule::audit::ipc",
            capsule,
            principal = principal.as_str(),
            op,
            topic = %topic_field(topic),
            size,
            "ipc"
        ),
        Some(e) => tracing::info!(
            target: "capsule::audit::ipc",
            capsule,
            principal = principal.as_str(),
            op,
            topic = %topic_field(topic),
            size,
            error = %field(&e.to_string()),
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

/// Publishes the denial of `msg` by a handler on [`AUDIT_TOPIC`](capsule_bus::AUDIT_TOPIC),
/// with the message's own attribution: `{kind: "dispatch.denied", capsule, action, decision,
/// topic, principal, reason}`. A denial of an audit entry is not re-published, so a handler
/// that denies audit entries cannot start a loop.
pub(crate) fn publish_denial(
    bus: &capsule_bus::Bus,
    msg: &capsule_bus::Message,
    capsule: &str,
    action: &str,
    decision: &'static str,
    reason: &str,
) {
    if msg.topic.as_str() == capsule_bus::AUDIT_TOPIC {
        return;
    }
    let attribution = msg.attribution();
    let body = serde_json::json!({
        "kind": "dispatch.denied",
        "capsule": capsule,
        "action": action,
        "decision": decision,
        "topic": msg.topic.as_str(),
        "principal": attribution.principal().map(PrincipalId::as_str),
        "reason": reason,
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
        hops: 0,
    });
}

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
        path = &*field(path),
        code,
        reason = &*field(&reason.to_string()),
        "fs refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_cut_escaped_and_marked() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a\nb"), "a\\nb");
        let long = "é".repeat(MAX_AUDIT_FIELD_BYTES);
        let cut = field(&long);
        assert!(cut.len() <= MAX_AUDIT_FIELD_BYTES + 32, "{}", cut.len());
        assert!(cut.ends_with(&format!("({} bytes)", long.len())));
    }

    #[test]
    fn only_valid_topics_are_logged_as_given() {
        assert_eq!(topic_field("probe.a.*"), "probe.a.*");
        let huge = format!("probe.{}", "a".repeat(1 << 20));
        let logged = topic_field(&huge);
        assert!(logged.starts_with("<invalid: probe.aaa"));
        assert!(logged.len() <= MAX_AUDIT_FIELD_BYTES + 48);
        assert_eq!(topic_field("x\ny"), "<invalid: x\\ny>");
    }
}
