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
//!
//! # Example
//!
//! One subscriber, two publishing principals. Alice floods a queue that holds two messages;
//! bob's one message still comes out in the first round of the drain, and the drain reports
//! exactly how many of alice's were lost.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capsule_bus::{
//!     Attribution, Bus, BusConfig, JsonPayload, Outgoing, PrincipalId, Scope, Topic,
//!     TopicPattern,
//! };
//!
//! let bus = Bus::with_config(BusConfig { queue_max_messages: 2, ..BusConfig::default() })?;
//! let mut inbox = bus.subscribe(TopicPattern::parse("chat.*")?, Scope::All);
//!
//! let post = |who: &PrincipalId, n: u32| -> Result<(), Box<dyn std::error::Error>> {
//!     bus.publish(Outgoing {
//!         topic: Topic::parse("chat.post")?,
//!         payload: JsonPayload::parse(format!(r#"{{"n":{n}}}"#))?,
//!         source: uuid::Uuid::nil(),
//!         attribution: Attribution::Verified(who.clone()),
//!         hops: 0,
//!     });
//!     Ok(())
//! };
//! let (alice, bob) = (PrincipalId::parse("alice")?, PrincipalId::parse("bob")?);
//! for n in 0..5 {
//!     post(&alice, n)?; // alice's queue holds two: three of her five are lost
//! }
//! post(&bob, 0)?;
//!
//! let drain = inbox.try_drain(usize::MAX);
//! assert_eq!(drain.dropped, 3);
//! let order: Vec<&str> = drain
//!     .messages
//!     .iter()
//!     .filter_map(|m| m.principal().map(PrincipalId::as_str))
//!     .collect();
//! // Deficit round robin: one message per principal per round, bob is not behind alice.
//! assert_eq!(order, ["alice", "bob", "alice"]);
//!
//! let stats = inbox.stats();
//! assert_eq!(stats.admitted, stats.delivered + stats.dropped + stats.queued);
//! # Ok(()) }
//! ```

mod bus;
mod clock;
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
