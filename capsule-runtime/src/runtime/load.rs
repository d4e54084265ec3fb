//! Loading, phase by phase. **Prepare**: the component ([`Runtime::prepare`]), then the grant
//! decision and the owner ([`Runtime::admit`]). **Assemble**: the capsule's identity, scopes
//! and budgets, and every capability's shared part ([`Runtime::assemble`]). **Lifecycle**:
//! install or upgrade when the recorded version says so ([`Runtime::install`]). **Activate**:
//! the grant recorded, the capsule registered, its handlers bound and its run loop started
//! ([`Runtime::activate`]). A phase that fails leaves nothing behind: nothing is registered,
//! bound, started or recorded before the lifecycle call succeeded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_bus::PrincipalId;
use capsule_security::{CapsulePolicy, Grant, Manifest, PrincipalProfile};
use uuid::Uuid;

use super::Runtime;
use super::component::Prepared;
use crate::approval::{DecideError, Decided, Decider};
use crate::capsule::{Assembled, Capsule, CapsuleInner, LoadReport};
use crate::error::LoadError;
use crate::host::{self, Assembly, OwnerFiles};
use crate::lifecycle::{self, LifecyclePhase};
use crate::limits::{LimitsShared, MemoryLedger};
use crate::scope::{PrincipalResources, ProfileGrant, ScopeFactory};
use crate::state::{CapsuleIdentity, CoreParts};
use capsule_security::plan_load;

/// What the operator and the owner's profile allow a prepared capsule.
struct Admitted {
    decided: Decided,
    /// The capsule's policy: `requested ∩ granted`.
    policy: Arc<CapsulePolicy>,
    owner: PrincipalId,
    /// The owner's profile, as every Store of the capsule starts with it.
    owner_profile: ProfileGrant,
    /// The same profile, known to be usable.
    profile: Arc<PrincipalProfile>,
}

impl Runtime {
    /// Loads the capsule in `dir` (or the manifest file `dir` names) for the configured owner.
    pub async fn load(&self, dir: impl AsRef<Path>) -> Result<Capsule, LoadError> {
        let owner = self.inner.config.owner.clone();
        self.load_as(dir, owner).await
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
        let prepared = self.prepare(dir).await?;
        let admitted = self.admit(&prepared.manifest, owner, known).await?;
        let inner = self.assemble(prepared, &admitted)?;
        // Install or upgrade first: a capsule whose lifecycle call fails is never registered,
        // bound or started.
        self.install(&inner, &admitted.owner).await?;
        self.activate(inner, &admitted)
    }

    /// The grant decision and the owner: a capsule of that name must not be loaded yet, its
    /// requests must be decided, and its owner must be allowed to act.
    async fn admit(
        &self,
        manifest: &Manifest,
        owner: PrincipalId,
        known: Option<&Grant>,
    ) -> Result<Admitted, LoadError> {
        let name = manifest.package.name.as_str();
        if self.inner.services.registry.contains_name(name) {
            return Err(LoadError::AlreadyLoaded(name.to_string()));
        }
        let decided = self.decide(manifest, known).await?;
        let owner_profile = self.inner.profiles.resolve(&owner);
        let profile = owner_profile
            .clone()
            .map_err(|reason| LoadError::OwnerRefused {
                capsule: name.to_string(),
                owner: owner.clone(),
                reason,
            })?;
        let policy = Arc::new(CapsulePolicy::granted(
            manifest,
            &decided.grant,
            &decided.mounts,
        ));
        Ok(Admitted {
            decided,
            policy,
            owner,
            owner_profile,
            profile,
        })
    }

    /// Builds the capsule: a new session, the owner's files, the budgets and scopes every
    /// Store starts from, and each capability's shared part.
    fn assemble(
        &self,
        prepared: Prepared,
        admitted: &Admitted,
    ) -> Result<Arc<CapsuleInner>, LoadError> {
        let Prepared {
            manifest,
            cache,
            exports,
            pre,
        } = prepared;
        let name = manifest.package.name.as_str().to_string();
        let owner = &admitted.owner;
        let session = Uuid::new_v4();
        let identity = Arc::new(CapsuleIdentity {
            name: name.clone(),
            session,
            owner: owner.clone(),
        });
        let owner_files = match PrincipalResources::open(&self.inner.homes, owner, &name) {
            Some(f) => OwnerFiles {
                env: f.env,
                home: Some(f.home),
                tmp: Some(f.tmp),
                log: f.log,
            },
            None => OwnerFiles::default(),
        };
        let caps = host::Shared::assemble(&Assembly {
            identity: &identity,
            manifest: &manifest,
            policy: &admitted.policy,
            mounts: &admitted.decided.mounts,
            owner_profile: &admitted.profile,
            owner_files: &owner_files,
            config: &self.inner.config,
            services: &self.inner.services,
        })?;
        let core = CoreParts {
            owner_profile: admitted.owner_profile.clone(),
            scopes: Arc::new(ScopeFactory {
                owner: owner.clone(),
                capsule: name,
                session,
                homes: Arc::clone(&self.inner.homes),
                profiles: Arc::clone(&self.inner.profiles),
            }),
            limits: Arc::new(LimitsShared {
                io: Arc::clone(&self.inner.io),
                blocking: Arc::clone(&self.inner.blocking),
                cancel: tokio_util::sync::CancellationToken::new(),
                ledger: Arc::new(MemoryLedger::child_of(Arc::clone(&self.inner.ledger))),
            }),
            owner_log: owner_files.log,
            identity,
        };
        Ok(Arc::new(CapsuleInner::new(
            Assembled {
                manifest,
                report: LoadReport { cache, exports },
                pre,
                core,
                caps,
            },
            self.inner.engine.clone(),
            &self.inner.config,
            Arc::downgrade(&self.inner.services.registry),
        )))
    }

    /// Runs `astrid-install` or `astrid-upgrade` when the version recorded for the owner says
    /// so (and the capsule exports it), then records the version: durably before the load
    /// returns when a lifecycle call ran or a record is replaced; a first record after which
    /// no guest code ran is synced in the background with others (see
    /// [`InstalledVersions::write_unsynced`](capsule_store::InstalledVersions::write_unsynced)).
    async fn install(&self, inner: &CapsuleInner, owner: &PrincipalId) -> Result<(), LoadError> {
        let name = &inner.identity().name;
        let version = &inner.manifest.package.version;
        let record = |source| LoadError::Installed {
            capsule: name.clone(),
            source,
        };
        let installed = &self.inner.installed;
        let recorded = installed.read(owner, name).map_err(record)?;
        let first = recorded.is_none();
        let Some(phase) = lifecycle::phase_for(recorded, version) else {
            return Ok(());
        };
        let exports = inner.report.exports;
        let exported = match phase {
            LifecyclePhase::Install => exports.install,
            LifecyclePhase::Upgrade { .. } => exports.upgrade,
        };
        if exported {
            tracing::info!(capsule = %name, %owner, phase = phase.name(), "running lifecycle call");
            inner
                .run_lifecycle(phase.clone())
                .await
                .map_err(|failure| LoadError::Lifecycle {
                    capsule: name.clone(),
                    phase,
                    failure,
                })?;
        } else if first {
            // No record before and no guest code ran: losing this record in a crash leaves
            // the owner where this load started, so it need not wait for the disk.
            return installed
                .write_unsynced(owner, name, version)
                .map_err(record);
        }
        installed.write(owner, name, version).map_err(record)
    }

    /// Makes the capsule live: records a new grant decision, registers the capsule (its name
    /// must still be free), binds its handlers, starts its run loop and announces it.
    fn activate(
        &self,
        inner: Arc<CapsuleInner>,
        admitted: &Admitted,
    ) -> Result<Capsule, LoadError> {
        let identity = inner.identity();
        let (name, session, owner) = (&identity.name, identity.session, &identity.owner);
        if admitted.decided.record {
            self.inner
                .grants
                .save(&admitted.decided.grant)
                .map_err(|source| LoadError::Grant {
                    capsule: name.clone(),
                    source,
                })?;
        }
        let capabilities = admitted.policy.capabilities().clone();
        if !self
            .inner
            .services
            .registry
            .insert(session, name, capabilities)
        {
            return Err(LoadError::AlreadyLoaded(name.clone()));
        }
        tracing::info!(
            capsule = %name,
            %owner,
            %session,
            cache = ?inner.report.cache,
            exports = ?inner.report.exports,
            "capsule loaded"
        );
        self.inner.dispatcher.bind(&self.inner.services.bus, &inner);
        inner.start();
        self.event(
            "loaded",
            serde_json::json!({
                "capsule": name,
                "owner": owner.as_str(),
                "session": session.to_string(),
                "version": inner.manifest.package.version.to_string(),
            }),
        );
        let name = name.clone();
        // A capsule unloaded through its own handle leaves the runtime's list then: one
        // removal, instead of a sweep over every loaded capsule on each load.
        let runtime = Arc::downgrade(&self.inner);
        let (forget, session) = (name.clone(), session);
        inner.on_unload(move || {
            if let Some(rt) = runtime.upgrade() {
                let mut capsules = rt.capsules.lock();
                if capsules
                    .get(&forget)
                    .is_some_and(|(_, c)| c.session() == session)
                {
                    capsules.remove(&forget);
                }
            }
        });
        let capsule = Capsule::from_inner(inner);
        let mut capsules = self.inner.capsules.lock();
        let seq = self
            .inner
            .next_load
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        capsules.insert(name, (seq, capsule.clone()));
        Ok(capsule)
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

    /// Loads the capsules in `dirs` for the configured owner, in dependency order: each
    /// capsule's non-optional imports must be exported (in a matching version) by another
    /// capsule in the set or one already loaded; a cycle or an unmet import fails the whole set
    /// before anything starts, naming the capsules or the import. Uplink capsules load first.
    /// A capsule starts only once the providers it imports from are ready (a provider with a
    /// run loop after it calls `signal-ready`, or after [`RuntimeConfig::ready_timeout`], which
    /// is logged). If any capsule fails to load, the ones this call loaded are unloaded again.
    /// Returns the capsules in the order they were loaded.
    ///
    /// [`RuntimeConfig::ready_timeout`]: crate::RuntimeConfig::ready_timeout
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
                if provider.is_ready() {
                    Ok(())
                } else if optional {
                    let shown = exit.as_ref().map_or_else(|| "no run loop".to_string(), ToString::to_string);
                    tracing::warn!(capsule = %dependent, provider = %provider.name(), exit = %shown, "optional provider stopped before it was ready");
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
}
