//! Test capsule: an interceptor that drives `astrid:process@1.1.0` from inside a guest.
//! Its action names the call, the JSON payload its arguments; it answers `{"ok": …}` or
//! `{"err": code}`. Background handles are kept between calls in numbered slots.
//!
//! A request object: `cmd`, `args`, optional `cwd`, `env`
//! (`[[key, value], …]`), `stdin` (text), `keep` (keep stdin open), `label`, `mem`, `cpu`,
//! `pids`, `files`, `ring`, `overflow` ("drop" | "back"), `life` (ms), `idle` (ms) and
//! `inject` (`[{"env": NAME} | {"path": NAME}, "content": text]`).
//!
//! The same guest also touches what its children made: `fs-read`, `fs-write`, `fs-mkdir-all`
//! (`path`, `content`) through `astrid:fs`, `config` (`key`) and `log` (`message`) through
//! `astrid:sys`, answering errors as `fs:<code>` / `sys:<code>`.

use std::cell::RefCell;

use serde_json::{Value, json};

wit_bindgen::generate!({
    inline: r#"
        package test:proc-runner;
        world proc-runner {
            import astrid:io/poll@1.0.0;
            import astrid:process/host@1.1.0;
            import astrid:fs/host@1.0.0;
            import astrid:sys/host@1.0.0;
            include astrid:guest/interceptor@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::fs::host as fs;
use astrid::process1_1_0::host as p11;
use astrid::sys::host as sys;

struct Runner;

thread_local! {
    static SLOTS: RefCell<Vec<Option<p11::ProcessHandle>>> = const { RefCell::new(Vec::new()) };
}

macro_rules! conversions {
    ($m:ident, $code:ident, $exit:ident, $info:ident) => {
        fn $code(e: &$m::ErrorCode) -> String {
            match e {
                $m::ErrorCode::CapabilityDenied => "capability-denied".into(),
                $m::ErrorCode::InvalidInput => "invalid-input".into(),
                $m::ErrorCode::BoundaryEscape => "boundary-escape".into(),
                $m::ErrorCode::Quota => "quota".into(),
                $m::ErrorCode::TooLarge => "too-large".into(),
                $m::ErrorCode::Closed => "closed".into(),
                $m::ErrorCode::Cancelled => "cancelled".into(),
                $m::ErrorCode::WaitTimeout => "wait-timeout".into(),
                $m::ErrorCode::NoSuchProcess => "no-such-process".into(),
                $m::ErrorCode::RegistryFull => "registry-full".into(),
                $m::ErrorCode::PersistUnsupported => "persist-unsupported".into(),
                $m::ErrorCode::Unknown(s) => format!("unknown:{s}"),
            }
        }

        fn $exit(e: &$m::ExitInfo) -> Value {
            json!({"code": e.exit_code, "signal": e.signal})
        }

        fn $info(i: &$m::ProcessInfo) -> Value {
            json!({
                "id": i.id,
                "label": i.label,
                "command": i.command,
                "pid": i.os_pid,
                "running": matches!(i.phase, $m::ProcessPhase::Running | $m::ProcessPhase::Starting),
                "exit": i.exit.as_ref().map($exit),
                "buffered": i.buffered_bytes,
                "dropped": i.bytes_dropped,
                "stdin_open": i.stdin_open,
            })
        }
    };
}

conversions!(p11, code11, exit11, info11);

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn opt_u64(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn opt_u32(v: &Value, k: &str) -> Option<u32> {
    opt_u64(v, k).and_then(|n| u32::try_from(n).ok())
}

fn request11(a: &Value) -> p11::SpawnRequest {
    let limits = ["mem", "cpu", "pids", "files"]
        .iter()
        .any(|k| a.get(*k).is_some())
        .then(|| p11::ResourceLimits {
            max_memory_bytes: opt_u64(a, "mem"),
            max_cpu_secs: opt_u64(a, "cpu"),
            max_pids: opt_u32(a, "pids"),
            max_open_files: opt_u32(a, "files"),
        });
    let env = a["env"]
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .map(|p| p11::EnvVar {
                    key: p[0].as_str().unwrap_or("").into(),
                    value: p[1].as_str().unwrap_or("").into(),
                })
                .collect()
        })
        .unwrap_or_default();
    let inject = a["inject"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .map(|f| p11::FileInjection {
                    content: f["content"].as_str().unwrap_or("").as_bytes().to_vec(),
                    placement: match f["env"].as_str() {
                        Some(var) => p11::InjectionPlacement::EnvPointer(var.into()),
                        None => p11::InjectionPlacement::FixedPath(
                            f["path"].as_str().unwrap_or("").into(),
                        ),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    p11::SpawnRequest {
        cmd: a["cmd"].as_str().unwrap_or("").into(),
        args: strs(&a["args"]),
        stdin: a["stdin"].as_str().map(|s| s.as_bytes().to_vec()),
        env,
        cwd: a["cwd"].as_str().map(str::to_string),
        limits,
        label: a["label"].as_str().map(str::to_string),
        keep_stdin_open: a["keep"].as_bool(),
        overflow: match a["overflow"].as_str() {
            Some("back") => Some(p11::OverflowPolicy::Backpressure),
            Some(_) => Some(p11::OverflowPolicy::DropOldest),
            None => None,
        },
        log_ring_bytes: opt_u32(a, "ring"),
        max_lifetime_ms: opt_u64(a, "life"),
        idle_timeout_ms: opt_u64(a, "idle"),
        exit_retention_ms: None,
        file_injections: inject,
    }
}

fn with_slot<T>(a: &Value, f: impl FnOnce(&p11::ProcessHandle) -> T) -> Result<T, String> {
    let i = a["slot"].as_u64().unwrap_or(u64::MAX) as usize;
    SLOTS.with(|s| {
        s.borrow()
            .get(i)
            .and_then(Option::as_ref)
            .map(f)
            .ok_or_else(|| "no-slot".to_string())
    })
}

fn keep(h: p11::ProcessHandle) -> Value {
    let pid = h.os_pid().ok();
    let slot = SLOTS.with(|s| {
        let mut s = s.borrow_mut();
        s.push(Some(h));
        s.len() - 1
    });
    json!({"slot": slot, "pid": pid})
}

fn id(a: &Value) -> String {
    a["id"].as_str().unwrap_or("").to_string()
}

fn sig(name: &str) -> p11::ProcessSignal {
    match name {
        "int" => p11::ProcessSignal::Int,
        "hup" => p11::ProcessSignal::Hup,
        "stop" => p11::ProcessSignal::Stop,
        "cont" => p11::ProcessSignal::Cont,
        "usr1" => p11::ProcessSignal::Usr1,
        "usr2" => p11::ProcessSignal::Usr2,
        _ => p11::ProcessSignal::Term,
    }
}

fn run(action: &str, a: &Value) -> Result<Value, String> {
    let e11 = |e: p11::ErrorCode| code11(&e);
    match action {
        "spawn" => p11::spawn(&request11(a))
            .map(|r| json!({"stdout": r.stdout, "stderr": r.stderr, "exit": exit11(&r.exit)}))
            .map_err(e11),
        "spawn-n" => {
            // Spawns and waits `n` times; answers how many exited 0.
            let n = a["n"].as_u64().unwrap_or(1);
            let req = request11(a);
            let mut ok = 0u64;
            for _ in 0..n {
                let r = p11::spawn(&req).map_err(e11)?;
                if r.exit.exit_code == Some(0) {
                    ok += 1;
                }
            }
            Ok(json!(ok))
        }
        "bg" => p11::spawn_background(&request11(a)).map(keep).map_err(e11),
        "persist" => p11::spawn_persistent(&request11(a))
            .map(|id| json!(id))
            .map_err(e11),
        "attach" => p11::attach(&id(a)).map(keep).map_err(e11),
        "list" => p11::list_processes(a["label"].as_str())
            .map(|l| json!(l.iter().map(info11).collect::<Vec<_>>()))
            .map_err(e11),
        "status" => p11::status(&id(a)).map(|i| info11(&i)).map_err(e11),
        "read-logs" => p11::read_logs(&id(a))
            .map(|l| json!({"stdout": l.stdout, "stderr": l.stderr, "running": l.running}))
            .map_err(e11),
        "read-since" => {
            let stream = if a["stream"].as_str() == Some("stderr") {
                p11::LogStream::Stderr
            } else {
                p11::LogStream::Stdout
            };
            let cursor = p11::LogCursor {
                token: a["cursor"].as_str().map(str::to_string),
            };
            p11::read_since(&id(a), stream, &cursor, opt_u32(a, "max").unwrap_or(1 << 20))
                .map(|c| {
                    json!({
                        "data": String::from_utf8_lossy(&c.data),
                        "next": c.next.token,
                        "dropped": c.bytes_dropped,
                        "eof": c.drained_eof,
                    })
                })
                .map_err(e11)
        }
        "signal" => p11::signal(&id(a), sig(a["sig"].as_str().unwrap_or("term")))
            .map(|()| Value::Null)
            .map_err(e11),
        "write-stdin" => p11::write_stdin(&id(a), a["data"].as_str().unwrap_or("").as_bytes())
            .map(|n| json!(n))
            .map_err(e11),
        "wait" => p11::wait(&id(a), opt_u64(a, "timeout").unwrap_or(60_000))
            .map(|e| exit11(&e))
            .map_err(e11),
        "stop" => p11::stop(&id(a), opt_u64(a, "grace"))
            .map(|e| exit11(&e))
            .map_err(e11),
        "release" => p11::release_process(&id(a))
            .map(|()| Value::Null)
            .map_err(e11),
        "watch" => p11::watch(&id(a), None).map(|()| Value::Null).map_err(e11),
        "h-write" => with_slot(a, |h| {
            h.write_stdin(a["data"].as_str().unwrap_or("").as_bytes())
                .map(|n| json!(n))
                .map_err(e11)
        })?,
        "h-close" => with_slot(a, |h| h.close_stdin().map(|()| Value::Null).map_err(e11))?,
        "h-logs" => with_slot(a, |h| {
            // Waits for output (or the exit), then reads it.
            h.subscribe_logs().block().map_err(|_| "poll-failed".to_string())?;
            h.read_logs()
                .map(|l| json!({"stdout": l.stdout, "stderr": l.stderr, "running": l.running}))
                .map_err(e11)
        })?,
        "h-wait" => with_slot(a, |h| {
            h.subscribe_exit().block().map_err(|_| "poll-failed".to_string())?;
            h.wait_with_output(opt_u64(a, "timeout"))
                .map(|r| json!({"stdout": r.stdout, "stderr": r.stderr, "exit": exit11(&r.exit)}))
                .map_err(e11)
        })?,
        "h-wait-timeout" => with_slot(a, |h| {
            h.wait(opt_u64(a, "timeout")).map(|e| exit11(&e)).map_err(e11)
        })?,
        "h-signal" => with_slot(a, |h| {
            h.signal(sig(a["sig"].as_str().unwrap_or("term")))
                .map(|()| Value::Null)
                .map_err(e11)
        })?,
        "h-kill" => with_slot(a, |h| {
            h.kill()
                .map(|k| json!({"killed": k.killed, "exit": k.exit.as_ref().map(exit11), "stdout": k.stdout}))
                .map_err(e11)
        })?,
        "h-drop" => {
            let i = a["slot"].as_u64().unwrap_or(u64::MAX) as usize;
            SLOTS.with(|s| s.borrow_mut().get_mut(i).map(Option::take));
            Ok(Value::Null)
        }
        other => files(other, a),
    }
}

/// The `astrid:fs` and `astrid:sys` actions.
fn files(action: &str, a: &Value) -> Result<Value, String> {
    let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
    let fs_err = |e: fs::ErrorCode| format!("fs:{e:?}");
    match action {
        "fs-read" => fs::read_file(&s("path"))
            .map(|b| json!(String::from_utf8_lossy(&b)))
            .map_err(fs_err),
        "fs-write" => fs::write_file(&s("path"), s("content").as_bytes())
            .map(|()| Value::Null)
            .map_err(fs_err),
        "fs-mkdir-all" => fs::fs_mkdir_all(&s("path"))
            .map(|()| Value::Null)
            .map_err(fs_err),
        "config" => sys::get_config(&s("key"))
            .map(|v| json!(v))
            .map_err(|e| format!("sys:{e:?}")),
        "log" => {
            sys::log(sys::LogLevel::Info, &s("message"));
            Ok(Value::Null)
        }
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
