//! Test capsule: a run loop that stores config `value` under KV key `acked`, logs
//! `acknowledged <value>` once the set has returned Ok, signals ready, and then idles. Used to
//! prove that an acknowledged write survives `kill -9` of the host.

wit_bindgen::generate!({
    inline: r#"
        package test:kvwriter;
        world kvwriter {
            import astrid:kv/host@1.0.0;
            import astrid:sys/host@1.0.0;
            include astrid:guest/background@1.0.0;
        }
    "#,
    path: "../../../capsule-wit/wit",
    generate_all,
});

use astrid::kv::host as kv;
use astrid::sys::host as sys;

struct KvWriter;

impl Guest for KvWriter {
    fn run() {
        let value = sys::get_config("value").ok().flatten().unwrap_or_default();
        match kv::kv_set("acked", value.as_bytes()) {
            Ok(()) => sys::log(sys::LogLevel::Info, &format!("acknowledged {value}")),
            Err(e) => sys::log(sys::LogLevel::Error, &format!("kv-set failed: {e:?}")),
        }
        sys::signal_ready();
        while sys::sleep_ns(1_000_000_000).is_ok() {}
    }
}

export!(KvWriter);
