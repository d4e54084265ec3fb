//! Test capsule: one guest importing `astrid:http@1.0.0`, `astrid:http@1.1.0` and
//! `astrid:net@1.0.0` side by side. Each action does what its name says with arguments from
//! the JSON payload and reports `{"ok": …}` or `{"err": code}`. Sockets and listeners it is
//! asked to `hold` stay open in this instance until `release`.

use std::cell::RefCell;

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:netkit;
        world netkit {
            import astrid:http/host@1.0.0;
            import astrid:http/host@1.1.0;
            import astrid:net/host@1.0.0;
            import astrid:io/poll@1.0.0;
            import astrid:io/streams@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::http1_0_0::host as http10;
use astrid::http1_1_0::host as http11;
use astrid::net::host as net;

struct NetKit;

thread_local! {
    static SOCKETS: RefCell<Vec<net::TcpStream>> = const { RefCell::new(Vec::new()) };
    static UNIX: RefCell<Option<net::UnixListener>> = const { RefCell::new(None) };
    static TCP: RefCell<Option<net::TcpListener>> = const { RefCell::new(None) };
}

fn code10(e: &http10::ErrorCode) -> String {
    format!("{e:?}")
}

fn code11(e: &http11::ErrorCode) -> String {
    match e {
        http11::ErrorCode::CapabilityDenied => "capability-denied".into(),
        http11::ErrorCode::AirlockRejected => "airlock-rejected".into(),
        http11::ErrorCode::BodyTooLarge => "body-too-large".into(),
        http11::ErrorCode::RedirectBlocked => "redirect-blocked".into(),
        http11::ErrorCode::TooManyRedirects => "too-many-redirects".into(),
        http11::ErrorCode::SchemeDenied => "scheme-denied".into(),
        http11::ErrorCode::IntegrityMismatch => "integrity-mismatch".into(),
        http11::ErrorCode::InvalidRequest => "invalid-request".into(),
        http11::ErrorCode::Timeout => "timeout".into(),
        http11::ErrorCode::Quota => "quota".into(),
        other => format!("{other:?}"),
    }
}

fn ncode(e: &net::ErrorCode) -> String {
    match e {
        net::ErrorCode::WouldBlock => "would-block".into(),
        net::ErrorCode::Closed => "closed".into(),
        net::ErrorCode::CapabilityDenied => "capability-denied".into(),
        net::ErrorCode::AirlockRejected => "airlock-rejected".into(),
        net::ErrorCode::ConnectionRefused => "connection-refused".into(),
        net::ErrorCode::ConnectionReset => "connection-reset".into(),
        net::ErrorCode::Timeout => "timeout".into(),
        net::ErrorCode::AddressInUse => "address-in-use".into(),
        net::ErrorCode::AddressNotAvailable => "address-not-available".into(),
        net::ErrorCode::NameUnresolvable => "name-unresolvable".into(),
        net::ErrorCode::InvalidHandle => "invalid-handle".into(),
        net::ErrorCode::NotTcp => "not-tcp".into(),
        net::ErrorCode::Quota => "quota".into(),
        net::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn s(args: &Value, key: &str) -> String {
    args[key].as_str().unwrap_or("").to_string()
}

fn port(args: &Value) -> u16 {
    args["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0)
}

fn req11(args: &Value, method: http11::HttpMethod) -> http11::HttpRequestData {
    http11::HttpRequestData {
        url: s(args, "url"),
        method,
        headers: Vec::new(),
        body: args["body"].as_str().map(|b| b.as_bytes().to_vec()),
    }
}

fn options(args: &Value) -> http11::RequestOptions {
    let o = &args["options"];
    let num = |k: &str| o[k].as_u64();
    let timeouts = o["total-ms"].as_u64().map(|t| http11::TimeoutConfig {
        connect_ms: None,
        first_byte_ms: None,
        between_bytes_ms: num("between-ms"),
        total_ms: Some(t),
    });
    http11::RequestOptions {
        timeouts,
        redirect: match o["redirect"].as_str() {
            Some("error") => Some(http11::RedirectPolicy::Error),
            Some("manual") => Some(http11::RedirectPolicy::Manual),
            Some("follow") => Some(http11::RedirectPolicy::Follow),
            _ => None,
        },
        max_redirects: num("max-redirects").and_then(|n| u32::try_from(n).ok()),
        max_response_bytes: num("max-bytes"),
        max_decompressed_bytes: None,
        auto_decompress: None,
        https_only: o["https-only"].as_bool(),
        integrity: o["integrity"].as_str().map(str::to_string),
    }
}

/// Writes `msg` and reads until `want` bytes came back (or end of stream).
fn echo(sock: &net::TcpStream, msg: &[u8], want: usize) -> Result<Vec<u8>, String> {
    sock.write(msg).map_err(|e| ncode(&e))?;
    let mut got = Vec::new();
    while got.len() < want {
        let b = sock.read_bytes(65536).map_err(|e| ncode(&e))?;
        if b.is_empty() {
            break;
        }
        got.extend_from_slice(&b);
    }
    Ok(got)
}

fn run(action: &str, args: &Value) -> Result<Value, String> {
    match action {
        "get10" => {
            let r = http10::http_request(&http10::HttpRequestData {
                url: s(args, "url"),
                method: http10::HttpMethod::Get,
                headers: Vec::new(),
                body: None,
            })
            .map_err(|e| code10(&e))?;
            Ok(json!({"status": r.status, "body": String::from_utf8_lossy(&r.body)}))
        }
        "get11" => {
            let r = http11::http_request_opts(&req11(args, http11::HttpMethod::Get), &options(args))
                .map_err(|e| code11(&e))?;
            Ok(json!({
                "status": r.status,
                "body": String::from_utf8_lossy(&r.body),
                "final-url": r.meta.final_url,
                "redirects": r.meta.redirect_count,
                "wire-bytes": r.meta.wire_bytes,
            }))
        }
        // Streams a 1.1 response and reports its trailers.
        "stream11" => {
            let st = http11::http_stream_start_opts(
                &req11(args, http11::HttpMethod::Get),
                &options(args),
            )
            .map_err(|e| code11(&e))?;
            let mut body = Vec::new();
            loop {
                st.subscribe_readable().block().map_err(|_| "poll".to_string())?;
                let c = st.read_chunk().map_err(|e| code11(&e))?;
                if c.is_empty() {
                    break;
                }
                body.extend_from_slice(&c);
            }
            let trailers = st.trailers().map_err(|e| code11(&e))?.map(|t| {
                t.into_iter()
                    .map(|p| format!("{}={}", p.key, p.value))
                    .collect::<Vec<_>>()
            });
            Ok(json!({"status": st.status(), "body": String::from_utf8_lossy(&body), "trailers": trailers}))
        }
        // Uploads `parts` through the body sink, then reads the whole answer.
        "upload11" => {
            let up = http11::http_upload_start(
                &http11::HttpRequestData {
                    url: s(args, "url"),
                    method: http11::HttpMethod::Post,
                    headers: Vec::new(),
                    body: None,
                },
                &options(args),
            )
            .map_err(|e| code11(&e))?;
            {
                let sink = up.body_sink();
                for part in args["parts"].as_array().into_iter().flatten() {
                    let bytes = part.as_str().unwrap_or("").as_bytes();
                    sink.blocking_write_and_flush(bytes)
                        .map_err(|e| format!("write:{e:?}"))?;
                }
            }
            let st = up.finish().map_err(|e| code11(&e))?;
            let mut body = Vec::new();
            loop {
                let c = st.read_chunk().map_err(|e| code11(&e))?;
                if c.is_empty() {
                    break;
                }
                body.extend_from_slice(&c);
            }
            Ok(json!({"status": st.status(), "body": String::from_utf8_lossy(&body)}))
        }
        // `count` GETs through 1.1 in a row (keep-alive); answers how many succeeded.
        "get-many" => {
            let n = args["count"].as_u64().unwrap_or(1);
            let req = req11(args, http11::HttpMethod::Get);
            for _ in 0..n {
                http11::http_request(&req).map_err(|e| code11(&e))?;
            }
            Ok(json!(n))
        }
        "tcp-echo" => {
            let sock = net::connect_tcp(&s(args, "host"), port(args)).map_err(|e| ncode(&e))?;
            sock.set_nodelay(true).map_err(|e| ncode(&e))?;
            let msg = s(args, "msg");
            let n = args["rounds"].as_u64().unwrap_or(1);
            let mut last = Vec::new();
            for _ in 0..n {
                last = echo(&sock, msg.as_bytes(), msg.len())?;
            }
            let peer = sock.peer_addr().map_err(|e| ncode(&e))?;
            Ok(json!({"echo": String::from_utf8_lossy(&last), "peer": peer}))
        }
        "connect" => {
            net::connect_tcp(&s(args, "host"), port(args)).map_err(|e| ncode(&e))?;
            Ok(json!(true))
        }
        "hold" => {
            let sock = net::connect_tcp(&s(args, "host"), port(args)).map_err(|e| ncode(&e))?;
            sock.write(s(args, "msg").as_bytes()).map_err(|e| ncode(&e))?;
            Ok(json!(SOCKETS.with(|h| {
                h.borrow_mut().push(sock);
                h.borrow().len()
            })))
        }
        "release" => Ok(json!(SOCKETS.with(|h| h.borrow_mut().drain(..).count()))),
        "bind-tcp" => {
            let l = net::bind_tcp(&s(args, "host"), port(args)).map_err(|e| ncode(&e))?;
            let addr = l.local_addr().map_err(|e| ncode(&e))?;
            TCP.with(|t| *t.borrow_mut() = Some(l));
            Ok(json!(addr))
        }
        "bind-unix" => {
            let l = net::bind_unix().map_err(|e| ncode(&e))?;
            UNIX.with(|u| *u.borrow_mut() = Some(l));
            Ok(json!(true))
        }
        // Accepts one connection on the held listener (`unix` or `tcp`), peeks, reads a line
        // and answers it upper-cased.
        "serve-one" => {
            let conn = if args["on"] == "tcp" {
                TCP.with(|t| match &*t.borrow() {
                    Some(l) => {
                        l.subscribe_readiness().block().map_err(|_| "poll".to_string())?;
                        l.accept().map_err(|e| ncode(&e))
                    }
                    None => Err("no listener".into()),
                })?
            } else {
                UNIX.with(|u| match &*u.borrow() {
                    Some(l) => l
                        .poll_accept(60_000)
                        .map_err(|e| ncode(&e))?
                        .ok_or_else(|| "no connection".to_string()),
                    None => Err("no listener".into()),
                })?
            };
            let peeked = conn.peek(4).map_err(|e| ncode(&e))?;
            let mut line = Vec::new();
            while !line.ends_with(b"\n") {
                let b = conn.read_bytes(1024).map_err(|e| ncode(&e))?;
                if b.is_empty() {
                    break;
                }
                line.extend_from_slice(&b);
            }
            conn.write(&line.to_ascii_uppercase()).map_err(|e| ncode(&e))?;
            let nodelay = conn.set_nodelay(true).err().map(|e| ncode(&e));
            Ok(json!({
                "peeked": String::from_utf8_lossy(&peeked),
                "line": String::from_utf8_lossy(&line),
                "nodelay": nodelay,
            }))
        }
        "lookup" => {
            let r = net::lookup_host(&s(args, "host")).map_err(|e| ncode(&e))?;
            Ok(json!(r))
        }
        "udp" => {
            net::udp_bind("127.0.0.1", 0).map_err(|e| ncode(&e))?;
            Ok(json!(true))
        }
        other => Err(format!("unknown action {other}")),
    }
}

impl Guest for NetKit {
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

export!(NetKit);
