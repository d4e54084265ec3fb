//! The `Runtime`: one engine, linker, bus and compile cache shared by every capsule it loads.
//! Loading is all-or-nothing: a capsule that cannot be served completely (bad manifest,
//! missing imports, wrong exports, refused owner) fails with an error naming the problem and
//! leaves nothing behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_bus::{Bus, PrincipalId, RateLimiter};
use capsule_security::{
    CapsulePolicy, EnvKind, Forbidden, Grant, GrantError, GrantStore, GraphError, HostPolicy,
    Manifest, ManifestError, PermissionDiff, plan_load,
};
use capsule_store::{InstalledVersions, KvStore, SecretStore};
use capsule_vfs::StateLayout;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::approval::{DecideError, Decided, Decider, Refusal};
use crate::cache::ArtifactCache;
use crate::capsule::{Capsule, CapsuleInner, LoadReport, StoreParts};
use crate::config::{ConfigError, RuntimeConfig};
use crate::dispatch::{DispatchStats, Dispatcher};
use crate::engine::{build_engine, start_epoch_ticker};
use crate::host::build_linker;
use crate::host::uplink::InboundMessage;
use crate::inspect;
use crate::lifecycle::{self, Elicitor, LifecyclePhase};
use crate::limits::{MemoryLedger, MemoryStats};
use crate::registry::Registry;
use crate::scope::{PrincipalResources, ProfileCache, ScopeFactory};
use crate::state::{
    Binding, BusShared, CapsuleIdentity, FsShared, HostState, LifecycleShared, LimitsShared,
    SysShared, UplinkShared,
};
use capsule_security::private::create_private_dir;
use capsule_vfs::{Mount, Overlay, Workspace};

/// The astrid capsule ABI release this host implements; `[package] astrid-version`
/// requirements are checked against it.
pub const HOST_ABI_VERSION: semver::Version = semver::Version::new(0, 8, 0);

/// Largest component file accepted.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// Why a capsule could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component file could not be read.
    #[error("{}: cannot read component: {source}", file.display())]
    Wasm {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The component file resolves outside the capsule directory or is not a regular file.
    #[error("{}: {reason}", file.display())]
    ComponentPath {
        /// The file as the manifest names it.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The component file is larger than [`MAX_COMPONENT_BYTES`].
    #[error("{}: component is {size} bytes; the limit is {MAX_COMPONENT_BYTES}", file.display())]
    TooLarge {
        /// The file.
        file: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The component file does not have the digest the manifest declares.
    #[error("{}: component does not match the manifest's hash", file.display())]
    HashMismatch {
        /// The file.
        file: PathBuf,
    },
    /// The capsule requires a different host ABI.
    #[error(
        "capsule `{capsule}` requires astrid-version {required}; this host implements {HOST_ABI_VERSION}"
    )]
    HostVersion {
        /// The capsule.
        capsule: String,
        /// Its requirement.
        required: semver::VersionReq,
    },
    /// The bytes are not a valid component.
    #[error("capsule `{capsule}`: not a valid component: {reason}")]
    Compile {
        /// The capsule.
        capsule: String,
        /// The compiler's message.
        reason: String,
    },
    /// The component imports interfaces this host does not provide.
    #[error("capsule `{capsule}` imports what this host does not provide: {}", imports.join(", "))]
    MissingImports {
        /// The capsule.
        capsule: String,
        /// Every missing import, by name.
        imports: Vec<String>,
    },
    /// An entry point has the wrong type.
    #[error("capsule `{capsule}`: export `{export}` must be `{expected}`")]
    BadExport {
        /// The capsule.
        capsule: String,
        /// The export.
        export: &'static str,
        /// Its required type.
        expected: &'static str,
    },
    /// The linker rejected the component.
    #[error("capsule `{capsule}` cannot be linked: {reason}")]
    Link {
        /// The capsule.
        capsule: String,
        /// The linker's message.
        reason: String,
    },
    /// The owner principal may not act.
    #[error("capsule `{capsule}`: owner `{owner}` refused: {reason}")]
    OwnerRefused {
        /// The capsule.
        capsule: String,
        /// The owner.
        owner: PrincipalId,
        /// Why.
        reason: String,
    },
    /// A directory the capsule needs (its workspace, or a host directory its grants name)
    /// cannot be opened.
    #[error("capsule `{capsule}`: cannot mount {}: {reason}", path.display())]
    Mount {
        /// The capsule.
        capsule: String,
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `astrid-install` or `astrid-upgrade` failed; the capsule was not loaded.
    #[error("capsule `{capsule}`: {phase} failed: {error}")]
    Lifecycle {
        /// The capsule.
        capsule: String,
        /// `install` or `upgrade`.
        phase: &'static str,
        /// The guest's error.
        error: String,
    },
    /// The host refused to start these capsules: requests not approved by the operator, or
    /// never grantable on this host. Every refused capsule of the operation is listed.
    #[error("{}", refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Refused {
        /// Each refused capsule and why.
        refusals: Vec<Refusal>,
    },
    /// The operator's stored grant for the capsule could not be read or written.
    #[error("capsule `{capsule}`: grant: {source}")]
    Grant {
        /// The capsule.
        capsule: String,
        /// The underlying error.
        source: GrantError,
    },
    /// A capsule of that name is already loaded.
    #[error("a capsule named `{0}` is already loaded")]
    AlreadyLoaded(String),
    /// The set of capsules cannot be ordered (missing import, cycle, duplicate).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A provider's run loop ended before it signalled ready, so its importer was not started.
    #[error(
        "capsule `{capsule}` was not started: its provider `{provider}` stopped before it was ready ({exit})"
    )]
    ProviderStopped {
        /// The importer.
        capsule: String,
        /// The provider.
        provider: String,
        /// How the provider's run loop ended.
        exit: String,
    },
    /// The host failed, not the capsule.
    #[error("host failure while loading `{capsule}`: {reason}")]
    Host {
        /// The capsule.
        capsule: String,
        /// What failed.
        reason: String,
    },
}

/// Prefix of the topics the host publishes its own events on: `runtime.capsule.loaded`
/// (`{capsule, owner, session, version}`), `runtime.capsule.waiting` (`{capsule, provider}`:
/// [`Runtime::load_all`] holds `capsule` back until `provider` is ready) and
/// `runtime.capsule.unloaded` (`{capsule}`).
pub const EVENT_TOPIC_PREFIX: &str = "runtime.capsule";

/// What [`Runtime::inspect`] found out about a capsule.
#[derive(Debug)]
pub struct Inspection {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Whether the compiled component came from the cache.
    pub cache: crate::CacheOutcome,
    /// The entry points it really exports.
    pub exports: crate::Exports,
    /// Every import of the component, by name (all of them served).
    pub imports: Vec<String>,
    /// The capabilities that need the operator's grant, against the stored grant
    /// (`added` ones would be asked about at load).
    pub permissions: PermissionDiff,
    /// Requests that can never be granted on this host (the load would fail).
    pub forbidden: Vec<Forbidden>,
}

struct Prepared {
    manifest: Manifest,
    cache: crate::CacheOutcome,
    exports: crate::Exports,
    pre: wasmtime::component::InstancePre<HostState>,
}

struct RuntimeInner {
    config: RuntimeConfig,
    engine: Engine,
    linker: Linker<HostState>,
    cache: ArtifactCache,
    bus: Bus,
    limiter: Arc<RateLimiter>,
    registry: Arc<Registry>,
    profiles: Arc<ProfileCache>,
    layout: StateLayout,
    ledger: Arc<MemoryLedger>,
    io: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
    /// Loaded capsules by name, each with its load sequence number (for reverse-order
    /// shutdown).
    capsules: Mutex<HashMap<String, (u64, Capsule)>>,
    next_load: std::sync::atomic::AtomicU64,
    kv: Arc<KvStore>,
    secrets: Arc<SecretStore>,
    dispatcher: Arc<Dispatcher>,
    elicitor: parking_lot::RwLock<Option<Arc<dyn Elicitor>>>,
    approver: parking_lot::RwLock<Option<Arc<dyn crate::approval::Approver>>>,
    host_policy: HostPolicy,
    grants: GrantStore,
    inbound_tx: tokio::sync::mpsc::Sender<InboundMessage>,
    inbound_rx: Mutex<Option<tokio::sync::mpsc::Receiver<InboundMessage>>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        // A runtime dropped without `shutdown` still stops its capsules: their waiting calls
        // answer `closed` and running guests are interrupted at their next epoch boundary.
        self.dispatcher.stop();
        for (_, capsule) in self.capsules.get_mut().values() {
            capsule.cancel();
        }
    }
}

/// The capsule host. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("state_dir", &self.inner.config.state_dir)
            .field("capsules", &self.inner.capsules.lock().len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts a runtime: validates the configuration, prepares the state directory, builds
    /// the engine and linker, and starts the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        create_private_dir(&config.state_dir).map_err(|source| ConfigError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let engine = build_engine(&config)?;
        let linker = build_linker(&engine).map_err(|e| ConfigError::Engine(format!("{e:#}")))?;
        let cache = ArtifactCache::new(config.cache_dir(), &engine);
        let bus = Bus::with_config(config.bus).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let kv = KvStore::open_in(&StateLayout::new(config.state_dir.clone())).map_err(|e| {
            ConfigError::Store {
                what: "KV database",
                reason: e.to_string(),
            }
        })?;
        let secrets =
            SecretStore::open(&config.state_dir, &config.host_key_file()).map_err(|e| {
                ConfigError::Store {
                    what: "secret store",
                    reason: e.to_string(),
                }
            })?;
        let host_policy = config.host_policy()?;
        start_epoch_ticker(&engine, config.epoch_mode, config.epoch_window)?;
        let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(config.inbound_capacity);
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                bus,
                limiter: Arc::new(RateLimiter::default()),
                registry: Arc::new(Registry::default()),
                profiles: Arc::new(ProfileCache::new(config.state_dir.clone())),
                layout: StateLayout::new(config.state_dir.clone()),
                ledger: Arc::new(MemoryLedger::default()),
                io: Arc::new(Semaphore::new(config.io_concurrency)),
                blocking: Arc::new(Semaphore::new(config.blocking_concurrency)),
                capsules: Mutex::new(HashMap::new()),
                next_load: std::sync::atomic::AtomicU64::new(0),
                kv: Arc::new(kv),
                secrets: Arc::new(secrets),
                dispatcher: Arc::new(Dispatcher::new()),
                elicitor: parking_lot::RwLock::new(None),
                approver: parking_lot::RwLock::new(None),
                host_policy,
                grants: GrantStore::new(&config.state_dir),
                inbound_tx,
                inbound_rx: Mutex::new(Some(inbound_rx)),
                config,
            }),
        })
    }

    /// The bus capsules talk over; the host and embedders may publish and subscribe on it too.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// The secret store (operators set secrets here; capsules read them through `get-config`).
    pub fn secrets(&self) -> &SecretStore {
        &self.inner.secrets
    }

    /// The KV database.
    pub fn kv(&self) -> &KvStore {
        &self.inner.kv
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Advances the engine's epoch by one window (the only way it advances in
    /// [`EpochMode::Manual`](crate::EpochMode::Manual)).
    pub fn advance_epoch(&self) {
        self.inner.engine.increment_epoch();
    }

    /// Sets who answers capsules' `elicit` questions during install and upgrade (capsules loaded
    /// afterwards use it).
    pub fn set_elicitor(&self, elicitor: Arc<dyn Elicitor>) {
        *self.inner.elicitor.write() = Some(elicitor);
    }

    /// Sets who decides about capability requests the stored grants do not cover (loads
    /// started afterwards ask it). Without one, such loads fail naming what is pending.
    pub fn set_approver(&self, approver: Arc<dyn crate::approval::Approver>) {
        *self.inner.approver.write() = Some(approver);
    }

    /// The operator's stored grants.
    pub fn grants(&self) -> &GrantStore {
        &self.inner.grants
    }

    /// What may ever be granted on this host.
    pub fn host_policy(&self) -> &HostPolicy {
        &self.inner.host_policy
    }

    fn decider(&self) -> Decider<'_> {
        Decider {
            policy: &self.inner.host_policy,
            store: &self.inner.grants,
            approver: self.inner.approver.read().clone(),
            timeout: self.inner.config.elicit_timeout,
        }
    }

    /// Decides about `manifest`'s requests, turning a refusal into a load error.
    async fn decide(
        &self,
        manifest: &Manifest,
        known: Option<&Grant>,
    ) -> Result<Decided, LoadError> {
        self.decider()
            .decide(manifest, known)
            .await
            .map_err(|e| match e {
                DecideError::Refused(r) => LoadError::Refused { refusals: vec![r] },
                DecideError::Store(source) => LoadError::Grant {
                    capsule: manifest.package.name.to_string(),
                    source,
                },
            })
    }

    /// Takes the receiving end of the inbound channel uplink capsules feed (once; `None` after).
    /// Until it is taken, or while it is full, `uplink-send` reports its messages as dropped.
    pub fn take_inbound(&self) -> Option<tokio::sync::mpsc::Receiver<InboundMessage>> {
        self.inner.inbound_rx.lock().take()
    }

    /// Counters of interceptor dispatch.
    pub fn dispatch_stats(&self) -> DispatchStats {
        self.inner.dispatcher.stats()
    }

    /// Per-principal memory statistics across every Store of this runtime.
    pub fn memory_stats(&self) -> HashMap<PrincipalId, MemoryStats> {
        self.inner.ledger.snapshot()
    }

    /// The loaded capsule called `name`.
    pub fn capsule(&self, name: &str) -> Option<Capsule> {
        self.inner
            .capsules
            .lock()
            .get(name)
            .map(|(_, c)| c)
            .filter(|c| !c.is_unloaded())
            .cloned()
    }

    /// Every loaded capsule, in the order they were loaded (providers before importers).
    pub fn capsules(&self) -> Vec<Capsule> {
        let mut all: Vec<(u64, Capsule)> = self
            .inner
            .capsules
            .lock()
            .values()
            .filter(|(_, c)| !c.is_unloaded())
            .cloned()
            .collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, c)| c).collect()
    }

    /// Loads the capsule in `dir` (or the manifest file `dir` names) for the configured owner.
    pub async fn load(&self, dir: impl AsRef<Path>) -> Result<Capsule, LoadError> {
        let owner = self.inner.config.owner.clone();
        self.load_as(dir, owner).await
    }

    /// Loads the capsules in `dirs` for the configured owner, in dependency order: each
    /// capsule's non-optional imports must be exported (in a matching version) by another
    /// capsule in the set or one already loaded; a cycle or an unmet import fails the whole set
    /// before anything starts, naming the capsules or the import. Uplink capsules load first.
    /// A capsule starts only once the providers it imports from are ready (a provider with a
    /// run loop after it calls `signal-ready`, or after [`RuntimeConfig::ready_timeout`], which
    /// is logged). If any capsule fails to load, the ones this call loaded are unloaded again.
    /// Returns the capsules in the order they were loaded.
    pub async fn load_all<P: AsRef<Path>>(
        &self,
        dirs: impl IntoIterator<Item = P>,
    ) -> Result<Vec<Capsule>, LoadError> {
        let dirs: Vec<PathBuf> = dirs.into_iter().map(|d| d.as_ref().to_path_buf()).collect();
        let manifests = dirs
            .iter()
            .map(|d| Manifest::load(d))
            .collect::<Result<Vec<_>, _>>()?;
        let running: Vec<Capsule> = self.capsules();
        let steps = {
            let set: Vec<&Manifest> = manifests.iter().collect();
            let loaded: Vec<&Manifest> = running.iter().map(Capsule::manifest).collect();
            plan_load(&set, &loaded)?
        };
        // Every capsule of the set is decided about before any starts, so one run names
        // every refused capsule and a refusal starts nothing.
        let mut decided: HashMap<String, Grant> = HashMap::new();
        let mut refusals = Vec::new();
        for m in &manifests {
            match self.decide(m, None).await {
                Ok(d) => {
                    decided.insert(m.package.name.to_string(), d.grant);
                }
                Err(LoadError::Refused { refusals: r }) => refusals.extend(r),
                Err(e) => return Err(e),
            }
        }
        if !refusals.is_empty() {
            return Err(LoadError::Refused { refusals });
        }
        let owner = self.inner.config.owner.clone();
        let mut started: Vec<Capsule> = Vec::with_capacity(steps.len());
        for step in steps {
            let mut outcome = Ok(());
            for (provider, optional) in &step.providers {
                let found = started
                    .iter()
                    .chain(&running)
                    .find(|c| c.name() == provider)
                    .cloned();
                if let Some(p) = found {
                    outcome = self.await_provider(&step.name, &p, *optional).await;
                    if outcome.is_err() {
                        break;
                    }
                }
            }
            let loaded = match outcome {
                Ok(()) => {
                    let known = decided.get(&step.name);
                    self.load_with(&dirs[step.index], owner.clone(), known)
                        .await
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(c) => started.push(c),
                Err(e) => {
                    for c in started.iter().rev() {
                        self.unload(c.name()).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    /// Waits until `provider` may serve `dependent`.
    async fn await_provider(
        &self,
        dependent: &str,
        provider: &Capsule,
        optional: bool,
    ) -> Result<(), LoadError> {
        if provider.is_ready() {
            return Ok(());
        }
        let timeout = self.inner.config.ready_timeout;
        tracing::info!(capsule = %dependent, provider = %provider.name(), ?timeout, "waiting for provider to be ready");
        self.event(
            "waiting",
            serde_json::json!({ "capsule": dependent, "provider": provider.name() }),
        );
        tokio::select! {
            ready = provider.wait_ready(timeout) => {
                if !ready {
                    tracing::warn!(
                        capsule = %dependent,
                        provider = %provider.name(),
                        ?timeout,
                        "provider did not signal ready in time; starting its importer anyway"
                    );
                }
                Ok(())
            }
            exit = provider.wait_run_exit() => {
                let exit = exit.map_or_else(|| "no run loop".to_string(), |e| format!("{e:?}"));
                if provider.is_ready() {
                    Ok(())
                } else if optional {
                    tracing::warn!(capsule = %dependent, provider = %provider.name(), %exit, "optional provider stopped before it was ready");
                    Ok(())
                } else {
                    Err(LoadError::ProviderStopped {
                        capsule: dependent.to_string(),
                        provider: provider.name().to_string(),
                        exit,
                    })
                }
            }
        }
    }

    /// Publishes a host event on `runtime.capsule.<kind>`, for operators and capsules that
    /// follow the host (subject to their subscribe ACL like any topic).
    fn event(&self, kind: &str, body: serde_json::Value) {
        let topic = format!("{EVENT_TOPIC_PREFIX}.{kind}");
        let (Ok(topic), Ok(payload)) = (
            capsule_bus::Topic::parse(&topic),
            capsule_bus::JsonPayload::parse(body.to_string()),
        ) else {
            tracing::error!(%topic, "host event could not be formed");
            return;
        };
        self.inner.bus.publish(capsule_bus::Outgoing {
            topic,
            payload,
            source: Uuid::nil(),
            attribution: capsule_bus::Attribution::System,
            hops: 0,
        });
    }

    /// Checks everything about the capsule in `dir` that loading checks (manifest, component,
    /// imports, exports, linking) without starting it, and reports what it found.
    pub async fn inspect(&self, dir: impl AsRef<Path>) -> Result<Inspection, LoadError> {
        let prepared = self.prepare(dir.as_ref()).await?;
        let capsule_security::Resolved {
            requests,
            forbidden,
            ..
        } = self
            .inner
            .host_policy
            .resolve(&capsule_security::requests(&prepared.manifest));
        let stored = self
            .inner
            .grants
            .load(&prepared.manifest.package.name)
            .map_err(|source| LoadError::Grant {
                capsule: prepared.manifest.package.name.to_string(),
                source,
            })?;
        let permissions = PermissionDiff::between(&requests, stored.as_ref());
        let imports = prepared
            .pre
            .component()
            .component_type()
            .imports(&self.inner.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(Inspection {
            manifest: prepared.manifest,
            cache: prepared.cache,
            exports: prepared.exports,
            imports,
            permissions,
            forbidden,
        })
    }

    /// Reads, verifies, compiles and links a capsule: everything that can fail before it runs.
    async fn prepare(&self, dir: &Path) -> Result<Prepared, LoadError> {
        let manifest = Manifest::load(dir)?;
        let name = manifest.package.name.as_str().to_string();
        if let Some(required) = &manifest.package.host_version
            && !required.matches(&HOST_ABI_VERSION)
        {
            return Err(LoadError::HostVersion {
                capsule: name,
                required: required.clone(),
            });
        }
        let wasm = read_component(&manifest)?;
        let engine = self.inner.engine.clone();
        let cache = self.inner.cache.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let outcome = cache.load_or_compile(&engine, &wasm);
            (outcome, wasm)
        })
        .await
        .map_err(|e| LoadError::Host {
            capsule: name.clone(),
            reason: format!("compile task failed: {e}"),
        })?;
        let (outcome, wasm) = compiled;
        let (component, cache) = outcome.map_err(|e| LoadError::Compile {
            capsule: name.clone(),
            reason: format!("{e:#}"),
        })?;
        let missing = inspect::missing_imports(
            &component,
            &self.inner.engine,
            capsule_wit::SERVED_INTERFACES,
        );
        if !missing.is_empty() {
            return Err(LoadError::MissingImports {
                capsule: name,
                imports: missing,
            });
        }
        let exports = inspect::exports(&component, &self.inner.engine, &wasm).map_err(|bad| {
            LoadError::BadExport {
                capsule: name.clone(),
                export: bad.name,
                expected: bad.expected,
            }
        })?;
        if !exports.hook && manifest.handlers().next().is_some() {
            return Err(LoadError::BadExport {
                capsule: name,
                export: inspect::HOOK,
                expected: "func(action: string, payload: list<u8>) -> capsule-result (the manifest declares handlers)",
            });
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                capsule: name.clone(),
                reason: format!("{e:#}"),
            })?;
        Ok(Prepared {
            manifest,
            cache,
            exports,
            pre,
        })
    }

    /// Loads the capsule in `dir` for `owner`. Capabilities its manifest requests beyond its
    /// own confinement must be covered by the operator's stored grant or approved by the
    /// [`Approver`](crate::Approver); the capsule gets `requested ∩ granted`.
    pub async fn load_as(
        &self,
        dir: impl AsRef<Path>,
        owner: PrincipalId,
    ) -> Result<Capsule, LoadError> {
        self.load_with(dir.as_ref(), owner, None).await
    }

    /// Loads the capsule in `dir` for `owner`, starting from `known` (a decision made earlier
    /// in the same operation) instead of the stored grant when given.
    async fn load_with(
        &self,
        dir: &Path,
        owner: PrincipalId,
        known: Option<&Grant>,
    ) -> Result<Capsule, LoadError> {
        let Prepared {
            manifest,
            cache: cache_outcome,
            exports,
            pre,
        } = self.prepare(dir).await?;
        let name = manifest.package.name.as_str().to_string();
        if self.inner.registry.contains_name(&name) {
            return Err(LoadError::AlreadyLoaded(name));
        }
        let decided = self.decide(&manifest, known).await?;
        let owner_profile = self.inner.profiles.resolve(&owner);
        let profile = owner_profile
            .clone()
            .map_err(|reason| LoadError::OwnerRefused {
                capsule: name.clone(),
                owner: owner.clone(),
                reason: reason.to_string(),
            })?;

        let session = Uuid::new_v4();
        let identity = Arc::new(CapsuleIdentity {
            name: name.clone(),
            session,
            owner: owner.clone(),
        });
        let owner_files = PrincipalResources::open(&self.inner.layout, &owner, &name);
        let owner_log = owner_files.as_ref().and_then(|f| f.log.clone());
        let policy = Arc::new(CapsulePolicy::granted(
            &manifest,
            &decided.grant,
            &decided.mounts,
        ));
        let (owner_env, owner_home, owner_tmp) = match owner_files {
            Some(f) => (f.env, Some(Arc::new(f.home)), Some(Arc::new(f.tmp))),
            None => (HashMap::new(), None, None),
        };
        let (fs, overlay_dir) =
            self.mount_fs(&name, session, &policy, &decided, owner_home, owner_tmp)?;
        let (ready_tx, ready_rx) = watch::channel(false);
        let (exit_tx, exit_rx) = watch::channel(None);
        let parts = StoreParts {
            owner_profile,
            scopes: Arc::new(ScopeFactory {
                owner: owner.clone(),
                capsule: name.clone(),
                session,
                layout: self.inner.layout.clone(),
                profiles: Arc::clone(&self.inner.profiles),
            }),
            bus: Arc::new(BusShared {
                bus: self.inner.bus.clone(),
                limiter: Arc::clone(&self.inner.limiter),
                policy: Arc::clone(&policy),
                bindings: bindings(&manifest),
                audit_firehose: profile.audit_firehose(),
                introductions: Mutex::default(),
                counters: crate::stats::IpcCounters::default(),
            }),
            sys: Arc::new(SysShared {
                defaults: env_defaults(&manifest),
                owner_env,
                secret_keys: manifest
                    .env
                    .iter()
                    .filter(|(_, e)| e.kind == EnvKind::Secret)
                    .map(|(k, _)| k.clone())
                    .collect::<HashSet<String>>(),
                declared_keys: manifest.env.keys().cloned().collect(),
                capabilities: policy.capabilities().held_names(),
                owner_log: owner_log.clone(),
                ready: ready_tx,
                registry: Arc::downgrade(&self.inner.registry),
            }),
            limits: Arc::new(LimitsShared {
                io: Arc::clone(&self.inner.io),
                blocking: Arc::clone(&self.inner.blocking),
                cancel: CancellationToken::new(),
                ledger: Arc::new(MemoryLedger::child_of(Arc::clone(&self.inner.ledger))),
            }),
            owner_log,
            kv: Arc::clone(&self.inner.kv),
            secrets: Arc::clone(&self.inner.secrets),
            fs: Arc::new(fs),
            lifecycle: Arc::new(LifecycleShared {
                elicitor: self.inner.elicitor.read().clone(),
                secrets: Arc::clone(&self.inner.secrets),
                timeout: self.inner.config.elicit_timeout,
            }),
            uplink: Arc::new(UplinkShared {
                policy: Arc::clone(&policy),
                registered: parking_lot::Mutex::new(Vec::new()),
                inbound: self.inner.inbound_tx.clone(),
            }),
            overlay_dir,
        };
        let report = LoadReport {
            cache: cache_outcome,
            exports,
        };
        let capabilities = policy.capabilities().clone();
        let version = manifest.package.version.clone();
        let inner = Arc::new(CapsuleInner::new(
            identity,
            manifest,
            report,
            self.inner.engine.clone(),
            pre,
            parts,
            &self.inner.config,
            Arc::downgrade(&self.inner.registry),
            ready_rx,
            exit_rx,
            Arc::downgrade(&self.inner.dispatcher),
        ));
        // Install or upgrade first: a capsule whose lifecycle call fails is never registered,
        // bound or started.
        let installed = InstalledVersions::new(&self.inner.config.state_dir);
        let recorded = installed.read(&owner, &name).map_err(|e| LoadError::Host {
            capsule: name.clone(),
            reason: e.to_string(),
        })?;
        if let Some(phase) = lifecycle::phase_for(recorded, &version) {
            let exported = match phase {
                LifecyclePhase::Install => exports.install,
                LifecyclePhase::Upgrade { .. } => exports.upgrade,
            };
            if exported {
                tracing::info!(capsule = %name, %owner, phase = phase.name(), "running lifecycle call");
                inner
                    .run_lifecycle(phase.clone())
                    .await
                    .map_err(|error| LoadError::Lifecycle {
                        capsule: name.clone(),
                        phase: phase.name(),
                        error,
                    })?;
            }
            installed
                .write(&owner, &name, &version)
                .map_err(|e| LoadError::Host {
                    capsule: name.clone(),
                    reason: e.to_string(),
                })?;
        }
        if decided.record {
            self.inner
                .grants
                .save(&decided.grant)
                .map_err(|source| LoadError::Grant {
                    capsule: name.clone(),
                    source,
                })?;
        }
        if !self.inner.registry.insert(session, &name, capabilities) {
            return Err(LoadError::AlreadyLoaded(name));
        }
        tracing::info!(
            capsule = %name,
            %owner,
            %session,
            cache = ?inner.report.cache,
            exports = ?inner.report.exports,
            "capsule loaded"
        );
        *inner.bindings.lock() = self.inner.dispatcher.bind(&self.inner.bus, &inner);
        if exports.run {
            let task = tokio::spawn(Arc::clone(&inner).run_loop(exit_tx));
            *inner.run_task.lock() = Some(task);
        } else {
            // Without a run loop there is nothing to wait for.
            inner.parts.sys.ready.send_replace(true);
        }
        self.event(
            "loaded",
            serde_json::json!({
                "capsule": name,
                "owner": owner.as_str(),
                "session": session.to_string(),
                "version": version.to_string(),
            }),
        );
        let capsule = Capsule::from_inner(inner);
        let mut capsules = self.inner.capsules.lock();
        // Capsules unloaded through their own handle are forgotten here.
        capsules.retain(|_, (_, c)| !c.is_unloaded());
        let seq = self
            .inner
            .next_load
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        capsules.insert(name, (seq, capsule.clone()));
        Ok(capsule)
    }

    /// Opens a capsule's mounts: its workspace (plain or overlay), the host directories its
    /// grants name, and its owner's home and tmp.
    fn mount_fs(
        &self,
        name: &str,
        session: Uuid,
        policy: &Arc<CapsulePolicy>,
        decided: &Decided,
        owner_home: Option<Arc<Mount>>,
        owner_tmp: Option<Arc<Mount>>,
    ) -> Result<(FsShared, Option<PathBuf>), LoadError> {
        let config = &self.inner.config;
        let fail = |path: &Path, e: std::io::Error| LoadError::Mount {
            capsule: name.to_string(),
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let lower_dir = config
            .workspace_root
            .clone()
            .unwrap_or_else(|| config.state_dir.join("workspaces").join(name));
        let lower = Mount::create(&lower_dir).map_err(|e| fail(&lower_dir, e))?;
        let (workspace, overlay_dir) = if config.overlay_workspace {
            let upper_dir = config
                .state_dir
                .join("overlays")
                .join(session.simple().to_string());
            let upper = Mount::create(&upper_dir).map_err(|e| fail(&upper_dir, e))?;
            (
                Workspace::Overlay(Overlay::new(lower, upper)),
                Some(upper_dir),
            )
        } else {
            (Workspace::Plain(lower), None)
        };
        let absolute = policy
            .absolute_roots()
            .into_iter()
            .map(|root| {
                // The canonical directory checked against the host policy is what gets
                // mounted, opened without following any link, so a link swapped in after
                // the check fails the mount instead of redirecting it.
                let resolved = decided.mounts.get(root).ok_or_else(|| LoadError::Host {
                    capsule: name.to_string(),
                    reason: format!("granted directory {} was never resolved", root.display()),
                })?;
                Mount::open_no_links(resolved)
                    .map(|m| (root.to_path_buf(), Arc::new(m)))
                    .map_err(|e| fail(root, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            FsShared {
                policy: Arc::clone(policy),
                storage: Arc::clone(&self.inner.kv),
                workspace: Arc::new(workspace),
                absolute,
                owner_home,
                owner_tmp,
            },
            overlay_dir,
        ))
    }

    /// Unloads the capsule called `name`; whether it was loaded.
    pub async fn unload(&self, name: &str) -> bool {
        let capsule = self.inner.capsules.lock().remove(name).map(|(_, c)| c);
        match capsule {
            Some(c) => {
                c.unload().await;
                self.event("unloaded", serde_json::json!({ "capsule": name }));
                true
            }
            None => false,
        }
    }

    /// Unloads every capsule, the last loaded first: importers go before the providers they
    /// were loaded after.
    pub async fn shutdown(&self) {
        let mut all: Vec<(u64, Capsule)> =
            self.inner.capsules.lock().drain().map(|(_, c)| c).collect();
        all.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        for (_, c) in all {
            c.unload().await;
            self.event("unloaded", serde_json::json!({ "capsule": c.name() }));
        }
    }
}

/// Reads the component file: it must resolve (symlinks followed) inside the capsule directory
/// and be a regular file of at most [`MAX_COMPONENT_BYTES`]. Anything else (a device, a FIFO, a
/// directory, a link out of the capsule) is refused without reading from it.
fn read_component(manifest: &Manifest) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let file = manifest.component.file.clone();
    let bad = |reason: String| LoadError::ComponentPath {
        file: file.clone(),
        reason,
    };
    let io = |source| LoadError::Wasm {
        file: file.clone(),
        source,
    };
    // A bare `Capsule.toml` has an empty parent: the current directory.
    let dir = match manifest.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir).map_err(io)?;
    let resolved = std::fs::canonicalize(&file).map_err(io)?;
    if !resolved.starts_with(&dir) {
        return Err(bad(format!(
            "resolves to {}, outside the capsule directory {}",
            resolved.display(),
            dir.display()
        )));
    }
    let kind = |t: std::fs::FileType| {
        if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        }
    };
    let checked = |meta: &std::fs::Metadata| {
        if !meta.is_file() {
            return Err(bad(format!(
                "is {}, not a regular component file",
                kind(meta.file_type())
            )));
        }
        if meta.len() > MAX_COMPONENT_BYTES {
            return Err(LoadError::TooLarge {
                file: file.clone(),
                size: meta.len(),
            });
        }
        Ok(())
    };
    checked(&std::fs::metadata(&resolved).map_err(io)?)?;
    // Opened without blocking and without following a link anywhere on the resolved path, so
    // a link swapped in since the check fails the open instead of leaving the capsule, then
    // checked again on the open file itself.
    let opened = capsule_vfs::open_file_no_links(&resolved).map_err(io)?;
    checked(&opened.metadata().map_err(io)?)?;
    let mut wasm = Vec::new();
    opened
        .take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut wasm)
        .map_err(io)?;
    if wasm.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(LoadError::TooLarge {
            file,
            size: wasm.len() as u64,
        });
    }
    if let Some(hash) = &manifest.component.hash
        && !hash.verify(&wasm)
    {
        return Err(LoadError::HashMismatch { file });
    }
    Ok(wasm)
}

fn bindings(manifest: &Manifest) -> Vec<Binding> {
    manifest
        .handlers()
        .enumerate()
        .map(|(i, (pattern, h))| Binding {
            id: i as u64,
            action: h.action.clone(),
            topic: pattern.as_str().to_string(),
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_named_without_a_directory_reads_its_component_beside_it() {
        // `capsule run Capsule.toml` from inside the capsule directory: the manifest's path has
        // an empty parent, which is the current directory (here, this crate's).
        let text = "[package]\nname = \"here\"\nversion = \"0.1.0\"\n\
                    [[component]]\nid = \"here\"\nfile = \"Cargo.toml\"\n";
        let m = Manifest::parse(text, Path::new("Capsule.toml")).unwrap_or_else(|e| panic!("{e}"));
        let read = read_component(&m).map_err(|e| e.to_string());
        assert_eq!(read.map(|bytes| bytes.starts_with(b"[package]")), Ok(true));
    }
}
