//! What travels beside a payload in NATS headers: the attribution exactly as the origin host
//! recorded it, the source capsule instance, the origin host, the hop count and the publisher's
//! stream epoch and sequence number, all in one header ([`ENVELOPE_HEADER`]) so that a bridged
//! message costs one header to write, send, parse and look up rather than one per field.
//! Decoding is strict: a missing header, a wrong field count or a malformed field refuses the
//! message, it never falls back to a default attribution.

use async_nats::HeaderMap;
use capsule_bus::{Attribution, PrincipalId};
use uuid::Uuid;

use crate::subject::{HostId, NameError};

/// Header carrying the whole envelope: `1;<host>;<attribution>;<source>;<epoch>;<seq>;<hops>`,
/// then `;<source name>` when the origin host knows the publishing capsule's name. The
/// attribution is `verified:<principal>`, `claimed:<principal>` or `system`; the source is the
/// publishing capsule instance's UUID; the sequence numbers each publisher's messages on a
/// topic 1, 2, 3, … within its stream epoch. Host ids and principals never contain `;`, and
/// the name comes last, so it may.
pub const ENVELOPE_HEADER: &str = "Capsule-Envelope";

/// The envelope format version, the header's first field.
pub const ENVELOPE_VERSION: &str = "1";

/// Longest source name carried; a longer one (or one with control characters, or ending in
/// whitespace) is left out.
pub const MAX_SOURCE_NAME_BYTES: usize = 128;

/// Fields of an envelope without the optional source name.
const FIELDS: usize = 7;

/// The metadata of one bridged message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The host that published it onto NATS.
    pub host: HostId,
    /// Who the origin host attributed it to.
    pub attribution: Attribution,
    /// The publishing capsule instance on the origin host.
    pub source: Uuid,
    /// The publishing capsule's name, if the origin host gave one.
    pub source_name: Option<String>,
    /// The publisher's stream epoch on this topic.
    pub epoch: u64,
    /// Position in the publisher's stream on this topic, from 1.
    pub seq: u64,
    /// The hop count on the origin bus.
    pub hops: u8,
}

/// Why received headers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The message carried no headers at all.
    #[error("message carries no headers")]
    NoHeaders,
    /// A required header is absent.
    #[error("header {0} is missing")]
    Missing(&'static str),
    /// A header's value does not parse.
    #[error("header {header} has an invalid value: {reason}")]
    Invalid {
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

pub(crate) fn parse_attribution(s: &str) -> Result<Attribution, EnvelopeError> {
    let invalid = |reason: String| EnvelopeError::Invalid {
        header: ENVELOPE_HEADER,
        reason: format!("attribution: {reason}"),
    };
    let principal = |p: &str| PrincipalId::parse(p).map_err(|e| invalid(e.to_string()));
    match s.split_once(':') {
        None if s == "system" => Ok(Attribution::System),
        Some(("verified", p)) => Ok(Attribution::Verified(principal(p)?)),
        Some(("claimed", p)) => Ok(Attribution::Claimed(principal(p)?)),
        _ => Err(invalid(format!(
            "{s:?} is not verified:P, claimed:P or system"
        ))),
    }
}

/// Whether `name` may travel as the source name: short, and nothing a header line could not
/// carry. The name ends the header value, and NATS clients trim whitespace off the end of a
/// value, so a name ending in whitespace would arrive other than it was signed and sink
/// every message that carries it.
pub(crate) fn sendable_name(name: &str) -> bool {
    name.len() <= MAX_SOURCE_NAME_BYTES
        && !name.chars().any(char::is_control)
        && !name.ends_with(char::is_whitespace)
}

impl Envelope {
    /// The [`ENVELOPE_HEADER`] value of this envelope.
    pub fn to_header_value(&self) -> String {
        self.header_value_as(ENVELOPE_VERSION)
    }

    /// The header value of these fields under format `version`, which shares the layout.
    pub(crate) fn header_value_as(&self, version: &str) -> String {
        use std::fmt::Write as _;
        let mut v = String::with_capacity(96);
        let _ = write!(
            v,
            "{version};{};{};{};{};{};{}",
            self.host.as_str(),
            AttributionText(&self.attribution),
            self.source.hyphenated(),
            self.epoch,
            self.seq,
            self.hops
        );
        if let Some(name) = self.source_name.as_deref().filter(|n| sendable_name(n)) {
            v.push(';');
            v.push_str(name);
        }
        v
    }

    /// The headers carrying this envelope.
    pub fn to_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ENVELOPE_HEADER, self.to_header_value());
        h
    }

    /// Reads an envelope back from its header; every field must be present and well formed.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, EnvelopeError> {
        let h = headers.ok_or(EnvelopeError::NoHeaders)?;
        let value = h
            .get(crate::bridge::ENVELOPE_NAME)
            .map(|v| v.as_str())
            .ok_or(EnvelopeError::Missing(ENVELOPE_HEADER))?;
        Self::parse(value)
    }

    /// Parses an [`ENVELOPE_HEADER`] value.
    pub fn parse(value: &str) -> Result<Self, EnvelopeError> {
        Self::parse_as(value, ENVELOPE_VERSION)
    }

    /// Parses a header value of format `version`, which shares the version-1 layout.
    pub(crate) fn parse_as(value: &str, want: &str) -> Result<Self, EnvelopeError> {
        let invalid = |field: &str, reason: &dyn std::fmt::Display| EnvelopeError::Invalid {
            header: ENVELOPE_HEADER,
            reason: format!("{field}: {reason}"),
        };
        let mut f = value.splitn(FIELDS + 1, ';');
        let mut next = |field: &'static str| {
            f.next()
                .ok_or_else(|| invalid(field, &"missing (too few fields)"))
        };
        let version = next("version")?;
        if version != want {
            return Err(invalid("version", &format!("{version:?} is not {want}")));
        }
        let host = HostId::parse(next("host")?).map_err(|e: NameError| invalid("host", &e))?;
        let attribution = parse_attribution(next("attribution")?)?;
        let source = Uuid::parse_str(next("source")?).map_err(|e| invalid("source", &e))?;
        let epoch: u64 = next("epoch")?.parse().map_err(|e| invalid("epoch", &e))?;
        let seq: u64 = next("seq")?.parse().map_err(|e| invalid("seq", &e))?;
        if seq == 0 {
            return Err(invalid("seq", &"sequence numbers start at 1"));
        }
        let hops: u8 = next("hops")?.parse().map_err(|e| invalid("hops", &e))?;
        let source_name = f.next().filter(|n| sendable_name(n)).map(str::to_string);
        Ok(Self {
            host,
            attribution,
            source,
            source_name,
            epoch,
            seq,
            hops,
        })
    }
}

/// Writes an attribution in its header form without an intermediate string.
pub(crate) struct AttributionText<'a>(pub(crate) &'a Attribution);

impl std::fmt::Display for AttributionText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Attribution::Verified(p) => write!(f, "verified:{}", p.as_str()),
            Attribution::Claimed(p) => write!(f, "claimed:{}", p.as_str()),
            Attribution::System => f.write_str("system"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(attribution: Attribution) -> Envelope {
        Envelope {
            host: HostId::parse("h1").unwrap_or_else(|e| panic!("{e}")),
            attribution,
            source: Uuid::new_v4(),
            source_name: Some("notes".into()),
            epoch: 3,
            seq: 7,
            hops: 2,
        }
    }

    #[test]
    fn every_attribution_round_trips() {
        let p = PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        for a in [
            Attribution::Verified(p.clone()),
            Attribution::Claimed(p),
            Attribution::System,
        ] {
            let e = env(a);
            assert_eq!(Envelope::from_headers(Some(&e.to_headers())), Ok(e));
        }
    }

    #[test]
    fn malformed_headers_are_refused_not_defaulted() {
        assert_eq!(Envelope::from_headers(None), Err(EnvelopeError::NoHeaders));
        assert_eq!(
            Envelope::from_headers(Some(&HeaderMap::new())),
            Err(EnvelopeError::Missing(ENVELOPE_HEADER))
        );
        let u = Uuid::from_u128(1);
        assert!(Envelope::parse(&format!("1;h1;system;{u};1;1;0")).is_ok());
        for value in [
            format!("2;h1;system;{u};1;1;0"),
            format!("1;h1;verified;{u};1;1;0"),
            format!("1;h1;root:alice;{u};1;1;0"),
            format!("1;h1;verified:;{u};1;1;0"),
            format!("1;h1;claimed:a b;{u};1;1;0"),
            format!("1;a.b;system;{u};1;1;0"),
            "1;h1;system;not-a-uuid;1;1;0".to_string(),
            format!("1;h1;system;{u};1;0;0"),
            format!("1;h1;system;{u};1;-1;0"),
            format!("1;h1;system;{u};x;1;0"),
            format!("1;h1;system;{u};1;1;256"),
            format!("1;h1;system;{u};1;1"),
            String::new(),
        ] {
            let mut h = HeaderMap::new();
            h.insert(ENVELOPE_HEADER, value.as_str());
            assert!(
                matches!(
                    Envelope::from_headers(Some(&h)),
                    Err(EnvelopeError::Invalid { .. })
                ),
                "{value}"
            );
        }
    }

    #[test]
    fn names_may_hold_the_separator_but_not_control_characters() {
        let mut e = env(Attribution::System);
        e.source_name = Some("a;b".into());
        assert_eq!(Envelope::parse(&e.to_header_value()), Ok(e.clone()));
        e.source_name = Some("a\r\nb".into());
        assert_eq!(
            Envelope::parse(&e.to_header_value()).map(|e| e.source_name),
            Ok(None)
        );
    }
}
