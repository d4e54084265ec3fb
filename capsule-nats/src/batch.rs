//! The batch envelope (format version 2): one NATS message carrying a run of consecutive
//! messages of one publisher stream that share a topic, an attribution and a hop count, so
//! the per-NATS-message cost is paid once per run rather than once per bus message. The
//! header is the version-1 envelope with the count after the first sequence number
//! (`2;<host>;<attribution>;<source>;<epoch>;<first seq>;<count>;<hops>[;<source name>]`),
//! and the payload is the messages' payloads, each framed as a 4-byte little-endian length
//! then the bytes. Decoding is strict and refuses the whole NATS message on any disagreement:
//! a count of zero or above [`MAX_BATCH`], a count the payload is too short to hold (checked
//! before anything is allocated), a frame running past the end, bytes left over after the
//! last frame, or a sequence range past `u64::MAX`. One framing parses one way only, so the
//! same bytes never decode as two different batches.

use std::fmt::Write as _;

use crate::envelope::{AttributionText, Envelope, EnvelopeError, parse_attribution, sendable_name};
use crate::subject::HostId;

/// The batch format version, the header's first field.
pub const BATCH_VERSION: &str = "2";

/// Messages one batch carries at most.
pub const MAX_BATCH: usize = 64;

/// Largest payload that joins a batch; a larger message travels alone as a version-1
/// envelope, where the per-message cost is small next to its bytes anyway, and the receiver's
/// byte-bounded buffer keeps its fine grain.
pub const MAX_MEMBER_BYTES: usize = 8 * 1024;

/// Largest framed payload a sender builds, below any server's `max_payload` headroom too.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Bytes of each frame's length prefix.
pub const FRAME_PREFIX: usize = 4;

/// Fields of a batch header without the optional source name.
const FIELDS: usize = 8;

/// The metadata of one batch: the envelope of its first message (whose `seq` is the first
/// sequence number) and how many messages follow it, numbered on from there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEnvelope {
    /// The first message's envelope; message `i` has sequence number `first.seq + i`.
    pub first: Envelope,
    /// Messages in the batch, 1 to [`MAX_BATCH`].
    pub count: usize,
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The header did not parse.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A count of zero or above [`MAX_BATCH`].
    #[error("a batch carries 1 to {MAX_BATCH} messages, not {0}")]
    Count(u64),
    /// The sequence range runs past the largest sequence number.
    #[error("sequence range {first} + {count} overflows")]
    Range {
        /// The first sequence number.
        first: u64,
        /// The count.
        count: usize,
    },
    /// The payload is too short for the count's length prefixes.
    #[error("a payload of {len} bytes cannot hold {count} frames")]
    TooShort {
        /// Payload bytes.
        len: usize,
        /// Claimed count.
        count: usize,
    },
    /// A frame's length prefix or body runs past the end of the payload.
    #[error("frame {0} runs past the end of the payload")]
    Truncated(usize),
    /// Bytes remain after the counted frames.
    #[error("{0} bytes follow the last frame")]
    Trailing(usize),
}

/// Whether an envelope header value is a batch's (rather than a version-1 single message's).
pub fn is_batch(header: &str) -> bool {
    header
        .strip_prefix(BATCH_VERSION)
        .is_some_and(|r| r.starts_with(';'))
}

impl BatchEnvelope {
    /// The header value of this batch.
    pub fn to_header_value(&self) -> String {
        let e = &self.first;
        let mut v = String::with_capacity(104);
        let _ = write!(
            v,
            "{BATCH_VERSION};{};{};{};{};{};{};{}",
            e.host.as_str(),
            AttributionText(&e.attribution),
            e.source.hyphenated(),
            e.epoch,
            e.seq,
            self.count,
            e.hops
        );
        if let Some(name) = e.source_name.as_deref().filter(|n| sendable_name(n)) {
            v.push(';');
            v.push_str(name);
        }
        v
    }

    /// Parses a batch header value; every field must be present and well formed.
    pub fn parse(value: &str) -> Result<Self, BatchError> {
        let invalid = |field: &str, reason: &dyn std::fmt::Display| EnvelopeError::Invalid {
            header: crate::envelope::ENVELOPE_HEADER,
            reason: format!("{field}: {reason}"),
        };
        let mut f = value.splitn(FIELDS + 1, ';');
        let mut next = |field: &'static str| {
            f.next()
                .ok_or_else(|| invalid(field, &"missing (too few fields)"))
        };
        let version = next("version")?;
        if version != BATCH_VERSION {
            return Err(invalid("version", &format!("{version:?} is not {BATCH_VERSION}")).into());
        }
        let host = HostId::parse(next("host")?).map_err(|e| invalid("host", &e))?;
        let attribution = parse_attribution(next("attribution")?)?;
        let source = uuid::Uuid::parse_str(next("source")?).map_err(|e| invalid("source", &e))?;
        let epoch: u64 = next("epoch")?.parse().map_err(|e| invalid("epoch", &e))?;
        let seq: u64 = next("seq")?.parse().map_err(|e| invalid("seq", &e))?;
        if seq == 0 {
            return Err(invalid("seq", &"sequence numbers start at 1").into());
        }
        let count: u64 = next("count")?.parse().map_err(|e| invalid("count", &e))?;
        let hops: u8 = next("hops")?.parse().map_err(|e| invalid("hops", &e))?;
        let source_name = f.next().filter(|n| sendable_name(n)).map(str::to_string);
        let count = usize::try_from(count)
            .ok()
            .filter(|c| (1..=MAX_BATCH).contains(c))
            .ok_or(BatchError::Count(count))?;
        if seq.checked_add(count as u64 - 1).is_none() {
            return Err(BatchError::Range { first: seq, count });
        }
        Ok(Self {
            first: Envelope {
                host,
                attribution,
                source,
                source_name,
                epoch,
                seq,
                hops,
            },
            count,
        })
    }
}

/// Frames `payloads` into one batch payload.
pub fn encode_frames<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        // Members are at most `MAX_MEMBER_BYTES` on the sending side; a caller framing more
        // than `u32::MAX` bytes gets a prefix the receiver refuses, never a short one.
        let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Splits a batch payload into exactly `count` frames, or refuses it.
pub fn decode_frames(payload: &[u8], count: usize) -> Result<Vec<&[u8]>, BatchError> {
    if count == 0 || count > MAX_BATCH {
        return Err(BatchError::Count(count as u64));
    }
    // Every frame needs at least its prefix: a large count on a small payload stops here.
    if payload.len() / FRAME_PREFIX < count {
        return Err(BatchError::TooShort {
            len: payload.len(),
            count,
        });
    }
    let mut frames = Vec::with_capacity(count);
    let mut rest = payload;
    for i in 0..count {
        let (prefix, body) = rest
            .split_first_chunk::<FRAME_PREFIX>()
            .ok_or(BatchError::Truncated(i))?;
        let len =
            usize::try_from(u32::from_le_bytes(*prefix)).map_err(|_| BatchError::Truncated(i))?;
        if len > body.len() {
            return Err(BatchError::Truncated(i));
        }
        let (frame, after) = body.split_at(len);
        frames.push(frame);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(BatchError::Trailing(rest.len()));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_bus::{Attribution, PrincipalId};
    use uuid::Uuid;

    fn batch(count: usize) -> BatchEnvelope {
        BatchEnvelope {
            first: Envelope {
                host: HostId::parse("h1").unwrap_or_else(|e| panic!("{e}")),
                attribution: Attribution::Claimed(
                    PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}")),
                ),
                source: Uuid::from_u128(9),
                source_name: Some("a;b".into()),
                epoch: 4,
                seq: 10,
                hops: 1,
            },
            count,
        }
    }

    #[test]
    fn headers_round_trip_and_are_told_apart_from_version_one() {
        let b = batch(3);
        let v = b.to_header_value();
        assert!(is_batch(&v));
        assert_eq!(BatchEnvelope::parse(&v), Ok(b.clone()));
        let v1 = b.first.to_header_value();
        assert!(!is_batch(&v1));
        assert!(BatchEnvelope::parse(&v1).is_err());
        assert!(Envelope::parse(&v).is_err());
        assert!(!is_batch("22;x"));
    }

    #[test]
    fn counts_and_ranges_outside_the_bounds_are_refused() {
        let u = Uuid::from_u128(1);
        for (value, want) in [
            (format!("2;h;system;{u};1;1;0;0"), BatchError::Count(0)),
            (format!("2;h;system;{u};1;1;65;0"), BatchError::Count(65)),
            (
                format!("2;h;system;{u};1;1;18446744073709551615;0"),
                BatchError::Count(u64::MAX),
            ),
            (
                format!("2;h;system;{u};1;18446744073709551615;2;0"),
                BatchError::Range {
                    first: u64::MAX,
                    count: 2,
                },
            ),
        ] {
            assert_eq!(BatchEnvelope::parse(&value), Err(want), "{value}");
        }
        assert!(BatchEnvelope::parse(&format!("2;h;system;{u};1;1;-1;0")).is_err());
        assert!(BatchEnvelope::parse(&format!("2;h;system;{u};1;0;1;0")).is_err());
        assert!(BatchEnvelope::parse(&format!("2;h;system;{u};1;1;1")).is_err());
    }

    #[test]
    fn frames_decode_exactly_or_not_at_all() {
        let p = encode_frames([&b"{}"[..], b"[1]", b""]);
        assert_eq!(
            decode_frames(&p, 3),
            Ok(vec![&b"{}"[..], &b"[1]"[..], &b""[..]])
        );
        assert_eq!(decode_frames(&p, 2), Err(BatchError::Trailing(4)));
        assert!(matches!(
            decode_frames(&p, 4),
            Err(BatchError::Truncated(3))
        ));
        assert_eq!(
            decode_frames(&p[..p.len() - 1], 3),
            Err(BatchError::Truncated(2))
        );
        assert_eq!(decode_frames(&p, 0), Err(BatchError::Count(0)));
        assert_eq!(
            decode_frames(&[0; 8], 64),
            Err(BatchError::TooShort { len: 8, count: 64 })
        );
        let mut long = p.clone();
        long[0] = 0xff;
        assert_eq!(decode_frames(&long, 3), Err(BatchError::Truncated(0)));
    }
}
