//! The standing hostile-capsule suite: each test attacks one isolation invariant from inside a
//! real guest and asserts the exact error the guest sees, that the attempt is audited where the
//! host audits it, and that a well-behaved capsule serving another principal keeps answering.
//! ARCHITECTURE.md's invariants name the test here that proves each.

// The suite reports bystander latencies on stdout, as the issue asks.
#![allow(clippy::print_stdout)]

mod disk;
mod files;
mod principals;
mod resources;

use std::time::{Duration, Instant};

use capsule_runtime::Capsule;
use serde_json::json;

use crate::common::{Host, PROBER_ACL, call_as, ok};

/// The principal a well-behaved capsule serves while an attack runs.
pub(crate) const BYSTANDER: &str = "carol";

/// How long a bystander's answer may take under attack before the test fails. Generous on
/// purpose: the machine running the suite may be loaded; the latency itself is printed.
pub(crate) const BYSTANDER_BOUND: Duration = Duration::from_secs(30);

/// A well-behaved prober capsule serving [`BYSTANDER`]: each check writes and reads back a KV
/// value as that principal and reports how long it took.
pub(crate) struct Bystander {
    capsule: Capsule,
    baseline: Duration,
    round: std::sync::atomic::AtomicU64,
}

impl Bystander {
    /// Loads the bystander capsule into `h` and measures one answer before any attack.
    pub(crate) async fn start(h: &Host) -> Self {
        let capsule = h.load("bystander", "prober.wasm", PROBER_ACL).await;
        let mut me = Self {
            capsule,
            baseline: Duration::ZERO,
            round: std::sync::atomic::AtomicU64::new(0),
        };
        me.baseline = me.answer().await;
        me
    }

    /// One KV round trip as the bystander; panics if the value read back is wrong.
    async fn answer(&self) -> Duration {
        let round = self
            .round
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = format!("v{round}");
        let started = Instant::now();
        ok(&call_as(
            &self.capsule,
            "kv-set",
            json!({"key": "health", "value": value}),
            Some(BYSTANDER),
        )
        .await);
        let read = call_as(
            &self.capsule,
            "kv-get",
            json!({"key": "health"}),
            Some(BYSTANDER),
        )
        .await;
        assert_eq!(
            ok(&read),
            &json!(value),
            "the bystander reads its own value"
        );
        started.elapsed()
    }

    /// Checks that the bystander still answers (during or after an attack), printing its
    /// latency next to the baseline and asserting only [`BYSTANDER_BOUND`].
    pub(crate) async fn check(&self, attack: &str) {
        let took = tokio::time::timeout(BYSTANDER_BOUND, self.answer())
            .await
            .unwrap_or_else(|_| {
                panic!("{attack}: the bystander did not answer within {BYSTANDER_BOUND:?}")
            });
        println!(
            "{attack}: bystander answered in {took:?} (baseline {:?})",
            self.baseline
        );
    }
}
