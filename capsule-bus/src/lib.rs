//! `capsule-bus`: the topic-based, principal-aware publish/subscribe bus that capsules talk
//! through. It upholds four contracts:
//!
//! - **One matcher.** [`TopicPattern::matches`] is the only definition of "this pattern matches
//!   this topic"; the subscription index, ACL checks, interceptor dispatch and audit scoping all
//!   agree with it.
//! - **Sub-linear publish.** A publish finds its subscriptions through a segment trie
//!   ([`PatternIndex`]), not by scanning every subscription.
//! - **Fair, bounded queues.** Each subscription keeps one FIFO per publishing principal and
//!   drains them by deficit round robin, so a flooding principal cannot starve a light one;
//!   every queue is bounded in bytes and messages.
//! - **No silent loss.** Every eviction, refusal and fan-out cut is counted and reported to the
//!   subscriber on its next drain: `delivered + dropped + queued == admitted` at all times.
//!
//! The crate has no WebAssembly dependency; the runtime maps its errors onto WIT error codes.

mod bus;
mod index;
mod message;
mod ratelimit;
mod route;
mod topic;

pub use bus::{Bus, BusConfig, BusConfigError, PublishReport, Readiness, Receiver};
pub use capsule_ids::{MAX_PRINCIPAL_BYTES, PrincipalError, PrincipalId};
pub use index::PatternIndex;
pub use message::{Attribution, JsonPayload, Message, Outgoing, PayloadError};
pub use ratelimit::{Rate, RateLimited, RateLimiter};
pub use route::{Drain, RouteStats, Scope};
pub use topic::{AUDIT_TOPIC, MAX_SEGMENTS, MAX_TOPIC_BYTES, Topic, TopicError, TopicPattern};
