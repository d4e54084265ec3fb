//! Principal profiles: `<state>/profiles/<principal>.toml` holds a principal's switches, grants
//! and quotas. A missing file means the defaults; a malformed one is an error (callers deny),
//! never a silent default. Grants come only from here, never from a capsule's manifest.

use std::path::{Path, PathBuf};

use capsule_ids::PrincipalId;
use toml::{Table, Value};

/// The grant that lets a capsule owner's audit subscriptions see every principal's entries.
pub const AUDIT_FIREHOSE_GRANT: &str = "audit:read_all";

/// Resource ceilings of a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Linear memory a single Store may grow to on this principal's behalf.
    pub max_memory_bytes: u64,
    /// Wall-clock deadline of one guest call on this principal's behalf.
    pub max_timeout_secs: u64,
    /// IPC publish budget, bytes per second (also the burst).
    pub max_ipc_throughput_bytes: u64,
    /// Fuel (roughly, wasm instructions) a handler call may burn per second of its deadline;
    /// `None` lifts the limit.
    pub max_cpu_fuel_per_sec: Option<u64>,
    /// Background processes running at once.
    pub max_background_processes: u32,
    /// HTTP requests and streams in flight at once, per capsule.
    pub max_http_streams: u32,
    /// Largest HTTP response body a buffered request returns, and most bytes a streamed
    /// response delivers (beyond it: `body-too-large`).
    pub max_http_response_bytes: u64,
    /// Bytes of KV storage.
    pub max_storage_bytes: u64,
    /// Connected `astrid:net` sockets (connected or accepted) open at once, per capsule.
    pub max_sockets: u32,
    /// `astrid:net` listeners (TCP and Unix) open at once, per capsule.
    pub max_listeners: u32,
    /// Distinct principals an uplink capsule owned by this principal may introduce with
    /// `publish-as` per minute.
    pub max_claimed_principals_per_minute: u32,
    /// CPU seconds one spawned host process may use (`RLIMIT_CPU`: `SIGXCPU` at the limit,
    /// `SIGKILL` a second later).
    pub max_process_cpu_secs: u64,
    /// Address space one spawned host process may map, in bytes (`RLIMIT_AS`).
    pub max_process_memory_bytes: u64,
    /// Files one spawned host process may have open at once (`RLIMIT_NOFILE`).
    pub max_process_open_files: u32,
    /// Processes one spawned host process and its descendants may be at once (a pids
    /// cgroup where the host can create one, and `RLIMIT_NPROC`, which the kernel counts
    /// per user, not per tree).
    pub max_process_pids: u32,
    /// Wall-clock lifetime of one spawned host process, in seconds.
    pub max_process_wall_secs: u64,
    /// Output the host keeps of one stream of a spawned host process, in bytes.
    pub max_process_output_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 * 1024 * 1024,
            max_timeout_secs: 300,
            max_ipc_throughput_bytes: 10 * 1024 * 1024,
            max_cpu_fuel_per_sec: Some(2_000_000_000),
            max_background_processes: 8,
            max_http_streams: 16,
            max_http_response_bytes: 16 * 1024 * 1024,
            max_storage_bytes: 256 * 1024 * 1024,
            max_sockets: 64,
            max_listeners: 4,
            max_claimed_principals_per_minute: 600,
            max_process_cpu_secs: 60,
            max_process_memory_bytes: 1024 * 1024 * 1024,
            max_process_open_files: 256,
            max_process_pids: 32,
            max_process_wall_secs: 600,
            max_process_output_bytes: 1024 * 1024,
        }
    }
}

/// A principal's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalProfile {
    /// A disabled principal may not act at all.
    pub enabled: bool,
    /// Group memberships (informational).
    pub groups: Vec<String>,
    /// Grants such as [`AUDIT_FIREHOSE_GRANT`].
    pub grants: Vec<String>,
    /// Grants withdrawn; a revoke wins over a grant.
    pub revokes: Vec<String>,
    /// Resource ceilings.
    pub quotas: Quotas,
}

impl Default for PrincipalProfile {
    fn default() -> Self {
        Self {
            enabled: true,
            groups: Vec::new(),
            grants: Vec::new(),
            revokes: Vec::new(),
            quotas: Quotas::default(),
        }
    }
}

/// Why a profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file exists but could not be read.
    #[error("{}: cannot read profile: {source}", file.display())]
    Io {
        /// The profile path.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid profile.
    #[error("{}: malformed profile: {reason}", file.display())]
    Malformed {
        /// The profile path.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl PrincipalProfile {
    /// Where the profile of `principal` lives under `state_dir`.
    pub fn path(state_dir: &Path, principal: &PrincipalId) -> PathBuf {
        state_dir
            .join("profiles")
            .join(format!("{}.toml", principal.as_str()))
    }

    /// Loads the profile of `principal`; a missing file yields the defaults.
    pub fn load(state_dir: &Path, principal: &PrincipalId) -> Result<Self, ProfileError> {
        let file = Self::path(state_dir, principal);
        match std::fs::read_to_string(&file) {
            Ok(text) => Self::parse(&text, &file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ProfileError::Io { file, source }),
        }
    }

    /// Parses profile text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ProfileError> {
        let bad = |reason: String| ProfileError::Malformed {
            file: file.to_path_buf(),
            reason,
        };
        let t: Table = text
            .parse::<Table>()
            .map_err(|e| bad(e.message().trim().to_string()))?;
        let mut p = Self::default();
        for (key, v) in &t {
            match key.as_str() {
                "enabled" => {
                    p.enabled = v
                        .as_bool()
                        .ok_or_else(|| bad("`enabled` must be a boolean".into()))?;
                }
                "groups" | "grants" | "revokes" => {
                    let list = strings(v)
                        .ok_or_else(|| bad(format!("`{key}` must be an array of strings")))?;
                    match key.as_str() {
                        "groups" => p.groups = list,
                        "grants" => p.grants = list,
                        _ => p.revokes = list,
                    }
                }
                "quotas" => {
                    let q = v
                        .as_table()
                        .ok_or_else(|| bad("`quotas` must be a table".into()))?;
                    p.quotas = parse_quotas(q).map_err(bad)?;
                }
                other => return Err(bad(format!("unknown key `{other}`"))),
            }
        }
        Ok(p)
    }

    /// Whether `grant` is held: granted and not revoked.
    pub fn has_grant(&self, grant: &str) -> bool {
        self.grants.iter().any(|g| g == grant) && !self.revokes.iter().any(|r| r == grant)
    }

    /// Whether this principal may read every principal's audit entries.
    pub fn audit_firehose(&self) -> bool {
        self.has_grant(AUDIT_FIREHOSE_GRANT)
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn parse_quotas(t: &Table) -> Result<Quotas, String> {
    let mut q = Quotas::default();
    for (key, v) in t {
        let n = v
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| format!("quotas.{key} must be a non-negative integer"))?;
        let small = || u32::try_from(n).map_err(|_| format!("quotas.{key} is too large"));
        let positive = |n: u64| {
            if n == 0 {
                Err(format!("quotas.{key} must be at least 1"))
            } else {
                Ok(n)
            }
        };
        match key.as_str() {
            "max_memory_bytes" => q.max_memory_bytes = positive(n)?,
            "max_timeout_secs" => q.max_timeout_secs = positive(n)?,
            "max_ipc_throughput_bytes" => q.max_ipc_throughput_bytes = positive(n)?,
            "max_cpu_fuel_per_sec" => q.max_cpu_fuel_per_sec = Some(positive(n)?),
            "max_background_processes" => q.max_background_processes = small()?,
            "max_http_streams" => q.max_http_streams = small()?,
            "max_http_response_bytes" => q.max_http_response_bytes = positive(n)?,
            "max_storage_bytes" => q.max_storage_bytes = n,
            "max_sockets" => q.max_sockets = small()?,
            "max_listeners" => q.max_listeners = small()?,
            "max_claimed_principals_per_minute" => {
                q.max_claimed_principals_per_minute = small()?;
            }
            "max_process_cpu_secs" => q.max_process_cpu_secs = positive(n)?,
            "max_process_memory_bytes" => q.max_process_memory_bytes = positive(n)?,
            "max_process_open_files" => {
                q.max_process_open_files = positive(n).and_then(|_| small())?;
            }
            "max_process_pids" => q.max_process_pids = positive(n).and_then(|_| small())?,
            "max_process_wall_secs" => q.max_process_wall_secs = positive(n)?,
            "max_process_output_bytes" => q.max_process_output_bytes = positive(n)?,
            other => return Err(format!("unknown quota `{other}`")),
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn missing_profile_means_defaults() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = PrincipalProfile::load(dir.path(), &pid("alice")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, PrincipalProfile::default());
        assert_eq!(p.quotas.max_memory_bytes, 64 * 1024 * 1024);
        assert!(!p.audit_firehose());
    }

    #[test]
    fn profile_fields_parse() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = PrincipalProfile::path(dir.path(), &pid("ops"));
        std::fs::create_dir_all(file.parent().unwrap_or(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            &file,
            "enabled = true\ngroups = [\"admins\"]\ngrants = [\"audit:read_all\", \"x\"]\nrevokes = [\"x\"]\n[quotas]\nmax_memory_bytes = 1048576\nmax_cpu_fuel_per_sec = 1000\nmax_claimed_principals_per_minute = 3\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = PrincipalProfile::load(dir.path(), &pid("ops")).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.audit_firehose());
        assert!(!p.has_grant("x"), "revoke wins");
        assert_eq!(p.quotas.max_memory_bytes, 1 << 20);
        assert_eq!(p.quotas.max_cpu_fuel_per_sec, Some(1000));
        assert_eq!(p.quotas.max_timeout_secs, 300);
        assert_eq!(p.quotas.max_claimed_principals_per_minute, 3);
    }

    #[test]
    fn malformed_profiles_are_errors_not_defaults() {
        for text in [
            "enabled = \"yes\"",
            "grants = \"audit:read_all\"",
            "[quotas]\nmax_memory_bytes = -1",
            "[quotas]\nmax_memory_bytes = 0",
            "[quotas]\nmax_gpus = 1",
            "colour = 1",
            "not toml at all [",
        ] {
            let r = PrincipalProfile::parse(text, Path::new("p.toml"));
            assert!(
                matches!(r, Err(ProfileError::Malformed { .. })),
                "{text:?} gave {r:?}"
            );
        }
    }
}
