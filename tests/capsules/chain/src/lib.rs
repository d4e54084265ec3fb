//! Test capsule: a handler that reports what it saw on `chain.seen` (its config `name`, the
//! action, the payload and the caller's principal) and then answers per config `mode`:
//! `replace` (continue with `{"replaced_by": name}`), `final`, `deny`, `trap`, or `pass`
//! (continue without data, the default).

use serde_json::json;

wit_bindgen::generate!({
    inline: r#"
        package test:chain;
        world chain {
            import astrid:ipc/host@1.0.0;
            import astrid:sys/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::ipc::host as ipc;
use astrid::sys::host as sys;

struct Chain;

fn config(key: &str, default: &str) -> String {
    sys::get_config(key).ok().flatten().unwrap_or_else(|| default.to_string())
}

impl Guest for Chain {
    fn astrid_hook_trigger(action: String, payload: Vec<u8>) -> CapsuleResult {
        let name = config("name", "?");
        let mode = config("mode", "pass");
        let principal = sys::get_caller().ok().and_then(|c| c.principal);
        let seen = json!({
            "capsule": name,
            "action": action,
            "saw": String::from_utf8_lossy(&payload),
            "principal": principal,
        });
        let _ = ipc::publish("chain.seen", &seen.to_string());
        let (action, data) = match mode.as_str() {
            "replace" => ("continue", Some(json!({ "replaced_by": name }).to_string())),
            "final" => ("final", None),
            "deny" => ("deny", Some(format!("{name} says no"))),
            "trap" => std::process::abort(),
            _ => ("continue", None),
        };
        CapsuleResult {
            action: action.into(),
            data,
        }
    }
}

export!(Chain);
