//! Test capsule: a run loop. Subscribes to the pattern in config `in` (default `ping.*`),
//! signals ready, then for every message received publishes its payload to config `out`
//! (default `pong.reply`). Config `timeout_ms` sets the recv timeout (default 60000); when
//! config `heartbeat` names a topic, it publishes `{"n":i}` there after every recv. Returns
//! when recv reports `closed`. With config `out` = `-` nothing is echoed; with config `count`
//! naming a topic, the running total of received messages is published there after each recv.

wit_bindgen::generate!({
    inline: r#"
        package test:pong;
        world pong {
            import astrid:ipc/host@1.0.0;
            import astrid:sys/host@1.0.0;
            include astrid:guest/background@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::ipc::host as ipc;
use astrid::sys::host as sys;

struct Pong;

fn config(key: &str, default: &str) -> String {
    sys::get_config(key).ok().flatten().unwrap_or_else(|| default.to_string())
}

impl Guest for Pong {
    fn run() {
        let input = config("in", "ping.*");
        let output = config("out", "pong.reply");
        let heartbeat = config("heartbeat", "");
        let count = config("count", "");
        let mut total = 0u64;
        let timeout: u64 = config("timeout_ms", "60000").parse().unwrap_or(60_000);
        let sub = match ipc::subscribe(&input) {
            Ok(s) => s,
            Err(_) => {
                sys::log(sys::LogLevel::Error, "pong: subscribe failed");
                return;
            }
        };
        sys::signal_ready();
        let mut n = 0u64;
        loop {
            match sub.recv(timeout) {
                Ok(envelope) => {
                    total += envelope.messages.len() as u64;
                    if output != "-" {
                        for m in &envelope.messages {
                            let _ = ipc::publish(&output, &m.payload);
                        }
                    }
                    if !count.is_empty() && !envelope.messages.is_empty() {
                        let _ = ipc::publish(&count, &format!("{{\"n\":{total}}}"));
                    }
                }
                Err(ipc::ErrorCode::Closed) => return,
                Err(_) => {}
            }
            if !heartbeat.is_empty() {
                n += 1;
                let _ = ipc::publish(&heartbeat, &format!("{{\"n\":{n}}}"));
            }
        }
    }
}

export!(Pong);
