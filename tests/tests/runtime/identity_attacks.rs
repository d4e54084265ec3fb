//! Attacks on `astrid:identity` from inside real guests: principals the host refuses or only
//! heard claimed (through the `hostile-registrar` run loop), racing links of one platform
//! identity, look-alike platform ids, and raising the identity level behind the operator's back.

use std::time::Duration;

use capsule_bus::{Attribution, Receiver};
use capsule_runtime::security::{IdentityLevel, Request};
use capsule_runtime::{Approval, Capsule};
use serde_json::{Value, json};

use crate::common::{Host, audit_events, call, call_as, err, host, host_with, next, ok, pid};
use crate::hostile::Bystander;

const ADMIN: &str = "[capabilities]\nidentity = \"admin\"\n";

/// The run-loop server: identity at `link`, requests on `ident.*`, answers on `ident-reply.*`.
const SERVER: &str = "[capabilities]\nidentity = \"link\"\n\n[publish]\n\"ident-reply.*\" = \"x\"\n\n[subscribe]\n\"ident.*\" = \"x\"\n";

async fn create_user(c: &Capsule, name: &str) -> String {
    ok(&call(c, "create-user", json!({"name": name})).await)
        .as_str()
        .unwrap_or_else(|| panic!("a user id"))
        .to_string()
}

fn link_args(platform: &str, user: &str, to: &str) -> Value {
    json!({"platform": platform, "user": user, "to": to, "method": "oauth"})
}

fn who(platform: &str, user: &str) -> Value {
    json!({"platform": platform, "user": user})
}

/// The run-loop server and the receiver of its answers.
struct Server {
    _capsule: Capsule,
    answers: Receiver,
}

impl Server {
    async fn start(h: &Host) -> Self {
        let answers = h.subscribe("ident-reply.*");
        let capsule = h
            .load("ident-server", "hostile-registrar.wasm", SERVER)
            .await;
        assert!(capsule.wait_ready(Duration::from_secs(20)).await);
        Self {
            _capsule: capsule,
            answers,
        }
    }

    /// Has the host deliver `req` (tagged `tag`) to the server attributed as `attribution`,
    /// and returns the server's answer.
    async fn ask(
        &mut self,
        h: &Host,
        tag: &str,
        mut req: Value,
        attribution: Attribution,
    ) -> Value {
        req["tag"] = json!(tag);
        h.publish("ident.req", &req.to_string(), attribution);
        loop {
            let m = next(&mut self.answers).await;
            let v: Value =
                serde_json::from_str(m.payload.as_str()).unwrap_or_else(|e| panic!("{e}"));
            if v["tag"] == tag {
                return v;
            }
        }
    }
}

/// A principal the operator disabled is refused by every capability: its queued message
/// reaching a run loop must not let it link, unlink or even read identity entries, exactly as
/// KV refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_principal_reaches_no_identity_entries() {
    let h = host();
    h.approve_all();
    let admin = h.load("registrar", "registrar.wasm", ADMIN).await;
    let ann = create_user(&admin, "Ann").await;
    ok(&call(&admin, "link", link_args("discord", "1", &ann)).await);
    let mut server = Server::start(&h).await;

    // Enabled, Ann reaches her own entry through the run loop.
    let seen = server
        .ask(
            &h,
            "r0",
            json!({"op": "resolve", "platform": "discord", "user": "1"}),
            Attribution::Verified(pid(&ann)),
        )
        .await;
    assert_eq!(seen["caller"], json!(ann));
    assert_eq!(seen["ok"], json!(ann), "{seen}");

    h.profile(&ann, "enabled = false\n");
    // A run loop re-reads a principal's profile when the principal in scope changes, so
    // another principal's message comes first. A disabled principal cannot publish either,
    // so its requests go unanswered; their effect is checked after the owner's next answer.
    let owner = Attribution::Verified(pid("default"));
    let resolve = json!({"op": "resolve", "platform": "discord", "user": "1"});
    let seen = server.ask(&h, "o1", resolve.clone(), owner.clone()).await;
    assert_eq!(seen["ok"], json!(ann), "{seen}");
    for (tag, req) in [
        (
            "u1",
            json!({"op": "unlink", "platform": "discord", "user": "1"}),
        ),
        (
            "l1",
            json!({"op": "link", "platform": "slack", "user": "9", "to": ann, "method": "m"}),
        ),
        ("r1", resolve.clone()),
        ("ls", json!({"op": "list-links", "of": ann})),
    ] {
        let mut req = req;
        req["tag"] = json!(tag);
        h.publish(
            "ident.req",
            &req.to_string(),
            Attribution::Verified(pid(&ann)),
        );
    }
    // Each request ends in the server's publish of its answer, which IPC refuses for the
    // disabled principal and audits: four refused publishes mean four requests served.
    let ann_events = || {
        audit_events("ident-server")
            .into_iter()
            .filter(|e| e.get("principal") == Some(&ann) && e.contains_key("error"))
            .filter_map(|e| e.get("op").cloned())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ann_events().iter().filter(|o| *o == "publish").count() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not serve the disabled principal's requests: {:?}",
            ann_events()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = server.ask(&h, "o2", resolve, owner).await;
    assert_eq!(
        seen["ok"],
        json!(ann),
        "a disabled principal unlinked its identity: {seen}"
    );
    let refused = ann_events();
    for op in ["unlink", "link", "resolve", "list-links"] {
        assert!(
            refused.iter().any(|o| o == op),
            "the disabled principal's {op} is refused and audited: {refused:?}"
        );
    }
    // Nothing changed.
    assert_eq!(
        ok(&call(&admin, "resolve", who("discord", "1")).await)["user"],
        json!(ann)
    );
    assert_eq!(
        err(&call(&admin, "resolve", who("slack", "9")).await),
        "link-not-found"
    );
    h.rt.shutdown().await;
}

/// An uplink's claim naming the capsule's owner never gets the owner's whole-directory reach:
/// a claimed principal reads only its own entries and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_naming_the_owner_changes_nothing_in_the_directory() {
    let h = host();
    h.approve_all();
    let admin = h.load("registrar", "registrar.wasm", ADMIN).await;
    let ann = create_user(&admin, "Ann").await;
    ok(&call(&admin, "link", link_args("discord", "1", &ann)).await);
    let mut server = Server::start(&h).await;
    let owner = Attribution::Claimed(pid("default"));

    let unlink = server
        .ask(
            &h,
            "u",
            json!({"op": "unlink", "platform": "discord", "user": "1"}),
            owner.clone(),
        )
        .await;
    assert_eq!(unlink["err"], "capability-denied", "{unlink}");
    let link = server
        .ask(
            &h,
            "l",
            json!({"op": "link", "platform": "slack", "user": "2", "to": ann, "method": "m"}),
            owner.clone(),
        )
        .await;
    assert_eq!(link["err"], "capability-denied", "{link}");
    let resolve = server
        .ask(
            &h,
            "r",
            json!({"op": "resolve", "platform": "discord", "user": "1"}),
            owner.clone(),
        )
        .await;
    assert_eq!(
        resolve["err"], "link-not-found",
        "Ann's link is not the claimant's: {resolve}"
    );
    let list = server
        .ask(&h, "ls", json!({"op": "list-links", "of": ann}), owner)
        .await;
    assert_eq!(list["err"], "capability-denied", "{list}");

    // The same owner, verified, has the directory.
    let verified = server
        .ask(
            &h,
            "v",
            json!({"op": "resolve", "platform": "discord", "user": "1"}),
            Attribution::Verified(pid("default")),
        )
        .await;
    assert_eq!(verified["ok"], json!(ann), "{verified}");
    assert_eq!(
        ok(&call(&admin, "resolve", who("discord", "1")).await)["user"],
        json!(ann)
    );
    h.rt.shutdown().await;
}

/// Many principals racing to link one platform identity to themselves, in parallel instances:
/// exactly one wins, the others see `already-linked`, and every index agrees with the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_links_of_one_identity_leave_exactly_one_holder() {
    let h = host_with(|c| c.handler_pool_size = 4);
    h.approve_all();
    let bystander = Bystander::start(&h).await;
    let c = h.load("registrar", "registrar.wasm", ADMIN).await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(create_user(&c, &format!("racer {i}")).await);
    }
    for round in 0..3 {
        let target = format!("contested-{round}");
        let answers = futures::future::join_all(users.iter().map(|u| {
            let c = &c;
            let args = link_args("discord", &target, u);
            async move { call_as(c, "link", args, Some(u)).await }
        }))
        .await;
        let winners: Vec<_> = users
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.get("err").is_none())
            .map(|(u, _)| u.clone())
            .collect();
        assert_eq!(winners.len(), 1, "exactly one holder: {answers:?}");
        for a in answers.iter().filter(|a| a.get("err").is_some()) {
            assert_eq!(err(a), "already-linked");
        }
        assert_eq!(
            ok(&call(&c, "resolve", who("discord", &target)).await)["user"],
            json!(winners[0])
        );
        for u in &users {
            let held = ok(&call(&c, "list-links", json!({"of": u})).await)
                .as_array()
                .map_or(0, |l| {
                    l.iter().filter(|l| l["user"] == json!(target)).count()
                });
            assert_eq!(held, usize::from(*u == winners[0]), "{u} lists {target}");
        }
    }
    bystander.check("racing links").await;
    h.rt.shutdown().await;
}

/// Two platform ids that differ only by an invisible character look identical on a screen;
/// the directory must refuse the invisible one rather than hold two look-alike identities
/// (or a display name that hides text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_platform_ids_with_invisible_characters_are_refused() {
    let h = host();
    h.approve_all();
    let c = h.load("registrar", "registrar.wasm", ADMIN).await;
    let ann = create_user(&c, "Ann").await;
    let bo = create_user(&c, "Bo").await;
    ok(&call(&c, "link", link_args("discord", "42", &ann)).await);
    for invisible in [
        "4\u{00AD}2",
        "42\u{E0020}",
        "4\u{034F}2",
        "4\u{180E}2",
        "4\u{061C}2",
        "4\u{2064}2",
        "\u{3164}42",
        "42\u{FE0F}",
        "4\u{2028}2",
    ] {
        assert_eq!(
            err(&call(&c, "link", link_args("discord", invisible, &bo)).await),
            "invalid-input",
            "{invisible:?} looks like 42"
        );
    }
    assert_eq!(
        err(&call(
            &c,
            "create-user",
            json!({"name": "Ann\u{E0041}\u{E0064}\u{E006D}"})
        )
        .await),
        "invalid-input"
    );
    assert_eq!(
        ok(&call(&c, "list-links", json!({"of": bo})).await),
        &json!([])
    );
    h.rt.shutdown().await;
}

/// Raising the identity level in a new manifest asks the operator again; refused, the new
/// manifest does not load with the higher level (the load waits for the operator instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_identity_level_is_not_granted_behind_the_operators_back() {
    let h = host();
    h.approve_all();
    let reader = h
        .load(
            "climber",
            "registrar.wasm",
            "[capabilities]\nidentity = \"resolve\"\n",
        )
        .await;
    assert_eq!(
        err(&call(&reader, "create-user", json!({})).await),
        "capability-denied"
    );
    reader.unload().await;
    drop(reader);
    let asked = h.approver(|req| {
        Approval::Grant(
            req.diff
                .added
                .iter()
                .filter(|r| !matches!(r, Request::Identity(_)))
                .cloned()
                .collect(),
        )
    });
    let dir = h.capsule_dir("climber", "registrar.wasm", ADMIN);
    match h.rt.load(&dir).await {
        Ok(_) => panic!("the raised identity level loaded without the operator"),
        Err(e) => assert!(e.to_string().contains("identity admin"), "{e}"),
    }
    assert!(
        asked.asked.lock().iter().any(|q| q
            .diff
            .added
            .contains(&Request::Identity(IdentityLevel::Admin))),
        "the raised level is put to the operator"
    );
    h.rt.shutdown().await;
}
