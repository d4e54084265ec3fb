//! Digests: the SHA-256 a `[[component]]` may pin its file to, and the digest of the manifest
//! text that an operator's grant is recorded against.

use std::fmt;

/// An expected digest of a component file (`hash = "sha256:<hex>"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentHash {
    /// SHA-256 of the file, as 32 bytes.
    Sha256([u8; 32]),
}

impl ComponentHash {
    /// Whether `bytes` have this digest.
    pub fn verify(&self, bytes: &[u8]) -> bool {
        use sha2::Digest;
        match self {
            Self::Sha256(want) => sha2::Sha256::digest(bytes).as_slice() == want,
        }
    }
}

/// Parses `sha256:<64 hex digits>` into the digest bytes.
pub(crate) fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 digest of a manifest's text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ManifestDigest(pub [u8; 32]);

impl ManifestDigest {
    /// The digest of `text`.
    pub fn of(text: &str) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(text.as_bytes()).into())
    }

    /// Parses the `sha256:<64 hex digits>` form [`Display`](fmt::Display) writes.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        parse_sha256(s).map(Self)
    }
}

impl fmt::Display for ManifestDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ManifestDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManifestDigest({self})")
    }
}
