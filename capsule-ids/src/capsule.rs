//! `CapsuleName`: a capsule's name, which is also its id. Grants, KV namespaces, secrets and
//! log files are keyed by it, so every one of them accepts exactly the names a manifest can
//! declare.

use std::fmt;

/// Longest capsule name, in bytes.
pub const MAX_CAPSULE_NAME_BYTES: usize = 64;

/// Why a capsule name was rejected. The messages read as the rest of a sentence about the
/// name (`package.name: must match …`), since callers say where the name came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsuleNameError {
    /// Empty, or longer than [`MAX_CAPSULE_NAME_BYTES`].
    #[error("must be 1 to {MAX_CAPSULE_NAME_BYTES} characters, got {len}")]
    Length {
        /// Length of the rejected name in bytes.
        len: usize,
    },
    /// A character outside `[a-z0-9-]`.
    #[error("must match [a-z0-9-]+, found {found:?}")]
    InvalidChar {
        /// The offending character.
        found: char,
    },
}

/// A capsule name: `[a-z0-9-]+`, at most 64 bytes. It is also the capsule's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapsuleName(String);

impl CapsuleName {
    /// Validates a capsule name.
    pub fn parse(s: &str) -> Result<Self, CapsuleNameError> {
        if s.is_empty() || s.len() > MAX_CAPSULE_NAME_BYTES {
            return Err(CapsuleNameError::Length { len: s.len() });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(CapsuleNameError::InvalidChar { found });
        }
        Ok(Self(s.to_string()))
    }

    /// The name text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CapsuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn capsule_name_grammar() {
        for ok in ["pong", "a", "my-capsule-2", "0", &"x".repeat(64)] {
            assert_eq!(
                CapsuleName::parse(ok).map(|n| n.as_str().to_string()),
                Ok(ok.to_string())
            );
        }
        assert_eq!(
            CapsuleName::parse(""),
            Err(CapsuleNameError::Length { len: 0 })
        );
        assert_eq!(
            CapsuleName::parse(&"x".repeat(65)),
            Err(CapsuleNameError::Length { len: 65 })
        );
        for (bad, found) in [
            ("Pong", 'P'),
            ("a_b", '_'),
            ("a.b", '.'),
            ("a/b", '/'),
            ("é", 'é'),
        ] {
            assert_eq!(
                CapsuleName::parse(bad),
                Err(CapsuleNameError::InvalidChar { found }),
                "{bad:?}"
            );
        }
    }

    proptest! {
        /// Every string is either a name of the documented grammar or refused; nothing else
        /// gets through and nothing of the grammar is refused.
        #[test]
        fn parse_accepts_exactly_the_grammar(s in "[a-z0-9_./:A-Z\\-]{0,70}") {
            let grammar = !s.is_empty()
                && s.len() <= MAX_CAPSULE_NAME_BYTES
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            prop_assert_eq!(CapsuleName::parse(&s).is_ok(), grammar);
        }
    }
}
