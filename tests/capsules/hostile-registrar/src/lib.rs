//! Test capsule: a run loop that serves `astrid:identity` to whoever the host puts in scope for
//! each message it drains, so the hostile identity tests can reach the directory as principals
//! a handler call never carries (a disabled one, a claimed owner). It subscribes to
//! `ident.*`, signals ready, and answers each request `{"op", "tag", …}` on `ident-reply.out`
//! with the tag, the caller the host reports, and `{"ok": …}` or `{"err": code}`. Ops:
//! `resolve` / `unlink` (`platform`, `user`), `link` (`platform`, `user`, `to`, `method`),
//! `list-links` (`of`). It returns when recv reports `closed`.

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:hostile-registrar;
        world hostile-registrar {
            import astrid:ipc/host@1.0.0;
            import astrid:sys/host@1.0.0;
            import astrid:identity/host@1.0.0;
            include astrid:guest/background@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::identity::host as id;
use astrid::ipc::host as ipc;
use astrid::sys::host as sys;

struct Server;

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

fn serve(req: &Value) -> Result<Value, String> {
    let s = |k: &str| req[k].as_str().unwrap_or("").to_string();
    match req["op"].as_str().unwrap_or("") {
        "resolve" => id::identity_resolve(&id::IdentityResolveRequest {
            platform: s("platform"),
            platform_user_id: s("user"),
        })
        .map(|r| json!(r.user_id)),
        "link" => id::identity_link(&id::IdentityLinkRequest {
            platform: s("platform"),
            platform_user_id: s("user"),
            astrid_user_id: s("to"),
            method: s("method"),
        })
        .map(|()| Value::Null),
        "unlink" => id::identity_unlink(&id::IdentityUnlinkRequest {
            platform: s("platform"),
            platform_user_id: s("user"),
        })
        .map(|()| Value::Null),
        "list-links" => id::identity_list_links(&s("of")).map(|l| json!(l.len())),
        other => return Err(format!("unknown op {other}")),
    }
    .map_err(|e| id_code(&e))
}

impl Guest for Server {
    fn run() {
        let Ok(input) = ipc::subscribe("ident.*") else {
            sys::log(sys::LogLevel::Error, "hostile-registrar: subscribe failed");
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
                let mut answer = match serve(&req) {
                    Ok(v) => json!({"ok": v}),
                    Err(e) => json!({"err": e}),
                };
                answer["tag"] = req["tag"].clone();
                answer["caller"] = json!(sys::get_caller().ok().and_then(|c| c.principal));
                let _ = ipc::publish("ident-reply.out", &answer.to_string());
            }
        }
    }
}

export!(Server);
