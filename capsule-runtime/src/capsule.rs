//! A loaded capsule: the handle embedders hold, and what every Store, run loop and handler
//! call of it is built from. Unloading cancels every waiting host call, interrupts running
//! guest code, waits for the run loop and the handler workers to let go of their Stores, and
//! only then tells each capability the capsule is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use capsule_bus::{Attribution, PrincipalId};
use capsule_security::Manifest;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;
use wasmtime::Engine;
use wasmtime::component::InstancePre;

use crate::cache::CacheOutcome;
use crate::calls::CallQueue;
use crate::config::{EpochMode, RuntimeConfig};
use crate::host::{self, HostState};
use crate::inspect::Exports;
use crate::limits::{CpuMeter, Interrupt};
use crate::logsink::unix_ms;
use crate::outcome::{HookResponse, InvokeError, RunExit};
use crate::registry::Registry;
use crate::scope::Caller;
use crate::spares::{Instances, MAX_SPARES, SpareCeiling};
use crate::state::{CapsuleIdentity, CoreParts};
use crate::stats::{CallCounters, CallStats, CapsuleStats};

/// What loading found out.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoadReport {
    /// Whether the compiled component came from the cache.
    pub cache: CacheOutcome,
    /// The entry points the capsule really exports (aliased stubs removed).
    pub exports: Exports,
}

/// Everything a capsule is made of once its capabilities are assembled: the input of
/// [`CapsuleInner::new`].
pub(crate) struct Assembled {
    pub(crate) manifest: Manifest,
    pub(crate) report: LoadReport,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) core: CoreParts,
    pub(crate) caps: host::Shared,
}

/// Work to do once when the capsule unloads, before it waits for its Stores (removing its
/// handler bindings, so no new call reaches it).
type OnUnload = Box<dyn FnOnce() + Send>;

pub(crate) struct CapsuleInner {
    pub(crate) manifest: Manifest,
    pub(crate) report: LoadReport,
    pub(crate) engine: Engine,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) core: CoreParts,
    pub(crate) caps: host::Shared,
    pub(crate) epoch_mode: EpochMode,
    pub(crate) window: Duration,
    pub(crate) max_busy_windows: u32,
    pub(crate) fuel: bool,
    registry: Weak<Registry>,
    ready: watch::Receiver<bool>,
    pub(crate) run_exit: watch::Sender<Option<RunExit>>,
    run_task: Mutex<Option<JoinHandle<()>>>,
    pub(crate) calls: Arc<CallQueue>,
    /// Warm instances and spares kept between handler calls.
    pub(crate) instances: Arc<Instances>,
    /// Up to where the engine's pool may be filled by spares (`None`: no pooling allocator).
    pub(crate) spare_ceiling: Option<SpareCeiling>,
    on_unload: Mutex<Vec<OnUnload>>,
    pub(crate) counters: CallCounters,
    unloaded: AtomicBool,
}

impl CapsuleInner {
    /// A capsule made of `parts`, run by `engine` under `config`'s budgets, registered in
    /// `registry` once activated.
    pub(crate) fn new(
        parts: Assembled,
        engine: Engine,
        config: &RuntimeConfig,
        registry: Weak<Registry>,
    ) -> Self {
        let Assembled {
            manifest,
            report,
            pre,
            core,
            caps,
        } = parts;
        let ready = caps.sys.ready.subscribe();
        Self {
            manifest,
            report,
            engine,
            pre,
            core,
            caps,
            epoch_mode: config.epoch_mode,
            window: config.epoch_window,
            max_busy_windows: config.max_busy_windows,
            fuel: config.fuel,
            registry,
            ready,
            run_exit: watch::Sender::new(None),
            run_task: Mutex::new(None),
            calls: Arc::new(CallQueue::new(
                config.handler_queue_per_principal,
                config.handler_pool_size,
            )),
            instances: Arc::new(Instances::new(
                config.handler_pool_size,
                MAX_SPARES.min(config.handler_pool_size),
            )),
            spare_ceiling: config.pooling.as_ref().map(SpareCeiling::of),
            on_unload: Mutex::new(Vec::new()),
            counters: CallCounters::default(),
            unloaded: AtomicBool::new(false),
        }
    }

    pub(crate) fn identity(&self) -> &CapsuleIdentity {
        &self.core.identity
    }

    /// Adds work for [`Capsule::unload`] to do first.
    pub(crate) fn on_unload(&self, work: impl FnOnce() + Send + 'static) {
        self.on_unload.lock().push(Box::new(work));
    }

    /// Starts the run loop (with a `run` export) or marks the capsule ready (without one:
    /// there is nothing to wait for).
    pub(crate) fn start(self: &Arc<Self>) {
        if self.report.exports.run {
            let task = tokio::spawn(Arc::clone(self).run_loop());
            *self.run_task.lock() = Some(task);
        } else {
            self.caps.sys.ready.send_replace(true);
        }
    }
}

/// A loaded capsule. Cheap to clone; all clones refer to the same capsule.
#[derive(Clone)]
pub struct Capsule {
    inner: Arc<CapsuleInner>,
}

impl std::fmt::Debug for Capsule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.inner.identity();
        f.debug_struct("Capsule")
            .field("name", &id.name)
            .field("session", &id.session)
            .field("owner", &id.owner)
            .finish_non_exhaustive()
    }
}

impl Capsule {
    pub(crate) fn from_inner(inner: Arc<CapsuleInner>) -> Self {
        Self { inner }
    }

    /// The capsule's name (its id).
    pub fn name(&self) -> &str {
        &self.inner.identity().name
    }

    /// This load's session UUID (the `source-id` of its messages).
    pub fn session(&self) -> Uuid {
        self.inner.identity().session
    }

    /// The principal the capsule was loaded for.
    pub fn owner(&self) -> &PrincipalId {
        &self.inner.identity().owner
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// What loading found out.
    pub fn report(&self) -> &LoadReport {
        &self.inner.report
    }

    /// Waits up to `timeout` for the capsule to call `signal-ready`; whether it did.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.ready.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the capsule has called `signal-ready`.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// How the run loop ended, if it has.
    pub fn run_exit(&self) -> Option<RunExit> {
        self.inner.run_exit.borrow().clone()
    }

    /// Waits for the run loop to end; `None` if the capsule has no run loop.
    pub async fn wait_run_exit(&self) -> Option<RunExit> {
        if !self.inner.report.exports.run {
            return None;
        }
        let mut rx = self.inner.run_exit.subscribe();
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// Calls the capsule's `astrid-hook-trigger(action, payload)` on behalf of `principal`
    /// (the owner when `None`), under that principal's scope, quotas and deadline.
    pub async fn invoke(
        &self,
        action: &str,
        payload: &[u8],
        principal: Option<PrincipalId>,
    ) -> Result<HookResponse, InvokeError> {
        let principal = principal.unwrap_or_else(|| self.inner.identity().owner.clone());
        let caller = Caller {
            attribution: Attribution::Verified(principal),
            source: Uuid::nil(),
            timestamp_ms: unix_ms(),
            hops: 0,
        };
        self.inner
            .call(action.to_string(), payload.to_vec(), caller, true)
            .await
    }

    /// The uplinks this capsule registered.
    pub fn uplinks(&self) -> Vec<crate::Uplink> {
        self.inner.caps.uplink.registered.lock().clone()
    }

    /// Everything an operator sees of this capsule in `capsule ps` and `capsule metrics`: its
    /// messages in and out, losses, refusals, traps, queue depths, handler calls and the
    /// per-principal memory peaks of its Stores.
    pub fn stats(&self) -> CapsuleStats {
        let mut stats = CapsuleStats {
            calls: self.call_stats(),
            memory: self.inner.core.limits.ledger.snapshot(),
            ..Default::default()
        };
        self.inner.caps.ipc.counters.fill(&mut stats);
        stats.traps = self.inner.counters.traps();
        if let Some(RunExit::Trapped(_) | RunExit::Interrupted(Interrupt::CpuBudget { .. })) =
            self.run_exit()
        {
            stats.traps += 1;
        }
        stats
    }

    /// Counters of this capsule's handler calls.
    pub fn call_stats(&self) -> CallStats {
        self.inner.counters.snapshot(
            self.inner.calls.queued() as u64,
            self.inner.instances.kept(),
        )
    }

    /// Instantiates the capsule once in a fresh Store, then discards it: a health check that
    /// proves the capsule can be instantiated now (pool capacity included), and the measure of
    /// what one instantiation costs.
    pub async fn check_instantiate(&self) -> Result<(), InvokeError> {
        if self.inner.core.limits.cancel.is_cancelled() {
            return Err(InvokeError::Unloaded(self.inner.identity().name.clone()));
        }
        let mut store = self.inner.new_store(CpuMeter::call(1, self.inner.window));
        self.inner
            .pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|source| InvokeError::Instantiate {
                capsule: self.inner.identity().name.clone(),
                source,
            })
    }

    /// Starts unloading without waiting: waiting host calls answer `closed` and running guest
    /// code is interrupted at its next epoch boundary.
    pub(crate) fn cancel(&self) {
        self.inner.core.limits.cancel.cancel();
        self.inner.engine.increment_epoch();
    }

    /// Whether [`unload`](Self::unload) has been called.
    pub fn is_unloaded(&self) -> bool {
        self.inner.unloaded.load(Ordering::SeqCst)
    }

    /// Unloads the capsule: cancels every waiting host call, interrupts running guest code,
    /// waits for the run loop and any handler call to end, and unregisters the capsule.
    pub async fn unload(&self) {
        let inner = &self.inner;
        if inner.unloaded.swap(true, Ordering::SeqCst) {
            return;
        }
        // No new handler calls reach it from now on.
        let first: Vec<OnUnload> = std::mem::take(&mut *inner.on_unload.lock());
        for work in first {
            work();
        }
        self.cancel();
        let task = inner.run_task.lock().take();
        if let Some(mut task) = task {
            loop {
                tokio::select! {
                    _ = &mut task => break,
                    () = tokio::time::sleep(inner.window) => inner.nudge(),
                }
            }
        }
        inner.calls.close(&inner.identity().name);
        inner.instances.close();
        // Running calls and the spare keeper hold the capsule's stores (and through them its
        // storage handles); the unload is over only when they are gone. A call inside wasm is
        // interrupted at its next epoch.
        let stopped = inner.calls.workers_stopped();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => break,
                () = tokio::time::sleep(inner.window) => inner.nudge(),
            }
        }
        if let Some(registry) = inner.registry.upgrade() {
            registry.remove(&inner.identity().session);
        }
        inner.caps.unloaded();
        tracing::info!(capsule = %inner.identity().name, "capsule unloaded");
    }

    /// Applies the capsule's pending workspace changes (overlay workspaces only).
    pub fn commit_workspace(&self) -> Result<(), capsule_vfs::VfsError> {
        self.inner.caps.fs.workspace.commit()
    }

    /// Discards the capsule's pending workspace changes (overlay workspaces only).
    pub fn rollback_workspace(&self) -> Result<(), capsule_vfs::VfsError> {
        self.inner.caps.fs.workspace.rollback()
    }
}

impl CapsuleInner {
    /// Without a ticker nothing else advances the epoch: an unload waiting on a guest spinning
    /// in wasm advances it so the guest reaches its interrupt check.
    fn nudge(&self) {
        if self.epoch_mode == EpochMode::Manual {
            self.engine.increment_epoch();
        }
    }
}

impl Drop for CapsuleInner {
    fn drop(&mut self) {
        self.core.limits.cancel.cancel();
        self.instances.close();
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(&self.core.identity.session);
        }
    }
}
