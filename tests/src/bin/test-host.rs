//! A minimal host process for tests that must kill a host outright: loads the capsules in
//! the `CAPSULE_DIR`s with state in `STATE_DIR`, prints `ready` once they are loaded, and
//! serves until killed. Usage: `capsule-test-host STATE_DIR CAPSULE_DIR...`.

use std::process::ExitCode;

use capsule_runtime::{Runtime, RuntimeConfig};

/// The same allocator as the `capsule` program's default build.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state, capsules @ ..] = args.as_slice() else {
        eprintln!("usage: capsule-test-host STATE_DIR CAPSULE_DIR...");
        return ExitCode::from(2);
    };
    if capsules.is_empty() {
        eprintln!("usage: capsule-test-host STATE_DIR CAPSULE_DIR...");
        return ExitCode::from(2);
    }
    let rt = match Runtime::new(RuntimeConfig::new(state)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capsule-test-host: {e}");
            return ExitCode::FAILURE;
        }
    };
    for capsule in capsules {
        if let Err(e) = rt.load(capsule).await {
            eprintln!("capsule-test-host: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("ready");
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
