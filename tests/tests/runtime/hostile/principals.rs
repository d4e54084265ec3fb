//! Cross-principal: envelopes, subscriptions, output, attribution and handler scoping.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use capsule_bus::{Attribution, Receiver};
use capsule_runtime::InvokeError;
use serde_json::{Value, json};

use super::Bystander;
use crate::common::*;

/// The server capsule's manifest: requests on `serve.*`, a gate on `serve-gate.*`, answers on
/// `served.*`.
const SERVER: &str = "[publish]\n\"served.*\" = \"x\"\n\n[subscribe]\n\"serve.*\" = \"x\"\n\"serve-gate.*\" = \"x\"\n";

/// A client that may publish requests to the server.
const CLIENT: &str =
    "[publish]\n\"serve.*\" = \"x\"\n\"probe.*\" = \"x\"\n\n[subscribe]\n\"probe.*\" = \"x\"\n";

/// Answers of the server, collected by tag.
struct Answers {
    rx: Receiver,
    seen: HashMap<String, (Value, Attribution)>,
}

impl Answers {
    fn new(h: &Host) -> Self {
        Self {
            rx: h.subscribe("served.*"),
            seen: HashMap::new(),
        }
    }

    /// Waits (bounded) for the answer tagged `tag`.
    async fn get(&mut self, tag: &str) -> (Value, Attribution) {
        while !self.seen.contains_key(tag) {
            let m = next(&mut self.rx).await;
            let v: Value =
                serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
            let t = v["tag"].as_str().unwrap_or_default().to_string();
            self.seen.insert(t, (v, m.attribution()));
        }
        self.seen[tag].clone()
    }
}

/// Has `client` publish one request to the server as `who`.
async fn request(client: &capsule_runtime::Capsule, who: &str, req: Value) {
    ok(&call_as(
        client,
        "publish",
        json!({"topic": "serve.req", "payload": req.to_string()}),
        Some(who),
    )
    .await);
}

fn log_of(h: &Host, principal: &str, capsule: &str) -> String {
    let path: PathBuf = h
        .state()
        .join("home")
        .join(principal)
        .join(".local/log")
        .join(format!("{capsule}.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
/// Item 1: a run loop's envelope never mixes principals, so a well-behaved server answers
/// each principal from that principal's own KV. The attack queues alice's and bob's requests
/// behind a held server so that they are drained together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_never_mixes_principals() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let mut answers = Answers::new(&h);
    let server = h.load("kvserver", "hostile-kvserver.wasm", SERVER).await;
    assert!(server.wait_ready(Duration::from_secs(20)).await);
    let client = h.load("client", "prober.wasm", CLIENT).await;

    for (who, value) in [("alice", "alice-data"), ("bob", "bob-data")] {
        let tag = format!("{who}-set");
        request(
            &client,
            who,
            json!({"op": "set", "tag": tag, "value": value}),
        )
        .await;
        assert_eq!(answers.get(&tag).await.0["ok"], true);
    }
    // The server holds on its gate; both reads queue up behind it.
    request(&client, "alice", json!({"op": "hold", "tag": "hold"})).await;
    answers.get("hold").await;
    request(&client, "alice", json!({"op": "get", "tag": "alice-get"})).await;
    request(&client, "bob", json!({"op": "get", "tag": "bob-get"})).await;
    bystander.check("mixed-principal envelope").await;
    h.publish("serve-gate.go", "{}", Attribution::System);

    let (a, a_attr) = answers.get("alice-get").await;
    let (b, b_attr) = answers.get("bob-get").await;
    assert_eq!(a["value"], "alice-data");
    assert_eq!(a["caller"], "alice");
    assert_eq!(a_attr, Attribution::Verified(pid("alice")));
    assert_eq!(
        b["value"], "bob-data",
        "bob is answered from his own KV, never alice's"
    );
    assert_eq!(b["caller"], "bob");
    assert_eq!(b_attr, Attribution::Verified(pid("bob")));

    // An empty drain keeps the scope of the last message.
    request(&client, "bob", json!({"op": "idle", "tag": "bob-idle"})).await;
    assert_eq!(answers.get("bob-idle").await.0["caller"], "bob");

    let recvs: Vec<_> = audit_events("kvserver")
        .into_iter()
        .filter(|e| e.get("op").map(String::as_str) == Some("subscription.recv"))
        .collect();
    assert!(recvs.iter().any(|e| e["principal"] == "bob"), "{recvs:?}");
    assert!(
        recvs.iter().all(|e| e["size"] == "0" || e["size"] == "1"),
        "every envelope here carries one message of one principal: {recvs:?}"
    );
    bystander.check("after the mixed-principal attack").await;
    h.rt.shutdown().await;
}
/// A run loop draining a message from a principal whose profile the host cannot use acts for
/// that principal, and its KV calls are refused; the guest learns that it may not store, never
/// why (the reason names the profile's host path and its content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_principal_learns_nothing_of_the_host_from_kv() {
    let h = host();
    h.profile("mallory", "quotas = = \"broken\"\n");
    let mut answers = Answers::new(&h);
    let server = h.load("kvserver", "hostile-kvserver.wasm", SERVER).await;
    assert!(server.wait_ready(Duration::from_secs(20)).await);

    let req = json!({"op": "set", "tag": "mallory-set", "value": "x"});
    h.publish(
        "serve.req",
        &req.to_string(),
        Attribution::Verified(pid("mallory")),
    );
    // Its answer cannot be published (mallory may not act), but its log is kept.
    until("mallory's KV error in her log", || {
        log_of(&h, "mallory", "kvserver").contains("kv-error mallory-set")
    })
    .await;
    let log = log_of(&h, "mallory", "kvserver");
    let error = log
        .lines()
        .find(|l| l.contains("kv-error mallory-set"))
        .unwrap_or_default();
    assert!(error.contains("may not use storage"), "{error}");
    let state = h.state().display().to_string();
    for secret in [
        state.as_str(),
        "profiles",
        "mallory.toml",
        "broken",
        "malformed",
    ] {
        assert!(
            !error.contains(secret),
            "the guest is told `{error}`, which reveals `{secret}`"
        );
    }

    // The same server still serves a usable principal.
    let req = json!({"op": "set", "tag": "alice-set", "value": "y"});
    h.publish(
        "serve.req",
        &req.to_string(),
        Attribution::Verified(pid("alice")),
    );
    assert_eq!(answers.get("alice-set").await.0["ok"], true);
    h.rt.shutdown().await;
}

/// A principal disabled while a run loop is acting for it stops acting at its next message,
/// even when no other principal's message comes in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_disabled_between_its_messages_stops_acting_at_the_next() {
    let h = host();
    let mut answers = Answers::new(&h);
    let server = h.load("kvserver", "hostile-kvserver.wasm", SERVER).await;
    assert!(server.wait_ready(Duration::from_secs(20)).await);
    let send = |tag: &str| {
        let req = json!({"op": "set", "tag": tag, "value": tag});
        h.publish(
            "serve.req",
            &req.to_string(),
            Attribution::Verified(pid("alice")),
        );
    };
    send("before");
    assert_eq!(answers.get("before").await.0["ok"], true);

    h.profile("alice", "enabled = false\n");
    send("after");
    until("alice's refused KV call in her log", || {
        log_of(&h, "alice", "kvserver").contains("kv-error after")
    })
    .await;
    h.rt.shutdown().await;
}

/// Item 2: a subscription a guest opens while a handler call serves alice admits only alice's
/// messages and system messages, so bob cannot inject replies into alice's call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_opened_in_a_handler_call_admits_only_its_principal() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let listener = h.load("listener", "prober.wasm", PROBER_ACL).await;
    let attacker = h.load("attacker", "prober.wasm", PROBER_ACL).await;
    let index = ok(&call_as(
        &listener,
        "subscribe",
        json!({"pattern": "probe.reply"}),
        Some("alice"),
    )
    .await)
    .clone();
    for who in ["bob", "alice", "bob"] {
        ok(&call_as(
            &attacker,
            "publish",
            json!({"topic": "probe.reply", "payload": json!({"from": who}).to_string()}),
            Some(who),
        )
        .await);
    }
    h.publish("probe.reply", r#"{"from":"system"}"#, Attribution::System);
    bystander.check("injected replies").await;

    let mut seen = Vec::new();
    loop {
        let env =
            ok(&call_as(&listener, "poll", json!({"index": index}), Some("alice")).await).clone();
        let messages = env["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        seen.extend(messages.into_iter().map(|m| m["principal"].clone()));
    }
    assert_eq!(
        seen,
        vec![json!({"verified": "alice"}), json!("system")],
        "only alice's own message and the system's reach alice's subscription"
    );
    let scoped = audit_events("listener").into_iter().any(|e| {
        e.get("message").map(String::as_str)
            == Some("subscription scoped to the principal in scope")
            && e.get("principal").map(String::as_str) == Some("alice")
    });
    assert!(scoped, "{:?}", audit_events("listener"));

    // An audit-covering subscription shows only the owner's entries; opened while serving
    // someone else it would show nothing, so it is refused.
    let auditor = h
        .load(
            "auditor",
            "prober.wasm",
            "[subscribe]\n\"astrid.*\" = \"x\"\n",
        )
        .await;
    let r = call_as(
        &auditor,
        "subscribe",
        json!({"pattern": "astrid.v1.audit.*"}),
        Some("bob"),
    )
    .await;
    assert_eq!(err(&r), "capability-denied");
    let refused = audit_events("auditor").into_iter().any(|e| {
        e.get("op").map(String::as_str) == Some("subscribe")
            && e.get("error")
                .is_some_and(|m| m.contains("would admit nothing"))
    });
    assert!(refused, "{:?}", audit_events("auditor"));
    ok(&call(
        &auditor,
        "subscribe",
        json!({"pattern": "astrid.v1.audit.*"}),
    )
    .await);
    h.rt.shutdown().await;
}
/// Item 3: guest stdout/stderr go to the log of the principal in scope (handler calls and run
/// loops alike), never to the owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_goes_to_the_log_of_the_principal_in_scope() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h.load("printer", "prober.wasm", "").await;
    ok(&call_as(
        &p,
        "print",
        json!({"stdout": "bob-out-1", "stderr": "bob-err-1"}),
        Some("bob"),
    )
    .await);
    ok(&call(&p, "print", json!({"stdout": "owner-out-1"})).await);
    let bob = log_of(&h, "bob", "printer");
    let owner = log_of(&h, "default", "printer");
    assert!(bob.contains("STDOUT bob-out-1"), "{bob}");
    assert!(bob.contains("STDERR bob-err-1"), "{bob}");
    assert!(
        !owner.contains("bob-"),
        "bob's output in the owner's log: {owner}"
    );
    assert!(owner.contains("STDOUT owner-out-1"), "{owner}");
    assert!(!bob.contains("owner-out-1"), "{bob}");

    // A run loop prints while serving whoever its last envelope was for.
    let mut answers = Answers::new(&h);
    let server = h.load("kvserver", "hostile-kvserver.wasm", SERVER).await;
    assert!(server.wait_ready(Duration::from_secs(20)).await);
    let client = h.load("client", "prober.wasm", CLIENT).await;
    request(&client, "bob", json!({"op": "get", "tag": "bob-print"})).await;
    answers.get("bob-print").await;
    bystander.check("output routing").await;
    let bob = log_of(&h, "bob", "kvserver");
    let owner = log_of(&h, "default", "kvserver");
    assert!(bob.contains("STDOUT served bob-print"), "{bob}");
    assert!(!owner.contains("bob-print"), "{owner}");
    h.rt.shutdown().await;
}
/// Item 3: a fresh instance made for a principal is instantiated under that principal's memory
/// quota and charged to its ledger, not the owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_is_made_under_the_callers_memory_quota() {
    let h = host();
    h.profile("tiny", "[quotas]\nmax_memory_bytes = 65536\n");
    let bystander = Bystander::start(&h).await;
    let p = h.load("mem", "prober.wasm", "").await;
    match p.invoke("noop", b"{}", Some(pid("tiny"))).await {
        Err(InvokeError::Instantiate { capsule, .. }) => assert_eq!(capsule, "mem"),
        other => panic!("tiny's instance must not fit its 64 KiB quota: {other:?}"),
    }
    let stats = h.rt.memory_stats();
    assert!(
        stats
            .get(&pid("tiny"))
            .is_some_and(|s| s.refused_grows >= 1),
        "the refused instantiation is charged to tiny: {stats:?}"
    );
    // Another principal's fresh instance is charged to that principal.
    ok(&call_as(&p, "noop", json!({}), Some("pat")).await);
    let pat =
        h.rt.memory_stats()
            .get(&pid("pat"))
            .copied()
            .unwrap_or_default();
    assert!(pat.peak_bytes >= 65536, "{pat:?}");
    bystander.check("memory quota at instantiation").await;
    h.rt.shutdown().await;
}
/// Item 4: a claim stays a claim. A run loop and a handler serving a claimed principal publish
/// as `claimed`, and a guest receiving their messages sees `claimed` in the WIT attribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_stays_claimed_across_a_hop() {
    let h = host();
    // The uplink and the audit-covering handlers are the operator's grants.
    h.approve_all();
    let bystander = Bystander::start(&h).await;
    let mut replies = h.subscribe("pong.reply");
    let mut seen = h.subscribe("chain.seen");
    let pong = h
        .load(
            "pong",
            "pong.wasm",
            "[publish]\n\"pong.*\" = \"x\"\n[subscribe]\n\"ping.*\" = \"x\"\n",
        )
        .await;
    assert!(pong.wait_ready(Duration::from_secs(20)).await);
    let _chain = h
        .load(
            "observer",
            "chain.wasm",
            "[publish]\n\"chain.*\" = \"x\"\n[subscribe]\n\"claim.t\" = { wit = \"x\", handler = \"on_t\" }\n",
        )
        .await;
    let receiver = h
        .load(
            "receiver",
            "prober.wasm",
            "[subscribe]\n\"pong.*\" = \"x\"\n",
        )
        .await;
    // Opened while serving alice, so it admits alice's messages (claimed ones included).
    let index = ok(&call_as(
        &receiver,
        "subscribe",
        json!({"pattern": "pong.reply"}),
        Some("alice"),
    )
    .await)
    .clone();
    let uplink = h
        .load(
            "uplink",
            "prober.wasm",
            "[publish]\n\"ping.*\" = \"x\"\n\"claim.*\" = \"x\"\n[capabilities]\nuplink = true\n",
        )
        .await;
    for topic in ["ping.x", "claim.t"] {
        ok(&call(
            &uplink,
            "publish-as",
            json!({"topic": topic, "payload": "{}", "principal": "alice"}),
        )
        .await);
    }
    let reply = next(&mut replies).await;
    assert_eq!(
        reply.attribution(),
        Attribution::Claimed(pid("alice")),
        "one hop through a run loop does not turn a claim into a verified identity"
    );
    let report = next(&mut seen).await;
    assert_eq!(report.attribution(), Attribution::Claimed(pid("alice")));
    // A publish reaches its subscribers one after another, so the test's own subscriber may
    // hold the reply before the receiver's queue does: wait for it rather than poll once.
    let env = ok(&call_as(
        &receiver,
        "recv",
        json!({"index": index, "timeout": 20000}),
        Some("alice"),
    )
    .await)
    .clone();
    assert_eq!(env["messages"][0]["principal"], json!({"claimed": "alice"}));
    bystander.check("claimed hop").await;
    h.rt.shutdown().await;
}
/// Item 4: an uplink pays for the principals it claims: their publishes also spend the
/// uplink's own byte budget, and it may introduce only so many new principals per minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_pays_for_the_principals_it_claims() {
    let h = host();
    // The uplink and the audit-covering handlers are the operator's grants.
    h.approve_all();
    h.profile("up1", "[quotas]\nmax_ipc_throughput_bytes = 100\n");
    h.profile("up2", "[quotas]\nmax_claimed_principals_per_minute = 3\n");
    let bystander = Bystander::start(&h).await;
    let acl = "[publish]\n\"probe.*\" = \"x\"\n[capabilities]\nuplink = true\n";
    let up1 = h.load_as("up-one", "prober.wasm", acl, "up1").await;
    let payload = format!("\"{}\"", "x".repeat(58));
    let claim = |who: &str, payload: &str| json!({"topic": "probe.in", "payload": payload, "principal": who});
    ok(&call(&up1, "publish-as", claim("p1", &payload)).await);
    assert_eq!(
        err(&call(&up1, "publish-as", claim("p2", &payload)).await),
        "rate-limited",
        "a fresh claimed principal does not bring a fresh budget"
    );
    let up2 = h.load_as("up-two", "prober.wasm", acl, "up2").await;
    for who in ["q1", "q2", "q3"] {
        ok(&call(&up2, "publish-as", claim(who, "1")).await);
    }
    assert_eq!(
        err(&call(&up2, "publish-as", claim("q4", "1")).await),
        "rate-limited",
        "a fourth new principal within the minute is refused"
    );
    ok(&call(&up2, "publish-as", claim("q1", "1")).await);
    bystander.check("claimed-principal flood").await;
    let refused: Vec<_> = audit_events("up-two")
        .into_iter()
        .filter(|e| {
            e.get("op").map(String::as_str) == Some("publish-as") && e.contains_key("error")
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0]["error"].contains("principals"), "{refused:?}");
    h.rt.shutdown().await;
}
/// Item 4: the per-principal memory ledger stays bounded however many principals pass through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_principal_caches_stay_bounded() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let p = h.load("churn", "prober.wasm", "").await;
    let cap = capsule_runtime::PRINCIPAL_CACHE_CAPACITY;
    for i in 0..cap + 100 {
        let who = format!("u{i}");
        ok(&call_as(&p, "grow", json!({"pages": 1}), Some(&who)).await);
    }
    bystander.check("principal churn").await;
    let tracked = h.rt.memory_stats().len();
    assert!(
        tracked <= cap,
        "{tracked} principals tracked; the ledger holds at most {cap}"
    );
    h.rt.shutdown().await;
}
/// Item 5: a handler whose pattern covers the audit topic sees only its owner's audit entries
/// unless the owner holds the firehose grant — the same rule as runtime subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_handler_sees_only_its_owners_entries() {
    let h = host();
    // The uplink and the audit-covering handlers are the operator's grants.
    h.approve_all();
    h.profile("ops", "grants = [\"audit:read_all\"]\n");
    let bystander = Bystander::start(&h).await;
    let mut seen = h.subscribe("chain.seen");
    let manifest = |name: &str, priority: u32| {
        format!(
            "[publish]\n\"chain.*\" = \"x\"\n\
             [subscribe]\n\"astrid.v1.audit.*\" = {{ wit = \"x\", handler = \"on_audit\", priority = {priority} }}\n\
             [env.name]\ntype = \"text\"\ndefault = \"{name}\"\n"
        )
    };
    let alice = h
        .load_as("h-alice", "chain.wasm", &manifest("h-alice", 10), "alice")
        .await;
    let watcher = h
        .load_as("watcher", "chain.wasm", &manifest("watcher", 20), "ops")
        .await;
    for who in [
        Attribution::Verified(pid("bob")),
        Attribution::System,
        Attribution::Verified(pid("alice")),
    ] {
        h.publish("astrid.v1.audit.entry", "{}", who);
    }
    // The watcher runs after alice's handler in every chain, so once it has seen all three
    // entries every call alice's handler was going to get has completed.
    let w = watcher.clone();
    until("the watcher to see every entry", move || {
        w.call_stats().completed == 3
    })
    .await;
    assert_eq!(alice.call_stats().completed, 1, "{:?}", alice.call_stats());
    let mut reports = Vec::new();
    while let Some(m) = seen.try_drain_limited(usize::MAX, 1).messages.pop() {
        let v: Value = serde_json::from_str(m.payload.as_str()).unwrap_or_default();
        reports.push((v["capsule"].clone(), v["principal"].clone()));
    }
    let alices: Vec<_> = reports.iter().filter(|(c, _)| c == "h-alice").collect();
    assert_eq!(alices, vec![&(json!("h-alice"), json!("alice"))]);
    let scoped = audit_events("h-alice").into_iter().any(|e| {
        e.get("message").map(String::as_str) == Some("audit-covering handler scoped to its owner")
    });
    assert!(scoped, "{:?}", audit_events("h-alice"));
    bystander.check("audit handler").await;
    h.rt.shutdown().await;
}
/// Item 5: `continue` data must be valid JSON within the payload limit; otherwise the next
/// level sees the payload unchanged and the link is counted as failed and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_data_must_be_json_within_the_payload_limit() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let mut seen = h.subscribe("chain.seen");
    let hostile = |topic: &str, mode: &str| {
        format!(
            "[subscribe]\n\"{topic}\" = {{ wit = \"x\", handler = \"h\", priority = 10 }}\n\
             [env.mode]\ntype = \"text\"\ndefault = \"{mode}\"\n"
        )
    };
    h.load(
        "bad-json",
        "hostile-handler.wasm",
        &hostile("victim.bad", "bad-json"),
    )
    .await;
    h.load(
        "huge",
        "hostile-handler.wasm",
        &hostile("victim.huge", "huge"),
    )
    .await;
    h.load(
        "observer",
        "chain.wasm",
        "[publish]\n\"chain.*\" = \"x\"\n\
         [subscribe]\n\"victim.*\" = { wit = \"x\", handler = \"on_t\", priority = 20 }\n\
         [env.name]\ntype = \"text\"\ndefault = \"observer\"\n",
    )
    .await;
    for topic in ["victim.bad", "victim.huge"] {
        h.publish(topic, r#"{"orig":1}"#, Attribution::Verified(pid("alice")));
        let m = next(&mut seen).await;
        let v: Value = serde_json::from_str(m.payload.as_str()).unwrap_or_default();
        assert_eq!(
            v["saw"], r#"{"orig":1}"#,
            "{topic}: the next level sees the payload unchanged"
        );
    }
    assert_eq!(h.rt.dispatch_stats().failed_links, 2);
    for capsule in ["bad-json", "huge"] {
        let refused = audit_events(capsule).into_iter().any(|e| {
            e.get("message").map(String::as_str) == Some("handler returned invalid continue data")
        });
        assert!(refused, "{capsule}: {:?}", audit_events(capsule));
    }
    bystander.check("invalid continue data").await;
    h.rt.shutdown().await;
}
/// Item 12: `get-config` answers only keys the manifest declares; a value planted in a
/// principal's env overlay under any other key is not returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_config_answers_only_declared_keys() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let plant = |who: &str, body: Value| {
        let dir = h.state().join("home").join(who).join(".config/env");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("cfg.env.json"), body.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
    };
    plant(
        "default",
        json!({"greeting": "owner hi", "undeclared": "owner-planted"}),
    );
    plant(
        "bob",
        json!({"greeting": "bob hi", "undeclared": "bob-planted"}),
    );
    let p = h
        .load(
            "cfg",
            "prober.wasm",
            "[env.greeting]\ntype = \"text\"\ndefault = \"hello\"\n",
        )
        .await;
    let config = |key: &str, who: Option<&'static str>| {
        let (p, key) = (p.clone(), key.to_string());
        async move { call_as(&p, "config", json!({"key": key}), who).await }
    };
    assert_eq!(ok(&config("greeting", Some("bob")).await), "bob hi");
    assert_eq!(ok(&config("greeting", None).await), "owner hi");
    assert_eq!(ok(&config("greeting", Some("carol")).await), "hello");
    for who in [Some("bob"), None] {
        assert_eq!(
            ok(&config("undeclared", who).await),
            &Value::Null,
            "{who:?}: an undeclared key is never answered from an overlay"
        );
    }
    bystander.check("planted overlay").await;
    h.rt.shutdown().await;
}
