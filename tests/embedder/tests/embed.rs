//! An embedder's day with the public API only: load capsules, publish as two principals,
//! await replies with `request`, read why a message was denied from the dispatch outcomes,
//! and lower a principal's quota through a written profile — with no `uuid`, bus or security
//! crate of its own.

use std::path::PathBuf;
use std::time::Duration;

use capsule_runtime::{
    LinkResult, PrincipalId, PrincipalProfile, ProfileStore, RequestError, Runtime, RuntimeConfig,
    Sender,
};

/// Bounds a hang, not a speed: a debug host on a loaded machine is slow.
const WAIT: Duration = Duration::from_secs(60);

fn state_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("embedder-{name}-{}", std::process::id()));
    let _fresh = std::fs::remove_dir_all(&dir);
    dir
}

fn json(m: &capsule_runtime::Message) -> String {
    m.payload.as_str().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_talks_to_capsules_through_the_public_api() {
    let state = state_dir("talk");
    let mut config = RuntimeConfig::new(&state);
    config.cache_dir =
        Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capsule-compile-cache"));
    let rt = Runtime::new(config).unwrap_or_else(|e| panic!("{e}"));
    for name in ["notes", "moderation"] {
        rt.load(capsule_tests::example(name))
            .await
            .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    }
    let alice = Sender::principal("alice").unwrap_or_else(|e| panic!("{e}"));
    let bob = Sender::principal("bob").unwrap_or_else(|e| panic!("{e}"));

    // Two principals, each awaiting its own reply.
    for (who, text) in [(&alice, "alice's note"), (&bob, "bob's note")] {
        let reply = rt
            .request(
                "notes.add",
                &format!(r#"{{"text":"{text}"}}"#),
                who.clone(),
                "notes.reply",
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json(&reply), r#"{"saved":1}"#);
    }
    for (who, name, text) in [
        (&alice, "alice", "alice's note"),
        (&bob, "bob", "bob's note"),
    ] {
        let reply = rt
            .request("notes.list", "{}", who.clone(), "notes.reply", WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json(&reply), format!(r#"{{"notes":["{text}"]}}"#));
        assert_eq!(reply.principal().map(PrincipalId::as_str), Some(name));
    }

    // Why a message stopped: the moderation handler's denial, with its reason.
    let mut outcomes = rt.dispatch_outcomes();
    rt.publish("chat.post", r#"{"text":"cheap spam here"}"#, bob.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let denied = tokio::time::timeout(WAIT, async {
        loop {
            match outcomes.next().await {
                Some(o) if o.capsule == "moderation" => return o,
                Some(_) => {}
                None => panic!("the runtime went away"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no outcome from moderation"));
    assert_eq!(denied.action, "moderate");
    assert_eq!(denied.topic.as_str(), "chat.post");
    assert_eq!(
        denied.principal.as_ref().map(PrincipalId::as_str),
        Some("bob")
    );
    match &denied.result {
        LinkResult::Deny { reason } => assert!(reason.contains("spam"), "{reason}"),
        other => panic!("expected a denial, got {other:?}"),
    }

    // A profile that lowers carol's storage quota below one note: her add is refused, so
    // no reply comes, and the outcome says the handler did not succeed.
    let carol = PrincipalId::parse("carol").unwrap_or_else(|e| panic!("{e}"));
    let mut profile = PrincipalProfile::default();
    profile.quotas.max_storage_bytes = 16;
    ProfileStore::new(rt.paths().state_dir())
        .set(&carol, &profile)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut outcomes = rt.dispatch_outcomes();
    match rt
        .request(
            "notes.add",
            r#"{"text":"a note longer than sixteen bytes"}"#,
            Sender::Principal(carol.clone()),
            "notes.reply",
            Duration::from_millis(500),
        )
        .await
    {
        Err(RequestError::Timeout { pattern, .. }) => assert_eq!(pattern, "notes.reply"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let carols = tokio::time::timeout(WAIT, async {
        loop {
            match outcomes.next().await {
                Some(o) if o.principal.as_ref() == Some(&carol) => return o,
                Some(_) => {}
                None => panic!("the runtime went away"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no outcome for carol"));
    assert_eq!(
        (carols.capsule.as_str(), carols.action.as_str()),
        ("notes", "add")
    );
    assert_ne!(
        carols.result,
        LinkResult::Continue { replaced: false },
        "{carols:?}"
    );
    eprintln!("carol's add: {:?}", carols.result);

    // The state layout: alice's home exists where the runtime says.
    let alice_id = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.paths().principal_home(&alice_id).is_dir());
    assert_eq!(
        rt.paths().principal_profile(&carol),
        ProfileStore::new(&state).path(&carol)
    );
    rt.shutdown().await;
    let _cleaned = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publishes_are_typed_errors_and_publish_nothing() {
    use capsule_runtime::PublishError;
    let state = state_dir("refuse");
    let rt = Runtime::new(RuntimeConfig::new(&state)).unwrap_or_else(|e| panic!("{e}"));
    let mut outcomes = rt.dispatch_outcomes();
    let alice = Sender::principal("alice").unwrap_or_else(|e| panic!("{e}"));
    let big = format!("\"{}\"", "x".repeat(capsule_runtime::MAX_PAYLOAD_BYTES));
    for (topic, payload, want) in [
        ("bad..topic", "{}", "topic"),
        ("astrid.v1.audit.entry", "{}", "audit"),
        ("a.b", "not json", "payload"),
        ("a.b", big.as_str(), "large"),
    ] {
        let e = rt
            .publish(topic, payload, alice.clone())
            .err()
            .unwrap_or_else(|| panic!("{topic} {payload:.20} published"));
        let kind = match e {
            PublishError::Topic { .. } => "topic",
            PublishError::AuditTopic => "audit",
            PublishError::Payload(_) => "payload",
            PublishError::TooLarge { .. } => "large",
            other => panic!("{other}"),
        };
        assert_eq!(kind, want);
    }
    assert!(Sender::principal("Not A Principal").is_err());
    // A disabled principal may not publish, nor request.
    let dave = PrincipalId::parse("dave").unwrap_or_else(|e| panic!("{e}"));
    let off = PrincipalProfile {
        enabled: false,
        ..PrincipalProfile::default()
    };
    ProfileStore::new(&state)
        .set(&dave, &off)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        rt.publish("a.b", "{}", Sender::Principal(dave.clone())),
        Err(PublishError::Principal { .. })
    ));
    assert!(matches!(
        rt.request("a.b", "{}", Sender::Principal(dave), "a.reply", WAIT)
            .await,
        Err(RequestError::Publish(PublishError::Principal { .. }))
    ));
    assert!(matches!(
        rt.request("a.b", "{}", Sender::System, "a..reply", WAIT)
            .await,
        Err(RequestError::ReplyPattern { .. })
    ));
    // Nobody answers: a typed timeout.
    match rt
        .request(
            "a.b",
            "{}",
            Sender::System,
            "a.reply",
            Duration::from_millis(50),
        )
        .await
    {
        Err(RequestError::Timeout { waited, .. }) => assert_eq!(waited, Duration::from_millis(50)),
        other => panic!("{other:?}"),
    }
    // The system may publish; nothing was dispatched for any of the refusals.
    let sent = rt
        .publish("a.b", "{}", Sender::System)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sent.dropped, 0);
    assert!(outcomes.try_next().is_none());
    rt.shutdown().await;
    let _cleaned = std::fs::remove_dir_all(&state);
}
