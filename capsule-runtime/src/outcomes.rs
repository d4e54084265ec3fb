//! What each handler link of an interceptor chain answered, as a stream an embedder can read:
//! which capsule and action, for which principal and topic, and how the link ended (with the
//! `deny`/`abort` reason or the trap message). The stream never slows dispatch: it is a
//! bounded broadcast, and a reader that falls behind loses the oldest outcomes and is told
//! how many.

use std::sync::Arc;

use capsule_bus::{Message, PrincipalId, Topic};
use tokio::sync::broadcast;

/// Outcomes kept for a reader that has not taken them yet; older ones are lost (counted).
pub const DISPATCH_OUTCOME_BUFFER: usize = 1024;

/// How one handler link ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkResult {
    /// `continue`; `replaced` when its data became the next level's payload.
    Continue {
        /// Whether the data replaced the payload for the next priority level.
        replaced: bool,
    },
    /// `final`: the chain stopped here.
    Final,
    /// `deny`: the chain stopped here, with the handler's reason.
    Deny {
        /// The reason the handler gave (empty when it gave none).
        reason: String,
    },
    /// `abort`: the chain stopped here, with the handler's reason.
    Abort {
        /// The reason the handler gave (empty when it gave none).
        reason: String,
    },
    /// `continue` with data that is not a valid payload; the link counts as failed.
    InvalidData {
        /// Why the data was refused.
        reason: String,
    },
    /// An answer the host does not know, treated as `continue`.
    Unknown {
        /// What the handler answered.
        returned: String,
    },
    /// The call failed: the guest trapped, ran out of time or fuel, its queue was full, or it
    /// could not be instantiated; the chain went on.
    Failed {
        /// The failure, with the trap message when the guest trapped.
        error: String,
    },
}

impl LinkResult {
    /// Whether this link stopped the chain.
    pub fn stopped_chain(&self) -> bool {
        matches!(self, Self::Final | Self::Deny { .. } | Self::Abort { .. })
    }
}

/// One handler link of one interceptor chain, as it ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DispatchOutcome {
    /// The capsule whose handler ran.
    pub capsule: String,
    /// The handler's action name.
    pub action: String,
    /// The message's principal (`None` for a system message).
    pub principal: Option<PrincipalId>,
    /// The message's topic.
    pub topic: Topic,
    /// The message's bus sequence number (the same for every link of one chain).
    pub seq: u64,
    /// How the link ended.
    pub result: LinkResult,
}

/// The sending side, held by the dispatcher.
#[derive(Debug)]
pub(crate) struct OutcomeSender(broadcast::Sender<DispatchOutcome>);

impl OutcomeSender {
    pub(crate) fn new() -> Self {
        Self(broadcast::channel(DISPATCH_OUTCOME_BUFFER).0)
    }

    /// Sends one outcome when anyone reads them (nothing is built otherwise).
    pub(crate) fn send(
        &self,
        capsule: &str,
        action: &str,
        msg: &Arc<Message>,
        result: impl FnOnce() -> LinkResult,
    ) {
        if self.0.receiver_count() == 0 {
            return;
        }
        // No reader left between the check and the send is not a failure.
        let _unread = self.0.send(DispatchOutcome {
            capsule: capsule.to_string(),
            action: action.to_string(),
            principal: msg.principal().cloned(),
            topic: msg.topic.clone(),
            seq: msg.seq(),
            result: result(),
        });
    }

    pub(crate) fn subscribe(&self) -> DispatchOutcomes {
        DispatchOutcomes {
            rx: self.0.subscribe(),
            lost: 0,
        }
    }
}

/// A reader of [`DispatchOutcome`]s from [`Runtime::dispatch_outcomes`](crate::Runtime::dispatch_outcomes):
/// every link that ends after it was created, in the order the links ended.
#[derive(Debug)]
pub struct DispatchOutcomes {
    rx: broadcast::Receiver<DispatchOutcome>,
    lost: u64,
}

impl DispatchOutcomes {
    /// The next outcome, waiting for it; `None` once the runtime is gone. Outcomes lost
    /// because this reader fell more than [`DISPATCH_OUTCOME_BUFFER`] behind are skipped and
    /// counted in [`lost`](Self::lost).
    pub async fn next(&mut self) -> Option<DispatchOutcome> {
        loop {
            match self.rx.recv().await {
                Ok(o) => return Some(o),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next outcome if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<DispatchOutcome> {
        loop {
            match self.rx.try_recv() {
                Ok(o) => return Some(o),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost += n,
                Err(_) => return None,
            }
        }
    }

    /// Outcomes this reader lost by falling behind.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}
