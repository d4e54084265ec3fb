//! Host resources: bounded host work per guest call, publish loops, opaque errors.

use std::time::Duration;

use capsule_runtime::{Interrupt, RunExit};

use super::Bystander;
use crate::common::host_with;

/// A run loop that never waits burns its CPU windows and is trapped; a capsule serving another
/// principal answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_run_loop_is_trapped_while_others_answer() {
    const WINDOWS: u32 = 25;
    let h = host_with(|c| c.max_busy_windows = WINDOWS);
    let bystander = Bystander::start(&h).await;
    let spin = h.load("spin", "spin.wasm", "").await;
    bystander.check("spinning run loop").await;
    let exit = tokio::time::timeout(Duration::from_secs(60), spin.wait_run_exit())
        .await
        .unwrap_or_else(|_| panic!("the spinning run loop was never trapped"));
    assert_eq!(
        exit,
        Some(RunExit::Interrupted(Interrupt::CpuBudget {
            windows: WINDOWS
        }))
    );
    bystander.check("after the spin").await;
    h.rt.shutdown().await;
}
