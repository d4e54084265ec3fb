//! What travels on the bus: an attribution to a principal, a validated JSON payload and the
//! immutable [`Message`] that every matching subscription shares (one allocation per publish).

use std::fmt;

use capsule_ids::PrincipalId;
use uuid::Uuid;

use crate::topic::Topic;

/// Who a message is attributed to, and how much the host vouches for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attribution {
    /// The host established the principal (the publishing call ran in its scope).
    Verified(PrincipalId),
    /// An uplink capsule asserted the principal on behalf of an external user.
    Claimed(PrincipalId),
    /// Published by the host itself, for no principal.
    System,
}

impl Attribution {
    /// The principal the message belongs to, `None` for system messages. This is the key of
    /// the per-principal queue the message lands in.
    pub fn principal(&self) -> Option<&PrincipalId> {
        match self {
            Self::Verified(p) | Self::Claimed(p) => Some(p),
            Self::System => None,
        }
    }
}

/// Why a payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload is not one well-formed JSON value.
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
}

/// A payload that is known to be one well-formed JSON value, kept as text.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPayload(Box<str>);

impl JsonPayload {
    /// Validates `text` as JSON without building a document tree.
    pub fn parse(text: String) -> Result<Self, PayloadError> {
        if !is_plain_json_string(text.as_bytes()) {
            serde_json::from_str::<serde::de::IgnoredAny>(&text)
                .map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
        }
        Ok(Self(text.into_boxed_str()))
    }

    /// Serialises a value; always valid JSON by construction.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(value.to_string().into_boxed_str())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length of the JSON text in bytes; this is what byte budgets count.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty (never true for a parsed payload).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Bytes scanned together by [`is_plain_json_string`]: a whole block is checked without a
/// branch per byte, which the compiler turns into vector compares.
const SCAN_BLOCK: usize = 64;

/// Whether `text` is one JSON string with nothing to unescape: `"`, then bytes none of which
/// is `"`, `\` or a control character (below 0x20), then `"`, with no whitespace around.
/// Every such text is valid JSON (a `&str` is already UTF-8); anything else, valid or not,
/// answers `false` and goes to the full parser. This is the common shape of a payload that
/// carries text, and scanning it a block at a time is several times faster than the parser.
fn is_plain_json_string(text: &[u8]) -> bool {
    let [b'"', inner @ .., b'"'] = text else {
        return false;
    };
    // Bitwise, not short-circuit: no branch per byte, so a block is compared as vectors.
    let special = |b: u8| u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\');
    let mut blocks = inner.chunks_exact(SCAN_BLOCK);
    for block in &mut blocks {
        if block.iter().fold(0u8, |seen, &b| seen | special(b)) != 0 {
            return false;
        }
    }
    blocks
        .remainder()
        .iter()
        .fold(0u8, |seen, &b| seen | special(b))
        == 0
}

impl fmt::Debug for JsonPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonPayload({} bytes)", self.0.len())
    }
}

/// One published message. Every subscription it is delivered to shares the same allocation.
///
/// The attribution is stored as a principal plus a flag bit (rather than the [`Attribution`]
/// enum) to keep every queued message small; [`Message::attribution`] rebuilds the enum.
#[derive(Debug)]
pub struct Message {
    /// Sequence number (low 55 bits), hop count (the next 8 bits) and the claimed-attribution
    /// flag (top bit), packed so that every queued message stays small.
    seq_flags: u64,
    /// Publish time, in milliseconds since the Unix epoch, read from the kernel's coarse
    /// wall clock: never ahead of the precise clock, at most a tick (a few ms) behind it.
    /// Informational only; the sequence number orders messages.
    pub timestamp_ms: u64,
    /// The capsule instance that published it.
    pub source: Uuid,
    /// The concrete topic it was published on.
    pub topic: Topic,
    /// The JSON payload.
    pub payload: JsonPayload,
    principal: Option<PrincipalId>,
}

const CLAIMED: u64 = 1 << 63;
const HOPS_SHIFT: u32 = 55;
const HOPS: u64 = 0xff << HOPS_SHIFT;
const SEQ: u64 = (1 << HOPS_SHIFT) - 1;

/// A message as the publisher hands it over; the bus assigns the sequence number.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The concrete topic.
    pub topic: Topic,
    /// The JSON payload.
    pub payload: JsonPayload,
    /// The publishing capsule instance.
    pub source: Uuid,
    /// Who the message is attributed to.
    pub attribution: Attribution,
    /// How many handler or receive steps led to this publish: 0 for a message nobody's message
    /// caused (the host, an embedder, a run loop acting on its own), else one more than the
    /// message whose handling published it. Lets the host stop publish loops.
    pub hops: u8,
}

impl Message {
    pub(crate) fn new(seq: u64, timestamp_ms: u64, out: Outgoing) -> Self {
        let (principal, claimed) = match out.attribution {
            Attribution::Verified(p) => (Some(p), false),
            Attribution::Claimed(p) => (Some(p), true),
            Attribution::System => (None, false),
        };
        Self {
            seq_flags: (seq & SEQ)
                | (u64::from(out.hops) << HOPS_SHIFT)
                | if claimed { CLAIMED } else { 0 },
            timestamp_ms,
            source: out.source,
            topic: out.topic,
            payload: out.payload,
            principal,
        }
    }

    /// Monotonic per-bus sequence number, assigned at publish.
    pub fn seq(&self) -> u64 {
        self.seq_flags & SEQ
    }

    /// The hop count the publisher gave it (see [`Outgoing::hops`]).
    pub fn hops(&self) -> u8 {
        ((self.seq_flags & HOPS) >> HOPS_SHIFT) as u8
    }

    /// Whether the principal was claimed by an uplink rather than established by the host.
    pub fn is_claimed(&self) -> bool {
        self.principal.is_some() && self.seq_flags & CLAIMED != 0
    }

    /// Size charged against byte budgets and queue limits: the payload length.
    pub fn cost(&self) -> usize {
        self.payload.len()
    }

    /// The principal the message belongs to (`None` for system messages): the key of the
    /// per-principal queue it lands in.
    pub fn principal(&self) -> Option<&PrincipalId> {
        self.principal.as_ref()
    }

    /// Who the message is attributed to.
    pub fn attribution(&self) -> Attribution {
        match (&self.principal, self.seq_flags & CLAIMED != 0) {
            (Some(p), false) => Attribution::Verified(p.clone()),
            (Some(p), true) => Attribution::Claimed(p.clone()),
            (None, _) => Attribution::System,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_must_be_one_json_value() {
        assert!(JsonPayload::parse(r#"{"a":1}"#.into()).is_ok());
        assert!(JsonPayload::parse("42".into()).is_ok());
        assert!(JsonPayload::parse(" null ".into()).is_ok());
        assert!(JsonPayload::parse("".into()).is_err());
        assert!(JsonPayload::parse("{".into()).is_err());
        assert!(JsonPayload::parse("1 2".into()).is_err());
        assert!(JsonPayload::parse("nope".into()).is_err());
    }

    #[test]
    fn plain_strings_take_the_fast_path_and_everything_else_the_parser() {
        let long = "y".repeat(100);
        for (text, plain) in [
            ("\"\"", true),
            ("\"abc\"", true),
            (&*format!("\"{long}\""), true),
            ("\"caf\u{e9} \u{1f600}\"", true),
            ("\"a\\nb\"", false),
            (&*format!("\"{long}\\\"{long}\""), false),
            (&*format!("\"{long}\u{1}\""), false),
            (&*format!("\"{long}\"{long}\""), false),
            (" \"a\"", false),
            ("\"", false),
            ("1", false),
        ] {
            assert_eq!(is_plain_json_string(text.as_bytes()), plain, "{text:?}");
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(JsonPayload::parse(text.into()).is_ok(), serde, "{text:?}");
            if plain {
                assert!(serde, "a plain string is valid JSON: {text:?}");
            }
        }
    }

    #[test]
    fn packed_fields_round_trip() {
        let p = PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}"));
        for (seq, hops, attribution) in [
            (1, 0, Attribution::Verified(p.clone())),
            (SEQ, u8::MAX, Attribution::Claimed(p.clone())),
            (12_345, 7, Attribution::System),
        ] {
            let out = Outgoing {
                topic: Topic::parse("a.b").unwrap_or_else(|e| panic!("{e}")),
                payload: JsonPayload::parse("1".into()).unwrap_or_else(|e| panic!("{e}")),
                source: Uuid::nil(),
                attribution: attribution.clone(),
                hops,
            };
            let m = Message::new(seq, 0, out);
            assert_eq!(m.seq(), seq);
            assert_eq!(m.hops(), hops);
            assert_eq!(m.attribution(), attribution);
            assert_eq!(
                m.is_claimed(),
                matches!(attribution, Attribution::Claimed(_))
            );
        }
    }

    #[test]
    fn attribution_key() {
        let p = PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Attribution::Verified(p.clone()).principal(), Some(&p));
        assert_eq!(Attribution::Claimed(p.clone()).principal(), Some(&p));
        assert_eq!(Attribution::System.principal(), None);
    }
}
