//! Test capsule: a run loop that stores config `value` under KV key `acked`, logs
//! `acknowledged <value>` once the set has returned Ok, signals ready, then (when config
//! `count` is a number) sets `k<i>` to `<value>-<i>` for i in 0..count, logging
//! `acknowledged k<i>` after each set returned Ok, and then idles. Used to prove that
//! acknowledged writes, alone or from many concurrent writers, survive `kill -9` of the host.

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
        let count: u32 = sys::get_config("count")
            .ok()
            .flatten()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        for i in 0..count {
            let key = format!("k{i}");
            match kv::kv_set(&key, format!("{value}-{i}").as_bytes()) {
                Ok(()) => sys::log(sys::LogLevel::Info, &format!("acknowledged {key}")),
                Err(e) => sys::log(sys::LogLevel::Error, &format!("kv-set {key} failed: {e:?}")),
            }
        }
        while sys::sleep_ns(1_000_000_000).is_ok() {}
    }
}

export!(KvWriter);
