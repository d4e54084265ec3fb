//! What every benchmark binary shares: fixture paths, capsule directories, the JSON line
//! format, prober calls that must succeed, medians and the time budget.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsule_runtime::Capsule;

/// Writes `<state>/capsules/<name>/` for the fixture `wasm` plus `extra`.
pub(crate) fn capsule_dir(state: &Path, name: &str, wasm: &str, extra: &str) -> PathBuf {
    capsule_tests::write_capsule(
        &state.join("capsules").join(name),
        name,
        "0.1.0",
        wasm,
        extra,
    )
}

/// Prints one figure: `{"group":G,"name":N,"params":P,"value":V,"unit":U}`.
pub(crate) fn emit(group: &str, name: &str, params: &str, value: f64, unit: &str) {
    println!(
        "{{\"group\":\"{group}\",\"name\":\"{name}\",\"params\":{params},\"value\":{value:.2},\"unit\":\"{unit}\"}}"
    );
}

/// The median of `samples`.
pub(crate) fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Runs a prober action as the owner; panics on any error answer.
pub(crate) async fn call(c: &Capsule, action: &str, args: &str) {
    let r = c
        .invoke(action, args.as_bytes(), None)
        .await
        .expect("invoke");
    let data = r.data.unwrap_or_default();
    assert!(!data.contains("\"err\""), "{action}: {data}");
}

/// The time spent per figure: 3 s, or 1 s with `--quick`.
pub(crate) fn budget() -> Duration {
    if std::env::args().any(|a| a == "--quick") {
        Duration::from_millis(1000)
    } else {
        Duration::from_secs(3)
    }
}
