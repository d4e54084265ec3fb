//! `PrincipalId`: the identity a call acts for. Parsing is the only way to build one, so a
//! value in hand always satisfies the grammar.

use std::fmt;
use std::sync::Arc;

/// Longest principal id, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 64;

/// Why a principal id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// The id was empty.
    #[error("principal id is empty")]
    Empty,
    /// The id is longer than [`MAX_PRINCIPAL_BYTES`].
    #[error("principal id is {len} bytes long; the limit is {MAX_PRINCIPAL_BYTES}")]
    TooLong {
        /// Length of the rejected id in bytes.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("principal id contains {found:?}; only ASCII letters, digits, '_' and '-' are allowed")]
    InvalidChar {
        /// The offending character.
        found: char,
    },
}

/// The identity a call acts for: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// Cheap to clone; compared by value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrincipalId(Arc<str>);

impl PrincipalId {
    /// Validates and wraps a principal id.
    pub fn parse(s: &str) -> Result<Self, PrincipalError> {
        if s.is_empty() {
            return Err(PrincipalError::Empty);
        }
        if s.len() > MAX_PRINCIPAL_BYTES {
            return Err(PrincipalError::TooLong { len: s.len() });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(PrincipalError::InvalidChar { found });
        }
        Ok(Self(Arc::from(s)))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrincipalId({:?})", &*self.0)
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PrincipalId {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_grammar() {
        assert!(PrincipalId::parse("alice").is_ok());
        assert!(PrincipalId::parse("A_b-9").is_ok());
        assert!(PrincipalId::parse(&"x".repeat(64)).is_ok());
        assert_eq!(PrincipalId::parse(""), Err(PrincipalError::Empty));
        assert_eq!(
            PrincipalId::parse(&"x".repeat(65)),
            Err(PrincipalError::TooLong { len: 65 })
        );
        assert_eq!(
            PrincipalId::parse("a:b"),
            Err(PrincipalError::InvalidChar { found: ':' })
        );
        assert_eq!(
            PrincipalId::parse("a.b"),
            Err(PrincipalError::InvalidChar { found: '.' })
        );
    }
}
