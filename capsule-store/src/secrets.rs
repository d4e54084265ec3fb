//! The secret store: one file per secret, encrypted at rest with XChaCha20-Poly1305 under a host
//! key kept apart from the secrets (a key file, 0600, created on first use). Each ciphertext is
//! bound to its scope, capsule and key name, so moving a file to another name or principal makes
//! it fail to decrypt rather than leak. Files are written atomically and are 0600; values never
//! appear in logs or errors.

use std::path::{Path, PathBuf};

use capsule_ids::{CapsuleName, PrincipalId};
use capsule_security::private;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

const MAGIC: &[u8; 8] = b"CAPSEC01";
const NONCE: usize = 24;
/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Whose secret it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SecretScope {
    /// A principal's own secret.
    Principal(PrincipalId),
    /// A host-wide secret, used when the principal has none of its own.
    Host,
}

impl SecretScope {
    fn dir(&self) -> String {
        match self {
            Self::Principal(p) => format!("principal-{p}"),
            Self::Host => "host".into(),
        }
    }
}

/// Why a secret operation failed. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key name or capsule name is not acceptable.
    #[error("invalid secret name: {0}")]
    InvalidName(String),
    /// The value is larger than [`MAX_SECRET_BYTES`].
    #[error("secret of {0} bytes exceeds the limit of {MAX_SECRET_BYTES}")]
    TooLarge(usize),
    /// A stored secret failed authentication (tampered, moved, or another host key).
    #[error("secret `{0}` cannot be decrypted with this host key")]
    Undecryptable(String),
    /// The host key is unusable.
    #[error("host key {}: {reason}", path.display())]
    HostKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the store failed.
    #[error("secret store I/O on {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encrypted secrets under `<state>/secrets`.
pub struct SecretStore {
    root: PathBuf,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Longest key stored under its own (hex) name; longer keys are stored under a digest so the
/// file name always fits the filesystem's limit. Either way the ciphertext is bound to the
/// full key by its AAD.
const MAX_NAMED_KEY: usize = 100;

/// The file a secret key is stored in.
fn file_name(key: &str) -> String {
    if key.len() <= MAX_NAMED_KEY {
        format!("{}.secret", hex(key.as_bytes()))
    } else {
        format!("b3-{}.secret", blake3::hash(key.as_bytes()).to_hex())
    }
}

/// Loads the 32-byte host key at `path`, creating it (0600, from the OS RNG) if missing.
fn load_or_create_key(path: &Path) -> Result<[u8; 32], SecretError> {
    let bad = |reason: String| SecretError::HostKey {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(io_err(path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(bad(format!(
                        "is readable by others (mode {:o}); chmod 600 it",
                        mode & 0o777
                    )));
                }
            }
            bytes
                .try_into()
                .map_err(|b: Vec<u8>| bad(format!("holds {} bytes; a host key is 32", b.len())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                private::create_private_dir(dir).map_err(io_err(dir))?;
            }
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| bad(format!("OS random source failed: {e}")))?;
            private::create_new(path, &key).map_err(io_err(path))?;
            Ok(key)
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

fn check_name(what: &str, s: &str) -> Result<(), SecretError> {
    if s.is_empty() || s.len() > 256 || s.contains('\0') {
        return Err(SecretError::InvalidName(format!(
            "{what} must be 1 to 256 bytes without NUL"
        )));
    }
    Ok(())
}

impl SecretStore {
    /// Opens the store under `state_dir`, with the host key at `key_file` (created on first use).
    pub fn open(state_dir: &Path, key_file: &Path) -> Result<Self, SecretError> {
        let key = load_or_create_key(key_file)?;
        Ok(Self {
            root: state_dir.join("secrets"),
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    fn path(&self, scope: &SecretScope, capsule: &str, key: &str) -> Result<PathBuf, SecretError> {
        CapsuleName::parse(capsule)
            .map_err(|e| SecretError::InvalidName(format!("capsule name {capsule:?}: {e}")))?;
        check_name("a secret key", key)?;
        Ok(self
            .root
            .join(scope.dir())
            .join(capsule)
            .join(file_name(key)))
    }

    fn aad(scope: &SecretScope, capsule: &str, key: &str) -> Vec<u8> {
        format!("capsule-secret-v1\0{}\0{capsule}\0{key}", scope.dir()).into_bytes()
    }

    /// Stores (or replaces) a secret.
    pub fn set(
        &self,
        scope: &SecretScope,
        capsule: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), SecretError> {
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge(value.len()));
        }
        let path = self.path(scope, capsule, key)?;
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::HostKey {
            path: path.clone(),
            reason: format!("OS random source failed: {e}"),
        })?;
        let aad = Self::aad(scope, capsule, key);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Undecryptable(key.to_string()))?;
        private::write_atomic_parts(&path, &[MAGIC, &nonce, &sealed]).map_err(io_err(&path))
    }

    /// The secret, if stored.
    pub fn get(
        &self,
        scope: &SecretScope,
        capsule: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, SecretError> {
        let path = self.path(scope, capsule, key)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        if bytes.len() < MAGIC.len() + NONCE || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SecretError::Undecryptable(key.to_string()));
        }
        let (nonce, sealed) = bytes[MAGIC.len()..].split_at(NONCE);
        let aad = Self::aad(scope, capsule, key);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map(Some)
            .map_err(|_| SecretError::Undecryptable(key.to_string()))
    }

    /// Whether a secret is stored (without decrypting it).
    pub fn has(&self, scope: &SecretScope, capsule: &str, key: &str) -> Result<bool, SecretError> {
        let path = self.path(scope, capsule, key)?;
        Ok(path.is_file())
    }

    /// Removes a secret; whether it existed.
    pub fn delete(
        &self,
        scope: &SecretScope,
        capsule: &str,
        key: &str,
    ) -> Result<bool, SecretError> {
        let path = self.path(scope, capsule, key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Resolves a secret for `principal`: its own first, then the host-wide one. Returns the
    /// value and the scope it came from.
    pub fn resolve(
        &self,
        principal: &PrincipalId,
        capsule: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, SecretScope)>, SecretError> {
        for scope in [SecretScope::Principal(principal.clone()), SecretScope::Host] {
            if let Some(v) = self.get(&scope, capsule, key)? {
                return Ok(Some((v, scope)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn open(dir: &Path) -> SecretStore {
        SecretStore::open(dir, &dir.join("keys").join("host.key")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn round_trip_is_encrypted_at_rest_and_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = open(dir.path());
        let alice = SecretScope::Principal(pid("alice"));
        s.set(&alice, "cap", "API_KEY", b"sk-plaintext-123")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.get(&alice, "cap", "API_KEY").ok().flatten(),
            Some(b"sk-plaintext-123".to_vec())
        );
        for entry in walk(dir.path()) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(
                !bytes.windows(16).any(|w| w == b"sk-plaintext-123"),
                "plaintext in {}",
                entry.display()
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&entry)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0);
                assert_eq!(mode & 0o077, 0, "{} is not private", entry.display());
            }
        }
        // The same host key decrypts after reopening.
        let again = open(dir.path());
        assert!(again.has(&alice, "cap", "API_KEY").unwrap_or(false));
        assert_eq!(
            again.get(&alice, "cap", "API_KEY").ok().flatten(),
            Some(b"sk-plaintext-123".to_vec())
        );
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn principal_first_then_host() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = open(dir.path());
        s.set(&SecretScope::Host, "cap", "K", b"host")
            .unwrap_or_else(|e| panic!("{e}"));
        s.set(&SecretScope::Principal(pid("bob")), "cap", "K", b"bob")
            .unwrap_or_else(|e| panic!("{e}"));
        let get = |p: &str| {
            s.resolve(&pid(p), "cap", "K")
                .ok()
                .flatten()
                .map(|(v, _)| v)
        };
        assert_eq!(get("bob"), Some(b"bob".to_vec()));
        assert_eq!(get("carol"), Some(b"host".to_vec()));
        assert!(
            s.resolve(&pid("carol"), "other", "K")
                .ok()
                .flatten()
                .is_none()
        );
    }

    #[test]
    fn moved_or_tampered_ciphertext_does_not_decrypt() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = open(dir.path());
        let (a, b) = (
            SecretScope::Principal(pid("alice")),
            SecretScope::Principal(pid("bob")),
        );
        s.set(&a, "cap", "K", b"alice-only")
            .unwrap_or_else(|e| panic!("{e}"));
        let from = s.path(&a, "cap", "K").unwrap_or_else(|e| panic!("{e}"));
        let to = s.path(&b, "cap", "K").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(to.parent().unwrap_or(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            s.get(&b, "cap", "K"),
            Err(SecretError::Undecryptable(_))
        ));
        let mut bytes = std::fs::read(&from).unwrap_or_default();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&from, bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            s.get(&a, "cap", "K"),
            Err(SecretError::Undecryptable(_))
        ));
    }

    #[test]
    fn keys_of_any_accepted_length_round_trip() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = open(dir.path());
        let alice = SecretScope::Principal(pid("alice"));
        for len in [1, MAX_NAMED_KEY, MAX_NAMED_KEY + 1, 200, 256] {
            let key = "k".repeat(len);
            s.set(&alice, "cap", &key, key.as_bytes())
                .unwrap_or_else(|e| panic!("{len}: {e}"));
            assert_eq!(
                s.get(&alice, "cap", &key).ok().flatten(),
                Some(key.into_bytes())
            );
        }
        // Two long keys never share a file.
        let (a, b) = ("a".repeat(200), format!("{}b", "a".repeat(199)));
        s.set(&alice, "cap", &a, b"A")
            .unwrap_or_else(|e| panic!("{e}"));
        s.set(&alice, "cap", &b, b"B")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.get(&alice, "cap", &a).ok().flatten(), Some(b"A".to_vec()));
    }

    #[test]
    fn capsule_names_follow_the_one_capsule_name_grammar() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = open(dir.path());
        for bad in ["", "Cap", "../cap", "a/b", "a.b", &"c".repeat(65)] {
            assert!(
                matches!(
                    s.set(&SecretScope::Host, bad, "K", b"v"),
                    Err(SecretError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        let longest = "c".repeat(64);
        s.set(&SecretScope::Host, &longest, "K", b"v")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            s.has(&SecretScope::Host, &longest, "K")
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_host_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = dir.path().join("host.key");
        std::fs::write(&key, [7u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            SecretStore::open(dir.path(), &key),
            Err(SecretError::HostKey { .. })
        ));
    }
}
