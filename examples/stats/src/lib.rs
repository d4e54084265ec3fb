//! Stats: a run-loop capsule that aggregates the chat room and publishes a summary.
//!
//! Its run loop subscribes to `chat.room.*`, signals ready (so capsules importing
//! `demo:stats` start only after it listens), and after each batch of messages publishes
//! `stats.summary {"messages": n, "by_sender": {…}}`. It waits in `recv` between batches, which
//! is what keeps the host's CPU meter from stopping a loop that never yields.

#![deny(unsafe_code)]

use std::collections::BTreeMap;

use astrid_sdk::prelude::*;
use serde_json::json;

#[derive(Default)]
pub struct Stats;

#[capsule]
impl Stats {
    #[astrid::run]
    pub fn run(&self) -> Result<(), SysError> {
        let room = ipc::subscribe("chat.room.*")?;
        runtime::signal_ready()?;
        let mut total: u64 = 0;
        let mut by_sender: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let batch = match room.recv(60_000) {
                Ok(batch) => batch,
                // The host closes subscriptions when it unloads the capsule: a normal end.
                Err(e) if e.to_string().contains("Closed") => return Ok(()),
                Err(e) if e.to_string().contains("Timeout") => continue,
                Err(e) => return Err(e),
            };
            if batch.messages.is_empty() {
                continue;
            }
            for m in &batch.messages {
                let body: serde_json::Value =
                    serde_json::from_str(&m.payload).unwrap_or_default();
                let from = body
                    .get("from")
                    .and_then(|f| f.as_str())
                    .unwrap_or("unknown")
                    .to_string();
                total += 1;
                *by_sender.entry(from).or_default() += 1;
            }
            ipc::publish_json(
                "stats.summary",
                &json!({ "messages": total, "by_sender": by_sender, "lost": batch.dropped }),
            )?;
        }
    }
}
