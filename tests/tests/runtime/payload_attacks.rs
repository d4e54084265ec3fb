//! A guest trying to slip an invalid payload past the publish path's fast check for plain
//! JSON strings: everything that is not exactly one well-formed JSON value is refused with
//! `invalid-input` and reaches no subscriber, and every well-formed string is delivered whole.

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_shaped_payloads_are_refused_unless_well_formed() {
    let h = host();
    let p = h.load("prober", "prober.wasm", PROBER_ACL).await;
    let mut seen = h.rt.bus().subscribe(
        capsule_bus::TopicPattern::parse("probe.*").unwrap_or_else(|e| panic!("{e}")),
        capsule_bus::Scope::All,
    );
    let long = "z".repeat(200);
    let refused = [
        // A control character inside, early, in a whole 64-byte block and in the tail.
        "\"a\u{1}b\"".to_string(),
        format!("\"{long}\u{0}{long}\""),
        format!("\"{long}\u{1f}\""),
        // A quote or a backslash that the string does not survive.
        format!("\"{long}\"{long}\""),
        format!("\"{long}\\\""),
        format!("\"{long}\\x\""),
        "\"\\u12\"".to_string(),
        // Unterminated, or more than one value.
        "\"".to_string(),
        format!("\"{long}"),
        "\"a\" \"b\"".to_string(),
        "\"a\"\"b\"".to_string(),
    ];
    for payload in &refused {
        let r = call(
            &p,
            "publish",
            json!({"topic": "probe.ok", "payload": payload}),
        )
        .await;
        assert_eq!(err(&r), "invalid-input", "{payload:?}");
    }
    let delivered = [
        "\"\"".to_string(),
        format!("\"{long}é\u{7f}\u{1f600}\""),
        format!("\"{long}\\\"\\\\\\n\\u00e9\""),
        format!(" \"{long}\" "),
    ];
    for payload in &delivered {
        ok(&call(
            &p,
            "publish",
            json!({"topic": "probe.ok", "payload": payload}),
        )
        .await);
    }
    let got: Vec<String> = seen
        .try_drain(usize::MAX)
        .messages
        .iter()
        .map(|m| m.payload.as_str().to_string())
        .collect();
    assert_eq!(got, delivered);
}
