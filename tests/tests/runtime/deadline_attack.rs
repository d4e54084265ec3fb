//! Attacks on the call deadline from real guests: waits outside the list the deadline was
//! first proven on must end at it too. An install hook whose question nobody answers (the
//! operator's elicit timeout being far longer) fails the load at the hook's deadline instead of
//! holding the load for the whole elicit timeout.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use capsule_runtime::{
    ElicitAnswer, ElicitPrompt, ElicitRefusal, Elicitor, LifecycleFailure, LifecyclePhase,
    LoadError,
};

use crate::common::*;

/// Far beyond the 1 s deadline under test and far below the 600 s elicit timeout: an install
/// still waiting at this point was not cut by its deadline.
const GUARD: Duration = Duration::from_secs(60);

/// An operator who never answers.
struct Silent;

impl Elicitor for Silent {
    fn elicit(
        &self,
        _prompt: ElicitPrompt,
    ) -> Pin<Box<dyn Future<Output = Result<ElicitAnswer, ElicitRefusal>> + Send>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_hook_waiting_for_an_answer_ends_at_its_deadline() {
    let h = host_with(|c| c.elicit_timeout = Duration::from_secs(600));
    h.profile("default", "[quotas]\nmax_timeout_secs = 1\n");
    h.rt.set_elicitor(std::sync::Arc::new(Silent));
    let dir = h.capsule_dir(
        "lifecycle",
        "lifecycle.wasm",
        "[env.TOKEN]\ntype = \"secret\"\n",
    );
    let loaded = tokio::time::timeout(GUARD, h.rt.load(&dir))
        .await
        .unwrap_or_else(|_| panic!("the install hook still waits after {GUARD:?}"));
    match loaded {
        Err(LoadError::Lifecycle {
            phase: LifecyclePhase::Install,
            failure: LifecycleFailure::Guest(why),
            ..
        }) => assert!(why.contains("deadline of 50 epoch windows"), "{why}"),
        Err(other) => panic!("expected the install hook's deadline, got {other}"),
        Ok(_) => panic!("an install nobody answered cannot succeed"),
    }
    h.rt.shutdown().await;
}
