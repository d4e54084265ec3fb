//! Loading a set of capsules with `load_all`: dependency order from `[imports]`/`[exports]`,
//! named cycles and missing imports, importers held back until their run-loop provider calls
//! `signal-ready`, uplink capsules first, and the uplink host functions' limits.

use std::time::Duration;

use capsule_bus::Attribution;
use capsule_runtime::{GraphError, LoadError, MAX_UPLINKS};
use serde_json::{Value, json};

use crate::common::*;

const GATE_ACL: &str = "[publish]\n\"gate.*\" = \"x\"\n[subscribe]\n\"gate.*\" = \"x\"\n";

/// A gate capsule's manifest tail: its name, when it opens, and its graph entries.
fn gate(name: &str, open_on: &str, graph: &str) -> String {
    format!(
        "{GATE_ACL}[env.name]\ntype = \"text\"\ndefault = \"{name}\"\n\
         [env.open_on]\ntype = \"text\"\ndefault = \"{open_on}\"\n{graph}"
    )
}

/// Writes provider `gate-a` (exporting `test:gate` at `version`, opening on `open_on`, with
/// `extra` appended to its manifest) and importer `dep-b` (requiring `test:gate` at
/// `requirement`); returns both directories.
fn gate_pair(
    h: &Host,
    version: &str,
    open_on: &str,
    extra: &str,
    requirement: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let exports = format!("[exports]\n\"test:gate\" = \"{version}\"\n");
    let imports = format!("[imports]\n\"test:gate\" = \"{requirement}\"\n");
    let provider = h.capsule_dir(
        "gate-a",
        "gate.wasm",
        &format!("{}{extra}", gate("a", open_on, &exports)),
    );
    let importer = h.capsule_dir("dep-b", "gate.wasm", &gate("b", "", &imports));
    (provider, importer)
}

fn body(m: &capsule_bus::Message) -> Value {
    serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"))
}

/// Everything a host receiver saw, so events can be looked up in any order.
struct Seen {
    rx: capsule_bus::Receiver,
    log: Vec<(String, Value, u64)>,
}

impl Seen {
    /// The sequence number of the message on `topic` whose `field` is `value`, waiting (bounded)
    /// for it if it has not arrived yet.
    async fn seq(&mut self, topic: &str, field: &str, value: &str) -> u64 {
        loop {
            let found = self
                .log
                .iter()
                .find(|(t, b, _)| t == topic && b[field] == value);
            if let Some((_, _, seq)) = found {
                return *seq;
            }
            let m = next(&mut self.rx).await;
            self.log
                .push((m.topic.as_str().to_string(), body(&m), m.seq()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_importer_starts_only_after_its_provider_signalled_ready() {
    let h = host_with(|c| c.ready_timeout = Duration::from_secs(600));
    let (provider, importer) = gate_pair(&h, "1.2.0", "gate.open", "", "^1.1");
    let mut seen = Seen {
        rx: h.subscribe("*"),
        log: Vec::new(),
    };
    let rt = h.rt.clone();
    // Listed importer first: the order comes from the graph, not the list.
    let loading = tokio::spawn(async move { rt.load_all([importer, provider]).await });

    let loaded_a = seen
        .seq("runtime.capsule.loaded", "capsule", "gate-a")
        .await;
    let waiting = seen
        .seq("runtime.capsule.waiting", "capsule", "dep-b")
        .await;
    assert!(loaded_a < waiting);
    assert!(
        h.rt.capsule("dep-b").is_none(),
        "held back while its provider is not ready"
    );
    seen.seq("gate.started", "name", "a").await;
    h.publish("gate.open", "{}", Attribution::System);
    let a_ready = seen.seq("gate.ready", "name", "a").await;
    let b_started = seen.seq("gate.started", "name", "b").await;
    let b_loaded = seen.seq("runtime.capsule.loaded", "capsule", "dep-b").await;
    assert!(
        a_ready < b_loaded,
        "b loaded (#{b_loaded}) before a was ready (#{a_ready})"
    );
    assert!(
        a_ready < b_started,
        "b started (#{b_started}) before a was ready (#{a_ready})"
    );

    let loaded = loading
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = loaded.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["gate-a", "dep-b"]);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_signals_is_waited_for_only_until_the_timeout() {
    let h = host_with(|c| c.ready_timeout = Duration::from_millis(200));
    let (provider, importer) = gate_pair(&h, "1.0.0", "gate.open", "", "^1");
    let loaded =
        h.rt.load_all([provider, importer])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.len(), 2);
    assert!(!loaded[0].is_ready(), "the provider never opened");
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_stops_before_ready_fails_its_importer_and_the_set() {
    let h = host();
    let (provider, importer) = gate_pair(
        &h,
        "1.0.0",
        "",
        "[env.exit]\ntype = \"text\"\ndefault = \"early\"\n",
        "^1",
    );
    let e =
        h.rt.load_all([provider, importer])
            .await
            .err()
            .unwrap_or_else(|| panic!("the importer must not start"));
    assert!(
        matches!(&e, LoadError::ProviderStopped { capsule, provider, .. } if capsule == "dep-b" && provider == "gate-a"),
        "{e}"
    );
    assert!(h.rt.capsule("gate-a").is_none() && h.rt.capsule("dep-b").is_none());
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_and_missing_imports_fail_the_set_before_anything_starts() {
    let h = host();
    let edge = |me: &str, needs: &str| {
        format!("[exports]\n\"test:{me}\" = \"1.0.0\"\n[imports]\n\"test:{needs}\" = \"^1\"\n")
    };
    let free = h.capsule_dir("free", "gate.wasm", &gate("free", "", ""));
    let a = h.capsule_dir("cyc-a", "gate.wasm", &gate("a", "", &edge("a", "b")));
    let b = h.capsule_dir("cyc-b", "gate.wasm", &gate("b", "", &edge("b", "a")));
    let e =
        h.rt.load_all([free.clone(), a, b])
            .await
            .err()
            .unwrap_or_else(|| panic!("a cycle must fail"));
    assert_eq!(e.to_string(), "dependency cycle: cyc-a -> cyc-b -> cyc-a");
    assert!(
        h.rt.capsule("free").is_none(),
        "nothing starts when the set is refused"
    );

    let lonely = h.capsule_dir(
        "lonely",
        "gate.wasm",
        &gate("l", "", "[imports]\n\"test:nowhere\" = \"^2\"\n"),
    );
    let e =
        h.rt.load_all([free.clone(), lonely.clone()])
            .await
            .err()
            .unwrap_or_else(|| panic!("a missing import must fail"));
    assert!(
        matches!(&e, LoadError::Graph(GraphError::MissingImport { capsule, import, .. }) if capsule == "lonely" && import == "test:nowhere"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "capsule `lonely` imports `test:nowhere ^2`, which no capsule exports"
    );
    assert!(h.rt.capsule("free").is_none());

    // An optional import may go unmet; a capsule already running can be the provider.
    let optional = h.capsule_dir(
        "optional",
        "gate.wasm",
        &gate(
            "o",
            "",
            "[imports]\n\"test:nowhere\" = { version = \"^2\", optional = true }\n",
        ),
    );
    let provider = h.capsule_dir(
        "provider",
        "gate.wasm",
        &gate("p", "", "[exports]\n\"test:nowhere\" = \"2.0.1\"\n"),
    );
    h.rt.load(&provider).await.unwrap_or_else(|e| panic!("{e}"));
    let loaded =
        h.rt.load_all([optional, lonely])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.len(), 2);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_capsules_load_first() {
    let h = host();
    let plain = h.capsule_dir("a-plain", "prober.wasm", "");
    h.approve_all();
    let up = h.capsule_dir("z-up", "prober.wasm", "[capabilities]\nuplink = true\n");
    let loaded =
        h.rt.load_all([plain, up])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = loaded.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["z-up", "a-plain"]);
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_limits_duplicates_grants_and_a_full_inbound_channel() {
    let h = host_with(|c| c.inbound_capacity = 2);
    let mut inbound =
        h.rt.take_inbound()
            .unwrap_or_else(|| panic!("inbound taken"));
    h.approve_all();
    let up = h
        .load("bridge", "prober.wasm", "[capabilities]\nuplink = true\n")
        .await;
    let plain = h.load("plain", "prober.wasm", "").await;
    let register = |c: &capsule_runtime::Capsule, name: &str, platform: &str| {
        let c = c.clone();
        let args = json!({"name": name, "platform": platform, "profile": "bridge"});
        async move { call(&c, "uplink-register", args).await }
    };

    assert_eq!(
        err(&register(&plain, "x", "discord").await),
        "capability-denied"
    );
    let first = ok(&register(&up, "main", "discord").await)
        .as_str()
        .unwrap_or_else(|| panic!("an id"))
        .to_string();
    assert_eq!(
        err(&register(&up, "main", "discord").await),
        "invalid-input",
        "(name, platform) is unique"
    );
    ok(&register(&up, "main", "slack").await);
    assert_eq!(err(&register(&up, "", "slack").await), "invalid-input");
    for i in 2..MAX_UPLINKS {
        ok(&register(&up, &format!("u{i}"), "irc").await);
    }
    assert_eq!(up.uplinks().len(), MAX_UPLINKS);
    assert_eq!(err(&register(&up, "one-more", "irc").await), "quota");

    let send = |c: &capsule_runtime::Capsule, id: &str, content: &str| {
        let c = c.clone();
        let args = json!({"id": id, "user": "u-1", "content": content});
        async move { call(&c, "uplink-send", args).await }
    };
    assert_eq!(err(&send(&plain, &first, "hi").await), "capability-denied");
    assert_eq!(err(&send(&up, "no-such-id", "hi").await), "unknown-uplink");
    assert_eq!(ok(&send(&up, &first, "one").await), true);
    assert_eq!(ok(&send(&up, &first, "two").await), true);
    assert_eq!(
        ok(&send(&up, &first, "three").await),
        false,
        "a full inbound channel drops and says so"
    );
    let m = inbound
        .recv()
        .await
        .unwrap_or_else(|| panic!("inbound closed"));
    assert_eq!((m.capsule.as_str(), m.content.as_str()), ("bridge", "one"));
    assert_eq!(
        (m.uplink.id.as_str(), m.platform_user_id.as_str()),
        (first.as_str(), "u-1")
    );
    assert_eq!(ok(&send(&up, &first, "four").await), true, "room again");
    let rest: Vec<String> = [inbound.recv().await, inbound.recv().await]
        .into_iter()
        .flatten()
        .map(|m| m.content)
        .collect();
    assert_eq!(rest, ["two", "four"]);
    h.rt.shutdown().await;
}
