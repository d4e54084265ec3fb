//! Manifests in the layouts of earlier astrid releases, loaded with real components: each
//! legacy construct must make the host behave exactly like its current equivalent (the same
//! handler calls, the same ACL and file decisions, the same settings), and the loaded capsule
//! must carry one deprecation per construct.

use capsule_bus::Attribution;
use capsule_security::LegacyConstruct;
use serde_json::{Value, json};

use crate::common::*;

const PROBER_LEGACY: &str = r#"
[[topic]]
name = "probe.out.x"
description = "what the prober says"

[capabilities]
ipc_publish = ["probe.out.*"]
ipc_subscribe = ["probe.in.*"]
fs_read = ["workspace://"]
fs_write = ["workspace://out"]

[env]
greeting = { type = "string", default = "hi" }
"#;

const PROBER_CURRENT: &str = r#"
[publish]
"probe.out.*" = {}

[subscribe]
"probe.in.*" = {}

[capabilities]
fs_read = ["*"]
fs_write = ["cwd://out"]

[env.greeting]
type = "text"
default = "hi"
"#;

/// Every decision the prober can observe for the ACLs, the workspace grants and the settings.
async fn prober_decisions(manifest: &str) -> (Vec<Value>, Vec<LegacyConstruct>) {
    let h = host();
    let c = h.load("legacy-prober", "prober.wasm", manifest).await;
    let constructs = c
        .manifest()
        .deprecations
        .iter()
        .map(|d| d.construct)
        .collect();
    let mut out = Vec::new();
    for (action, args) in [
        ("publish", json!({"topic": "probe.out.x", "payload": "{}"})),
        (
            "publish",
            json!({"topic": "probe.out.a.b", "payload": "{}"}),
        ),
        ("publish", json!({"topic": "probe.in.x", "payload": "{}"})),
        ("publish", json!({"topic": "other.x", "payload": "{}"})),
        ("subscribe", json!({"pattern": "probe.in.a"})),
        ("subscribe", json!({"pattern": "probe.in.*"})),
        ("subscribe", json!({"pattern": "probe.out.x"})),
        ("subscribe", json!({"pattern": "probe.*"})),
        ("mkdir-all", json!({"path": "cwd://out/sub"})),
        ("write", json!({"path": "cwd://out/f.txt", "content": "x"})),
        ("write", json!({"path": "cwd://f.txt", "content": "x"})),
        ("read", json!({"path": "cwd://out/f.txt"})),
        ("read", json!({"path": "cwd://missing.txt"})),
        ("config", json!({"key": "greeting"})),
    ] {
        out.push(call(&c, action, args).await);
    }
    (out, constructs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_acls_workspace_and_env_decide_like_the_current_layout() {
    let (legacy, constructs) = prober_decisions(PROBER_LEGACY).await;
    let (current, none) = prober_decisions(PROBER_CURRENT).await;
    assert_eq!(legacy, current);
    assert!(none.is_empty());
    assert_eq!(
        constructs,
        [
            LegacyConstruct::IpcPublish,
            LegacyConstruct::IpcSubscribe,
            LegacyConstruct::EnvString,
            LegacyConstruct::WorkspaceScheme,
            LegacyConstruct::TopicDeclaration,
        ]
    );
    // And the shared answers are the ones the current layout means.
    ok(&legacy[0]);
    ok(&legacy[1]);
    assert_eq!(err(&legacy[2]), "capability-denied");
    assert_eq!(err(&legacy[3]), "capability-denied");
    ok(&legacy[4]);
    ok(&legacy[5]);
    assert_eq!(err(&legacy[6]), "capability-denied");
    assert_eq!(err(&legacy[7]), "capability-denied");
    ok(&legacy[8]);
    ok(&legacy[9]);
    assert_eq!(err(&legacy[10]), "capability-denied");
    assert_eq!(ok(&legacy[11]), "x");
    assert_eq!(ok(&legacy[13]), "hi");
}

const CHAIN_LEGACY: &str = r#"
[[interceptor]]
event = "legacy.t"
action = "on_t"
priority = 10

[capabilities]
ipc_publish = ["chain.*"]

[env]
name = { type = "string", default = "legacy-chain" }
mode = { type = "string", default = "deny" }
"#;

const CHAIN_CURRENT: &str = r#"
[subscribe]
"legacy.t" = { handler = "on_t", priority = 10 }

[publish]
"chain.*" = {}

[env.name]
type = "text"
default = "legacy-chain"
[env.mode]
type = "text"
default = "deny"
"#;

/// What a chain capsule's handler reports for one message, and how the chain ended.
async fn handler_calls(manifest: &str) -> (Value, u64, usize) {
    let h = host();
    let mut rx = h.subscribe("chain.seen");
    let c = h.load("legacy-chain", "chain.wasm", manifest).await;
    let deprecations = c.manifest().deprecations.len();
    h.publish(
        "legacy.t",
        r#"{"n":1}"#,
        Attribution::Verified(pid("carol")),
    );
    let m = next(&mut rx).await;
    let seen: Value = serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
    // The report is published before the handler answers; wait for the denial to count.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while c.stats().handler_denials == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no denial counted");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (seen, c.stats().handler_denials, deprecations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_interceptors_are_called_like_subscribe_handlers() {
    let (legacy, legacy_denials, constructs) = handler_calls(CHAIN_LEGACY).await;
    let (current, current_denials, none) = handler_calls(CHAIN_CURRENT).await;
    assert_eq!(legacy, current);
    assert_eq!(legacy_denials, current_denials);
    assert_eq!(legacy["action"], "on_t");
    assert_eq!(legacy["principal"], "carol");
    assert_eq!(legacy["capsule"], "legacy-chain");
    assert_eq!(legacy["saw"], r#"{"n":1}"#);
    // interceptor, ipc_publish, env string
    assert_eq!((constructs, none), (3, 0));
}
