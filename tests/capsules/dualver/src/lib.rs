//! Test capsule: imports both versions of every interface the host serves in two versions
//! (`astrid:http` and `astrid:process`, 1.0.0 and 1.1.0) and calls each version from its own
//! action, named `<package>@<version>`. A guest toolchain that folds one version's import
//! into the other's makes the older call run against the newer signature; these actions are
//! how the tests see that.

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:dualver;
        world dualver {
            import astrid:http/host@1.0.0;
            import astrid:http/host@1.1.0;
            import astrid:process/host@1.0.0;
            import astrid:process/host@1.1.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::http1_0_0::host as http10;
use astrid::http1_1_0::host as http11;
use astrid::process1_0_0::host as proc10;
use astrid::process1_1_0::host as proc11;

struct DualVer;

fn url(a: &Value) -> String {
    a["url"].as_str().unwrap_or("").to_string()
}

fn version(a: &Value) -> String {
    a["version"].as_str().unwrap_or("").to_string()
}

fn cmd(a: &Value) -> (String, Vec<String>) {
    let cmd = a["cmd"].as_str().unwrap_or("").to_string();
    let args = a["args"]
        .as_array()
        .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    (cmd, args)
}

/// A GET through version module `$m` of `astrid:http`, sending the `x-version` header.
macro_rules! get {
    ($m:ident, $a:expr) => {{
        let r = $m::http_request(&$m::HttpRequestData {
            url: url($a),
            method: $m::HttpMethod::Get,
            headers: vec![$m::KeyValuePair {
                key: "x-version".into(),
                value: version($a),
            }],
            body: None,
        })
        .map_err(|e| format!("{e:?}"))?;
        Ok(json!({"status": r.status, "body": String::from_utf8_lossy(&r.body)}))
    }};
}

/// A `spawn` through version module `$m` of `astrid:process`, with that version's own
/// request fields after the shared ones.
macro_rules! spawn {
    ($m:ident, $a:expr, $($extra:ident: $value:expr),*) => {{
        let (cmd, args) = cmd($a);
        let r = $m::spawn(&$m::SpawnRequest {
            cmd,
            args,
            stdin: None,
            env: Vec::new(),
            cwd: None,
            limits: None,
            label: Some(version($a)),
            keep_stdin_open: None,
            overflow: None,
            log_ring_bytes: None,
            max_lifetime_ms: None,
            idle_timeout_ms: None,
            exit_retention_ms: None,
            $($extra: $value,)*
        })
        .map_err(|e| format!("{e:?}"))?;
        Ok(json!({"stdout": r.stdout, "exit": r.exit.exit_code}))
    }};
}

fn run(action: &str, a: &Value) -> Result<Value, String> {
    match action {
        "http@1.0.0" => get!(http10, a),
        "http@1.1.0" => get!(http11, a),
        "process@1.0.0" => spawn!(proc10, a,),
        "process@1.1.0" => spawn!(proc11, a, file_injections: Vec::new()),
        other => Err(format!("unknown action {other}")),
    }
}

impl Guest for DualVer {
    fn astrid_hook_trigger(action: String, payload: Vec<u8>) -> CapsuleResult {
        let args: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        let out = match run(&action, &args) {
            Ok(v) => json!({"ok": v}),
            Err(e) => json!({"err": e}),
        };
        CapsuleResult {
            action: "continue".into(),
            data: Some(out.to_string()),
        }
    }
}

export!(DualVer);
