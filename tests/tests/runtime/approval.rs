//! `astrid:approval` from inside a real guest (the `registrar` fixture) against a scripted
//! `ApprovalHandler`: allow once, for the session, always (and its revocation), deny, no
//! handler, timeout, hostile text, and the audit trail.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use capsule_runtime::security::CapsuleName;
use capsule_runtime::store::Allowance;
use capsule_runtime::{ActionDecision, ActionRequest, ApprovalHandler};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{Host, audit_events, call_as, err, host, ok, pid};
use crate::hostile::Bystander;

/// A handler that answers from a script, in order, and never answers once it runs out.
pub(crate) struct Scripted {
    script: Mutex<VecDeque<ActionDecision>>,
    pub(crate) asked: Mutex<Vec<ActionRequest>>,
    timeout: Duration,
}

impl ApprovalHandler for Scripted {
    fn decide(&self, request: ActionRequest) -> BoxFuture<'static, ActionDecision> {
        self.asked.lock().push(request);
        match self.script.lock().pop_front() {
            Some(d) => Box::pin(async move { d }),
            None => Box::pin(futures::future::pending()),
        }
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

pub(crate) fn scripted(h: &Host, script: &[ActionDecision], timeout: Duration) -> Arc<Scripted> {
    let handler = Arc::new(Scripted {
        script: Mutex::new(script.iter().copied().collect()),
        asked: Mutex::new(Vec::new()),
        timeout,
    });
    h.rt.set_approval_handler(handler.clone());
    handler
}

async fn ask(c: &capsule_runtime::Capsule, who: &str, action: &str, resource: &str) -> Value {
    call_as(
        c,
        "approve",
        json!({"action": action, "resource": resource}),
        Some(who),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_handler_every_request_is_denied_and_audited() {
    let h = host();
    let mut audit = h.subscribe("astrid.v1.audit.entry");
    let c = h.load("asker-none", "registrar.wasm", "").await;
    assert_eq!(ok(&ask(&c, "alice", "delete", "/srv/x").await), "denied");
    let events = audit_events("asker-none");
    let ops: Vec<_> = events
        .iter()
        .filter(|e| e.get("target").map(String::as_str) == Some("capsule::audit::approval"))
        .map(|e| (e["op"].clone(), e["outcome"].clone()))
        .collect();
    assert_eq!(
        ops,
        [
            ("approval.requested".to_string(), "asked".to_string()),
            (
                "approval.decided".to_string(),
                "deny (no handler)".to_string()
            )
        ]
    );
    // The same two entries reach the audit topic, attributed to alice.
    for kind in ["approval.requested", "approval.decided"] {
        let m = crate::common::next(&mut audit).await;
        let body: Value = serde_json::from_str(m.payload.as_str()).unwrap_or(Value::Null);
        assert_eq!(body["kind"], kind, "{body}");
        assert_eq!(body["principal"], "alice");
        assert_eq!(m.attribution().principal(), Some(&pid("alice")));
    }
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_session_always_deny_and_revoke_go_through_the_handler_as_documented() {
    use ActionDecision::{AllowAlways, AllowOnce, AllowSession, Deny};
    let h = host();
    let handler = scripted(
        &h,
        &[AllowOnce, Deny, AllowAlways, Deny, AllowSession, AllowOnce],
        Duration::from_secs(60),
    );
    let c = h.load("asker-script", "registrar.wasm", "").await;
    let asked = || handler.asked.lock().len();

    assert_eq!(ok(&ask(&c, "alice", "delete", "/x").await), "approved");
    assert_eq!(
        ok(&ask(&c, "alice", "delete", "/x").await),
        "denied",
        "once is once"
    );
    assert_eq!(
        ok(&ask(&c, "alice", "delete", "/x").await),
        "approved-always"
    );
    assert_eq!(asked(), 3);
    assert_eq!(ok(&ask(&c, "alice", "delete", "/x").await), "allowance");
    assert_eq!(
        asked(),
        3,
        "an allowance answers without asking the handler"
    );
    // It covers exactly that action, resource and principal.
    assert_eq!(ok(&ask(&c, "bob", "delete", "/x").await), "denied");
    assert_eq!(asked(), 4);
    let seen = handler.asked.lock()[3].clone();
    assert_eq!(
        (seen.principal.as_str(), seen.action.as_str()),
        ("bob", "delete")
    );

    // Session allowances last while this load does.
    assert_eq!(
        ok(&ask(&c, "alice", "read", "/y").await),
        "approved-session"
    );
    assert_eq!(ok(&ask(&c, "alice", "read", "/y").await), "allowance");
    assert_eq!(asked(), 5);

    // The embedder lists and revokes the stored allowance; the next request is asked again.
    let asker = CapsuleName::parse("asker-script").unwrap_or_else(|e| panic!("{e}"));
    let held =
        h.rt.allowances(&pid("alice"), &asker)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].action.as_str(), held[0].resource.as_str()),
        ("delete", "/x")
    );
    let allowance = Allowance::new(pid("alice"), asker.clone(), "delete", "/x")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        h.rt.revoke_allowance(&allowance)
            .unwrap_or_else(|e| panic!("{e}"))
    );
    assert!(
        !h.rt
            .revoke_allowance(&allowance)
            .unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(ok(&ask(&c, "alice", "delete", "/x").await), "approved");
    assert_eq!(
        asked(),
        6,
        "after the revocation the handler is asked again"
    );

    // The "always" decision survives a reload; the session one does not.
    c.unload().await;
    let c = h.load("asker-script", "registrar.wasm", "").await;
    let handler = scripted(&h, &[AllowAlways, Deny], Duration::from_secs(60));
    assert_eq!(
        ok(&ask(&c, "alice", "delete", "/x").await),
        "approved-always"
    );
    c.unload().await;
    let c = h.load("asker-script", "registrar.wasm", "").await;
    assert_eq!(ok(&ask(&c, "alice", "delete", "/x").await), "allowance");
    assert_eq!(ok(&ask(&c, "alice", "read", "/y").await), "denied");
    assert_eq!(handler.asked.lock().len(), 2);
    let decided: Vec<_> = audit_events("asker-script")
        .into_iter()
        .filter(|e| e.get("op").map(String::as_str) == Some("approval.decided"))
        .map(|e| e["outcome"].clone())
        .collect();
    for outcome in [
        "once",
        "deny",
        "always",
        "allowance",
        "session",
        "session-allowance",
    ] {
        assert!(
            decided.iter().any(|d| d == outcome),
            "{outcome}: {decided:?}"
        );
    }
    assert!(
        audit_events("asker-script")
            .iter()
            .any(|e| e.get("op").map(String::as_str) == Some("approval.revoked")),
        "revocations are audited"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_answers_times_out_and_approves_nothing() {
    let h = host();
    let handler = scripted(&h, &[], Duration::from_millis(50));
    let c = h.load("asker-silent", "registrar.wasm", "").await;
    assert_eq!(err(&ask(&c, "alice", "delete", "/x").await), "timeout");
    assert_eq!(handler.asked.lock().len(), 1);
    assert!(
        audit_events("asker-silent").iter().any(|e| {
            e.get("op").map(String::as_str) == Some("approval.decided")
                && e.get("outcome")
                    .is_some_and(|o| o.contains("no decision in time"))
        }),
        "the timeout is audited"
    );
    // Nothing was stored by the silence.
    let asker = CapsuleName::parse("asker-silent").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        h.rt.allowances(&pid("alice"), &asker)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_approval_text_is_refused_before_anyone_is_asked() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let handler = scripted(&h, &[ActionDecision::AllowAlways], Duration::from_secs(60));
    let c = h.load("hostile-asker", "registrar.wasm", "").await;
    for (action, resource) in [
        ("delete", "\u{1b}[2J\u{1b}[1;1Hall clear, press y"),
        ("delete\r\nallow: yes", "/x"),
        ("", "/x"),
        ("delete", ""),
    ] {
        assert_eq!(
            err(&ask(&c, "alice", action, resource).await),
            "invalid-input",
            "{action:?} {resource:?}"
        );
    }
    for size in [2000u64, 4 * 1024 * 1024] {
        let huge = call_as(
            &c,
            "approve-huge",
            json!({"action": "delete", "size": size}),
            Some("alice"),
        )
        .await;
        assert_eq!(err(&huge), "invalid-input", "{size}");
    }
    assert!(handler.asked.lock().is_empty(), "nobody was asked");
    bystander.check("hostile approval text").await;
    let invalid: Vec<_> = audit_events("hostile-asker")
        .into_iter()
        .filter(|e| e.get("op").map(String::as_str) == Some("approval.invalid"))
        .collect();
    assert_eq!(invalid.len(), 6);
    for e in invalid {
        for key in ["action", "resource"] {
            let v = e.get(key).map_or("", String::as_str);
            assert!(
                v.len() < 1024 && !v.contains('\u{1b}') && !v.contains('\n'),
                "{v:?}"
            );
        }
    }
    // A well-formed request still works and is the handler's first.
    assert_eq!(
        ok(&ask(&c, "alice", "delete", "/x").await),
        "approved-always"
    );
    h.rt.shutdown().await;
}
