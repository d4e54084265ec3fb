//! `astrid:identity` from inside a real guest (the `registrar` fixture): the directory's
//! uniqueness and durability, the grant levels, which principal reaches which entries, and
//! hostile strings.

use capsule_runtime::security::{IdentityLevel, Request};
use capsule_runtime::{Approval, Capsule};
use serde_json::{Value, json};

use crate::common::{Host, audit_events, call, call_as, err, host, host_in, ok};
use crate::hostile::Bystander;

const ADMIN: &str = "[capabilities]\nidentity = \"admin\"\n";

async fn load_admin(h: &Host, name: &str) -> Capsule {
    h.approve_all();
    h.load(name, "registrar.wasm", ADMIN).await
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_identities_link_to_one_user_and_survive_a_restart() {
    let h = host();
    let c = load_admin(&h, "registrar").await;
    let ann = create_user(&c, "Ann").await;
    let bo = create_user(&c, "Bo").await;
    assert_ne!(ann, bo);

    assert_eq!(
        ok(&call(&c, "link", link_args("discord", "42", &ann)).await),
        &Value::Null
    );
    assert_eq!(
        err(&call(&c, "link", link_args("discord", "42", &bo)).await),
        "already-linked",
        "one platform identity, one user"
    );
    assert_eq!(
        err(&call(&c, "link", link_args("discord", "42", &ann)).await),
        "already-linked"
    );
    ok(&call(&c, "link", link_args("slack", "42", &bo)).await);
    ok(&call(&c, "link", link_args("telegram", "7", &ann)).await);
    assert_eq!(
        err(&call(&c, "link", link_args("discord", "9", "nobody")).await),
        "user-not-found"
    );

    let resolved = call(&c, "resolve", who("discord", "42")).await;
    assert_eq!(ok(&resolved), &json!({"user": ann, "name": "Ann"}));
    let links = ok(&call(&c, "list-links", json!({"of": ann})).await).clone();
    let names: Vec<_> = links
        .as_array()
        .unwrap_or_else(|| panic!("{links}"))
        .iter()
        .map(|l| format!("{}/{}/{}", l["platform"], l["user"], l["method"]))
        .collect();
    assert_eq!(
        names,
        [r#""discord"/"42"/"oauth""#, r#""telegram"/"7"/"oauth""#]
    );
    assert_eq!(
        err(&call(&c, "list-links", json!({"of": "nobody"})).await),
        "user-not-found"
    );

    ok(&call(&c, "unlink", who("discord", "42")).await);
    assert_eq!(
        err(&call(&c, "unlink", who("discord", "42")).await),
        "link-not-found"
    );
    assert_eq!(
        err(&call(&c, "resolve", who("discord", "42")).await),
        "link-not-found"
    );
    // Freed, the identity may go to someone else.
    ok(&call(&c, "link", link_args("discord", "42", &bo)).await);

    // The directory is durable: a new runtime on the same state directory sees it.
    c.unload().await;
    drop(c);
    h.rt.shutdown().await;
    let Host { rt, dir } = h;
    drop(rt);
    let h = host_in(dir, |_| {});
    let c = load_admin(&h, "registrar").await;
    assert_eq!(
        ok(&call(&c, "resolve", who("discord", "42")).await)["user"],
        json!(bo)
    );
    assert_eq!(
        ok(&call(&c, "resolve", who("telegram", "7")).await)["user"],
        json!(ann)
    );
    assert!(
        audit_events("registrar")
            .iter()
            .any(|e| e.get("op").map(String::as_str) == Some("link")),
        "changes are audited"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_calls_need_the_grant_at_their_level() {
    let h = host();
    // The operator refuses the request: the capsule loads without the capability.
    h.approver(|req| {
        Approval::Grant(
            req.diff
                .added
                .iter()
                .filter(|r| !matches!(r, Request::Identity(_)))
                .cloned()
                .collect(),
        )
    });
    let refused = h
        .load(
            "refused",
            "registrar.wasm",
            &format!("{ADMIN}uplink = true\n"),
        )
        .await;
    let none = h.load("plain", "registrar.wasm", "").await;
    for c in [&refused, &none] {
        for (action, args) in [
            ("create-user", json!({"name": "x"})),
            ("resolve", who("discord", "1")),
            ("list-links", json!({"of": "someone"})),
            ("link", link_args("discord", "1", "someone")),
            ("unlink", who("discord", "1")),
        ] {
            assert_eq!(
                err(&call(c, action, args).await),
                "capability-denied",
                "{action} without the grant"
            );
        }
    }

    h.approve_all();
    let admin = h.load("admin", "registrar.wasm", ADMIN).await;
    let ann = create_user(&admin, "Ann").await;
    ok(&call(&admin, "link", link_args("discord", "1", &ann)).await);
    let reader = h
        .load(
            "reader",
            "registrar.wasm",
            "[capabilities]\nidentity = \"resolve\"\n",
        )
        .await;
    assert_eq!(
        ok(&call(&reader, "resolve", who("discord", "1")).await)["user"],
        json!(ann)
    );
    assert_eq!(
        ok(&call(&reader, "list-links", json!({"of": ann})).await)
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        err(&call(&reader, "link", link_args("discord", "2", &ann)).await),
        "capability-denied"
    );
    assert_eq!(
        err(&call(&reader, "unlink", who("discord", "1")).await),
        "capability-denied"
    );
    assert_eq!(
        err(&call(&reader, "create-user", json!({})).await),
        "capability-denied"
    );
    let linker = h
        .load(
            "linker",
            "registrar.wasm",
            "[capabilities]\nidentity = \"link\"\n",
        )
        .await;
    ok(&call(&linker, "link", link_args("discord", "2", &ann)).await);
    ok(&call(&linker, "unlink", who("discord", "2")).await);
    assert_eq!(
        err(&call(&linker, "create-user", json!({})).await),
        "capability-denied"
    );
    assert!(
        audit_events("reader")
            .iter()
            .any(|e| e.get("op").map(String::as_str) == Some("link")
                && e.get("error").is_some_and(|m| m.contains("link"))),
        "refusals are audited"
    );
    assert!(
        Request::Identity(IdentityLevel::Admin).covers(&Request::Identity(IdentityLevel::Link)),
        "the levels are ordered as the calls assume"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_reaches_only_its_own_identity_entries() {
    let h = host();
    let c = load_admin(&h, "registrar").await;
    let ann = create_user(&c, "Ann").await;
    let bo = create_user(&c, "Bo").await;
    ok(&call(&c, "link", link_args("discord", "1", &ann)).await);
    ok(&call(&c, "link", link_args("discord", "2", &bo)).await);

    let as_ann = |action: &'static str, args: Value| {
        let c = &c;
        let ann = ann.clone();
        async move { call_as(c, action, args, Some(&ann)).await }
    };
    // Ann sees and changes her own entries.
    assert_eq!(
        ok(&as_ann("resolve", who("discord", "1")).await)["user"],
        json!(ann)
    );
    ok(&as_ann("link", link_args("slack", "a", &ann)).await);
    assert_eq!(
        ok(&as_ann("list-links", json!({"of": ann})).await)
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    ok(&as_ann("unlink", who("slack", "a")).await);

    // Bo's entries do not exist for her.
    assert_eq!(
        err(&as_ann("resolve", who("discord", "2")).await),
        "link-not-found"
    );
    assert_eq!(
        err(&as_ann("unlink", who("discord", "2")).await),
        "link-not-found"
    );
    assert_eq!(
        err(&as_ann("list-links", json!({"of": bo})).await),
        "capability-denied"
    );
    assert_eq!(
        err(&as_ann("link", link_args("slack", "b", &bo)).await),
        "capability-denied",
        "she cannot bind an identity to Bo"
    );
    assert_eq!(
        err(&as_ann("link", link_args("discord", "2", &ann)).await),
        "already-linked",
        "nor take his"
    );
    assert_eq!(
        err(&as_ann("create-user", json!({})).await),
        "capability-denied"
    );

    // Bo's link is untouched.
    assert_eq!(
        ok(&call(&c, "resolve", who("discord", "2")).await)["user"],
        json!(bo)
    );
    assert_eq!(
        err(&call(&c, "resolve", who("slack", "b")).await),
        "link-not-found"
    );
    h.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identity_strings_are_refused_bounded_and_escaped() {
    let h = host();
    let bystander = Bystander::start(&h).await;
    let c = load_admin(&h, "hostile-ids").await;
    let ann = create_user(&c, "Ann").await;
    for size in [300u64, 4 * 1024 * 1024] {
        let args = json!({"platform": "discord", "to": ann, "method": "m", "size": size});
        assert_eq!(
            err(&call(&c, "link-huge", args).await),
            "invalid-input",
            "{size}"
        );
        assert_eq!(
            err(&call(&c, "create-user-huge", json!({"size": size})).await),
            "invalid-input"
        );
    }
    for (platform, user, method) in [
        ("discord", "x\u{1b}]0;owned\u{7}", "m"),
        ("disc\u{1b}[31mord", "x", "m"),
        ("discord", "x", "m\nforged line"),
        ("discord", "", "m"),
        ("", "x", "m"),
        ("Discord", "x", "m"),
    ] {
        let args = json!({"platform": platform, "user": user, "to": ann, "method": method});
        assert_eq!(
            err(&call(&c, "link", args).await),
            "invalid-input",
            "{platform:?} {user:?}"
        );
    }
    assert_eq!(
        err(&call(&c, "link", link_args("discord", "1", "../../etc")).await),
        "invalid-input"
    );
    assert_eq!(
        err(&call(&c, "create-user", json!({"name": "\u{1b}[2J"})).await),
        "invalid-input"
    );
    bystander.check("hostile identity strings").await;
    let events = audit_events("hostile-ids");
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.get("target").map(String::as_str) == Some("capsule::audit::identity"))
        .filter(|e| e.contains_key("error"))
        .collect();
    assert!(refusals.len() >= 12, "{}", refusals.len());
    for e in refusals {
        let subject = e.get("subject").map_or("", String::as_str);
        assert!(
            subject.len() < 1024,
            "audit subject is cut: {} bytes",
            subject.len()
        );
        assert!(
            !subject.contains('\u{1b}') && !subject.contains('\n'),
            "audit subject is escaped: {subject:?}"
        );
    }
    // Nothing was stored by the refused calls.
    assert_eq!(
        ok(&call(&c, "list-links", json!({"of": ann})).await),
        &json!([])
    );
    h.rt.shutdown().await;
}

/// A principal an uplink only claimed — even one named like the capsule's owner — reaches its
/// own entries read-only: a claim never binds a platform identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_principal_cannot_change_the_directory() {
    let h = host();
    h.approve_all();
    let c = h
        .load(
            "claim-target",
            "registrar.wasm",
            &format!(
                "{ADMIN}\n[subscribe]\n\"probe.idlink\" = {{ wit = \"x\", handler = \"link\" }}\n"
            ),
        )
        .await;
    let ann = create_user(&c, "Ann").await;
    let uplink = h
        .load(
            "claimer",
            "prober.wasm",
            &format!(
                "{}\n[capabilities]\nuplink = true\n",
                crate::common::PROBER_ACL
            ),
        )
        .await;
    for claimed in [ann.as_str(), "default"] {
        let payload = link_args("discord", claimed, claimed).to_string();
        ok(&call(
            &uplink,
            "publish-as",
            json!({"topic": "probe.idlink", "payload": payload, "principal": claimed}),
        )
        .await);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let refused = loop {
        let refused: Vec<_> = audit_events("claim-target")
            .into_iter()
            .filter(|e| e.get("op").map(String::as_str) == Some("link"))
            .filter(|e| e.get("error").is_some_and(|m| m.contains("claimed")))
            .collect();
        if refused.len() >= 2 || std::time::Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let principals: Vec<_> = refused.iter().map(|e| e["principal"].clone()).collect();
    assert!(
        principals.contains(&ann) && principals.contains(&"default".to_string()),
        "{refused:?}"
    );
    for p in [ann.as_str(), "default"] {
        assert_eq!(
            err(&call(&c, "resolve", who("discord", p)).await),
            "link-not-found",
            "nothing was linked for {p}"
        );
    }
    h.rt.shutdown().await;
}
