//! Attacks on `astrid:approval` from inside real guests: a disabled principal asking through a
//! run loop (the `hostile-asker` fixture), one principal holding every worker with unanswered
//! requests, "always" decisions stretched to look-alike text, other principals, other capsules
//! or claims, decisions arriving after the timeout, and requests racing an unload.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use capsule_bus::{Attribution, Receiver};
use capsule_runtime::security::CapsuleName;
use capsule_runtime::{ActionDecision, ActionRequest, ApprovalHandler, Capsule};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::common::{Host, audit_events, call_as, err, host, host_with, next, ok, pid};

/// Answers each principal from its own script, in order; a principal whose script is empty
/// (or absent) never gets an answer.
struct ByPrincipal {
    script: Mutex<HashMap<String, VecDeque<ActionDecision>>>,
    asked: Mutex<Vec<ActionRequest>>,
    timeout: Duration,
}

impl ApprovalHandler for ByPrincipal {
    fn decide(&self, request: ActionRequest) -> BoxFuture<'static, ActionDecision> {
        let answer = self
            .script
            .lock()
            .get_mut(request.principal.as_str())
            .and_then(VecDeque::pop_front);
        self.asked.lock().push(request);
        match answer {
            Some(d) => Box::pin(async move { d }),
            None => Box::pin(futures::future::pending()),
        }
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn by_principal(
    h: &Host,
    script: &[(&str, &[ActionDecision])],
    timeout: Duration,
) -> Arc<ByPrincipal> {
    let handler = Arc::new(ByPrincipal {
        script: Mutex::new(
            script
                .iter()
                .map(|(p, s)| (p.to_string(), s.iter().copied().collect()))
                .collect(),
        ),
        asked: Mutex::new(Vec::new()),
        timeout,
    });
    h.rt.set_approval_handler(handler.clone());
    handler
}

async fn ask(c: &Capsule, who: &str, action: &str, resource: &str) -> Value {
    call_as(
        c,
        "approve",
        json!({"action": action, "resource": resource}),
        Some(who),
    )
    .await
}

/// Waits (bounded) until `done` holds; panics naming `what` otherwise.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The run-loop asker: requests on `ask.*`, answers on `ask-reply.*`.
const LOOP: &str = "[publish]\n\"ask-reply.*\" = \"x\"\n\n[subscribe]\n\"ask.*\" = \"x\"\n";

/// The `hostile-asker` run loop and the receiver of its answers.
struct Loop {
    _capsule: Capsule,
    answers: Receiver,
}

impl Loop {
    async fn start(h: &Host, name: &str) -> Self {
        let answers = h.subscribe("ask-reply.*");
        let capsule = h.load(name, "hostile-asker.wasm", LOOP).await;
        assert!(capsule.wait_ready(Duration::from_secs(20)).await);
        Self {
            _capsule: capsule,
            answers,
        }
    }

    /// Has the host deliver a request (tagged `tag`) to the loop attributed as `attribution`
    /// and returns the loop's answer.
    async fn ask(
        &mut self,
        h: &Host,
        tag: &str,
        action: &str,
        resource: &str,
        attribution: Attribution,
    ) -> Value {
        Self::send(h, tag, action, resource, attribution);
        loop {
            let m = next(&mut self.answers).await;
            let v: Value =
                serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
            if v["tag"] == tag {
                return v;
            }
        }
    }

    fn send(h: &Host, tag: &str, action: &str, resource: &str, attribution: Attribution) {
        let req = json!({"tag": tag, "action": action, "resource": resource});
        h.publish("ask.req", &req.to_string(), attribution);
    }
}

/// The outcomes of the `approval.decided` audit events of `capsule` for `principal`.
fn decided(capsule: &str, principal: &str) -> Vec<String> {
    audit_events(capsule)
        .into_iter()
        .filter(|e| e.get("op").map(String::as_str) == Some("approval.decided"))
        .filter(|e| e.get("principal").map(String::as_str) == Some(principal))
        .filter_map(|e| e.get("outcome").cloned())
        .collect()
}

/// A principal the operator disabled acts through no capability: its message still queued for
/// a run loop must neither reach the operator's handler nor use the "always" allowance it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_principal_is_denied_without_asking_and_its_allowance_does_not_count() {
    use ActionDecision::{AllowAlways, AllowOnce, Deny};
    let h = host();
    let handler = by_principal(
        &h,
        &[
            ("ann", &[AllowAlways, AllowOnce, AllowOnce]),
            ("default", &[Deny, Deny]),
        ],
        Duration::from_secs(600),
    );
    let mut asker = Loop::start(&h, "asker-loop").await;
    let ann = || Attribution::Verified(pid("ann"));
    let first = asker.ask(&h, "a1", "delete", "/x", ann()).await;
    assert_eq!(first["ok"], "approved-always", "{first}");
    let again = asker.ask(&h, "a2", "delete", "/x", ann()).await;
    assert_eq!(again["ok"], "allowance", "{again}");
    assert_eq!(handler.asked.lock().len(), 1);

    h.profile("ann", "enabled = false\n");
    // A run loop re-reads a principal's profile when the principal in scope changes, so the
    // owner's message comes first. Ann, disabled, cannot publish the loop's answers: the
    // effect of her requests is read from the audit trail.
    let owner = asker
        .ask(
            &h,
            "o1",
            "read",
            "/o",
            Attribution::Verified(pid("default")),
        )
        .await;
    assert_eq!(owner["ok"], "denied", "{owner}");
    let before = decided("asker-loop", "ann").len();
    Loop::send(&h, "d1", "delete", "/x", ann());
    Loop::send(&h, "d2", "read", "/y", ann());
    until(
        "both of the disabled principal's requests are decided",
        || decided("asker-loop", "ann").len() >= before + 2,
    )
    .await;
    let after = decided("asker-loop", "ann");
    assert_eq!(
        after[before..],
        ["deny (principal refused)", "deny (principal refused)"],
        "a disabled principal used its allowance or reached the handler: {after:?}"
    );
    assert_eq!(
        handler.asked.lock().len(),
        2,
        "only the owner was asked about"
    );
    assert!(
        audit_events("asker-loop")
            .iter()
            .filter(|e| e.get("principal").map(String::as_str) == Some("ann"))
            .any(|e| e.get("op").map(String::as_str) == Some("approval.refused")),
        "the refusal is audited with its reason"
    );

    // Enabled again, the allowance she was given still answers.
    h.profile("ann", "enabled = true\n");
    asker
        .ask(
            &h,
            "o2",
            "read",
            "/o",
            Attribution::Verified(pid("default")),
        )
        .await;
    let back = asker.ask(&h, "a3", "delete", "/x", ann()).await;
    assert_eq!(back["ok"], "allowance", "{back}");
    h.rt.shutdown().await;
}

/// One principal's unanswered requests hold at most one of the capsule's workers: its second
/// concurrent request is refused at once with a clear error, and another principal's request
/// is served while the first still waits. An unload then ends the wait with `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_waits_for_one_answer_at_a_time_and_cannot_hold_every_worker() {
    let h = host_with(|c| c.handler_pool_size = 2);
    let handler = by_principal(
        &h,
        &[("alice", &[ActionDecision::AllowOnce])],
        Duration::from_secs(600),
    );
    let c = h.load("asker-pool", "registrar.wasm", "").await;
    let first = {
        let c = c.clone();
        tokio::spawn(async move { ask(&c, "mallory", "delete", "/a").await })
    };
    until("mallory's first request reaches the handler", || {
        handler.asked.lock().len() == 1
    })
    .await;
    let second = tokio::time::timeout(Duration::from_secs(60), ask(&c, "mallory", "delete", "/b"))
        .await
        .unwrap_or_else(|_| panic!("mallory's second request waits for the handler too"));
    let refused = err(&second);
    assert!(
        refused.starts_with("unknown:") && refused.contains("already waiting"),
        "{refused}"
    );
    let alice = tokio::time::timeout(Duration::from_secs(60), ask(&c, "alice", "read", "/c"))
        .await
        .unwrap_or_else(|_| panic!("alice's request waited behind mallory's"));
    assert_eq!(ok(&alice), "approved");
    let asked: Vec<_> = handler
        .asked
        .lock()
        .iter()
        .map(|r| (r.principal.to_string(), r.resource.clone()))
        .collect();
    assert_eq!(
        asked,
        [
            ("mallory".to_string(), "/a".to_string()),
            ("alice".to_string(), "/c".to_string())
        ]
    );
    assert!(
        decided("asker-pool", "mallory")
            .iter()
            .any(|o| o.contains("already waiting")),
        "the refusal is audited"
    );

    // Unloading ends the first wait: the guest hears `timeout`, nothing is approved and the
    // host does not hang on the handler that never answers.
    tokio::time::timeout(Duration::from_secs(60), c.unload())
        .await
        .unwrap_or_else(|_| panic!("the unload waited for the handler"));
    let first = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .unwrap_or_else(|_| panic!("the waiting call never ended"));
    match first {
        Ok(v) => assert_eq!(err(&v), "timeout", "{v}"),
        // The call may also end as an unloaded capsule's call; it must not be approved.
        Err(e) => assert!(e.is_panic(), "{e}"),
    }
    h.rt.shutdown().await;
}

/// An "always" decision covers exactly its principal, capsule, action and resource: case,
/// trailing slashes, dot segments, spaces and look-alike letters are other requests (asked
/// again), invisible characters and NULs are refused before anyone is asked, and a claim of
/// the same principal never uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_decision_is_never_stretched_to_another_principal_capsule_or_text() {
    use ActionDecision::{AllowAlways, Deny};
    let h = host();
    let denials: Vec<ActionDecision> = std::iter::once(AllowAlways)
        .chain(std::iter::repeat_n(Deny, 16))
        .collect();
    let handler = by_principal(
        &h,
        &[("alice", &denials), ("bob", &[Deny])],
        Duration::from_secs(600),
    );
    let a = h.load("asker-a", "registrar.wasm", "").await;
    let b = h.load("asker-b", "registrar.wasm", "").await;
    assert_eq!(
        ok(&ask(&a, "alice", "delete", "/srv/x").await),
        "approved-always"
    );
    assert_eq!(ok(&ask(&a, "alice", "delete", "/srv/x").await), "allowance");
    let asked = || handler.asked.lock().len();
    assert_eq!(asked(), 1);

    assert_eq!(ok(&ask(&a, "bob", "delete", "/srv/x").await), "denied");
    assert_eq!(ok(&ask(&b, "alice", "delete", "/srv/x").await), "denied");
    let mut expected = 3;
    assert_eq!(asked(), expected);
    for (action, resource) in [
        ("delete", "/SRV/X"),
        ("Delete", "/srv/x"),
        ("delete", "/srv/x/"),
        ("delete", "/srv/./x"),
        ("delete", "/srv//x"),
        ("delete", "/srv/x "),
        ("delete ", "/srv/x"),
        ("delete", "/srv/\u{445}"),
        ("dеlete", "/srv/x"),
    ] {
        assert_eq!(
            ok(&ask(&a, "alice", action, resource).await),
            "denied",
            "{action:?} {resource:?}"
        );
        expected += 1;
        assert_eq!(asked(), expected, "{action:?} {resource:?} was asked about");
    }
    for (action, resource) in [
        ("delete", "/srv/x\u{200b}"),
        ("delete", "/srv/x\u{fe0f}"),
        ("delete", "/srv/\u{ad}x"),
        ("delete", "/srv/x\u{e0001}"),
        ("delete\u{2060}", "/srv/x"),
        ("delete\0/srv/x", "y"),
        ("delete", "/srv/x\0"),
    ] {
        assert_eq!(
            err(&ask(&a, "alice", action, resource).await),
            "invalid-input",
            "{action:?} {resource:?}"
        );
    }
    assert_eq!(asked(), expected, "nobody was asked about invisible text");

    // A claim naming alice, through a run loop of the same capsule name, is asked (marked as
    // a claim) and never answered by alice's allowance.
    a.unload().await;
    let mut lp = Loop::start(&h, "asker-a").await;
    let claimed = lp
        .ask(
            &h,
            "c1",
            "delete",
            "/srv/x",
            Attribution::Claimed(pid("alice")),
        )
        .await;
    assert_eq!(claimed["ok"], "denied", "{claimed}");
    let seen = handler.asked.lock().last().cloned();
    assert!(
        seen.is_some_and(|r| r.claimed),
        "the handler sees the claim"
    );
    let verified = lp
        .ask(
            &h,
            "v1",
            "delete",
            "/srv/x",
            Attribution::Verified(pid("alice")),
        )
        .await;
    assert_eq!(verified["ok"], "allowance", "{verified}");
    h.rt.shutdown().await;
}

/// A handler that keeps every request's answer channel so the test answers when it likes.
struct Late {
    replies: Mutex<Vec<oneshot::Sender<ActionDecision>>>,
}

impl ApprovalHandler for Late {
    fn decide(&self, _request: ActionRequest) -> BoxFuture<'static, ActionDecision> {
        let (tx, rx) = oneshot::channel();
        self.replies.lock().push(tx);
        Box::pin(async move { rx.await.unwrap_or(ActionDecision::Deny) })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(50)
    }
}

/// "Always" arriving after the request timed out approves nothing and stores nothing: the next
/// identical request is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_decision_arriving_after_the_timeout_stores_nothing() {
    let h = host();
    let handler = Arc::new(Late {
        replies: Mutex::new(Vec::new()),
    });
    h.rt.set_approval_handler(handler.clone());
    let c = h.load("asker-late", "registrar.wasm", "").await;
    assert_eq!(err(&ask(&c, "alice", "delete", "/x").await), "timeout");
    let late = handler
        .replies
        .lock()
        .pop()
        .unwrap_or_else(|| panic!("the handler was asked"));
    assert!(
        late.send(ActionDecision::AllowAlways).is_err(),
        "the timed-out request no longer listens"
    );
    let asker = CapsuleName::parse("asker-late").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        h.rt.allowances(&pid("alice"), &asker)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    assert_eq!(err(&ask(&c, "alice", "delete", "/x").await), "timeout");
    assert_eq!(handler.replies.lock().len(), 1, "asked again");
    h.rt.shutdown().await;
}

/// The identity directory is host-wide: an admin capsule creating users and linking
/// identities without end fills only its own share (a typed `unknown("limit reached: …")`),
/// and another capsule still creates and links; an unlink gives the maker its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_capsule_fills_only_its_own_share_of_the_identity_directory() {
    use capsule_runtime::store::identity::IdentityLimits;
    const ADMIN: &str = "[capabilities]\nidentity = \"admin\"\n";
    let h = host_with(|c| c.identity_limits = IdentityLimits::new(3, 4));
    h.approve_all();
    let filler = h.load("filler", "registrar.wasm", ADMIN).await;
    let other = h.load("other", "registrar.wasm", ADMIN).await;
    let create = |c: &Capsule| {
        let c = c.clone();
        async move { call_as(&c, "create-user", json!({"name": "n"}), None).await }
    };
    let link = |c: &Capsule, user: &str, to: &Value| {
        let (c, user, to) = (c.clone(), user.to_string(), to.clone());
        async move {
            call_as(
                &c,
                "link",
                json!({"platform": "chat", "user": user, "to": to, "method": "m"}),
                None,
            )
            .await
        }
    };
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(ok(&create(&filler).await).clone());
    }
    let full = create(&filler).await;
    assert_eq!(
        err(&full),
        "unknown:limit reached: at most 3 users created by one capsule"
    );
    let theirs = ok(&create(&other).await).clone();
    for i in 0..4 {
        ok(&link(&filler, &format!("f{i}"), &made[i % 3]).await);
    }
    assert_eq!(
        err(&link(&filler, "f4", &made[0]).await),
        "unknown:limit reached: at most 4 links made by one capsule"
    );
    assert_eq!(
        err(&call_as(
            &other,
            "resolve",
            json!({"platform": "chat", "user": "f4"}),
            None
        )
        .await),
        "link-not-found",
        "the refused link left nothing"
    );
    ok(&link(&other, "o0", &theirs).await);
    // Unlinked (by anyone), a link is given back to the capsule that made it.
    ok(&call_as(
        &other,
        "unlink",
        json!({"platform": "chat", "user": "f0"}),
        None,
    )
    .await);
    ok(&link(&filler, "f4", &made[0]).await);
    h.rt.shutdown().await;
}
