//! `astrid:sys/host@1.0.0`: configuration, caller context, logging, readiness, clocks, sleep,
//! randomness and capability introspection. Configuration answers only keys the manifest
//! declares, resolved for the principal in scope (its env overlay, then the manifest
//! defaults); secret-typed keys never come from a plain map. Errors carry no host paths or
//! backend text: the guest gets a fixed description, the host log the details.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use capsule_bus::Attribution;
use capsule_security::{EnvKind, Manifest};
use capsule_wit::astrid::sys::host::{
    CallerContext, CapabilityCheckRequest, CapabilityCheckResponse, ErrorCode, Host, LogLevel,
};
use tokio::sync::watch;

use crate::error::LoadError;
use crate::host::{Assembly, Capability, InstanceCx, View};
use crate::lifecycle::LifecyclePhase;
use crate::logsink::{LogSink, rfc3339_ms, unix_ms};
use crate::registry::Registry;
use capsule_store::SecretError;
use capsule_store::SecretStore;

/// Longest `sleep-ns`.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Most bytes one `random-bytes` call returns.
pub const MAX_RANDOM_BYTES: u64 = 4096;
/// Longest configuration key.
pub const MAX_CONFIG_KEY: usize = 256;
/// Configuration keys starting with this prefix belong to the host.
pub const RESERVED_CONFIG_PREFIX: &str = "__";

/// Why a sys call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SysError {
    /// The key is in the host's reserved namespace.
    #[error("configuration key `{0}` is reserved for the host")]
    ReservedKey(String),
    /// A length argument is over its limit.
    #[error("{what} of {requested} exceeds the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The requested amount.
        requested: u64,
        /// The limit.
        limit: u64,
    },
    /// The capsule is being unloaded.
    #[error("cancelled: the capsule is unloading")]
    Cancelled,
    /// The host cannot look up other capsules any more.
    #[error("the capsule registry is unavailable")]
    RegistryUnavailable,
    /// The session id is not a UUID.
    #[error("`{0}` is not a capsule session UUID")]
    BadSession(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(#[source] getrandom::Error),
    /// The secret store failed (the message never contains a secret value).
    #[error("secret store: {0}")]
    Secret(#[source] SecretError),
}

impl SysError {
    /// The WIT error code the guest sees.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::ReservedKey(_) => ErrorCode::ConfigKeyReserved,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Cancelled => ErrorCode::Cancelled,
            Self::RegistryUnavailable => ErrorCode::RegistryUnavailable,
            Self::BadSession(_) => ErrorCode::Unknown(self.to_string()),
            // What failed underneath is the host's business; the details go to its log.
            Self::Random(_) => ErrorCode::Unknown("random source unavailable".into()),
            Self::Secret(_) => ErrorCode::Unknown("secret store unavailable".into()),
        }
    }
}

/// The `astrid:sys` capability.
pub(crate) struct SysHost;

/// Capsule-wide data of the sys capability.
#[derive(Debug)]
pub(crate) struct SysShared {
    /// Manifest defaults of non-secret `[env]` keys.
    defaults: HashMap<String, String>,
    /// The owner's env overlay, consulted before the defaults when the owner is in scope.
    owner_env: HashMap<String, String>,
    /// Keys declared `type = "secret"`: never in any map above.
    secret_keys: HashSet<String>,
    /// Every `[env]` key the manifest declares: the only keys `get-config` answers.
    declared_keys: HashSet<String>,
    /// Capability names the capsule holds.
    capabilities: Vec<String>,
    /// The owner's log file for this capsule.
    owner_log: Option<LogSink>,
    /// Flipped by `signal-ready` (or by the host, for a capsule without a run loop).
    pub(crate) ready: watch::Sender<bool>,
    /// Loaded capsules, for `check-capsule-capability`.
    registry: Weak<Registry>,
    /// Where secret-typed config keys are resolved.
    secrets: Arc<SecretStore>,
}

/// The view `astrid:sys` is implemented on (`get-config("prev_version")` answers from the
/// core's lifecycle phase during an upgrade).
type SysView<'a> = View<'a, Arc<SysShared>>;

runs_on_view!(SysHost);

impl Capability for SysHost {
    const INTERFACES: &'static [&'static str] = &["astrid:sys/host@1.0.0"];
    type Shared = Arc<SysShared>;
    type Ctx = Arc<SysShared>;

    link_bindings!(capsule_wit::astrid::sys::host);

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        let manifest = cx.manifest;
        Ok(Arc::new(SysShared {
            defaults: env_defaults(manifest),
            owner_env: cx.owner_files.env.clone(),
            secret_keys: manifest
                .env
                .iter()
                .filter(|(_, e)| e.kind == EnvKind::Secret)
                .map(|(k, _)| k.clone())
                .collect(),
            declared_keys: manifest.env.keys().cloned().collect(),
            capabilities: cx.policy.capabilities().held_names(),
            owner_log: cx.owner_files.log.clone(),
            ready: watch::Sender::new(false),
            registry: Arc::downgrade(&cx.services.registry),
            secrets: Arc::clone(&cx.services.secrets),
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }
}

/// The manifest's defaults of its non-secret `[env]` keys.
fn env_defaults(manifest: &Manifest) -> HashMap<String, String> {
    let defaults: BTreeMap<&String, &String> = manifest
        .env
        .iter()
        .filter(|(_, e)| e.kind != EnvKind::Secret)
        .filter_map(|(k, e)| e.default.as_ref().map(|d| (k, d)))
        .collect();
    defaults
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn monotonic_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

impl SysView<'_> {
    /// Resolves a secret-typed key live from the secret store: the principal in scope first,
    /// then host-wide. Every reveal is audited (never the value).
    /// A worker that panicked is the host's failure, not the guest's: the call traps.
    async fn secret(&mut self, key: &str) -> wasmtime::Result<Result<Option<String>, SysError>> {
        let principal = self.core.scoped.principal().clone();
        let capsule = self.core.scoped.identity.name.clone();
        let store = Arc::clone(&self.ctx.secrets);
        let (k, p, c) = (key.to_string(), principal.clone(), capsule.clone());
        let found = match self
            .core
            .limits
            .blocking(move || store.resolve(&p, &c, &k))
            .await?
        {
            None => return Ok(Err(SysError::Cancelled)),
            Some(Err(panic)) => {
                return Err(wasmtime::Error::msg(format!(
                    "secret worker failed: {panic}"
                )));
            }
            Some(Ok(r)) => r,
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                crate::host::audit::secret_failed(&capsule, &principal, key, &e.to_string());
                return Ok(Err(SysError::Secret(e)));
            }
        };
        Ok(Ok(found.map(|(value, scope)| {
            let scope = match scope {
                capsule_store::SecretScope::Principal(_) => "principal",
                capsule_store::SecretScope::Host => "host",
            };
            crate::host::audit::secret_revealed(&capsule, &principal, key, scope);
            String::from_utf8_lossy(&value).into_owned()
        })))
    }

    fn config(&self, key: &str) -> Result<Option<String>, SysError> {
        if key.len() > MAX_CONFIG_KEY {
            return Err(SysError::TooLarge {
                what: "configuration key length",
                requested: key.len() as u64,
                limit: MAX_CONFIG_KEY as u64,
            });
        }
        if key.starts_with(RESERVED_CONFIG_PREFIX) {
            return Err(SysError::ReservedKey(key.to_string()));
        }
        if let Some(LifecyclePhase::Upgrade { from }) = self.core.phase
            && key == "prev_version"
        {
            return Ok(Some(from.to_string()));
        }
        let shared = &**self.ctx;
        // An overlay may hold anything; only what the manifest declares is configuration.
        if !shared.declared_keys.contains(key) {
            return Ok(None);
        }
        let overlay = match self.core.scoped.env_overlay() {
            Some(env) => env,
            None => &shared.owner_env,
        };
        Ok(overlay
            .get(key)
            .or_else(|| shared.defaults.get(key))
            .cloned())
    }

    fn check(&self, request: &CapabilityCheckRequest) -> Result<bool, SysError> {
        let session = uuid::Uuid::parse_str(&request.source_uuid)
            .map_err(|_| SysError::BadSession(request.source_uuid.clone()))?;
        let registry = self
            .ctx
            .registry
            .upgrade()
            .ok_or(SysError::RegistryUnavailable)?;
        Ok(registry
            .holds(&session, &request.capability)
            .unwrap_or(false))
    }
}

impl Host for SysView<'_> {
    async fn get_config(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, ErrorCode>> {
        // The span the bindings give every other import, minus the return event that would
        // log the value.
        let span = tracing::trace_span!(
            "wit-bindgen import",
            module = "host",
            function = "get-config",
            key = %key,
        );
        tracing::Instrument::instrument(
            async {
                // Secret-typed keys never come from a plain map.
                let is_secret = self.ctx.secret_keys.contains(&key);
                let result = match self.config(&key) {
                    Ok(_) if is_secret => self.secret(&key).await?,
                    other => other,
                };
                Ok(result.map_err(|e| e.code()))
            },
            span,
        )
        .await
    }

    fn get_caller(&mut self) -> wasmtime::Result<Result<CallerContext, ErrorCode>> {
        let caller = match self.core.scoped.scope {
            Some(s) => s.caller.clone(),
            None => self.core.scopes.own_caller(),
        };
        let principal = match &caller.attribution {
            Attribution::Verified(p) | Attribution::Claimed(p) => Some(p.to_string()),
            Attribution::System => None,
        };
        Ok(Ok(CallerContext {
            principal,
            source_id: caller.source.to_string(),
            timestamp: rfc3339_ms(caller.timestamp_ms),
        }))
    }

    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let name = level_name(level);
        // Writing a file is blocking work: bounded by the blocking semaphore, and abandoned
        // when the capsule unloads.
        let blocking = self.core.limits.shared.blocking.clone();
        let Some(_permit) = self.core.limits.race(blocking.acquire()).await? else {
            return Ok(());
        };
        let scoped = self.core.scoped;
        match scoped.log(self.ctx.owner_log.as_ref()) {
            Some(sink) => sink.write(name, &message),
            None => tracing::warn!(
                capsule = %self.core.scoped.identity.name,
                principal = %scoped.principal(),
                "capsule log unavailable; record dropped"
            ),
        }
        Ok(())
    }

    fn signal_ready(&mut self) -> wasmtime::Result<()> {
        self.ctx.ready.send_replace(true);
        tracing::debug!(capsule = %self.core.scoped.identity.name, "capsule signalled ready");
        Ok(())
    }

    fn clock_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(unix_ms())
    }

    fn clock_monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(monotonic_origin().elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    async fn sleep_ns(&mut self, duration_ns: u64) -> wasmtime::Result<Result<(), ErrorCode>> {
        let duration = Duration::from_nanos(duration_ns);
        if duration > MAX_SLEEP {
            let e = SysError::TooLarge {
                what: "sleep in nanoseconds",
                requested: duration_ns,
                limit: u64::try_from(MAX_SLEEP.as_nanos()).unwrap_or(u64::MAX),
            };
            return Ok(Err(e.code()));
        }
        // Only the time really spent asleep counts as waiting, so short sleeps between bursts
        // of work do not hide them.
        let slept = self.core.limits.race(tokio::time::sleep(duration)).await?;
        Ok(slept.ok_or_else(|| SysError::Cancelled.code()))
    }

    fn random_bytes(&mut self, length: u64) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        if length > MAX_RANDOM_BYTES {
            let e = SysError::TooLarge {
                what: "random byte count",
                requested: length,
                limit: MAX_RANDOM_BYTES,
            };
            return Ok(Err(e.code()));
        }
        let mut buf = vec![0u8; usize::try_from(length).unwrap_or(0)];
        match getrandom::fill(&mut buf) {
            Ok(()) => Ok(Ok(buf)),
            Err(e) => Ok(Err(SysError::Random(e).code())),
        }
    }

    fn check_capsule_capability(
        &mut self,
        request: CapabilityCheckRequest,
    ) -> wasmtime::Result<Result<CapabilityCheckResponse, ErrorCode>> {
        Ok(self
            .check(&request)
            .map(|allowed| CapabilityCheckResponse { allowed })
            .map_err(|e| e.code()))
    }

    fn enumerate_capabilities(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.ctx.capabilities.clone())
    }
}
