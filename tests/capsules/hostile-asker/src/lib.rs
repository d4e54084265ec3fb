//! Test capsule: a run loop that asks `astrid:approval` for whoever the host puts in scope for
//! each message it drains, so the approval attack tests can ask as principals a handler call
//! never carries (a disabled one, a claimed one). It subscribes to `ask.*`, signals ready, and
//! answers each request `{"tag", "action", "resource"}` on `ask-reply.out` with the tag, the
//! caller the host reports, and `{"ok": decision}` or `{"err": code}`. It returns when recv
//! reports `closed`.

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:hostile-asker;
        world hostile-asker {
            import astrid:ipc/host@1.0.0;
            import astrid:sys/host@1.0.0;
            import astrid:approval/host@1.0.0;
            include astrid:guest/background@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::approval::host as approval;
use astrid::ipc::host as ipc;
use astrid::sys::host as sys;

struct Asker;

fn ask(req: &Value) -> Result<Value, String> {
    let s = |k: &str| req[k].as_str().unwrap_or("").to_string();
    approval::request_approval(&approval::ApprovalRequest {
        action: s("action"),
        target_resource: s("resource"),
    })
    .map(|r| {
        json!(match r.decision {
            approval::ApprovalDecision::Denied => "denied",
            approval::ApprovalDecision::Approved => "approved",
            approval::ApprovalDecision::ApprovedSession => "approved-session",
            approval::ApprovalDecision::ApprovedAlways => "approved-always",
            approval::ApprovalDecision::Allowance => "allowance",
        })
    })
    .map_err(|e| match e {
        approval::ErrorCode::InvalidInput => "invalid-input".into(),
        approval::ErrorCode::Timeout => "timeout".into(),
        approval::ErrorCode::StoreUnavailable => "store-unavailable".into(),
        approval::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    })
}

impl Guest for Asker {
    fn run() {
        let Ok(input) = ipc::subscribe("ask.*") else {
            sys::log(sys::LogLevel::Error, "hostile-asker: subscribe failed");
            return;
        };
        sys::signal_ready();
        loop {
            let envelope = match input.recv(60_000) {
                Ok(e) => e,
                Err(ipc::ErrorCode::Closed) => return,
                Err(_) => continue,
            };
            for m in &envelope.messages {
                let req: Value = serde_json::from_str(&m.payload).unwrap_or(Value::Null);
                let mut answer = match ask(&req) {
                    Ok(v) => json!({"ok": v}),
                    Err(e) => json!({"err": e}),
                };
                answer["tag"] = req["tag"].clone();
                answer["caller"] = json!(sys::get_caller().ok().and_then(|c| c.principal));
                let _ = ipc::publish("ask-reply.out", &answer.to_string());
            }
        }
    }
}

export!(Asker);
