//! A guest importing two versions of one interface calls each version and gets that
//! version's answer. The interfaces served in more than one version are read from the
//! host's `imports` world, so one added later is covered (the `dualver` fixture must then
//! import it too, or this test fails naming it).

use std::collections::BTreeMap;

use capsule_runtime::security::StaticResolver;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::*;
use crate::loopback::{Listening, OPEN_LOOPBACK, policy_host, read_head};

/// Every `astrid:*` interface the host serves, with the versions it serves it in, from the
/// `imports` world of `capsule-wit/wit/host.wit`.
fn served_versions() -> BTreeMap<String, Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../capsule-wit/wit/host.wit");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let world = text
        .split("world imports {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("{path}: no `imports` world"));
    let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in world.lines() {
        let Some(item) = line.trim().strip_prefix("import ") else {
            continue;
        };
        let item = item.trim_end_matches(';');
        let (name, version) = item
            .split_once('@')
            .unwrap_or_else(|| panic!("unversioned import {item}"));
        served
            .entry(name.to_string())
            .or_default()
            .push(version.to_string());
    }
    served
}

/// Answers every request with the `x-version` header it carried.
async fn version_echo(mut sock: TcpStream) {
    let Some(head) = read_head(&mut sock).await else {
        return;
    };
    let body = format!("version {}", head.header("x-version").unwrap_or("none"));
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_importing_two_versions_of_an_interface_calls_each_one() {
    let web = Listening::start(version_echo).await;
    let h = policy_host(OPEN_LOOPBACK, StaticResolver::new());
    h.approve_all();
    let c = h
        .load(
            "dualver",
            "dualver.wasm",
            "[capabilities]\nnet = [\"127.0.0.1\"]\nhost_process = [\"/bin/echo hello\"]\n",
        )
        .await;
    let dual: Vec<(String, Vec<String>)> = served_versions()
        .into_iter()
        .filter(|(_, versions)| versions.len() > 1)
        .collect();
    let names: Vec<&str> = dual.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"astrid:http/host") && names.contains(&"astrid:process/host"),
        "the host serves http and process in two versions each, found {names:?}"
    );
    for (name, versions) in &dual {
        let package = name
            .strip_prefix("astrid:")
            .and_then(|n| n.split('/').next())
            .unwrap_or_else(|| panic!("{name}: not an astrid interface"));
        // Newest first as well as oldest first: neither order may leave a stale binding.
        for version in versions.iter().chain(versions.iter().rev()) {
            let action = format!("{package}@{version}");
            let args = json!({
                "url": web.url("/"),
                "version": version,
                "cmd": "/bin/echo",
                "args": ["hello"],
            });
            let r = call(&c, &action, args).await;
            let got = ok(&r);
            match package {
                "http" => {
                    assert_eq!(got["status"], 200, "{action}: {r}");
                    assert_eq!(got["body"], format!("version {version}"), "{action}: {r}");
                }
                "process" => {
                    assert_eq!(got["stdout"], "hello\n", "{action}: {r}");
                    assert_eq!(got["exit"], 0, "{action}: {r}");
                }
                other => panic!("{action}: the dualver fixture does not call {other} yet"),
            }
        }
    }
}
