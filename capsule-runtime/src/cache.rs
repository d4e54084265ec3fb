//! The compiled-component cache. An entry is keyed by a hash of the wasm bytes, the wasmtime
//! version and the engine's compatibility hash, and carries a BLAKE3 digest of its own
//! contents: an entry that does not verify is recompiled and replaced, never handed to the
//! deserializer.
//!
//! Components this runtime has already deserialized or compiled stay resident (a bounded
//! number of them), keyed like the files: a load whose entry file is unchanged since (same
//! inode, length and modification time) reuses the resident component without reading,
//! verifying or copying the file again. A changed or missing file is read as before.
//!
//! Trust model: the cache directory belongs to the host user (created 0700). The checksum
//! catches corruption (torn writes, bit rot, truncation); it is not a defence against an
//! attacker who can already write the host's state directory.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"CAPSULE2";
const HEADER: usize = MAGIC.len() + 32;

/// How a component was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A verified cache entry was deserialized; nothing was compiled.
    Hit,
    /// No entry existed; the component was compiled and stored.
    Miss,
    /// An entry existed but failed verification or deserialization; it was recompiled and
    /// replaced. The string says why it was rejected.
    Rejected(String),
}

/// Feeds a `Hash` value into BLAKE3 (wasmtime exposes its compatibility hash only as `Hash`).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        // Only `write` is used; the digest is read out by `finalize`.
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Most components kept resident; past it the resident set starts over (a load then reads
/// its file once more).
pub(crate) const MAX_RESIDENT: usize = 64;

/// What identifies one version of an entry file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// On-disk cache of compiled components, with the ones already loaded kept resident.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: [u8; 32],
    resident: Arc<Mutex<HashMap<PathBuf, (Stamp, Component)>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut h = Blake3Hasher(blake3::Hasher::new());
        // The compatibility hash covers the wasmtime version and every setting that
        // affects compiled code.
        engine.precompile_compatibility_hash().hash(&mut h);
        Self {
            dir,
            engine_key: *h.0.finalize().as_bytes(),
            resident: Arc::default(),
        }
    }

    fn path_for(&self, wasm: &[u8]) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(&self.engine_key);
        h.update(wasm);
        self.dir
            .join(format!("{}.cwasm", hex(h.finalize().as_bytes())))
    }

    /// Returns the compiled component for `wasm`, from the cache when a verified entry exists.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.path_for(wasm);
        let stamp = Stamp::of(&path);
        if let Some(stamp) = stamp
            && let Some((seen, component)) = self.resident.lock().get(&path)
            && *seen == stamp
        {
            return Ok((component.clone(), CacheOutcome::Hit));
        }
        let rejected = match std::fs::read(&path) {
            Ok(bytes) => match Self::verify(&bytes) {
                Ok(body) => {
                    // SAFETY: `body` is exactly what `Component::serialize` produced for this
                    // engine configuration (the key covers wasm bytes, wasmtime version and
                    // engine settings) and its BLAKE3 digest matches the one written beside it,
                    // so it is unmodified serializer output as `deserialize` requires.
                    match unsafe { Component::deserialize(engine, body) } {
                        Ok(c) => {
                            // The stamp taken before the read: if the file changed in
                            // between, the next load sees a different one and reads again.
                            self.keep(path, stamp, &c);
                            return Ok((c, CacheOutcome::Hit));
                        }
                        Err(e) => Some(format!("deserialize failed: {e}")),
                    }
                }
                Err(reason) => Some(reason),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("unreadable: {e}")),
        };
        let component = Component::new(engine, wasm)?;
        match self.store(&path, &component) {
            Ok(()) => self.keep(path.clone(), Stamp::of(&path), &component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not write the compile cache");
            }
        }
        let outcome = match rejected {
            Some(reason) => {
                tracing::warn!(path = %path.display(), %reason, "rejected a compile cache entry");
                CacheOutcome::Rejected(reason)
            }
            None => CacheOutcome::Miss,
        };
        Ok((component, outcome))
    }

    /// Keeps `component` resident as the one in the entry file `path` of `stamp`.
    fn keep(&self, path: PathBuf, stamp: Option<Stamp>, component: &Component) {
        let Some(stamp) = stamp else { return };
        let mut resident = self.resident.lock();
        if resident.len() >= MAX_RESIDENT && !resident.contains_key(&path) {
            resident.clear();
        }
        resident.insert(path, (stamp, component.clone()));
    }

    fn verify(bytes: &[u8]) -> Result<&[u8], String> {
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a cache entry (bad header)".into());
        }
        let (sum, body) = bytes[MAGIC.len()..].split_at(32);
        if blake3::hash(body).as_bytes() != sum {
            return Err("checksum mismatch".into());
        }
        Ok(body)
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let body = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        capsule_security::private::write_atomic_parts(
            path,
            &[MAGIC, blake3::hash(&body).as_bytes(), &body],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_rejects_every_kind_of_damage() {
        let body = b"compiled bytes".to_vec();
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(blake3::hash(&body).as_bytes());
        entry.extend_from_slice(&body);
        assert_eq!(ArtifactCache::verify(&entry).ok(), Some(&body[..]));

        let mut flipped = entry.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(ArtifactCache::verify(&flipped).is_err());
        assert!(ArtifactCache::verify(&entry[..entry.len() - 1]).is_err());
        assert!(ArtifactCache::verify(&entry[..10]).is_err());
        let mut bad_magic = entry.clone();
        bad_magic[0] = b'X';
        assert!(ArtifactCache::verify(&bad_magic).is_err());
    }
}
