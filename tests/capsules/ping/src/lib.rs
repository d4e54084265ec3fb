//! Test capsule: a run export that publishes one message (`{"ping":1}` on config `topic`,
//! default `ping.msg`) and returns at once.

wit_bindgen::generate!({
    inline: r#"
        package test:ping;
        world ping {
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

struct Ping;

impl Guest for Ping {
    fn run() {
        let topic = sys::get_config("topic").ok().flatten().unwrap_or_else(|| "ping.msg".into());
        if let Err(e) = ipc::publish(&topic, "{\"ping\":1}") {
            sys::log(sys::LogLevel::Error, &format!("ping: publish failed: {e:?}"));
        }
    }
}

export!(Ping);
