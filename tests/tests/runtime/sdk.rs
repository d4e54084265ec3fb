//! Capsules built with the public guest SDK (astrid-sdk 0.7) run unchanged, whether built for
//! wasm32-wasip2 or for wasm32-unknown-unknown and wrapped into a component.

use std::time::Duration;

use capsule_bus::Attribution;

use crate::common::*;

const SDK_ACL: &str = "[publish]\n\"sdk.*\" = \"opaque\"\n\n[subscribe]\n\"sdk.*\" = \"opaque\"\n";

async fn exercise(wasm: &str) {
    let h = host();
    let mut echoes = h.subscribe("sdk.echo");
    let mut outs = h.subscribe("sdk.out");
    let c = h.load("sdk-echo", wasm, SDK_ACL).await;
    assert!(
        c.report().exports.hook && c.report().exports.run,
        "{:?}",
        c.report().exports
    );

    let r = c
        .invoke("echo", br#"{"hello":"world"}"#, Some(pid("bob")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.action, "continue");
    assert_eq!(r.data.as_deref(), Some(r#"{"hello":"world"}"#));
    let m = next(&mut echoes).await;
    assert_eq!(m.payload.as_str(), r#"{"hello":"world"}"#);
    assert_eq!(m.attribution(), Attribution::Verified(pid("bob")));

    let unknown = c
        .invoke("nope", b"{}", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        unknown.action, "deny",
        "the SDK denies actions it does not know"
    );

    assert!(
        c.wait_ready(Duration::from_secs(20)).await,
        "the SDK run loop signals ready"
    );
    h.publish("sdk.in", r#"{"n":1}"#, Attribution::Verified(pid("carol")));
    let m = next(&mut outs).await;
    assert_eq!(m.payload.as_str(), r#"{"n":1}"#);
    assert_eq!(m.attribution(), Attribution::Verified(pid("carol")));
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_capsule_for_wasip2_runs_unchanged() {
    exercise("sdk-echo.wasm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_capsule_for_unknown_unknown_wrapped_runs_unchanged() {
    exercise("sdk-echo-uu.wasm").await;
}

/// Alice asks the agent to push to `origin/main`.
async fn ask(c: &capsule_runtime::Capsule) -> serde_json::Value {
    crate::common::call_as(
        c,
        "ask",
        serde_json::json!({"action": "push", "resource": "origin/main"}),
        Some("alice"),
    )
    .await
}

/// What the agent capsule is granted: two programs, and the identity directory.
const AGENT_GRANTS: &str = r#"[capabilities]
host_process = ["/bin/echo hello", "/bin/cat"]
identity = "admin"
"#;

/// An SDK-built agent runs granted host programs (astrid:process 1.1), asks for approval
/// through the host's handler (astrid:approval) and links a chat user to a principal
/// (astrid:identity) as its owner, unchanged; what it was not granted fails with the SDK's
/// error, and another principal does not see the owner's link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_agent_runs_programs_asks_for_approval_and_links_identities_unchanged() {
    use capsule_runtime::ActionDecision::{AllowAlways, Deny};
    use serde_json::json;

    use crate::approval::scripted;
    use crate::common::call_as;

    let h = host();
    h.approve_all();
    let c = h.load("agent", "sdk-agent.wasm", AGENT_GRANTS).await;

    let ran = call_as(&c, "run", json!({}), Some("alice")).await;
    assert_eq!(ran, json!({"stdout": "hello\n", "code": 0}));
    let piped = call_as(&c, "pipe", json!({"input": "through cat"}), Some("alice")).await;
    assert_eq!(piped, json!({"stdout": "through cat", "code": 0}));
    let refused = call_as(&c, "forbidden", json!({}), Some("alice")).await;
    let why = refused["err"]
        .as_str()
        .unwrap_or_else(|| panic!("{refused}"));
    assert!(why.to_lowercase().contains("denied"), "{why}");

    let handler = scripted(&h, &[Deny, AllowAlways], Duration::from_secs(60));
    assert_eq!(
        ask(&c).await,
        json!({"decision": "Denied", "approved": false})
    );
    assert_eq!(
        ask(&c).await,
        json!({"decision": "ApprovedAlways", "approved": true})
    );
    assert_eq!(
        ask(&c).await,
        json!({"decision": "Allowance", "approved": true}),
        "an always decision answers the next request without asking"
    );
    assert_eq!(handler.asked.lock().len(), 2);

    let onboarded = call_as(
        &c,
        "onboard",
        json!({"platform": "telegram", "id": "4242"}),
        None,
    )
    .await;
    let user = onboarded["user"]
        .as_str()
        .unwrap_or_else(|| panic!("{onboarded}"));
    assert_eq!(onboarded["resolved"], json!(user));
    assert_eq!(onboarded["links"], json!(["4242"]));
    let again = call_as(
        &c,
        "onboard",
        json!({"platform": "telegram", "id": "4242"}),
        None,
    )
    .await;
    assert!(
        again["err"].is_string(),
        "a (platform, user) pair links once: {again}"
    );
    for (who, id) in [(None, "9999"), (Some("alice"), "4242")] {
        let answer = call_as(
            &c,
            "resolve",
            json!({"platform": "telegram", "id": id}),
            who,
        )
        .await;
        assert_eq!(
            answer,
            json!({"resolved": null}),
            "{who:?} resolving {id}: nothing, or someone else's link, reads as unlinked"
        );
    }
    h.rt.shutdown().await;
}
