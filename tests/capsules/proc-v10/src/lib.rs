//! Test capsule: `astrid:process@1.0.0` alone, driven like `proc-runner` (`spawn`, `bg`,
//! `list`), so a capsule built against the older version runs beside one built against 1.1.
//! Background handles are kept for the capsule's lifetime.

use std::cell::RefCell;

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:proc-v10;
        world proc-v10 {
            import astrid:process/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::process1_0_0::host as p;

struct Runner;

thread_local! {
    static KEPT: RefCell<Vec<p::ProcessHandle>> = const { RefCell::new(Vec::new()) };
}

fn code(e: &p::ErrorCode) -> String {
    match e {
        p::ErrorCode::CapabilityDenied => "capability-denied".into(),
        p::ErrorCode::InvalidInput => "invalid-input".into(),
        p::ErrorCode::BoundaryEscape => "boundary-escape".into(),
        p::ErrorCode::Quota => "quota".into(),
        p::ErrorCode::TooLarge => "too-large".into(),
        p::ErrorCode::Closed => "closed".into(),
        p::ErrorCode::Cancelled => "cancelled".into(),
        p::ErrorCode::WaitTimeout => "wait-timeout".into(),
        p::ErrorCode::NoSuchProcess => "no-such-process".into(),
        p::ErrorCode::RegistryFull => "registry-full".into(),
        p::ErrorCode::PersistUnsupported => "persist-unsupported".into(),
        p::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn request(a: &Value) -> p::SpawnRequest {
    p::SpawnRequest {
        cmd: a["cmd"].as_str().unwrap_or("").into(),
        args: a["args"]
            .as_array()
            .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        stdin: None,
        env: Vec::new(),
        cwd: None,
        limits: None,
        label: a["label"].as_str().map(str::to_string),
        keep_stdin_open: None,
        overflow: None,
        log_ring_bytes: None,
        max_lifetime_ms: None,
        idle_timeout_ms: None,
        exit_retention_ms: None,
    }
}

fn run(action: &str, a: &Value) -> Result<Value, String> {
    match action {
        "spawn" => p::spawn(&request(a))
            .map(|r| {
                json!({
                    "stdout": r.stdout,
                    "stderr": r.stderr,
                    "exit": {"code": r.exit.exit_code, "signal": r.exit.signal},
                })
            })
            .map_err(|e| code(&e)),
        "bg" => {
            let h = p::spawn_background(&request(a)).map_err(|e| code(&e))?;
            let pid = h.os_pid().ok();
            KEPT.with(|k| k.borrow_mut().push(h));
            Ok(json!({"pid": pid}))
        }
        "list" => p::list_processes(None)
            .map(|l| json!(l.len()))
            .map_err(|e| code(&e)),
        other => Err(format!("unknown action {other}")),
    }
}

impl Guest for Runner {
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

export!(Runner);
