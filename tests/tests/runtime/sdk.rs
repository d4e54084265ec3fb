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
