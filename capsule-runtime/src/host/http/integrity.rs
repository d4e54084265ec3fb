//! Subresource Integrity for HTTP bodies: a body passes only if it matches one of the
//! digests of the strongest algorithm its metadata names; metadata naming none is refused.

use super::HttpError;

/// Checks `body` against Subresource Integrity metadata (`sha256-…`, `sha384-…`,
/// `sha512-…`, space separated): it must match one of the strongest algorithm named.
pub(crate) fn integrity_ok(metadata: &str, body: &[u8]) -> Result<bool, HttpError> {
    use sha2::Digest;
    let mut best: Option<(u8, Vec<Vec<u8>>)> = None;
    for token in metadata.split_ascii_whitespace() {
        let token = token.split('?').next().unwrap_or(token);
        let (algo, b64) = token
            .split_once('-')
            .ok_or_else(|| HttpError::Invalid("integrity metadata is `algo-base64`".into()))?;
        let rank = match algo {
            "sha256" => 1,
            "sha384" => 2,
            "sha512" => 3,
            _ => continue,
        };
        let digest = base64_decode(b64)
            .ok_or_else(|| HttpError::Invalid("integrity digest is not base64".into()))?;
        match &mut best {
            Some((r, list)) if *r == rank => list.push(digest),
            Some((r, _)) if *r > rank => {}
            _ => best = Some((rank, vec![digest])),
        }
    }
    let Some((rank, digests)) = best else {
        return Err(HttpError::Invalid(
            "integrity metadata names no sha256, sha384 or sha512 digest".into(),
        ));
    };
    let actual = match rank {
        1 => sha2::Sha256::digest(body).to_vec(),
        2 => sha2::Sha384::digest(body).to_vec(),
        _ => sha2::Sha512::digest(body).to_vec(),
    };
    Ok(digests.contains(&actual))
}

/// Standard or URL-safe base64, padding optional.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}
