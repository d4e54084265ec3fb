//! What travels beside a payload in NATS headers: the attribution exactly as the origin host
//! recorded it, the source capsule instance, the origin host, the hop count and the publisher's
//! sequence number. Decoding is strict: a missing or malformed header refuses the message, it
//! never falls back to a default attribution.

use async_nats::HeaderMap;
use capsule_bus::{Attribution, PrincipalId};
use uuid::Uuid;

use crate::subject::{HostId, NameError};

/// Header naming the origin host.
pub const HOST_HEADER: &str = "Capsule-Host";
/// Header carrying the attribution: `verified:<principal>`, `claimed:<principal>` or `system`.
pub const ATTRIBUTION_HEADER: &str = "Capsule-Attribution";
/// Header carrying the publishing capsule instance (a UUID).
pub const SOURCE_HEADER: &str = "Capsule-Source";
/// Header carrying the publishing capsule's name, when the origin host knows it.
pub const SOURCE_NAME_HEADER: &str = "Capsule-Source-Name";
/// Header carrying the per-publisher sequence number (1, 2, 3, … per source and topic).
pub const SEQ_HEADER: &str = "Capsule-Seq";
/// Header carrying the publisher's stream epoch, which rises whenever its numbering starts
/// over.
pub const EPOCH_HEADER: &str = "Capsule-Epoch";
/// Header carrying the hop count the message had on its origin bus.
pub const HOPS_HEADER: &str = "Capsule-Hops";

/// Longest source name carried; a longer one is left out.
pub const MAX_SOURCE_NAME_BYTES: usize = 128;

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

pub(crate) fn attribution_text(a: &Attribution) -> String {
    match a {
        Attribution::Verified(p) => format!("verified:{}", p.as_str()),
        Attribution::Claimed(p) => format!("claimed:{}", p.as_str()),
        Attribution::System => "system".to_string(),
    }
}

fn parse_attribution(s: &str) -> Result<Attribution, EnvelopeError> {
    let invalid = |reason: String| EnvelopeError::Invalid {
        header: ATTRIBUTION_HEADER,
        reason,
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

impl Envelope {
    /// The headers carrying this envelope.
    pub fn to_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST_HEADER, self.host.as_str());
        h.insert(ATTRIBUTION_HEADER, attribution_text(&self.attribution));
        h.insert(SOURCE_HEADER, self.source.to_string());
        if let Some(name) = &self.source_name {
            h.insert(SOURCE_NAME_HEADER, name.as_str());
        }
        h.insert(EPOCH_HEADER, self.epoch.to_string());
        h.insert(SEQ_HEADER, self.seq.to_string());
        h.insert(HOPS_HEADER, self.hops.to_string());
        h
    }

    /// Reads an envelope back; every required header must be present and well formed.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, EnvelopeError> {
        let h = headers.ok_or(EnvelopeError::NoHeaders)?;
        let get = |name: &'static str| {
            h.get(name)
                .map(|v| v.as_str())
                .ok_or(EnvelopeError::Missing(name))
        };
        let invalid = |header: &'static str| {
            move |e: &dyn std::fmt::Display| EnvelopeError::Invalid {
                header,
                reason: e.to_string(),
            }
        };
        let host =
            HostId::parse(get(HOST_HEADER)?).map_err(|e: NameError| invalid(HOST_HEADER)(&e))?;
        let attribution = parse_attribution(get(ATTRIBUTION_HEADER)?)?;
        let source =
            Uuid::parse_str(get(SOURCE_HEADER)?).map_err(|e| invalid(SOURCE_HEADER)(&e))?;
        let source_name = h
            .get(SOURCE_NAME_HEADER)
            .map(|v| v.as_str())
            .filter(|s| s.len() <= MAX_SOURCE_NAME_BYTES)
            .map(str::to_string);
        let seq: u64 = get(SEQ_HEADER)?
            .parse()
            .map_err(|e| invalid(SEQ_HEADER)(&e))?;
        if seq == 0 {
            return Err(invalid(SEQ_HEADER)(&"sequence numbers start at 1"));
        }
        let epoch: u64 = get(EPOCH_HEADER)?
            .parse()
            .map_err(|e| invalid(EPOCH_HEADER)(&e))?;
        let hops: u8 = get(HOPS_HEADER)?
            .parse()
            .map_err(|e| invalid(HOPS_HEADER)(&e))?;
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
        let good = env(Attribution::System).to_headers();
        for (name, value) in [
            (ATTRIBUTION_HEADER, "verified"),
            (ATTRIBUTION_HEADER, "root:alice"),
            (ATTRIBUTION_HEADER, "verified:"),
            (ATTRIBUTION_HEADER, "claimed:a b"),
            (HOST_HEADER, "a.b"),
            (SOURCE_HEADER, "not-a-uuid"),
            (SEQ_HEADER, "0"),
            (SEQ_HEADER, "-1"),
            (EPOCH_HEADER, "x"),
            (HOPS_HEADER, "256"),
        ] {
            let mut h = good.clone();
            h.insert(name, value);
            assert!(
                matches!(
                    Envelope::from_headers(Some(&h)),
                    Err(EnvelopeError::Invalid { .. })
                ),
                "{name}: {value}"
            );
        }
        let mut missing = HeaderMap::new();
        missing.insert(HOST_HEADER, "h1");
        assert_eq!(
            Envelope::from_headers(Some(&missing)),
            Err(EnvelopeError::Missing(ATTRIBUTION_HEADER))
        );
    }
}
