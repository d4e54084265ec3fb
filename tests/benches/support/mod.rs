//! What every benchmark binary shares: fixture paths, capsule directories, the JSON line
//! format, prober calls that must succeed, medians and the time budget.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsule_runtime::Capsule;

/// Path of a built fixture component.
pub(crate) fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CAPSULE_FIXTURES")).join(file)
}

/// Writes `<state>/capsules/<name>/Capsule.toml` for the fixture `wasm` plus `extra`.
pub(crate) fn capsule_dir(state: &Path, name: &str, wasm: &str, extra: &str) -> PathBuf {
    let dir = state.join("capsules").join(name);
    std::fs::create_dir_all(&dir).expect("capsule dir");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\n\n[[component]]\nid = \"{name}\"\nfile = {:?}\n\n{extra}\n",
        fixture(wasm).display().to_string()
    );
    std::fs::write(dir.join("Capsule.toml"), manifest).expect("manifest");
    dir
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
