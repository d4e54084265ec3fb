//! The `Runtime`: one engine, linker, bus and compile cache shared by every capsule it loads.
//! Loading is all-or-nothing: a capsule that cannot be served completely (bad manifest,
//! missing imports, wrong exports, refused owner) fails with an error naming the problem and
//! leaves nothing behind. `load.rs` walks the load phases, `component.rs` the first of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use capsule_bus::{Bus, PrincipalId, RateLimiter};
use capsule_security::private::create_private_dir;
use capsule_security::{Forbidden, GrantStore, HostPolicy, Manifest, PermissionDiff};
use capsule_vfs::StateLayout;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Semaphore;
use uuid::Uuid;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::approval::Approver;
use crate::cache::{ArtifactCache, CacheOutcome};
use crate::capsule::Capsule;
use crate::config::{ConfigError, RuntimeConfig};
use crate::consent::{ApprovalHandler, Desk};
use crate::dispatch::{DispatchStats, Dispatcher};
use crate::engine::{build_engine, start_epoch_ticker};
use crate::error::LoadError;
use crate::host::uplink::InboundMessage;
use crate::host::{self, HostState, Services};
use crate::inspect::Exports;
use crate::lifecycle::Elicitor;
use crate::limits::{MemoryLedger, MemoryStats};
use crate::profile_cache::ProfileCache;
use crate::registry::Registry;
use capsule_security::CapsuleName;
use capsule_store::KvStore;
use capsule_store::SecretStore;
use capsule_store::{Allowance, AllowanceError, AllowanceStore};

mod component;
mod embed;
mod load;
mod reload;

pub use embed::{PublishError, Published, RequestError, Sender, StatePaths};

/// Prefix of the topics the host publishes its own events on: `runtime.capsule.loaded`
/// (`{capsule, owner, session, version}`), `runtime.capsule.waiting` (`{capsule, provider}`:
/// [`Runtime::load_all`] holds `capsule` back until `provider` is ready) and
/// `runtime.capsule.unloaded` (`{capsule}`).
pub const EVENT_TOPIC_PREFIX: &str = "runtime.capsule";

/// What [`Runtime::inspect`] found out about a capsule.
#[derive(Debug)]
#[non_exhaustive]
pub struct Inspection {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Whether the compiled component came from the cache.
    pub cache: CacheOutcome,
    /// The entry points it really exports.
    pub exports: Exports,
    /// Every import of the component, by name (all of them served).
    pub imports: Vec<String>,
    /// The capabilities that need the operator's grant, against the stored grant
    /// (`added` ones would be asked about at load).
    pub permissions: PermissionDiff,
    /// Requests that can never be granted on this host (the load would fail).
    pub forbidden: Vec<Forbidden>,
    /// Entry points the component exports but the host treats as absent (aliased no-op
    /// stubs), each with the reason.
    pub stubs: Vec<crate::inspect::AliasedStub>,
}

struct RuntimeInner {
    config: RuntimeConfig,
    engine: Engine,
    linker: Linker<HostState>,
    /// The `astrid:*` interfaces the linker serves.
    served: Vec<&'static str>,
    cache: ArtifactCache,
    services: Services,
    profiles: Arc<ProfileCache>,
    /// Principals' homes, shared by all their capsules.
    homes: Arc<crate::homes::Homes>,
    ledger: Arc<MemoryLedger>,
    io: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
    /// Loaded capsules by name, each with its load sequence number (for reverse-order
    /// shutdown).
    capsules: Mutex<HashMap<String, (u64, Capsule)>>,
    next_load: std::sync::atomic::AtomicU64,
    dispatcher: Arc<Dispatcher>,
    approver: RwLock<Option<Arc<dyn Approver>>>,
    host_policy: HostPolicy,
    grants: GrantStore,
    /// Installed versions, with the first records still being synced in the background.
    installed: capsule_store::InstalledVersions,
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
        let linker =
            host::build_linker(&engine).map_err(|e| ConfigError::Engine(format!("{e:#}")))?;
        let cache = ArtifactCache::new(config.cache_dir(), &engine);
        let bus = Bus::with_config(config.bus).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let kv = KvStore::open_in(&StateLayout::new(config.state_dir.clone()))
            .map_err(ConfigError::KvStore)?;
        let secrets = SecretStore::open(&config.state_dir, &config.host_key_file())
            .map_err(ConfigError::SecretStore)?;
        let host_policy = config.host_policy()?;
        start_epoch_ticker(&engine, config.epoch_mode, config.epoch_window)?;
        let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(config.inbound_capacity);
        let uids = Arc::new(host::process::UidMap::new(
            config.process_uids.clone(),
            &config.state_dir,
        ));
        let allowances = AllowanceStore::open(&kv)
            .inspect_err(|e| tracing::warn!(error = %e, "approval allowances unavailable"))
            .ok();
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                served: host::served_interfaces().collect(),
                cache,
                services: Services {
                    bus,
                    limiter: Arc::new(RateLimiter::default()),
                    kv: Arc::new(kv),
                    secrets: Arc::new(secrets),
                    registry: Arc::new(Registry::default()),
                    elicitor: RwLock::new(None),
                    inbound: inbound_tx,
                    net: host::http::NetServices::new(&host_policy, &config),
                    approvals: Arc::new(Desk::new(allowances)),
                    processes: Arc::new(host::process::Keeper::new(Arc::clone(&uids))),
                },
                profiles: Arc::new(ProfileCache::new(config.state_dir.clone())),
                homes: Arc::new(crate::homes::Homes::with_owners(
                    StateLayout::new(config.state_dir.clone()),
                    uids,
                )),
                ledger: Arc::new(MemoryLedger::default()),
                io: Arc::new(Semaphore::new(config.io_concurrency)),
                blocking: Arc::new(Semaphore::new(config.blocking_concurrency)),
                capsules: Mutex::new(HashMap::new()),
                next_load: std::sync::atomic::AtomicU64::new(0),
                dispatcher: Arc::new(Dispatcher::new()),
                approver: RwLock::new(None),
                host_policy,
                grants: GrantStore::new(&config.state_dir),
                installed: capsule_store::InstalledVersions::new(&config.state_dir),
                inbound_rx: Mutex::new(Some(inbound_rx)),
                config,
            }),
        })
    }

    /// The bus capsules talk over; the host and embedders may publish and subscribe on it too.
    pub fn bus(&self) -> &Bus {
        &self.inner.services.bus
    }

    /// The secret store (operators set secrets here; capsules read them through `get-config`).
    pub fn secrets(&self) -> &SecretStore {
        &self.inner.services.secrets
    }

    /// The KV database.
    pub fn kv(&self) -> &KvStore {
        &self.inner.services.kv
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
        *self.inner.services.elicitor.write() = Some(elicitor);
    }

    /// Sets who decides about capability requests the stored grants do not cover (loads
    /// started afterwards ask it). Without one, such loads fail naming what is pending.
    pub fn set_approver(&self, approver: Arc<dyn Approver>) {
        *self.inner.approver.write() = Some(approver);
    }

    /// Sets who decides capsules' `astrid:approval` requests (asked from now on). Without
    /// one, every request not covered by a stored allowance is denied.
    pub fn set_approval_handler(&self, handler: Arc<dyn ApprovalHandler>) {
        self.inner.services.approvals.set_handler(handler);
    }

    /// The "allow always" decisions `principal` holds for `capsule`.
    pub fn allowances(
        &self,
        principal: &PrincipalId,
        capsule: &CapsuleName,
    ) -> Result<Vec<Allowance>, AllowanceError> {
        self.allowance_store()?.list(principal, capsule)
    }

    /// Revokes a stored "allow always" decision; answers whether it was held. The next
    /// request it would have covered goes to the handler again.
    pub fn revoke_allowance(&self, allowance: &Allowance) -> Result<bool, AllowanceError> {
        let revoked = self.allowance_store()?.revoke(allowance)?;
        if revoked {
            tracing::info!(
                target: crate::host::approval::APPROVAL_TARGET,
                capsule = allowance.capsule.as_str(),
                principal = allowance.principal.as_str(),
                op = "approval.revoked",
                action = %crate::host::audit::field(&allowance.action),
                resource = %crate::host::audit::field(&allowance.resource),
                "approval"
            );
        }
        Ok(revoked)
    }

    fn allowance_store(&self) -> Result<&AllowanceStore, AllowanceError> {
        self.inner
            .services
            .approvals
            .allowances
            .as_ref()
            .ok_or_else(|| {
                AllowanceError::Storage("the allowance table could not be opened".into())
            })
    }

    /// The operator's stored grants.
    pub fn grants(&self) -> &GrantStore {
        &self.inner.grants
    }

    /// What may ever be granted on this host.
    pub fn host_policy(&self) -> &HostPolicy {
        &self.inner.host_policy
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
        // Only the inspector needs the details; loading already dropped the stubs.
        let stubs = std::fs::read(&prepared.manifest.component.file)
            .map(|wasm| crate::inspect::aliased_stub_details(&wasm))
            .unwrap_or_default();
        Ok(Inspection {
            stubs,
            manifest: prepared.manifest,
            cache: prepared.cache,
            exports: prepared.exports,
            imports,
            permissions,
            forbidden,
        })
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
        // Nothing is kept for a reload from now on: every child dies with its capsule.
        self.inner.services.processes.close();
        let mut all: Vec<(u64, Capsule)> =
            self.inner.capsules.lock().drain().map(|(_, c)| c).collect();
        all.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        for (_, c) in all {
            c.unload().await;
            self.event("unloaded", serde_json::json!({ "capsule": c.name() }));
        }
        // First installs recorded without waiting for the disk are made durable before the
        // host stops.
        let installed = self.inner.installed.clone();
        let synced = tokio::task::spawn_blocking(move || installed.flush()).await;
        match synced {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "installed versions could not be synced"),
            Err(e) => tracing::error!(error = %e, "installed versions sync did not finish"),
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
        self.inner.services.bus.publish(capsule_bus::Outgoing {
            topic,
            payload,
            source: Uuid::nil(),
            attribution: capsule_bus::Attribution::System,
            hops: 0,
        });
    }
}
