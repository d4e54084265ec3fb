//! Test capsule: the well-behaved run-loop server the hostile suite attacks. It subscribes to
//! config `in` (default `serve.*`) and config `gate` (default `serve-gate.*`), signals ready,
//! and answers every request it receives on config `out` (default `served.reply`), acting for
//! whoever the host put in scope. Requests are JSON objects `{"op", "tag", "value"}`:
//! - `set` stores `value` under the KV key `v` (answering, and printing, the error it got, if
//!   any); `get` answers the stored value;
//! - `hold` answers first, then waits on the gate subscription until a message arrives there
//!   (so a test can queue several requests before the next drain);
//! - `idle` polls the (empty) gate subscription, then answers.
//!
//! Every answer carries the tag, the op, the caller principal the host reports, (for `get`) the
//! value, and whether it answers the last message of its envelope (`last`) with how many were
//! still queued after that envelope (`lagged`); the server also prints `served <tag>` on
//! stdout. It returns when recv reports `closed`.

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:kvserver;
        world kvserver {
            import astrid:ipc/host@1.0.0;
            import astrid:sys/host@1.0.0;
            import astrid:kv/host@1.0.0;
            include astrid:guest/background@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::ipc::host as ipc;
use astrid::kv::host as kv;
use astrid::sys::host as sys;

struct Server;

fn config(key: &str, default: &str) -> String {
    sys::get_config(key).ok().flatten().unwrap_or_else(|| default.to_string())
}

fn caller() -> Value {
    json!(sys::get_caller().ok().and_then(|c| c.principal))
}

/// Waits on `gate` until at least one message arrives there (or the capsule unloads).
fn wait_gate(gate: &ipc::Subscription) -> bool {
    loop {
        match gate.recv(60_000) {
            Ok(e) if !e.messages.is_empty() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

impl Guest for Server {
    fn run() {
        let output = config("out", "served.reply");
        let (Ok(input), Ok(gate)) = (
            ipc::subscribe(&config("in", "serve.*")),
            ipc::subscribe(&config("gate", "serve-gate.*")),
        ) else {
            sys::log(sys::LogLevel::Error, "kvserver: subscribe failed");
            return;
        };
        sys::signal_ready();
        loop {
            let envelope = match input.recv(60_000) {
                Ok(e) => e,
                Err(ipc::ErrorCode::Closed) => return,
                Err(_) => continue,
            };
            let count = envelope.messages.len();
            for (i, m) in envelope.messages.iter().enumerate() {
                let req: Value = serde_json::from_str(&m.payload).unwrap_or(Value::Null);
                let op = req["op"].as_str().unwrap_or("");
                let tag = req["tag"].as_str().unwrap_or("").to_string();
                let mut answer = json!({"tag": tag, "op": op});
                match op {
                    "set" => {
                        let value = req["value"].as_str().unwrap_or("");
                        match kv::kv_set("v", value.as_bytes()) {
                            Ok(()) => answer["ok"] = json!(true),
                            Err(e) => {
                                answer["ok"] = json!(false);
                                // Printed too: a refused principal's answer may not be
                                // publishable, and its log still is written.
                                println!("kv-error {tag} {e:?}");
                                answer["error"] = json!(format!("{e:?}"));
                            }
                        }
                    }
                    "get" => {
                        let value = kv::kv_get("v")
                            .ok()
                            .flatten()
                            .map(|v| String::from_utf8_lossy(&v).into_owned());
                        answer["value"] = json!(value);
                    }
                    "hold" => {
                        answer["caller"] = caller();
                        let _ = ipc::publish(&output, &answer.to_string());
                        if !wait_gate(&gate) {
                            return;
                        }
                        continue;
                    }
                    "idle" => {
                        let _ = gate.poll();
                    }
                    _ => {}
                }
                answer["caller"] = caller();
                answer["last"] = json!(i + 1 == count);
                answer["lagged"] = json!(envelope.lagged);
                println!("served {tag}");
                let _ = ipc::publish(&output, &answer.to_string());
            }
        }
    }
}

export!(Server);
