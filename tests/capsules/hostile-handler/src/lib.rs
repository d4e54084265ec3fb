//! Test capsule: a misbehaving handler for the hostile suite. Config `mode` picks the attack:
//! - `bad-json`: answers `continue` with data that is not JSON;
//! - `huge`: answers `continue` with a JSON string larger than the 1 MiB payload limit;
//! - `loop`: publishes the payload it was called with on config `topic` (a topic its own
//!   capsule, or a cycle of capsules, handles), logging `loop publish refused: <code>` when the
//!   host says no, then answers `continue`.

wit_bindgen::generate!({
    inline: r#"
        package test:hostile-handler;
        world hostile-handler {
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

struct Hostile;

fn config(key: &str, default: &str) -> String {
    sys::get_config(key).ok().flatten().unwrap_or_else(|| default.to_string())
}

fn code(e: &ipc::ErrorCode) -> String {
    match e {
        ipc::ErrorCode::CapabilityDenied => "capability-denied".into(),
        ipc::ErrorCode::InvalidInput => "invalid-input".into(),
        ipc::ErrorCode::Closed => "closed".into(),
        ipc::ErrorCode::RateLimited => "rate-limited".into(),
        ipc::ErrorCode::Backpressure => "backpressure".into(),
        ipc::ErrorCode::Quota => "quota".into(),
        ipc::ErrorCode::Timeout => "timeout".into(),
        ipc::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

impl Guest for Hostile {
    fn astrid_hook_trigger(_action: String, payload: Vec<u8>) -> CapsuleResult {
        let data = match config("mode", "").as_str() {
            "bad-json" => Some("{not json".to_string()),
            "huge" => Some(format!("\"{}\"", "x".repeat(1024 * 1024 + 16))),
            "loop" => {
                let topic = config("topic", "loop.t");
                if let Err(e) = ipc::publish(&topic, &String::from_utf8_lossy(&payload)) {
                    sys::log(sys::LogLevel::Warn, &format!("loop publish refused: {}", code(&e)));
                }
                None
            }
            _ => None,
        };
        CapsuleResult {
            action: "continue".into(),
            data,
        }
    }
}

export!(Hostile);
