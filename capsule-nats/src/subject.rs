//! The one mapping between bus topics and NATS subjects. Every bus topic maps to exactly one
//! subject and back, and every subject of a cluster lives under that cluster's own prefix, so
//! two clusters sharing one NATS server never see each other's traffic.
//!
//! Mapping: topic `a.b.c` in cluster `prod` is subject `capsule.prod.a.b.c`. The bus grammar
//! (segments of ASCII letters, digits, `_` and `-`) is a subset of NATS's token grammar, so each
//! bus segment is one NATS token, unchanged. In patterns a `*` that is not last is NATS's `*`
//! (exactly one token) and a trailing `*` is NATS's `>` (one or more tokens), which is exactly
//! what the bus matcher means by them.

use std::fmt;

use capsule_bus::{Topic, TopicError, TopicPattern};

/// The first token of every subject the bridge uses.
pub const SUBJECT_ROOT: &str = "capsule";

/// Longest cluster name or host id, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Why a cluster name, host id or subject was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty or longer than [`MAX_NAME_BYTES`].
    #[error("{what} must be 1 to {MAX_NAME_BYTES} bytes long, got {len}")]
    Length {
        /// What was being named.
        what: &'static str,
        /// The length found.
        len: usize,
    },
    /// A byte outside `[A-Za-z0-9_-]`.
    #[error("{what} contains {found:?}; only ASCII letters, digits, '_' and '-' are allowed")]
    InvalidChar {
        /// What was being named.
        what: &'static str,
        /// The offending character.
        found: char,
    },
}

fn check(what: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.len() > MAX_NAME_BYTES {
        return Err(NameError::Length { what, len: s.len() });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(NameError::InvalidChar { what, found });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// Validates `s`: 1 to [`MAX_NAME_BYTES`] ASCII letters, digits, `_` or `-` (one
            /// NATS token, never a wildcard).
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check($what, s)?;
                Ok(Self(s.into()))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
    };
}

name_type!(
    /// A cluster's name: the namespace token of every subject its hosts use.
    ClusterName,
    "cluster name"
);
name_type!(
    /// One host's identity inside a cluster; peers list each other by it.
    HostId,
    "host id"
);

/// The subject prefix of `cluster`, without a trailing dot.
pub fn cluster_prefix(cluster: &ClusterName) -> String {
    format!("{SUBJECT_ROOT}.{}", cluster.as_str())
}

/// The subject a topic travels on in `cluster`.
pub fn topic_subject(cluster: &ClusterName, topic: &Topic) -> String {
    format!("{SUBJECT_ROOT}.{}.{}", cluster.as_str(), topic.as_str())
}

/// The subscription subject that receives exactly the topics `pattern` matches in `cluster`.
pub fn pattern_subject(cluster: &ClusterName, pattern: &TopicPattern) -> String {
    let mut out = cluster_prefix(cluster);
    let count = pattern.segment_count();
    for (i, seg) in pattern.as_str().split('.').enumerate() {
        out.push('.');
        out.push_str(if seg == "*" && i + 1 == count {
            ">"
        } else {
            seg
        });
    }
    out
}

/// Why a received subject is not a topic of this cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject lies outside this cluster's prefix.
    #[error("subject {0:?} is not under this cluster's prefix")]
    OtherCluster(String),
    /// The part after the prefix is not a valid bus topic.
    #[error("subject {subject:?} does not name a bus topic: {source}")]
    NotATopic {
        /// The subject received.
        subject: String,
        /// Why the topic grammar refused it.
        source: TopicError,
    },
}

/// The bus topic a subject of `cluster` carries: the inverse of [`topic_subject`].
pub fn subject_topic(cluster: &ClusterName, subject: &str) -> Result<Topic, SubjectError> {
    let rest = subject
        .strip_prefix(SUBJECT_ROOT)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_prefix(cluster.as_str()))
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| SubjectError::OtherCluster(subject.to_string()))?;
    Topic::parse(rest).map_err(|source| SubjectError::NotATopic {
        subject: subject.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(s: &str) -> ClusterName {
        ClusterName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_are_single_tokens() {
        assert!(ClusterName::parse("prod-eu_1").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "é"] {
            assert!(ClusterName::parse(bad).is_err(), "{bad:?}");
            assert!(HostId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(HostId::parse(&"h".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn topics_round_trip_one_to_one() {
        let c = cluster("prod");
        for t in [
            "a",
            "chat.post",
            "a-b.c_d.e.f.g.h.i.j",
            "astrid.v1.audit.entry",
        ] {
            let topic = Topic::parse(t).unwrap_or_else(|e| panic!("{e}"));
            let subject = topic_subject(&c, &topic);
            assert_eq!(subject, format!("capsule.prod.{t}"));
            assert_eq!(subject_topic(&c, &subject), Ok(topic));
        }
    }

    #[test]
    fn foreign_subjects_are_refused() {
        let c = cluster("prod");
        for s in [
            "capsule.prodx.a",
            "capsule.dev.a",
            "capsule.prod",
            "other.prod.a",
            "capsule.prod.",
        ] {
            assert!(subject_topic(&c, s).is_err(), "{s}");
        }
        assert!(matches!(
            subject_topic(&c, "capsule.prod.a.*"),
            Err(SubjectError::NotATopic { .. })
        ));
    }

    #[test]
    fn patterns_map_wildcards_as_the_bus_means_them() {
        let c = cluster("k");
        let p = |s: &str| TopicPattern::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pattern_subject(&c, &p("chat.*")), "capsule.k.chat.>");
        assert_eq!(pattern_subject(&c, &p("a.*.c")), "capsule.k.a.*.c");
        assert_eq!(pattern_subject(&c, &p("a.*.*")), "capsule.k.a.*.>");
        assert_eq!(pattern_subject(&c, &p("a.b")), "capsule.k.a.b");
    }
}
