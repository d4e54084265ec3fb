//! Test capsule: a run loop that burns CPU while pretending to cooperate. Config `mode`:
//! - `recv0`: between bursts of work it calls `recv(0)` on a subscription to config `in`
//!   (default `spin.*`), which returns at once;
//! - `sleep1`: between bursts it sleeps 1 ms.
//!
//! Either way it never really waits, so the host must still count its CPU. It returns when a
//! host call reports that the capsule is unloading.

wit_bindgen::generate!({
    inline: r#"
        package test:hostile-spinner;
        world hostile-spinner {
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

struct Spinner;

/// Work between two cooperative-looking calls: tens of milliseconds of arithmetic.
fn burst(seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..20_000_000 {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    x
}

impl Guest for Spinner {
    fn run() {
        let mode = sys::get_config("mode").ok().flatten().unwrap_or_default();
        let input = sys::get_config("in").ok().flatten().unwrap_or_else(|| "spin.*".into());
        let sub = ipc::subscribe(&input).ok();
        sys::signal_ready();
        let mut x = 0u64;
        loop {
            x = burst(x);
            let stop = match (mode.as_str(), &sub) {
                ("recv0", Some(s)) => matches!(s.recv(0), Err(ipc::ErrorCode::Closed)),
                _ => matches!(sys::sleep_ns(1_000_000), Err(sys::ErrorCode::Cancelled)),
            };
            if stop {
                return;
            }
        }
    }
}

export!(Spinner);
