//! `capsule-nats`: one capsule bus across several host processes, carried by NATS. It upholds
//! these contracts:
//!
//! - **One-to-one subjects, namespaced by cluster.** Topic `a.b` of cluster `prod` travels on
//!   subject `capsule.prod.a.b` and nowhere else ([`topic_subject`], [`subject_topic`]); two
//!   clusters on one server never see each other's messages.
//! - **Attribution is carried, never upgraded.** The origin host's attribution (verified,
//!   claimed or system), its id, the source capsule, the hop count and a per-publisher
//!   sequence travel in one header ([`Envelope`], [`ENVELOPE_HEADER`]); the receiving host publishes the message with
//!   exactly that attribution, under a source id that records which host vouched for it
//!   ([`Bridge::origin`]).
//! - **Only peers are believed.** With a [`ClusterKey`] every message carries a keyed tag
//!   ([`SIGNATURE_HEADER`]) and one without a valid tag is refused before any header is
//!   believed; without a key the origin host is only a header, as strong as the NATS server's
//!   authentication. Messages from hosts outside the configured peer list are
//!   ignored, counted and audited; a host's own messages never come back to it, and imported
//!   messages are never exported again.
//! - **No silent loss.** Each publisher's messages on a topic are numbered from 1; every hole
//!   a receiver sees (slow consumer, disconnect, full buffer) is counted in its
//!   [`BridgeStats`], audited, and reported to local subscribers through the bus's `dropped`
//!   counter. Reconnection is automatic; while NATS is away the bridge buffers a bounded
//!   number of messages, and what waits for the local bus is bounded in messages and bytes.
//! - **The receiving host decides delivery.** Imported messages enter the local bus like any
//!   publish, so only subscriptions the host's own ACLs and audit scoping allowed receive
//!   them; the audit topic never crosses hosts.
//!
//! The crate has no WebAssembly dependency, and `capsule-bus` stays free of networking.
//!
//! # Example
//!
//! The subject mapping, which every host of a cluster must agree on:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capsule_bus::{Topic, TopicPattern};
//! use capsule_nats::{ClusterName, pattern_subject, subject_topic, topic_subject};
//!
//! let prod = ClusterName::parse("prod")?;
//! let topic = Topic::parse("chat.room.post")?;
//! assert_eq!(topic_subject(&prod, &topic), "capsule.prod.chat.room.post");
//! assert_eq!(subject_topic(&prod, "capsule.prod.chat.room.post")?, topic);
//! // Another cluster's subjects are not topics of this one.
//! assert!(subject_topic(&prod, "capsule.dev.chat.room.post").is_err());
//! // A trailing `*` (one or more segments) is NATS's `>`; an inner one is NATS's `*`.
//! assert_eq!(pattern_subject(&prod, &TopicPattern::parse("chat.*")?), "capsule.prod.chat.>");
//! assert_eq!(pattern_subject(&prod, &TopicPattern::parse("a.*.c")?), "capsule.prod.a.*.c");
//! # Ok(()) }
//! ```
//!
//! A bridge is started with [`Bridge::start`] on a [`capsule_bus::Bus`] and a
//! [`BridgeConfig`]; `tests/bridge.rs` runs two of them against a real `nats-server`
//! ([`NatsServer`]).

mod batch;
mod bridge;
mod config;
mod envelope;
mod import;
mod seq;
mod server;
mod sign;
mod subject;
mod tail;

pub use batch::{
    BATCH_VERSION, BatchEnvelope, BatchError, FRAME_PREFIX, MAX_BATCH, MAX_BATCH_BYTES,
    MAX_MEMBER_BYTES, decode_frames, encode_frames, is_batch,
};
pub use bridge::{AUDIT_TARGET, Bridge, BridgeError, BridgeStats, LinkState};
pub use config::{
    Admit, Auth, BridgeConfig, CREDS_ENV, ConfigError, DEFAULT_BUFFER, DEFAULT_IMPORT_BUFFER,
    DEFAULT_IMPORT_BUFFER_BYTES, NKEY_ENV, SourceNames, TOKEN_ENV,
};
pub use envelope::{
    ENVELOPE_HEADER, ENVELOPE_VERSION, Envelope, EnvelopeError, MAX_SOURCE_NAME_BYTES,
};
pub use import::{Origin, imported_source};
pub use seq::{MAX_GAP, Numbering, Observed, SEQ_TABLE_CAPACITY, Tracking};
pub use server::{NatsServer, SERVER_ENV, ServerError, ServerOptions, server_binary};
pub use sign::{ClusterKey, KEY_BYTES, KeyError, SIGNATURE_HEADER};
pub use subject::{
    ClusterName, HostId, MAX_NAME_BYTES, NameError, SUBJECT_ROOT, SubjectError, cluster_prefix,
    pattern_subject, subject_topic, topic_subject,
};
pub use tail::{TAIL_VERSION, TAILS_KEPT, is_tail, parse_tail, request_subject, tail_header_value};

/// The async-nats client this crate is built on, for callers that talk to NATS directly.
pub use async_nats;
