//! Test capsule: an interceptor that performs whatever host call its action names, with
//! arguments from the JSON payload, and reports the outcome as `{"ok": …}` or `{"err": code}`.
//! It lets integration tests drive every host function and error path from inside a guest.

mod mem;

use std::cell::RefCell;

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:prober;
        world prober {
            import astrid:ipc/host@1.0.0;
            import astrid:sys/host@1.0.0;
            import astrid:io/poll@1.0.0;
            import astrid:kv/host@1.0.0;
            import astrid:fs/host@1.0.0;
            import astrid:uplink/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::fs::host as fs;
use astrid::io::poll;
use astrid::kv::host as kv;
use astrid::ipc::host as ipc;
use astrid::sys::host as sys;
use astrid::uplink::host as uplink;

struct Prober;

thread_local! {
    static SUBS: RefCell<Vec<Option<ipc::Subscription>>> = const { RefCell::new(Vec::new()) };
    static GLOBAL: RefCell<Option<String>> = const { RefCell::new(None) };
    static FILES: RefCell<Vec<Option<fs::FileHandle>>> = const { RefCell::new(Vec::new()) };
    static PINNED: RefCell<Vec<poll::Pollable>> = const { RefCell::new(Vec::new()) };
}

fn kv_code(e: &kv::ErrorCode) -> String {
    match e {
        kv::ErrorCode::InvalidKey => "invalid-key".into(),
        kv::ErrorCode::TooLarge => "too-large".into(),
        kv::ErrorCode::Quota => "quota".into(),
        kv::ErrorCode::CasMismatch => "cas-mismatch".into(),
        kv::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn fs_code(e: &fs::ErrorCode) -> String {
    match e {
        fs::ErrorCode::NotFound => "not-found".into(),
        fs::ErrorCode::Access => "access".into(),
        fs::ErrorCode::CapabilityDenied => "capability-denied".into(),
        fs::ErrorCode::BoundaryEscape => "boundary-escape".into(),
        fs::ErrorCode::InvalidPath => "invalid-path".into(),
        fs::ErrorCode::WouldBlock => "would-block".into(),
        fs::ErrorCode::IsDirectory => "is-directory".into(),
        fs::ErrorCode::NotDirectory => "not-directory".into(),
        fs::ErrorCode::NotEmpty => "not-empty".into(),
        fs::ErrorCode::TooLarge => "too-large".into(),
        fs::ErrorCode::Quota => "quota".into(),
        fs::ErrorCode::CrossVfs => "cross-vfs".into(),
        fs::ErrorCode::AlreadyExists => "already-exists".into(),
        fs::ErrorCode::Closed => "closed".into(),
        fs::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn text(bytes: Vec<u8>) -> Value {
    json!(String::from_utf8_lossy(&bytes))
}

fn unit<E>(r: Result<(), E>, f: impl Fn(&E) -> String) -> Result<Value, String> {
    r.map(|()| Value::Null).map_err(|e| f(&e))
}

fn uplink_code(e: &uplink::ErrorCode) -> String {
    match e {
        uplink::ErrorCode::CapabilityDenied => "capability-denied".into(),
        uplink::ErrorCode::InvalidInput => "invalid-input".into(),
        uplink::ErrorCode::InvalidProfile => "invalid-profile".into(),
        uplink::ErrorCode::UnknownUplink => "unknown-uplink".into(),
        uplink::ErrorCode::NoSession => "no-session".into(),
        uplink::ErrorCode::Quota => "quota".into(),
        uplink::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn uplinks(action: &str, args: &Value) -> Option<Result<Value, String>> {
    let s = |k: &str| args[k].as_str().unwrap_or("").to_string();
    Some(match action {
        "uplink-register" => {
            let profile = match s("profile").as_str() {
                "interactive" => uplink::UplinkProfile::Interactive,
                "notify" => uplink::UplinkProfile::Notify,
                "bridge" => uplink::UplinkProfile::Bridge,
                _ => uplink::UplinkProfile::Chat,
            };
            uplink::uplink_register(&s("name"), &s("platform"), profile)
                .map(|id| json!(id))
                .map_err(|e| uplink_code(&e))
        }
        "uplink-send" => uplink::uplink_send(&s("id"), &s("user"), &s("content"))
            .map(|b| json!(b))
            .map_err(|e| uplink_code(&e)),
        _ => return None,
    })
}

fn storage(action: &str, args: &Value) -> Option<Result<Value, String>> {
    let s = |k: &str| args[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| args[k].as_u64().unwrap_or(0);
    let opt = |k: &str| args[k].as_str().map(str::to_string);
    Some(match action {
        "kv-get" => kv::kv_get(&s("key")).map(|v| v.map_or(Value::Null, text)).map_err(|e| kv_code(&e)),
        "kv-set" => unit(kv::kv_set(&s("key"), s("value").as_bytes()), kv_code),
        "kv-set-size" => unit(kv::kv_set(&s("key"), &vec![b'x'; n("size") as usize]), kv_code),
        "kv-delete" => unit(kv::kv_delete(&s("key")), kv_code),
        "kv-list" => kv::kv_list_keys(&s("prefix")).map(|k| json!(k)).map_err(|e| kv_code(&e)),
        "kv-page" => kv::kv_list_keys_page(&s("prefix"), opt("cursor").as_deref(), n("limit") as u32)
            .map(|p| json!({"keys": p.keys, "next": p.next_cursor}))
            .map_err(|e| kv_code(&e)),
        "kv-clear" => kv::kv_clear_prefix(&s("prefix")).map(|c| json!(c)).map_err(|e| kv_code(&e)),
        "kv-cas" => {
            let expected = opt("expected");
            unit(
                kv::kv_cas(&s("key"), expected.as_deref().map(str::as_bytes), s("new").as_bytes()),
                kv_code,
            )
        }
        "kv-loop" => {
            let (mode, count) = (s("mode"), n("count"));
            let value = vec![b'v'; n("size") as usize];
            for i in 0..count {
                let key = format!("bench/{}", i % 1024);
                let r = if mode == "set" {
                    kv::kv_set(&key, &value).map(drop)
                } else {
                    kv::kv_get(&key).map(drop)
                };
                if let Err(e) = r {
                    return Some(Err(kv_code(&e)));
                }
            }
            Ok(json!(count))
        }
        "read" => fs::read_file(&s("path")).map(text).map_err(|e| fs_code(&e)),
        "write" => unit(fs::write_file(&s("path"), s("content").as_bytes()), fs_code),
        "write-size" => unit(fs::write_file(&s("path"), &vec![b'x'; n("size") as usize]), fs_code),
        "append" => unit(fs::fs_append(&s("path"), s("content").as_bytes()), fs_code),
        "exists" => fs::fs_exists(&s("path")).map(|b| json!(b)).map_err(|e| fs_code(&e)),
        "mkdir" => unit(fs::fs_mkdir(&s("path")), fs_code),
        "mkdir-all" => unit(fs::fs_mkdir_all(&s("path")), fs_code),
        "readdir" => fs::fs_readdir(&s("path")).map(|v| json!(v)).map_err(|e| fs_code(&e)),
        "stat" => fs::fs_stat(&s("path"))
            .map(|st| json!({"size": st.size, "dir": matches!(st.kind, fs::FileType::Directory)}))
            .map_err(|e| fs_code(&e)),
        "unlink" => unit(fs::fs_unlink(&s("path")), fs_code),
        "copy" => unit(fs::fs_copy(&s("src"), &s("dst")), fs_code),
        "rename" => unit(fs::fs_rename(&s("src"), &s("dst")), fs_code),
        "rmrf" => fs::fs_remove_dir_all(&s("path")).map(|c| json!(c)).map_err(|e| fs_code(&e)),
        "canon" => fs::fs_canonicalize(&s("path")).map(|p| json!(p)).map_err(|e| fs_code(&e)),
        "link" => unit(fs::fs_hard_link(&s("src"), &s("dst")), fs_code),
        "open" => {
            let mode = match s("mode").as_str() {
                "write" => fs::OpenMode::Write,
                "append" => fs::OpenMode::Append,
                "read-write" => fs::OpenMode::ReadWrite,
                _ => fs::OpenMode::Read,
            };
            fs::fs_open(&s("path"), mode)
                .map(|h| {
                    FILES.with(|f| {
                        let mut f = f.borrow_mut();
                        f.push(Some(h));
                        json!(f.len() - 1)
                    })
                })
                .map_err(|e| fs_code(&e))
        }
        "handle-read" | "handle-write" | "handle-len" => FILES.with(|f| {
            let f = f.borrow();
            let Some(h) = f.get(n("index") as usize).and_then(Option::as_ref) else {
                return Err("no such handle".to_string());
            };
            match action {
                "handle-read" => h.read_at(n("offset"), n("max") as u32).map(text).map_err(|e| fs_code(&e)),
                "handle-write" => h
                    .write_at(n("offset"), s("data").as_bytes())
                    .map(|w| json!(w))
                    .map_err(|e| fs_code(&e)),
                _ => h.set_len(n("size")).map(|()| Value::Null).map_err(|e| fs_code(&e)),
            }
        }),
        "close-all" => {
            FILES.with(|f| f.borrow_mut().clear());
            Ok(Value::Null)
        }
        "fs-loop" => {
            let (mode, path, count) = (s("mode"), s("path"), n("count"));
            let data = vec![b'd'; n("size") as usize];
            for _ in 0..count {
                let r = if mode == "write" {
                    fs::write_file(&path, &data)
                } else {
                    fs::read_file(&path).map(drop)
                };
                if let Err(e) = r {
                    return Some(Err(fs_code(&e)));
                }
            }
            Ok(json!(count))
        }
        "touch-many" => {
            // Creates empty files `<dir>/f<i>` until one fails: how many were made, and why not more.
            let (dir, count) = (s("dir"), n("count"));
            let mut made = 0u64;
            let mut error = Value::Null;
            for i in 0..count {
                match fs::write_file(&format!("{dir}/f{i}"), b"") {
                    Ok(()) => made += 1,
                    Err(e) => {
                        error = json!(fs_code(&e));
                        break;
                    }
                }
            }
            Ok(json!({"made": made, "error": error}))
        }
        "log-flood" => {
            let line = "l".repeat(n("size") as usize);
            for _ in 0..n("count") {
                sys::log(sys::LogLevel::Info, &line);
            }
            sys::log(sys::LogLevel::Info, &s("last"));
            Ok(json!(n("count")))
        }
        _ => return None,
    })
}

fn ipc_code(e: &ipc::ErrorCode) -> String {
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

fn sys_code(e: &sys::ErrorCode) -> String {
    match e {
        sys::ErrorCode::CapabilityDenied => "capability-denied".into(),
        sys::ErrorCode::ConfigKeyReserved => "config-key-reserved".into(),
        sys::ErrorCode::TooLarge => "too-large".into(),
        sys::ErrorCode::RegistryUnavailable => "registry-unavailable".into(),
        sys::ErrorCode::Cancelled => "cancelled".into(),
        sys::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn poll_code(e: &poll::ErrorCode) -> String {
    match e {
        poll::ErrorCode::InvalidInput => "invalid-input".into(),
        poll::ErrorCode::Closed => "closed".into(),
        poll::ErrorCode::TooLarge => "too-large".into(),
        poll::ErrorCode::Cancelled => "cancelled".into(),
        poll::ErrorCode::Unknown(s) => format!("unknown:{s}"),
    }
}

fn attribution(p: &ipc::PrincipalAttribution) -> Value {
    match p {
        ipc::PrincipalAttribution::Verified(id) => json!({"verified": id}),
        ipc::PrincipalAttribution::Claimed(id) => json!({"claimed": id}),
        ipc::PrincipalAttribution::System => json!("system"),
    }
}

fn envelope(e: &ipc::IpcEnvelope) -> Value {
    let messages: Vec<Value> = e
        .messages
        .iter()
        .map(|m| {
            json!({
                "topic": m.topic,
                "payload": m.payload,
                "source": m.source_id,
                "principal": attribution(&m.principal),
            })
        })
        .collect();
    json!({"messages": messages, "dropped": e.dropped, "lagged": e.lagged})
}

fn with_sub<T>(index: u64, f: impl FnOnce(&ipc::Subscription) -> Result<T, String>) -> Result<T, String> {
    SUBS.with(|subs| {
        let subs = subs.borrow();
        match subs.get(index as usize).and_then(Option::as_ref) {
            Some(s) => f(s),
            None => Err(format!("no subscription {index}")),
        }
    })
}

fn level(s: &str) -> sys::LogLevel {
    match s {
        "trace" => sys::LogLevel::Trace,
        "debug" => sys::LogLevel::Debug,
        "warn" => sys::LogLevel::Warn,
        "error" => sys::LogLevel::Error,
        _ => sys::LogLevel::Info,
    }
}

fn run(action: &str, args: &Value) -> Result<Value, String> {
    let s = |k: &str| args[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| args[k].as_u64().unwrap_or(0);
    match action {
        "publish" => ipc::publish(&s("topic"), &s("payload"))
            .map(|()| Value::Null)
            .map_err(|e| ipc_code(&e)),
        "publish-as" => ipc::publish_as(&s("topic"), &s("payload"), &s("principal"))
            .map(|()| Value::Null)
            .map_err(|e| ipc_code(&e)),
        "publish-loop" => {
            let (topic, payload) = (s("topic"), s("payload"));
            let mut errors = 0u64;
            for _ in 0..n("count") {
                if ipc::publish(&topic, &payload).is_err() {
                    errors += 1;
                }
            }
            Ok(json!({"errors": errors}))
        }
        "subscribe" => {
            let sub = ipc::subscribe(&s("pattern")).map_err(|e| ipc_code(&e))?;
            Ok(SUBS.with(|subs| {
                let mut subs = subs.borrow_mut();
                subs.push(Some(sub));
                json!(subs.len() - 1)
            }))
        }
        "subscribe-many" => {
            let pattern = s("pattern");
            let mut ok = 0u64;
            let mut first_error = Value::Null;
            for _ in 0..n("count") {
                match ipc::subscribe(&pattern) {
                    Ok(sub) => {
                        ok += 1;
                        SUBS.with(|subs| subs.borrow_mut().push(Some(sub)));
                    }
                    Err(e) => {
                        if first_error.is_null() {
                            first_error = json!(ipc_code(&e));
                        }
                    }
                }
            }
            Ok(json!({"subscribed": ok, "first_error": first_error}))
        }
        "drop" => {
            SUBS.with(|subs| {
                if let Some(slot) = subs.borrow_mut().get_mut(n("index") as usize) {
                    *slot = None;
                }
            });
            Ok(Value::Null)
        }
        "drop-all" => {
            SUBS.with(|subs| subs.borrow_mut().clear());
            Ok(Value::Null)
        }
        "poll" => with_sub(n("index"), |sub| sub.poll().map(|e| envelope(&e)).map_err(|e| ipc_code(&e))),
        "recv" => with_sub(n("index"), |sub| {
            let notify = s("notify");
            if !notify.is_empty() {
                ipc::publish(&notify, "{\"waiting\":true}").map_err(|e| ipc_code(&e))?;
            }
            sub.recv(n("timeout")).map(|e| envelope(&e)).map_err(|e| ipc_code(&e))
        }),
        "wait" => with_sub(n("index"), |sub| {
            let p = sub.subscribe_readiness();
            let before = p.ready();
            let notify = s("notify");
            if !notify.is_empty() {
                ipc::publish(&notify, "{\"waiting\":true}").map_err(|e| ipc_code(&e))?;
            }
            let ready = poll::poll(&[&p]).map_err(|e| poll_code(&e))?;
            Ok(json!({"was_ready": before, "ready": ready, "after": p.ready()}))
        }),
        "block" => with_sub(n("index"), |sub| {
            let p = sub.subscribe_readiness();
            p.block().map_err(|e| poll_code(&e))?;
            Ok(json!(p.ready()))
        }),
        "poll-empty" => poll::poll(&[]).map(|v| json!(v)).map_err(|e| poll_code(&e)),
        "bindings" => ipc::get_interceptor_bindings()
            .map(|b| {
                Value::Array(
                    b.iter()
                        .map(|b| json!({"id": b.handle_id, "action": b.action, "topic": b.topic}))
                        .collect(),
                )
            })
            .map_err(|e| ipc_code(&e)),
        "readiness-many" => with_sub(n("index"), |sub| {
            // Every pollable is kept alive, so each one holds a slot in the host's table.
            let mut made = 0u64;
            for _ in 0..n("count") {
                let p = sub.subscribe_readiness();
                PINNED.with(|v| v.borrow_mut().push(p));
                made += 1;
            }
            Ok(json!(made))
        }),
        "config" => sys::get_config(&s("key")).map(|v| json!(v)).map_err(|e| sys_code(&e)),
        "caller" => sys::get_caller()
            .map(|c| json!({"principal": c.principal, "source": c.source_id, "timestamp": c.timestamp}))
            .map_err(|e| sys_code(&e)),
        "log" => {
            sys::log(level(&s("level")), &s("message"));
            Ok(Value::Null)
        }
        "ready" => {
            sys::signal_ready();
            Ok(Value::Null)
        }
        "clock" => Ok(json!({"ms": sys::clock_ms(), "ns": sys::clock_monotonic_ns()})),
        "sleep" => sys::sleep_ns(n("ns")).map(|()| Value::Null).map_err(|e| sys_code(&e)),
        "random" => sys::random_bytes(n("count"))
            .map(|b| json!(b.len()))
            .map_err(|e| sys_code(&e)),
        "capability" => sys::check_capsule_capability(&sys::CapabilityCheckRequest {
            source_uuid: s("session"),
            capability: s("name"),
        })
        .map(|r| json!(r.allowed))
        .map_err(|e| sys_code(&e)),
        "capabilities" => Ok(json!(sys::enumerate_capabilities())),
        "print" => {
            use std::io::Write;
            let (out, err) = (s("stdout"), s("stderr"));
            if !out.is_empty() {
                println!("{out}");
            }
            if !err.is_empty() {
                eprintln!("{err}");
            }
            let _ = std::io::stdout().flush();
            Ok(Value::Null)
        }
        "noop" => {
            let mut acc = 0u64;
            for _ in 0..n("count") {
                acc = acc.wrapping_add(sys::clock_monotonic_ns());
            }
            Ok(json!(acc != 0))
        }
        "grow" => {
            let before = core::arch::wasm32::memory_size::<0>();
            let result = core::arch::wasm32::memory_grow::<0>(n("pages") as usize);
            let grown = if result == usize::MAX { -1 } else { result as i64 };
            Ok(json!({"before": before, "result": grown, "after": core::arch::wasm32::memory_size::<0>()}))
        }
        "set-global" => {
            GLOBAL.with(|g| *g.borrow_mut() = Some(s("value")));
            Ok(Value::Null)
        }
        "get-global" => Ok(GLOBAL.with(|g| json!(g.borrow().clone()))),
        "spin" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "mem-plant" => mem::plant(n("seed"), n("pages") as usize),
        "mem-scan" => mem::scan(n("seed"), n("to_pages") as usize),
        "trap" => std::process::abort(),
        other => storage(other, args)
            .or_else(|| uplinks(other, args))
            .unwrap_or_else(|| Err(format!("unknown action {other}"))),
    }
}

impl Guest for Prober {
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

export!(Prober);
