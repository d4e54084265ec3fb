//! A minimal host process for tests that must kill a host outright: loads the capsule in
//! `CAPSULE_DIR` with state in `STATE_DIR`, prints `ready` once it is loaded, and serves until
//! killed. Usage: `capsule-test-host STATE_DIR CAPSULE_DIR`.

use std::process::ExitCode;

use capsule_runtime::{Runtime, RuntimeConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state, capsule] = args.as_slice() else {
        eprintln!("usage: capsule-test-host STATE_DIR CAPSULE_DIR");
        return ExitCode::from(2);
    };
    let rt = match Runtime::new(RuntimeConfig::new(state)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capsule-test-host: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = rt.load(capsule).await {
        eprintln!("capsule-test-host: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("ready");
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
