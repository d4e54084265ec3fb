//! Message authentication between the hosts of a cluster. The `Capsule-Host` header alone
//! proves nothing: any client the NATS server lets publish on the cluster's subjects can write
//! it. With a [`ClusterKey`] every exported message carries a keyed BLAKE3 tag over its
//! subject, every envelope field and its payload ([`SIGNATURE_HEADER`]), and the receiving
//! host refuses anything whose tag is missing or wrong before it believes a single header. The
//! key proves membership of the cluster, not which member: a host holding it can still name
//! another member as origin, so every key holder is trusted as much as a peer.

use std::fmt;

use capsule_bus::Attribution;

use crate::batch::BatchEnvelope;
use crate::envelope::Envelope;

/// Header carrying the hex tag of a signed message.
pub const SIGNATURE_HEADER: &str = "Capsule-Sig";

/// Bytes of a cluster key.
pub const KEY_BYTES: usize = 32;

/// Why a cluster key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text was not 64 hexadecimal digits.
    #[error("a cluster key is {want} hexadecimal digits, got {0} characters", want = 2 * KEY_BYTES)]
    Length(usize),
    /// A character that is not a hexadecimal digit.
    #[error("a cluster key contains {0:?}, which is not a hexadecimal digit")]
    NotHex(char),
}

/// Domain separation of the tag: the first field every single message's tag absorbs.
const DOMAIN: &[u8] = b"capsule-nats message v1";
/// The first field every batch's tag absorbs, so no tag of one format is valid in the other.
const BATCH_DOMAIN: &[u8] = b"capsule-nats batch v2";
/// The first field every tail mark's tag absorbs.
const TAIL_DOMAIN: &[u8] = b"capsule-nats tail v3";

/// The secret every host of a cluster shares to authenticate its messages.
#[derive(Clone)]
pub struct ClusterKey {
    bytes: [u8; KEY_BYTES],
    /// The keyed hash state after the key schedule and the domain field, computed once so
    /// each message's tag starts from a copy rather than from the key.
    base: blake3::Hasher,
    /// The same for batches, after [`BATCH_DOMAIN`].
    batch_base: blake3::Hasher,
    /// The same for tail marks, after [`TAIL_DOMAIN`].
    tail_base: blake3::Hasher,
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for ClusterKey {}

/// Feeds one length-prefixed field, so no two different messages share an input.
fn field(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches logs or `Debug` output.
        f.write_str("ClusterKey(<redacted>)")
    }
}

fn nibble(c: char) -> Result<u8, KeyError> {
    c.to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
        .ok_or(KeyError::NotHex(c))
}

impl ClusterKey {
    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        let keyed = blake3::Hasher::new_keyed(&bytes);
        let (mut base, mut batch_base, mut tail_base) = (keyed.clone(), keyed.clone(), keyed);
        field(&mut base, DOMAIN);
        field(&mut batch_base, BATCH_DOMAIN);
        field(&mut tail_base, TAIL_DOMAIN);
        Self {
            bytes,
            base,
            batch_base,
            tail_base,
        }
    }

    /// Parses 64 hexadecimal digits (surrounding whitespace ignored), as `openssl rand -hex 32`
    /// writes them.
    pub fn parse_hex(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let chars: Vec<char> = t.chars().collect();
        if chars.len() != 2 * KEY_BYTES {
            return Err(KeyError::Length(chars.len()));
        }
        let mut out = [0u8; KEY_BYTES];
        for (byte, pair) in out.iter_mut().zip(chars.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self::from_bytes(out))
    }

    fn tag(&self, subject: &str, env: &Envelope, payload: &[u8]) -> blake3::Hash {
        self.tag_from(self.base.clone(), subject, env, None, payload)
    }

    /// The tag of `env` (with `count` for a batch, whose `payload` is the whole framed
    /// payload) starting from a domain-separated state `h`.
    fn tag_from(
        &self,
        mut h: blake3::Hasher,
        subject: &str,
        env: &Envelope,
        count: Option<usize>,
        payload: &[u8],
    ) -> blake3::Hash {
        field(&mut h, subject.as_bytes());
        field(&mut h, env.host.as_str().as_bytes());
        // The attribution's header text, fed in parts rather than built as a string.
        let (kind, principal): (&[u8], &str) = match &env.attribution {
            Attribution::Verified(p) => (b"verified:", p.as_str()),
            Attribution::Claimed(p) => (b"claimed:", p.as_str()),
            Attribution::System => (b"system", ""),
        };
        h.update(&((kind.len() + principal.len()) as u64).to_le_bytes());
        h.update(kind);
        h.update(principal.as_bytes());
        field(&mut h, env.source.as_bytes());
        field(&mut h, env.source_name.as_deref().unwrap_or("").as_bytes());
        field(&mut h, &[u8::from(env.source_name.is_some())]);
        field(&mut h, &env.epoch.to_le_bytes());
        field(&mut h, &env.seq.to_le_bytes());
        if let Some(count) = count {
            field(&mut h, &(count as u64).to_le_bytes());
        }
        field(&mut h, &[env.hops]);
        field(&mut h, payload);
        h.finalize()
    }

    /// The [`SIGNATURE_HEADER`] value of a message.
    pub fn sign(&self, subject: &str, env: &Envelope, payload: &[u8]) -> String {
        self.tag(subject, env, payload).to_hex().to_string()
    }

    /// Whether `signature` is this key's tag of the message (compared in constant time).
    pub fn verify(&self, subject: &str, env: &Envelope, payload: &[u8], signature: &str) -> bool {
        blake3::Hash::from_hex(signature.as_bytes())
            .is_ok_and(|given| given == self.tag(subject, env, payload))
    }

    /// The [`SIGNATURE_HEADER`] value of a batch: it covers every header field, the count
    /// and the whole framed payload, under its own domain.
    pub fn sign_batch(&self, subject: &str, batch: &BatchEnvelope, framed: &[u8]) -> String {
        self.batch_tag(subject, batch, framed).to_hex().to_string()
    }

    /// Whether `signature` is this key's tag of the batch (compared in constant time).
    pub fn verify_batch(
        &self,
        subject: &str,
        batch: &BatchEnvelope,
        framed: &[u8],
        signature: &str,
    ) -> bool {
        blake3::Hash::from_hex(signature.as_bytes())
            .is_ok_and(|given| given == self.batch_tag(subject, batch, framed))
    }

    /// The [`SIGNATURE_HEADER`] value of a tail mark (`mark.seq` is the stream's last
    /// number): every header field under its own domain, so no message or batch tag passes
    /// for a mark's, nor the other way round.
    pub fn sign_tail(&self, subject: &str, mark: &Envelope) -> String {
        self.tail_tag(subject, mark).to_hex().to_string()
    }

    /// Whether `signature` is this key's tag of the tail mark (compared in constant time).
    pub fn verify_tail(&self, subject: &str, mark: &Envelope, signature: &str) -> bool {
        blake3::Hash::from_hex(signature.as_bytes())
            .is_ok_and(|given| given == self.tail_tag(subject, mark))
    }

    fn tail_tag(&self, subject: &str, mark: &Envelope) -> blake3::Hash {
        self.tag_from(self.tail_base.clone(), subject, mark, None, &[])
    }

    fn batch_tag(&self, subject: &str, batch: &BatchEnvelope, framed: &[u8]) -> blake3::Hash {
        self.tag_from(
            self.batch_base.clone(),
            subject,
            &batch.first,
            Some(batch.count),
            framed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::HostId;
    use capsule_bus::{Attribution, PrincipalId};
    use uuid::Uuid;

    fn env() -> Envelope {
        Envelope {
            host: HostId::parse("a").unwrap_or_else(|e| panic!("{e}")),
            attribution: Attribution::Verified(
                PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
            ),
            source: Uuid::from_u128(1),
            source_name: None,
            epoch: 1,
            seq: 1,
            hops: 0,
        }
    }

    #[test]
    fn keys_parse_from_hex_only() {
        let k = ClusterKey::parse_hex(&"ab".repeat(KEY_BYTES)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k, ClusterKey::from_bytes([0xab; KEY_BYTES]));
        assert_eq!(ClusterKey::parse_hex("ab"), Err(KeyError::Length(2)));
        assert_eq!(
            ClusterKey::parse_hex(&"zz".repeat(KEY_BYTES)),
            Err(KeyError::NotHex('z'))
        );
        assert!(!format!("{k:?}").contains("ab"));
    }

    #[test]
    fn any_change_to_a_signed_message_breaks_the_tag() {
        let k = ClusterKey::from_bytes([7; KEY_BYTES]);
        let e = env();
        let sig = k.sign("capsule.c.t", &e, b"{}");
        assert!(k.verify("capsule.c.t", &e, b"{}", &sig));
        assert!(!k.verify("capsule.c.u", &e, b"{}", &sig));
        assert!(!k.verify("capsule.c.t", &e, b"[]", &sig));
        assert!(!ClusterKey::from_bytes([8; KEY_BYTES]).verify("capsule.c.t", &e, b"{}", &sig));
        let mut other = e.clone();
        other.host = HostId::parse("b").unwrap_or_else(|e| panic!("{e}"));
        assert!(!k.verify("capsule.c.t", &other, b"{}", &sig));
        let mut other = e.clone();
        other.attribution = Attribution::System;
        assert!(!k.verify("capsule.c.t", &other, b"{}", &sig));
        let mut other = e;
        other.seq = 2;
        assert!(!k.verify("capsule.c.t", &other, b"{}", &sig));
        assert!(!k.verify("capsule.c.t", &env(), b"{}", "not hex"));
    }

    #[test]
    fn batch_tags_cover_the_count_and_never_pass_as_single_tags() {
        let k = ClusterKey::from_bytes([7; KEY_BYTES]);
        let b = BatchEnvelope {
            first: env(),
            count: 2,
        };
        let framed = crate::batch::encode_frames([&b"{}"[..], b"[]"]);
        let sig = k.sign_batch("capsule.c.t", &b, &framed);
        assert!(k.verify_batch("capsule.c.t", &b, &framed, &sig));
        let mut more = b.clone();
        more.count = 3;
        assert!(!k.verify_batch("capsule.c.t", &more, &framed, &sig));
        let mut altered = framed.clone();
        altered[5] = b'[';
        assert!(!k.verify_batch("capsule.c.t", &b, &altered, &sig));
        assert!(!k.verify("capsule.c.t", &b.first, &framed, &sig));
        let single = k.sign("capsule.c.t", &b.first, &framed);
        assert!(!k.verify_batch("capsule.c.t", &b, &framed, &single));
    }

    #[test]
    fn tail_tags_cover_the_last_number_and_pass_for_nothing_else() {
        let k = ClusterKey::from_bytes([7; KEY_BYTES]);
        let mark = env();
        let sig = k.sign_tail("capsule.c.t", &mark);
        assert!(k.verify_tail("capsule.c.t", &mark, &sig));
        let mut later = mark.clone();
        later.seq = 2;
        assert!(!k.verify_tail("capsule.c.t", &later, &sig));
        assert!(!k.verify_tail("capsule.c.u", &mark, &sig));
        assert!(!k.verify("capsule.c.t", &mark, b"", &sig));
        assert!(!k.verify_tail("capsule.c.t", &mark, &k.sign("capsule.c.t", &mark, b"")));
    }
}
