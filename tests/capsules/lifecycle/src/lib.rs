//! Test capsule with install and upgrade hooks. Install asks its operator for a greeting and,
//! unless one is stored, the secret `TOKEN`; upgrade records the version it came from and asks
//! for a mode. Both count their runs in KV. Config `fail` = `install` or `upgrade` makes that
//! hook fail with a message on stderr. Actions: `state` (what the hooks recorded), `elicit` and
//! `has-secret` (tried outside the lifecycle), `config` (a config value).

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:lifecycle;
        world lifecycle {
            import astrid:sys/host@1.0.0;
            import astrid:kv/host@1.0.0;
            import astrid:elicit/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
            include astrid:guest/installable@1.0.0;
            include astrid:guest/upgradable@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::elicit::host as elicit;
use astrid::kv::host as kv;
use astrid::sys::host as sys;

struct Lifecycle;

fn config(key: &str) -> Option<String> {
    sys::get_config(key).ok().flatten()
}

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::abort()
}

fn get(key: &str) -> Option<String> {
    kv::kv_get(key).ok().flatten().map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn set(key: &str, value: &str) {
    if let Err(e) = kv::kv_set(key, value.as_bytes()) {
        fail(&format!("kv-set {key}: {e:?}"));
    }
}

fn bump(key: &str) {
    let n: u64 = get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
    set(key, &(n + 1).to_string());
}

fn code(e: &elicit::ErrorCode) -> String {
    match e {
        elicit::ErrorCode::NotInLifecycle => "not-in-lifecycle".into(),
        elicit::ErrorCode::Timeout => "timeout".into(),
        elicit::ErrorCode::Cancelled => "cancelled".into(),
        elicit::ErrorCode::InvalidInput => "invalid-input".into(),
        elicit::ErrorCode::StoreUnavailable => "store-unavailable".into(),
        elicit::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn ask(kind: elicit::ElicitType, key: &str, options: Option<Vec<String>>) -> Result<elicit::ElicitResponse, String> {
    elicit::elicit(&elicit::ElicitRequest {
        kind,
        key: key.into(),
        description: format!("a value for {key}"),
        options,
        default_value: None,
    })
    .map_err(|e| code(&e))
}

impl Guest for Lifecycle {
    fn astrid_install() {
        if config("fail").as_deref() == Some("install") {
            fail("install refused: the fail flag is set");
        }
        match ask(elicit::ElicitType::Text, "greeting", None) {
            Ok(elicit::ElicitResponse::Value(v)) => set("greeting", &v),
            other => fail(&format!("greeting: {other:?}")),
        }
        match elicit::has_secret("TOKEN") {
            Ok(true) => set("token", "already-stored"),
            Ok(false) => match ask(elicit::ElicitType::Secret, "TOKEN", None) {
                Ok(elicit::ElicitResponse::SecretStored) => set("token", "stored"),
                other => fail(&format!("TOKEN: {other:?}")),
            },
            Err(e) => fail(&format!("has-secret: {}", code(&e))),
        }
        bump("installs");
    }

    fn astrid_upgrade() {
        if config("fail").as_deref() == Some("upgrade") {
            fail("upgrade refused: the fail flag is set");
        }
        set("upgraded_from", &config("prev_version").unwrap_or_default());
        let options = Some(vec!["fast".to_string(), "safe".to_string()]);
        match ask(elicit::ElicitType::Select, "mode", options) {
            Ok(elicit::ElicitResponse::Value(v)) => set("mode", &v),
            other => fail(&format!("mode: {other:?}")),
        }
        bump("upgrades");
    }

    fn astrid_hook_trigger(action: String, payload: Vec<u8>) -> CapsuleResult {
        let args: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        let out: Result<Value, String> = match action.as_str() {
            "state" => Ok(json!({
                "installs": get("installs"),
                "upgrades": get("upgrades"),
                "greeting": get("greeting"),
                "token": get("token"),
                "upgraded_from": get("upgraded_from"),
                "mode": get("mode"),
            })),
            "elicit" => ask(elicit::ElicitType::Text, "greeting", None).map(|r| json!(format!("{r:?}"))),
            "has-secret" => elicit::has_secret("TOKEN").map(|b| json!(b)).map_err(|e| code(&e)),
            "config" => Ok(json!(config(args["key"].as_str().unwrap_or("")))),
            other => Err(format!("unknown action {other}")),
        };
        let data = match out {
            Ok(v) => json!({"ok": v}),
            Err(e) => json!({"err": e}),
        };
        CapsuleResult {
            action: "continue".into(),
            data: Some(data.to_string()),
        }
    }
}

export!(Lifecycle);
