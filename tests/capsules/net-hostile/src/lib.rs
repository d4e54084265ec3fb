//! Hostile test capsule for `astrid:http@1.1.0` and `astrid:net@1.0.0`: each action attacks
//! one host function with arguments from the JSON payload (smuggled headers, integrity on an
//! upload, finished streams hoarded past the in-flight cap, write views piled on one socket,
//! out-of-range socket options, lookups and sockets beyond the quota) and reports
//! `{"ok": …}` or `{"err": code}` so the test can check what the host answered.

use std::cell::RefCell;

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:net-hostile;
        world net-hostile {
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

use astrid::http1_1_0::host as http;
use astrid::net::host as net;

struct NetHostile;

thread_local! {
    static STREAMS: RefCell<Vec<http::HttpStream>> = const { RefCell::new(Vec::new()) };
    static SOCKETS: RefCell<Vec<net::TcpStream>> = const { RefCell::new(Vec::new()) };
    static LISTENERS: RefCell<Vec<net::TcpListener>> = const { RefCell::new(Vec::new()) };
}

fn hcode(e: &http::ErrorCode) -> String {
    match e {
        http::ErrorCode::CapabilityDenied => "capability-denied".into(),
        http::ErrorCode::AirlockRejected => "airlock-rejected".into(),
        http::ErrorCode::BodyTooLarge => "body-too-large".into(),
        http::ErrorCode::RedirectBlocked => "redirect-blocked".into(),
        http::ErrorCode::TooManyRedirects => "too-many-redirects".into(),
        http::ErrorCode::SchemeDenied => "scheme-denied".into(),
        http::ErrorCode::IntegrityMismatch => "integrity-mismatch".into(),
        http::ErrorCode::InvalidRequest => "invalid-request".into(),
        http::ErrorCode::Timeout => "timeout".into(),
        http::ErrorCode::Quota => "quota".into(),
        http::ErrorCode::Closed => "closed".into(),
        http::ErrorCode::DnsError => "dns-error".into(),
        http::ErrorCode::ConnectionError => "connection-error".into(),
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
        net::ErrorCode::Unknown(_) => "unknown".into(),
    }
}

fn s(args: &Value, key: &str) -> String {
    args[key].as_str().unwrap_or("").to_string()
}

fn port(args: &Value) -> u16 {
    args["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

/// A request from `url`, `method` (GET by default) and `headers` (`[[name, value], …]`).
fn request(args: &Value) -> http::HttpRequestData {
    let headers = args["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| http::KeyValuePair {
            key: h[0].as_str().unwrap_or("").to_string(),
            value: h[1].as_str().unwrap_or("").to_string(),
        })
        .collect();
    http::HttpRequestData {
        url: s(args, "url"),
        method: match args["method"].as_str() {
            Some("POST") => http::HttpMethod::Post,
            Some(other) => http::HttpMethod::Other(other.to_string()),
            None => http::HttpMethod::Get,
        },
        headers,
        body: args["body"].as_str().map(|b| b.as_bytes().to_vec()),
    }
}

fn options(args: &Value) -> http::RequestOptions {
    let o = &args["options"];
    http::RequestOptions {
        timeouts: None,
        redirect: match o["redirect"].as_str() {
            Some("error") => Some(http::RedirectPolicy::Error),
            Some("manual") => Some(http::RedirectPolicy::Manual),
            Some("follow") => Some(http::RedirectPolicy::Follow),
            _ => None,
        },
        max_redirects: o["max-redirects"]
            .as_u64()
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        max_response_bytes: o["max-bytes"].as_u64(),
        max_decompressed_bytes: None,
        auto_decompress: None,
        https_only: o["https-only"].as_bool(),
        integrity: o["integrity"].as_str().map(str::to_string),
    }
}

/// Reads a stream to its end.
fn drain(st: &http::HttpStream) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let c = st.read_chunk().map_err(|e| hcode(&e))?;
        if c.is_empty() {
            return Ok(body);
        }
        body.extend_from_slice(&c);
    }
}

/// How a stream error reads in a report: its variant's name.
fn stream_error(e: &astrid::io::streams::StreamError) -> String {
    match e {
        astrid::io::streams::StreamError::Closed => "closed".into(),
        astrid::io::streams::StreamError::LastOperationFailed(_) => "failed".into(),
    }
}

/// Reads until the stream fails (data it still had is skipped); at most 64 reads.
fn read_to_failure(input: &astrid::io::streams::InputStream) -> String {
    for _ in 0..64 {
        if let Err(e) = input.blocking_read(64 * 1024) {
            return stream_error(&e);
        }
    }
    "never failed".into()
}

/// Writes 64 KiB at a time until the stream fails; at most 64 writes.
fn write_to_failure(output: &astrid::io::streams::OutputStream) -> String {
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..64 {
        if let Err(e) = output.blocking_write_and_flush(&chunk) {
            return stream_error(&e);
        }
    }
    "never failed".into()
}

fn connect(args: &Value) -> Result<net::TcpStream, String> {
    net::connect_tcp(&s(args, "host"), port(args)).map_err(|e| ncode(&e))
}

/// Each `tcp-stream` option set to the extreme the test names, and what the host answered.
fn extremes(sock: &net::TcpStream) -> Value {
    let r = |x: Result<(), net::ErrorCode>| match x {
        Ok(()) => json!("ok"),
        Err(e) => json!(ncode(&e)),
    };
    json!({
        "read-timeout-0": r(sock.set_read_timeout(Some(0))),
        "write-timeout-0": r(sock.set_write_timeout(Some(0))),
        "read-timeout-max": r(sock.set_read_timeout(Some(u64::MAX))),
        "read-timeout-is": sock.read_timeout().ok().flatten(),
        "write-timeout-max": r(sock.set_write_timeout(Some(u64::MAX))),
        "keepalive-0": r(sock.set_keepalive(Some(0))),
        "keepalive-max": r(sock.set_keepalive(Some(u64::MAX))),
        "linger-max": r(sock.set_linger(Some(u64::MAX))),
        "hop-limit-0": r(sock.set_hop_limit(0)),
        "hop-limit-max": r(sock.set_hop_limit(u32::MAX)),
        "peek-max": sock.peek(u32::MAX).map(|b| b.len()).map_err(|e| ncode(&e)).ok(),
        "read-max": sock.read_bytes(u32::MAX).map(|b| b.len()).map_err(|e| ncode(&e)).ok(),
        "write-empty": r(sock.write(&[])),
    })
}

/// Opens `count` write views on one socket whose peer never reads, queueing as much as each
/// view takes without waiting; answers the bytes queued and the views that took nothing.
fn pile_write_views(sock: &net::TcpStream, count: u64) -> Value {
    let chunk = vec![0u8; 64 * 1024];
    let (mut queued, mut refused) = (0u64, 0u64);
    for _ in 0..count {
        let view = sock.write_stream();
        let room = match view.check_write() {
            Ok(n) => n.min(chunk.len() as u64),
            Err(_) => 0,
        };
        if room == 0 || view.write(&chunk[..room as usize]).is_err() {
            refused += 1;
            if refused > 2 {
                break;
            }
            continue;
        }
        queued += room;
    }
    json!({"queued": queued, "refused": refused})
}

fn run(action: &str, args: &Value) -> Result<Value, String> {
    match action {
        "get" => {
            let r =
                http::http_request_opts(&request(args), &options(args)).map_err(|e| hcode(&e))?;
            Ok(json!({
                "status": r.status,
                "body": String::from_utf8_lossy(&r.body),
                "final-url": r.meta.final_url,
                "redirects": r.meta.redirect_count,
            }))
        }
        // A streamed response read to its end (the integrity check happens at the end).
        "stream" => {
            let st = http::http_stream_start_opts(&request(args), &options(args))
                .map_err(|e| hcode(&e))?;
            let body = drain(&st)?;
            Ok(json!({"status": st.status(), "body": String::from_utf8_lossy(&body)}))
        }
        // Uploads `parts`, then reads the whole answer.
        "upload" => {
            let up =
                http::http_upload_start(&request(args), &options(args)).map_err(|e| hcode(&e))?;
            {
                let sink = up.body_sink();
                for part in args["parts"].as_array().into_iter().flatten() {
                    sink.blocking_write_and_flush(part.as_str().unwrap_or("").as_bytes())
                        .map_err(|e| format!("write:{e:?}"))?;
                }
            }
            let st = up.finish().map_err(|e| hcode(&e))?;
            let body = drain(&st)?;
            Ok(json!({"status": st.status(), "body": String::from_utf8_lossy(&body)}))
        }
        // Starts `count` streams and keeps them all, reading each to its end when `read`;
        // answers how many started before the first refusal, and that refusal.
        "hoard-streams" => {
            let mut started = 0;
            for _ in 0..args["count"].as_u64().unwrap_or(1) {
                let st = match http::http_stream_start(&request(args)) {
                    Ok(st) => st,
                    Err(e) => return Ok(json!({"started": started, "refused": hcode(&e)})),
                };
                if args["read"].as_bool().unwrap_or(false) {
                    drain(&st)?;
                }
                STREAMS.with(|h| h.borrow_mut().push(st));
                started += 1;
            }
            Ok(json!({"started": started, "refused": null}))
        }
        "drop-streams" => Ok(json!(STREAMS.with(|h| h.borrow_mut().drain(..).count()))),
        "close-streams" => {
            STREAMS.with(|h| {
                for st in h.borrow().iter() {
                    let _ = st.close();
                }
            });
            Ok(json!(true))
        }
        "write-views" => {
            let sock = connect(args)?;
            if let Some(ms) = args["write-timeout-ms"].as_u64() {
                sock.set_write_timeout(Some(ms)).map_err(|e| ncode(&e))?;
            }
            Ok(pile_write_views(&sock, args["count"].as_u64().unwrap_or(1)))
        }
        // Reads through a read view while another is held; answers what the second saw.
        "two-read-views" => {
            let sock = connect(args)?;
            sock.set_read_timeout(Some(args["read-timeout-ms"].as_u64().unwrap_or(1000)))
                .map_err(|e| ncode(&e))?;
            let first = sock.read_stream();
            let second = sock.read_stream();
            let got = second.blocking_read(16).map_err(|e| format!("{e:?}"));
            let again = first.blocking_read(16).map_err(|e| format!("{e:?}"));
            drop((first, second));
            let third = sock.read_stream();
            sock.write(b"more").map_err(|e| ncode(&e))?;
            let later = third.blocking_read(16).map_err(|e| format!("{e:?}"));
            Ok(json!({
                "second": got.map(|b| String::from_utf8_lossy(&b).into_owned()).ok(),
                "first": again.map(|b| String::from_utf8_lossy(&b).into_owned()).ok(),
                "third": later.map(|b| String::from_utf8_lossy(&b).into_owned()).ok(),
            }))
        }
        // Drops each parent (a response stream, an upload, a socket) while its children (body
        // views, pollables) live on, then uses the children.
        "orphans" => {
            let st = http::http_stream_start(&request(args)).map_err(|e| hcode(&e))?;
            let body = st.body_stream();
            let ready = st.subscribe_readable();
            drop(st);
            ready.block();
            let body_read = read_to_failure(&body);
            let mut up_args = args.clone();
            up_args["url"] = args["upload-url"].clone();
            let up = http::http_upload_start(&request(&up_args), &options(args))
                .map_err(|e| hcode(&e))?;
            let sink = up.body_sink();
            let writable = up.subscribe_writable();
            drop(up);
            writable.block();
            let sink_write = write_to_failure(&sink);
            let mut sock_args = args.clone();
            sock_args["host"] = args["echo-host"].clone();
            let sock = connect(&sock_args)?;
            let (rs, ws, readable) = (
                sock.read_stream(),
                sock.write_stream(),
                sock.subscribe_readable(),
            );
            drop(sock);
            readable.block();
            Ok(json!({
                "body-read": body_read,
                "sink-write": sink_write,
                "socket-read": read_to_failure(&rs),
                "socket-write": write_to_failure(&ws),
            }))
        }
        "extremes" => Ok(extremes(&connect(args)?)),
        "lookup" => net::lookup_host(&s(args, "host"))
            .map(|r| json!(r))
            .map_err(|e| ncode(&e)),
        "hold" => {
            let sock = connect(args)?;
            Ok(json!(SOCKETS.with(|h| {
                h.borrow_mut().push(sock);
                h.borrow().len()
            })))
        }
        "bind" => {
            let l = net::bind_tcp(&s(args, "host"), port(args)).map_err(|e| ncode(&e))?;
            let addr = l.local_addr().map_err(|e| ncode(&e))?;
            LISTENERS.with(|h| h.borrow_mut().push(l));
            Ok(json!(addr))
        }
        "release" => {
            let n = SOCKETS.with(|h| h.borrow_mut().drain(..).count());
            LISTENERS.with(|h| h.borrow_mut().clear());
            Ok(json!(n))
        }
        other => Err(format!("unknown action {other}")),
    }
}

impl Guest for NetHostile {
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

export!(NetHostile);
