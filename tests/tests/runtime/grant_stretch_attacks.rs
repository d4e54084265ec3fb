//! Attacks on the operator's `host_process` argument patterns from inside a real guest
//! (`proc-runner`): a `prefix*` naming a place must not stretch through `..` to the rest of
//! the host, while what it names still runs.

use serde_json::json;

use crate::common::{err, host, ok};
use crate::process::call;

/// The runner may `cat` what lies under `/usr/share/`, and nothing else.
const SHARE_ONLY: &str = r#"[capabilities]
host_process = ["/bin/cat /usr/share/*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_pattern_does_not_stretch_through_dot_dot() {
    let h = host();
    h.approve_all();
    let c = h.load("runner", "proc-runner.wasm", SHARE_ONLY).await;
    for climb in [
        "/usr/share/../../etc/passwd",
        "/usr/share/../../../etc/passwd",
        "/usr/share/x/../../../etc/passwd",
        "/usr/share/./../../etc/passwd",
    ] {
        let r = call(
            &c,
            "spawn",
            json!({"cmd": "/bin/cat", "args": [climb]}),
            "alice",
        )
        .await;
        assert_eq!(err(&r), "capability-denied", "{climb}: {r}");
    }
    // What the pattern names still runs: the spawn is allowed, whatever cat then finds.
    let r = call(
        &c,
        "spawn",
        json!({"cmd": "/bin/cat", "args": ["/usr/share/no-such-file-here"]}),
        "alice",
    )
    .await;
    assert_ne!(ok(&r)["exit"]["code"], json!(null), "{r}");
    c.unload().await;
}
