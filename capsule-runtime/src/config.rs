//! Runtime settings: every limit the host enforces has a named, documented default here, and a
//! configuration that cannot work is rejected before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use capsule_bus::{BusConfig, PrincipalId};

/// How the engine's epoch (the clock that interrupts running guests) advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochMode {
    /// One background thread per engine advances the epoch every window.
    Ticker,
    /// Only [`Runtime::advance_epoch`](crate::Runtime::advance_epoch) advances it (for
    /// deterministic tests and embedders with their own clock).
    Manual,
}

/// Pooling allocator sizing. The pool reserves address space up front, so it is sized
/// explicitly rather than left at wasmtime's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolingConfig {
    /// Component instances (Stores with a live instance) at once.
    pub max_instances: u32,
    /// Core module instances at once, across all components.
    pub max_core_instances: u32,
    /// Linear memories at once, across all components.
    pub max_memories: u32,
    /// Largest linear memory in bytes (quotas above this cannot be granted).
    pub max_memory_bytes: u64,
    /// Reserve only `max_memory_bytes` (plus the guard) of address space per memory slot
    /// instead of 4 GiB: guest memory accesses then carry explicit bounds checks, and tens
    /// of thousands of memories fit in the address space.
    pub compact_memories: bool,
}

/// Memory slots up to which each may reserve the full 4 GiB (8 TiB of address space in all).
const FULL_RESERVATION_SLOTS: u32 = 2048;

/// Most address space a pool may reserve: half of the 128 TiB a 64-bit Linux process has, so
/// a pool sized from hostile numbers is refused by validation instead of reserving (or failing
/// to reserve) the whole address space.
pub const MAX_POOL_RESERVATION: u64 = 64 << 40;

/// What the engine reserves per memory slot beyond its reservation (wasmtime's default guard).
const MEMORY_GUARD_BYTES: u64 = 32 << 20;
/// A full (non-compact) memory slot's reservation.
const FULL_MEMORY_RESERVATION: u64 = 1 << 32;
/// One async stack per component instance (wasmtime's default size) plus its guard page.
const STACK_BYTES: u64 = (2 << 20) + 4096;
/// One table slot: the pool's default table elements, a pointer each.
const TABLE_BYTES: u64 = 20_000 * 8;

impl Default for PoolingConfig {
    fn default() -> Self {
        Self {
            max_instances: 128,
            max_core_instances: 1024,
            max_memories: 256,
            max_memory_bytes: 1 << 30,
            compact_memories: false,
        }
    }
}

impl PoolingConfig {
    /// The address space, in bytes, this pool reserves up front (memory slots with their
    /// guards, async stacks and tables), saturating at `u64::MAX`.
    pub fn reserved_bytes(&self) -> u64 {
        let slot = if self.compact_memories {
            self.max_memory_bytes
        } else {
            FULL_MEMORY_RESERVATION
        }
        .saturating_add(MEMORY_GUARD_BYTES);
        let memories =
            u64::from(self.max_memories).saturating_mul(slot.saturating_add(TABLE_BYTES));
        let stacks = u64::from(self.max_instances).saturating_mul(STACK_BYTES);
        memories.saturating_add(stacks)
    }

    /// A pool in which `capsules` capsules can each hold a live instance at once (an idle run
    /// loop holds one; a handler-only capsule holds none until called), with an eighth more
    /// (at least 64) for concurrent handler calls: eight core instances and two memories per
    /// component instance, as the default pool has. Past 2 048 memory slots the slots are
    /// compact (see [`compact_memories`](Self::compact_memories)).
    pub fn for_capsules(capsules: u32) -> Self {
        let instances = capsules.saturating_add((capsules / 8).max(64));
        let memories = instances.saturating_mul(2);
        Self {
            max_instances: instances,
            max_core_instances: instances.saturating_mul(8),
            max_memories: memories,
            compact_memories: memories > FULL_RESERVATION_SLOTS,
            ..Self::default()
        }
    }
}

/// Settings of a [`Runtime`](crate::Runtime): start from [`RuntimeConfig::new`] and change
/// the fields that differ.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Where the host keeps its state: per-principal homes and logs, profiles, installed
    /// versions, the compile cache.
    pub state_dir: PathBuf,
    /// Where compiled components are cached; defaults to `<state_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// The principal capsules are loaded for unless told otherwise.
    pub owner: PrincipalId,
    /// Pooling allocator sizing; `None` allocates instances on demand.
    pub pooling: Option<PoolingConfig>,
    /// How the epoch advances.
    pub epoch_mode: EpochMode,
    /// Length of one epoch window.
    pub epoch_window: Duration,
    /// Consecutive busy windows (more than
    /// [`RUN_LOOP_BUSY_SHARE_PERCENT`](crate::RUN_LOOP_BUSY_SHARE_PERCENT) of the window spent
    /// running rather than waiting for events) a run loop may have before it is trapped.
    pub max_busy_windows: u32,
    /// Blocking host calls in flight at once (about cores − 2).
    pub blocking_concurrency: usize,
    /// Async I/O host calls in flight at once.
    pub io_concurrency: usize,
    /// Bus limits.
    pub bus: BusConfig,
    /// The workspace capsules see as `cwd://`: one directory shared by all capsules, or, when
    /// `None`, `<state_dir>/workspaces/<capsule>` for each.
    pub workspace_root: Option<PathBuf>,
    /// Most instances serving a capsule's handler calls at once (grown lazily).
    pub handler_pool_size: usize,
    /// Most calls queued per (capsule, principal); beyond it calls are dropped and counted.
    pub handler_queue_per_principal: usize,
    /// Whether guests are fuel-metered: handler calls then get a budget of the principal's
    /// `max_cpu_fuel_per_sec` times its `max_timeout_secs`.
    pub fuel: bool,
    /// Capacity of the inbound channel uplink capsules feed.
    pub inbound_capacity: usize,
    /// How long an operator has to answer one `elicit` question or one approval of a
    /// capsule's capability requests (no answer in time is a refusal).
    pub elicit_timeout: Duration,
    /// How long [`Runtime::load_all`](crate::Runtime::load_all) waits for a run-loop capsule's
    /// `signal-ready` before starting the capsules that import from it anyway (logged).
    pub ready_timeout: Duration,
    /// Whether workspace writes go to an overlay until committed.
    pub overlay_workspace: bool,
    /// The host key that encrypts secrets; defaults to `$CAPSULE_HOST_KEY_FILE`, else
    /// `<state_dir>/keys/host.key` (created 0600 on first use).
    pub host_key_file: Option<PathBuf>,
    /// Who turns host names into addresses for outbound connections (`astrid:http`); `None`
    /// is the system resolver. Every answer passes the host policy's airlock either way.
    pub resolver: Option<std::sync::Arc<dyn capsule_security::Resolver>>,
    /// How much of the host-wide identity directory one capsule's `astrid:identity` calls may
    /// fill (users created, current links made).
    pub identity_limits: capsule_store::identity::IdentityLimits,
    /// User ids (each also used as the group id) for the children of `astrid:process`: on a
    /// root host each principal's children run as an id of their own from this range,
    /// assigned on first use and recorded in `<state>/process-uids.json` (0, the host's own
    /// ids and `u32::MAX` are never given out). `None` (the default), or a host that is not
    /// root, runs every child as the host's user. Choose ids no account on the machine uses.
    pub process_uids: Option<std::ops::RangeInclusive<u32>>,
}

impl RuntimeConfig {
    /// Defaults rooted at `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            state_dir: state_dir.into(),
            cache_dir: None,
            owner: default_owner(),
            pooling: Some(PoolingConfig::default()),
            epoch_mode: EpochMode::Ticker,
            epoch_window: Duration::from_millis(50),
            max_busy_windows: 100,
            blocking_concurrency: cores.saturating_sub(2).max(1),
            io_concurrency: 256,
            bus: BusConfig::default(),
            workspace_root: None,
            handler_pool_size: 4,
            handler_queue_per_principal: 1024,
            fuel: true,
            inbound_capacity: 1024,
            elicit_timeout: Duration::from_secs(300),
            ready_timeout: Duration::from_secs(30),
            overlay_workspace: false,
            host_key_file: None,
            resolver: None,
            identity_limits: capsule_store::identity::IdentityLimits::default(),
            process_uids: None,
        }
    }

    /// The host key file in force.
    pub fn host_key_file(&self) -> PathBuf {
        self.host_key_file
            .clone()
            .or_else(|| std::env::var_os("CAPSULE_HOST_KEY_FILE").map(PathBuf::from))
            .unwrap_or_else(|| self.state_dir.join("keys").join("host.key"))
    }

    /// The compile cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("cache"))
    }

    /// The host policy in force: `<state>/policy.toml` plus the directories this
    /// configuration keeps host-private data in (state, host key, compile cache), which can
    /// never be granted to a capsule.
    pub fn host_policy(&self) -> Result<capsule_security::HostPolicy, ConfigError> {
        let key = self.host_key_file();
        let key_dir = key.parent().unwrap_or(std::path::Path::new("/"));
        Ok(capsule_security::HostPolicy::load(&self.state_dir)
            .map_err(|e| ConfigError::Policy(e.to_string()))?
            .protect(key_dir, "the host key that encrypts every secret")
            .protect(
                &self.cache_dir(),
                "compiled code the host executes (the compile cache)",
            ))
    }

    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.epoch_window.is_zero() {
            return Err(ConfigError::Invalid("epoch_window must be positive".into()));
        }
        if self.max_busy_windows == 0 {
            return Err(ConfigError::Invalid(
                "max_busy_windows must be at least 1".into(),
            ));
        }
        if let Some(r) = &self.process_uids
            && r.is_empty()
        {
            return Err(ConfigError::Invalid(format!(
                "process_uids {}-{} is empty",
                r.start(),
                r.end()
            )));
        }
        if self.inbound_capacity == 0 {
            return Err(ConfigError::Invalid(
                "inbound_capacity must be at least 1".into(),
            ));
        }
        if self.handler_pool_size == 0 || self.handler_queue_per_principal == 0 {
            return Err(ConfigError::Invalid(
                "handler pool and queue sizes must be at least 1".into(),
            ));
        }
        if self.blocking_concurrency == 0 || self.io_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "concurrency limits must be at least 1".into(),
            ));
        }
        if let Some(p) = &self.pooling {
            if p.max_instances == 0 || p.max_core_instances == 0 || p.max_memories == 0 {
                return Err(ConfigError::Invalid(
                    "pooling counts must be at least 1".into(),
                ));
            }
            if p.max_memory_bytes < 64 * 1024 || p.max_memory_bytes > 1 << 32 {
                return Err(ConfigError::Invalid(
                    "pooling max_memory_bytes must be between 64 KiB and 4 GiB".into(),
                ));
            }
            let reserved = p.reserved_bytes();
            if reserved > MAX_POOL_RESERVATION {
                return Err(ConfigError::Invalid(format!(
                    "the pool would reserve {} GiB of address space (at most {} GiB): use fewer \
                     instances or memories, compact_memories, or a smaller max_memory_bytes",
                    reserved >> 30,
                    MAX_POOL_RESERVATION >> 30
                )));
            }
        }
        self.bus
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

/// The single-tenant owner principal, `default`.
pub fn default_owner() -> PrincipalId {
    // The literal satisfies the principal grammar; parsing cannot fail.
    PrincipalId::parse("default")
        .unwrap_or_else(|_| unreachable!("`default` is a valid principal id"))
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is out of range.
    #[error("invalid runtime configuration: {0}")]
    Invalid(String),
    /// The engine refused the settings.
    #[error("the wasm engine rejected the configuration: {0}")]
    Engine(String),
    /// The KV database could not be opened.
    #[error("cannot open the KV database: {0}")]
    KvStore(#[source] capsule_store::KvError),
    /// The secret store could not be opened.
    #[error("cannot open the secret store: {0}")]
    SecretStore(#[source] capsule_store::SecretError),
    /// The operator's host policy (`<state>/policy.toml`) is malformed.
    #[error("invalid host policy: {0}")]
    Policy(String),
    /// The state directory could not be prepared.
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_pool(p: PoolingConfig) -> RuntimeConfig {
        RuntimeConfig {
            pooling: Some(p),
            ..RuntimeConfig::new("/nonexistent/capsule-state")
        }
    }

    #[test]
    fn a_pool_reserving_more_than_the_bound_is_refused_before_wasmtime_sees_it() {
        let huge = PoolingConfig {
            max_instances: u32::MAX,
            max_core_instances: u32::MAX,
            max_memories: u32::MAX,
            ..PoolingConfig::default()
        };
        assert!(huge.reserved_bytes() > MAX_POOL_RESERVATION);
        assert!(matches!(
            with_pool(huge).validate(),
            Err(ConfigError::Invalid(m)) if m.contains("address space")
        ));
        // 20 000 full 4 GiB slots are about 80 TiB: refused, while the same count of compact
        // slots fits.
        let full = PoolingConfig {
            max_memories: 20_000,
            compact_memories: false,
            ..PoolingConfig::default()
        };
        assert!(with_pool(full).validate().is_err());
        let compact = PoolingConfig {
            compact_memories: true,
            ..full
        };
        assert!(compact.reserved_bytes() <= MAX_POOL_RESERVATION);
        for capsules in [1, 1_000, 10_000] {
            let sized = with_pool(PoolingConfig::for_capsules(capsules));
            assert!(sized.validate().is_ok(), "{capsules} capsules");
        }
        assert!(with_pool(PoolingConfig::default()).validate().is_ok());
    }
}
