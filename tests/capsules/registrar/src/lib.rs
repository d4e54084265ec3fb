//! Test capsule: an interceptor that drives `astrid:identity` and `astrid:approval` from
//! inside a guest. Each action
//! names one call, takes its arguments from the JSON payload and answers `{"ok": …}` or
//! `{"err": code}`, acting for whichever principal the host put in scope. `*-huge` actions
//! build their oversized argument inside the guest (`size` bytes), so the attack never passes
//! through the test.

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:registrar;
        world registrar {
            import astrid:identity/host@1.0.0;
            import astrid:approval/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::approval::host as approval;
use astrid::identity::host as id;

struct Registrar;

fn id_code(e: &id::ErrorCode) -> String {
    match e {
        id::ErrorCode::CapabilityDenied => "capability-denied".into(),
        id::ErrorCode::InvalidInput => "invalid-input".into(),
        id::ErrorCode::UserNotFound => "user-not-found".into(),
        id::ErrorCode::LinkNotFound => "link-not-found".into(),
        id::ErrorCode::AlreadyLinked => "already-linked".into(),
        id::ErrorCode::StoreUnavailable => "store-unavailable".into(),
        id::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn approval_code(e: &approval::ErrorCode) -> String {
    match e {
        approval::ErrorCode::InvalidInput => "invalid-input".into(),
        approval::ErrorCode::Timeout => "timeout".into(),
        approval::ErrorCode::StoreUnavailable => "store-unavailable".into(),
        approval::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn ask(action: String, target_resource: String) -> Result<Value, String> {
    approval::request_approval(&approval::ApprovalRequest {
        action,
        target_resource,
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
    .map_err(|e| approval_code(&e))
}

fn run(action: &str, args: &Value) -> Result<Value, String> {
    let s = |k: &str| args[k].as_str().unwrap_or("").to_string();
    let huge = || "\u{1b}[2J".repeat(args["size"].as_u64().unwrap_or(0) as usize / 4 + 1);
    let link = |platform: String, user: String, to: String| {
        id::identity_link(&id::IdentityLinkRequest {
            platform,
            platform_user_id: user,
            astrid_user_id: to,
            method: s("method"),
        })
        .map(|()| Value::Null)
        .map_err(|e| id_code(&e))
    };
    match action {
        "create-user" => id::identity_create_user(&id::IdentityCreateUserRequest {
            display_name: args["name"].as_str().map(str::to_string),
        })
        .map(|r| json!(r.user_id))
        .map_err(|e| id_code(&e)),
        "create-user-huge" => id::identity_create_user(&id::IdentityCreateUserRequest {
            display_name: Some(huge()),
        })
        .map(|r| json!(r.user_id))
        .map_err(|e| id_code(&e)),
        "link" => link(s("platform"), s("user"), s("to")),
        "link-huge" => link(s("platform"), huge(), s("to")),
        "unlink" => id::identity_unlink(&id::IdentityUnlinkRequest {
            platform: s("platform"),
            platform_user_id: s("user"),
        })
        .map(|()| Value::Null)
        .map_err(|e| id_code(&e)),
        "resolve" => id::identity_resolve(&id::IdentityResolveRequest {
            platform: s("platform"),
            platform_user_id: s("user"),
        })
        .map(|r| json!({"user": r.user_id, "name": r.display_name}))
        .map_err(|e| id_code(&e)),
        "list-links" => id::identity_list_links(&s("of"))
            .map(|links| {
                json!(links
                    .iter()
                    .map(|l| json!({
                        "platform": l.platform,
                        "user": l.platform_user_id,
                        "method": l.method,
                        "at": l.linked_at,
                    }))
                    .collect::<Vec<_>>())
            })
            .map_err(|e| id_code(&e)),
        "approve" => ask(s("action"), s("resource")),
        "approve-huge" => ask(s("action"), huge()),
        other => Err(format!("unknown action {other}")),
    }
}

impl Guest for Registrar {
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

export!(Registrar);
