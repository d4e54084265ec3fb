//! Test capsule: a run loop that announces itself on `gate.started` (`{"name": config name}`),
//! then, when config `open_on` names a topic (subscribed before the announcement), waits for
//! one message there before it announces `gate.ready` and calls `signal-ready`. With config
//! `exit` = `early` it returns before ever becoming ready. Afterwards it waits on `gate.never` until it is unloaded.

wit_bindgen::generate!({
    inline: r#"
        package test:gate;
        world gate {
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

struct Gate;

fn config(key: &str) -> String {
    sys::get_config(key).ok().flatten().unwrap_or_default()
}

/// Waits on `sub` until a message arrives (`true`) or the capsule is unloaded (`false`).
fn wait_one(sub: &ipc::Subscription) -> bool {
    loop {
        match sub.recv(60_000) {
            Ok(e) if !e.messages.is_empty() => return true,
            Ok(_) => {}
            Err(ipc::ErrorCode::Closed) => return false,
            Err(_) => return false,
        }
    }
}

impl Guest for Gate {
    fn run() {
        let name = config("name");
        let announce = |topic: &str| {
            let _ = ipc::publish(topic, &format!("{{\"name\":\"{name}\"}}"));
        };
        // Subscribed before announcing, so whoever reacts to `gate.started` cannot be early.
        let open_on = config("open_on");
        let gate = if open_on.is_empty() {
            None
        } else {
            match ipc::subscribe(&open_on) {
                Ok(sub) => Some(sub),
                Err(_) => return,
            }
        };
        announce("gate.started");
        if config("exit") == "early" {
            return;
        }
        if let Some(sub) = &gate
            && !wait_one(sub)
        {
            return;
        }
        announce("gate.ready");
        sys::signal_ready();
        if let Ok(never) = ipc::subscribe("gate.never") {
            while wait_one(&never) {}
        }
    }
}

export!(Gate);
