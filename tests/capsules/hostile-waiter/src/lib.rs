//! Test capsule: handlers that park in host waits nobody ends, to prove the call's wall-clock
//! deadline ends them. The handler action picks the wait; the payload is ignored except by
//! `tcp-*`, which read `host:port` from it:
//! - `tcp-stream`: connects, then `blocking-read`s the socket's `astrid:io/streams` input
//!   stream (the peer never writes);
//! - `tcp-read`: connects, then calls the socket's own `read-bytes` again and again;
//! - `block`: blocks on the readiness pollable of a subscription nobody publishes to;
//! - `poll`: the same through `astrid:io/poll.poll`;
//! - `recv`: `recv` with the longest timeout, again and again;
//! - `sleep`: `sys.sleep-ns` with the longest sleep, again and again;
//! - `wasi-sleep`: sleeps an hour through WASI clocks (`std::thread::sleep`);
//! - `ok`: answers `continue` at once.
//!
//! Every wait that returns (it should not) ends the handler with `continue` and data naming
//! what came back. The run loop, with config `run` = `block`, subscribes to `deadline.wake`,
//! signals ready, blocks on it and publishes `woke` to `deadline.woke` once a message comes;
//! with `run` = `wasi-sleep` it signals ready and sleeps an hour through WASI clocks; without
//! it, it returns at once.

wit_bindgen::generate!({
    inline: r#"
        package test:hostile-waiter;
        world hostile-waiter {
            import astrid:ipc/host@1.0.0;
            import astrid:sys/host@1.0.0;
            import astrid:net/host@1.0.0;
            import astrid:io/poll@1.0.0;
            import astrid:io/streams@1.0.0;
            include astrid:guest/interceptor@1.0.0;
            include astrid:guest/background@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use std::time::Duration;

use astrid::io::poll;
use astrid::ipc::host as ipc;
use astrid::net::host as net;
use astrid::sys::host as sys;

struct Waiter;

const HOUR: Duration = Duration::from_secs(3600);

fn answer(data: String) -> CapsuleResult {
    CapsuleResult {
        action: "continue".into(),
        data: Some(format!("{data:?}")),
    }
}

fn connect(payload: &[u8]) -> Result<net::TcpStream, String> {
    let target = String::from_utf8_lossy(payload).trim_matches('"').to_string();
    let (host, port) = target.rsplit_once(':').ok_or("no host:port")?;
    let port = port.parse::<u16>().map_err(|e| e.to_string())?;
    net::connect_tcp(host, port).map_err(|e| format!("connect: {e:?}"))
}

fn never_ready() -> Result<(ipc::Subscription, poll::Pollable), String> {
    let sub = ipc::subscribe("deadline.never").map_err(|e| format!("subscribe: {e:?}"))?;
    let p = sub.subscribe_readiness();
    Ok((sub, p))
}

fn wait(action: &str, payload: &[u8]) -> Result<String, String> {
    match action {
        "tcp-stream" => {
            let sock = connect(payload)?;
            let input = sock.read_stream();
            Ok(format!("read {:?}", input.blocking_read(1024)))
        }
        "tcp-read" => {
            let sock = connect(payload)?;
            loop {
                match sock.read_bytes(1024) {
                    Ok(b) if !b.is_empty() => return Ok(format!("read {} bytes", b.len())),
                    Ok(_) => return Ok("end of stream".into()),
                    Err(net::ErrorCode::Timeout) => {}
                    Err(e) => return Ok(format!("read: {e:?}")),
                }
            }
        }
        "block" => {
            let (_sub, p) = never_ready()?;
            Ok(format!("block {:?}", p.block()))
        }
        "poll" => {
            let (_sub, p) = never_ready()?;
            Ok(format!("poll {:?}", poll::poll(&[&p])))
        }
        "recv" => {
            let (sub, _p) = never_ready()?;
            loop {
                match sub.recv(u64::MAX) {
                    Ok(e) if e.messages.is_empty() => {}
                    other => return Ok(format!("recv {other:?}")),
                }
            }
        }
        "sleep" => loop {
            if let Err(e) = sys::sleep_ns(60_000_000_000) {
                return Ok(format!("sleep {e:?}"));
            }
        },
        // Many waits, each far shorter than the deadline: only their sum passes it.
        "short-sleeps" => loop {
            if let Err(e) = sys::sleep_ns(100_000_000) {
                return Ok(format!("sleep {e:?}"));
            }
        },
        "wasi-short-sleeps" => loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
        },
        "wasi-sleep" => {
            std::thread::sleep(HOUR);
            Ok("slept an hour".into())
        }
        "ok" => Ok("ok".into()),
        other => Err(format!("unknown action {other}")),
    }
}

impl Guest for Waiter {
    fn astrid_hook_trigger(action: String, payload: Vec<u8>) -> CapsuleResult {
        match wait(&action, &payload) {
            Ok(said) => answer(said),
            Err(e) => answer(format!("error: {e}")),
        }
    }

    fn run() {
        match sys::get_config("run").ok().flatten().as_deref() {
            Some("block") => {
                let Ok(sub) = ipc::subscribe("deadline.wake") else {
                    return;
                };
                let p = sub.subscribe_readiness();
                sys::signal_ready();
                let said = format!("{:?}", p.block());
                let _ = ipc::publish("deadline.woke", &format!("{{\"woke\":{said:?}}}"));
            }
            Some("wasi-sleep") => {
                sys::signal_ready();
                std::thread::sleep(HOUR);
            }
            _ => sys::signal_ready(),
        }
    }
}

export!(Waiter);
