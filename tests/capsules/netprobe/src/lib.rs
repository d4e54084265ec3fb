//! Test capsule: an interceptor that makes the outbound HTTP calls its action names, with the
//! request from the JSON payload, and reports `{"ok": …}` or `{"err": code}`. Streams it opens
//! with `hold` stay open (in this instance) until `release`, so tests can fill a principal's
//! in-flight budget or unload the capsule under them.

use std::cell::RefCell;

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:netprobe;
        world netprobe {
            import astrid:http/host@1.0.0;
            import astrid:io/poll@1.0.0;
            import astrid:io/streams@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::http1_0_0::host as http;
use astrid::io::streams;

struct NetProbe;

thread_local! {
    static HELD: RefCell<Vec<http::HttpStream>> = const { RefCell::new(Vec::new()) };
}

fn code(e: &http::ErrorCode) -> String {
    match e {
        http::ErrorCode::CapabilityDenied => "capability-denied".into(),
        http::ErrorCode::InvalidRequest => "invalid-request".into(),
        http::ErrorCode::DnsError => "dns-error".into(),
        http::ErrorCode::AirlockRejected => "airlock-rejected".into(),
        http::ErrorCode::TlsError => "tls-error".into(),
        http::ErrorCode::Timeout => "timeout".into(),
        http::ErrorCode::ConnectionError => "connection-error".into(),
        http::ErrorCode::BodyTooLarge => "body-too-large".into(),
        http::ErrorCode::Closed => "closed".into(),
        http::ErrorCode::Quota => "quota".into(),
        http::ErrorCode::Protocol(s) => format!("protocol:{s}"),
        http::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn request(args: &Value) -> http::HttpRequestData {
    let method = match args["method"].as_str().unwrap_or("GET") {
        "GET" => http::HttpMethod::Get,
        "HEAD" => http::HttpMethod::Head,
        "POST" => http::HttpMethod::Post,
        "PUT" => http::HttpMethod::Put,
        "DELETE" => http::HttpMethod::Delete,
        other => http::HttpMethod::Other(other.to_string()),
    };
    let headers = args["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| http::KeyValuePair {
                    key: k.clone(),
                    value: v.as_str().unwrap_or("").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    http::HttpRequestData {
        url: args["url"].as_str().unwrap_or("").to_string(),
        method,
        headers,
        body: args["body"].as_str().map(|b| b.as_bytes().to_vec()),
    }
}

fn header(headers: &[http::KeyValuePair], name: &str) -> Value {
    headers
        .iter()
        .find(|p| p.key.eq_ignore_ascii_case(name))
        .map_or(Value::Null, |p| json!(p.value))
}

fn run(action: &str, args: &Value) -> Result<Value, String> {
    match action {
        "get" => {
            let r = http::http_request(&request(args)).map_err(|e| code(&e))?;
            Ok(json!({
                "status": r.status,
                "echo": header(&r.headers, "x-echo"),
                "len": r.body.len(),
                "body": String::from_utf8_lossy(&r.body[..r.body.len().min(4096)]),
            }))
        }
        // Reads a streamed body with `read-chunk` until the empty end chunk.
        "chunks" => {
            let s = http::http_stream_start(&request(args)).map_err(|e| code(&e))?;
            let status = s.status();
            let mut body = Vec::new();
            let mut chunks = 0u32;
            loop {
                let ready = s.subscribe_readable();
                ready.block().map_err(|_| "poll-failed".to_string())?;
                let c = s.read_chunk().map_err(|e| code(&e))?;
                if c.is_empty() {
                    break;
                }
                chunks += 1;
                body.extend_from_slice(&c);
            }
            s.close().map_err(|e| code(&e))?;
            let again = s.close().err().map(|e| code(&e));
            Ok(json!({
                "status": status,
                "chunks": chunks,
                "len": body.len(),
                "body": String::from_utf8_lossy(&body[..body.len().min(4096)]),
                "second-close": again,
            }))
        }
        // Reads a streamed body through its `input-stream` until `closed`.
        "body-stream" => {
            let s = http::http_stream_start(&request(args)).map_err(|e| code(&e))?;
            let input = s.body_stream();
            let mut body = Vec::new();
            loop {
                match input.blocking_read(65536) {
                    Ok(b) => body.extend_from_slice(&b),
                    Err(streams::StreamError::Closed) => break,
                    Err(streams::StreamError::LastOperationFailed(e)) => {
                        return Err(format!("stream-failed:{}", e.to_debug_string()));
                    }
                }
            }
            Ok(json!({"status": s.status(), "len": body.len()}))
        }
        "hold" => {
            let s = http::http_stream_start(&request(args)).map_err(|e| code(&e))?;
            let status = s.status();
            HELD.with(|h| h.borrow_mut().push(s));
            Ok(json!(status))
        }
        "release" => Ok(json!(HELD.with(|h| h.borrow_mut().drain(..).count()))),
        other => Err(format!("unknown action {other}")),
    }
}

impl Guest for NetProbe {
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

export!(NetProbe);
