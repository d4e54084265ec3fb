//! A loaded capsule: its Stores, its run loop and its handler calls. Every Store gets the
//! memory limiter and the epoch callback; a call runs in the invocation scope of its principal,
//! which is removed on every exit path (a Store whose call did not complete is discarded, never
//! reused); unloading cancels every waiting host call and interrupts running guest code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use capsule_bus::{Attribution, PrincipalId};
use capsule_security::Manifest;
use capsule_store::{KvStore, SecretStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;
use wasmtime::component::{ComponentType, InstancePre, Lift, Lower, ResourceTable, TypedFunc};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::cache::CacheOutcome;
use crate::calls::{Call, CallQueue, Submitted};
use crate::config::EpochMode;
use crate::host::wasi;
use crate::inspect::{Exports, HOOK, INSTALL, RUN, UPGRADE};
use crate::lifecycle::LifecyclePhase;
use crate::limits::{CpuMeter, Interrupt, MAX_STORE_RESOURCES, MemoryMeter};
use crate::logsink::{LogSink, unix_ms};
use crate::registry::Registry;
use crate::scope::{Caller, InvocationScope, ProfileGrant, ScopeFactory};
use crate::state::{
    BusCtx, BusShared, CapsuleIdentity, FsCtx, FsShared, HostState, KvCtx, LifecycleCtx,
    LifecycleShared, LimitsCtx, LimitsShared, SysCtx, SysShared, UplinkCtx, UplinkShared,
};

/// What `astrid-hook-trigger` returned.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct HookResponse {
    /// `continue`, `final`, `deny` or `abort` (or whatever the guest chose).
    pub action: String,
    /// Optional data: a replacement payload for `continue`, a reason for `deny`/`abort`.
    pub data: Option<String>,
}

/// How a capsule's run loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunExit {
    /// `run` returned.
    Returned,
    /// The host stopped it at an epoch boundary.
    Interrupted(Interrupt),
    /// The guest trapped.
    Trapped(String),
    /// The run instance could not be created.
    Failed(String),
}

/// Why a handler call failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The capsule exports no `astrid-hook-trigger`.
    #[error("capsule `{0}` has no astrid-hook-trigger export")]
    NoHook(String),
    /// The capsule is unloading or unloaded.
    #[error("capsule `{0}` is unloaded")]
    Unloaded(String),
    /// The principal may not act (malformed profile, or disabled).
    #[error("principal `{principal}` refused: {reason}")]
    PrincipalRefused {
        /// The principal.
        principal: PrincipalId,
        /// Why.
        reason: String,
    },
    /// A fresh instance could not be created.
    #[error("cannot instantiate capsule `{capsule}`: {reason}")]
    Instantiate {
        /// The capsule.
        capsule: String,
        /// Why.
        reason: String,
    },
    /// The host stopped the call (deadline, unload).
    #[error("call interrupted: {0}")]
    Interrupted(Interrupt),
    /// The guest trapped; its instance was discarded.
    #[error("guest trapped: {0}")]
    Trapped(String),
    /// The principal's call queue for this capsule is full; the call was dropped.
    #[error("capsule `{capsule}`: call queue of `{principal}` is full; call dropped")]
    QueueFull {
        /// The capsule.
        capsule: String,
        /// The principal.
        principal: PrincipalId,
    },
}

/// What loading found out.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Whether the compiled component came from the cache.
    pub cache: CacheOutcome,
    /// The entry points the capsule really exports (aliased stubs removed).
    pub exports: Exports,
}

/// Everything a new Store of this capsule is built from.
#[derive(Debug)]
pub(crate) struct StoreParts {
    pub(crate) owner_profile: ProfileGrant,
    pub(crate) scopes: Arc<ScopeFactory>,
    pub(crate) bus: Arc<BusShared>,
    pub(crate) sys: Arc<SysShared>,
    pub(crate) limits: Arc<LimitsShared>,
    pub(crate) owner_log: Option<LogSink>,
    pub(crate) kv: Arc<KvStore>,
    pub(crate) secrets: Arc<SecretStore>,
    pub(crate) fs: Arc<FsShared>,
    pub(crate) lifecycle: Arc<LifecycleShared>,
    pub(crate) uplink: Arc<UplinkShared>,
    /// The overlay's upper directory, removed at unload.
    pub(crate) overlay_dir: Option<std::path::PathBuf>,
}

/// A worker's instance: kept between calls for the same principal, rebuilt when the principal
/// changes or a call did not complete.
struct Pooled {
    store: Store<HostState>,
    hook: TypedFunc<(String, Vec<u8>), (HookResponse,)>,
    principal: PrincipalId,
}

/// Counters of a capsule's handler calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls that returned a response.
    pub completed: u64,
    /// Calls that trapped, were interrupted or could not start.
    pub failed: u64,
    /// Calls refused because the principal's queue was full.
    pub dropped: u64,
    /// Fresh instances made because the previous one served another principal.
    pub resets: u64,
    /// Calls waiting in the queues now.
    pub queued: u64,
}

#[derive(Debug, Default)]
struct Counters {
    completed: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
    resets: std::sync::atomic::AtomicU64,
    traps: std::sync::atomic::AtomicU64,
}

pub(crate) struct CapsuleInner {
    pub(crate) identity: Arc<CapsuleIdentity>,
    pub(crate) manifest: Manifest,
    pub(crate) report: LoadReport,
    pub(crate) engine: Engine,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) parts: StoreParts,
    pub(crate) epoch_mode: EpochMode,
    pub(crate) window: Duration,
    pub(crate) max_busy_windows: u32,
    pub(crate) registry: std::sync::Weak<Registry>,
    pub(crate) ready: watch::Receiver<bool>,
    pub(crate) run_exit: watch::Receiver<Option<RunExit>>,
    pub(crate) run_task: parking_lot::Mutex<Option<JoinHandle<()>>>,
    pub(crate) calls: Arc<CallQueue>,
    /// This capsule's handler bindings in the dispatcher, removed at unload.
    pub(crate) bindings: parking_lot::Mutex<Vec<(u64, capsule_bus::TopicPattern)>>,
    pub(crate) dispatcher: std::sync::Weak<crate::dispatch::Dispatcher>,
    counters: Counters,
    fuel: bool,
    unloaded: AtomicBool,
}

/// A loaded capsule. Cheap to clone; all clones refer to the same capsule.
#[derive(Clone)]
pub struct Capsule {
    inner: Arc<CapsuleInner>,
}

impl std::fmt::Debug for Capsule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capsule")
            .field("name", &self.inner.identity.name)
            .field("session", &self.inner.identity.session)
            .field("owner", &self.inner.identity.owner)
            .finish_non_exhaustive()
    }
}

fn classify(err: &wasmtime::Error) -> Result<Interrupt, String> {
    if let Some(i) = err.downcast_ref::<Interrupt>() {
        return Ok(i.clone());
    }
    if matches!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::OutOfFuel)
    ) {
        return Ok(Interrupt::OutOfFuel);
    }
    Err(format!("{err:#}"))
}

impl CapsuleInner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        identity: Arc<CapsuleIdentity>,
        manifest: Manifest,
        report: LoadReport,
        engine: Engine,
        pre: InstancePre<HostState>,
        parts: StoreParts,
        config: &crate::RuntimeConfig,
        registry: std::sync::Weak<Registry>,
        ready: watch::Receiver<bool>,
        run_exit: watch::Receiver<Option<RunExit>>,
        dispatcher: std::sync::Weak<crate::dispatch::Dispatcher>,
    ) -> Self {
        Self {
            identity,
            manifest,
            report,
            engine,
            pre,
            parts,
            epoch_mode: config.epoch_mode,
            window: config.epoch_window,
            max_busy_windows: config.max_busy_windows,
            registry,
            ready,
            run_exit,
            run_task: parking_lot::Mutex::new(None),
            calls: Arc::new(CallQueue::new(
                config.handler_queue_per_principal,
                config.handler_pool_size,
            )),
            bindings: parking_lot::Mutex::new(Vec::new()),
            dispatcher,
            counters: Counters::default(),
            fuel: config.fuel,
            unloaded: AtomicBool::new(false),
        }
    }

    fn owner_quota(&self) -> u64 {
        match &self.parts.owner_profile {
            Ok(p) => p.quotas.max_memory_bytes,
            Err(_) => 0,
        }
    }

    /// A fresh Store for the owner, with the limiter and the epoch callback installed.
    pub(crate) fn new_store(&self, cpu: CpuMeter) -> Store<HostState> {
        self.new_store_for(cpu, &self.identity.owner, self.owner_quota())
    }

    /// A fresh Store whose linear memory, from instantiation on, is charged to `principal`
    /// under `memory_quota`.
    fn new_store_for(
        &self,
        cpu: CpuMeter,
        principal: &PrincipalId,
        memory_quota: u64,
    ) -> Store<HostState> {
        let p = &self.parts;
        let output = wasi::OutputRoute::new(p.owner_log.clone());
        let state = HostState {
            identity: Arc::clone(&self.identity),
            owner_profile: p.owner_profile.clone(),
            scopes: Arc::clone(&p.scopes),
            bus: BusCtx {
                shared: Arc::clone(&p.bus),
                subscriptions: 0,
            },
            sys: SysCtx {
                shared: Arc::clone(&p.sys),
                secrets: Arc::clone(&p.secrets),
            },
            kv: KvCtx {
                store: Arc::clone(&p.kv),
            },
            fs: FsCtx {
                shared: Arc::clone(&p.fs),
                handles: 0,
            },
            lifecycle: LifecycleCtx {
                shared: Arc::clone(&p.lifecycle),
                phase: None,
            },
            uplink: UplinkCtx {
                shared: Arc::clone(&p.uplink),
            },
            limits: LimitsCtx {
                shared: Arc::clone(&p.limits),
                memory: MemoryMeter::new(
                    principal.clone(),
                    memory_quota,
                    Arc::clone(&p.limits.ledger),
                ),
                cpu,
                cancel_seen: false,
            },
            wasi: wasi::locked_down(&output, None),
            output,
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_STORE_RESOURCES);
                table
            },
            scope: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits.memory);
        store.epoch_deadline_callback(|mut ctx| {
            let limits = &mut ctx.data_mut().limits;
            if limits.shared.cancel.is_cancelled() {
                if std::mem::replace(&mut limits.cancel_seen, true) {
                    return Err(wasmtime::Error::new(Interrupt::Unloaded));
                }
                return Ok(UpdateDeadline::Yield(1));
            }
            limits.cpu.tick().map_err(wasmtime::Error::new)?;
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        if self.fuel {
            // Run loops and lifecycle calls are bounded by epochs; handler calls get their
            // own budget before each call.
            if let Err(e) = store.set_fuel(u64::MAX) {
                tracing::error!(error = %e, "cannot fuel a new store");
            }
        }
        store
    }

    /// Runs `run` to completion on its own Store.
    pub(crate) async fn run_loop(self: Arc<Self>, exit: watch::Sender<Option<RunExit>>) {
        let mut store = self.new_store(CpuMeter::run_loop(self.max_busy_windows));
        let outcome = async {
            let instance = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| RunExit::Failed(format!("{e:#}")))?;
            let run = instance
                .get_typed_func::<(), ()>(&mut store, RUN)
                .map_err(|e| RunExit::Failed(format!("{e:#}")))?;
            store.set_epoch_deadline(1);
            run.call_async(&mut store, ())
                .await
                .map_err(|e| match classify(&e) {
                    Ok(i) => RunExit::Interrupted(i),
                    Err(msg) => RunExit::Trapped(msg),
                })
        }
        .instrument(tracing::debug_span!(
            "run",
            capsule = %self.identity.name,
            principal = %self.identity.owner,
        ))
        .await;
        let exit_value = match outcome {
            Ok(()) => RunExit::Returned,
            Err(e) => e,
        };
        match &exit_value {
            RunExit::Returned => tracing::debug!(capsule = %self.identity.name, "run returned"),
            other => tracing::warn!(capsule = %self.identity.name, exit = ?other, "run loop ended"),
        }
        exit.send_replace(Some(exit_value));
    }

    /// Runs `astrid-install` or `astrid-upgrade` in a Store of its own (limits included), with
    /// `astrid:elicit` enabled for its duration. The guest's failure is returned as text.
    pub(crate) async fn run_lifecycle(&self, phase: LifecyclePhase) -> Result<(), String> {
        let timeout = match &self.parts.owner_profile {
            Ok(p) => p.quotas.max_timeout_secs,
            Err(reason) => return Err(reason.to_string()),
        };
        let mut store = self.new_store(CpuMeter::Call {
            elapsed: 0,
            deadline: self.deadline_windows(timeout),
        });
        let export = match phase {
            LifecyclePhase::Install => INSTALL,
            LifecyclePhase::Upgrade { .. } => UPGRADE,
        };
        store.data_mut().lifecycle.phase = Some(phase);
        let tail = wasi::OutputTail::default();
        let output = store.data().output.clone();
        store.data_mut().wasi = wasi::locked_down(&output, Some(tail.clone()));
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let func = instance
            .get_typed_func::<(), ()>(&mut store, export)
            .map_err(|e| format!("{e:#}"))?;
        store.set_epoch_deadline(1);
        let span = tracing::debug_span!(
            "lifecycle",
            capsule = %self.identity.name,
            principal = %self.identity.owner,
            phase = export,
        );
        func.call_async(&mut store, ()).instrument(span).await.map_err(|e| {
            let why = match classify(&e) {
                Ok(i) => i.to_string(),
                Err(msg) => msg,
            };
            tracing::debug!(capsule = %self.identity.name, error = %why, "lifecycle call failed");
            // The guest's words say what went wrong; the trap kind says how it ended, and the
            // wasm backtrace (in the debug log above) helps nobody reading a load error.
            match (tail.last_line(), e.downcast_ref::<wasmtime::Trap>()) {
                (Some(said), Some(trap)) => format!("{said} ({trap})"),
                (Some(said), None) => format!("{said} ({why})"),
                (None, _) => why,
            }
        })
    }

    /// A fresh instance for `scope`'s principal: instantiated under that principal's memory
    /// quota and ledger, with its scope (and so its output route) in place from the start.
    async fn instantiate_call(
        &self,
        scope: &InvocationScope,
        memory_quota: u64,
    ) -> Result<Pooled, InvokeError> {
        let principal = &scope.principal;
        let mut store = self.new_store_for(
            CpuMeter::Call {
                elapsed: 0,
                deadline: 1,
            },
            principal,
            memory_quota,
        );
        store.data_mut().set_scope(Some(scope.clone()));
        let fail = |e: wasmtime::Error| InvokeError::Instantiate {
            capsule: self.identity.name.clone(),
            reason: format!("{e:#}"),
        };
        let instance = self.pre.instantiate_async(&mut store).await.map_err(fail)?;
        let hook = instance
            .get_typed_func::<(String, Vec<u8>), (HookResponse,)>(&mut store, HOOK)
            .map_err(fail)?;
        Ok(Pooled {
            store,
            hook,
            principal: principal.clone(),
        })
    }

    fn deadline_windows(&self, timeout_secs: u64) -> u64 {
        let window_ms = self.window.as_millis().max(1);
        let ms = u128::from(timeout_secs) * 1000;
        u64::try_from(ms.div_ceil(window_ms))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Queues a call of `astrid-hook-trigger` caused by `caller` and waits for its result.
    pub(crate) async fn call(
        self: &Arc<Self>,
        action: String,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Result<HookResponse, InvokeError> {
        let name = || self.identity.name.clone();
        if !self.report.exports.hook {
            return Err(InvokeError::NoHook(name()));
        }
        if self.parts.limits.cancel.is_cancelled() {
            return Err(InvokeError::Unloaded(name()));
        }
        let principal = caller
            .attribution
            .principal()
            .cloned()
            .unwrap_or_else(|| self.identity.owner.clone());
        let (reply, result) = tokio::sync::oneshot::channel();
        let call = Call {
            action,
            payload,
            caller,
            reply,
        };
        match self.calls.submit(&principal, call) {
            Submitted::Queued(spawn) => {
                if spawn {
                    let counted = self.calls.worker_guard();
                    let worker = Arc::clone(self).worker();
                    tokio::spawn(async move {
                        // The worker future (and its hold on the capsule) is gone before the
                        // guard reports the worker stopped, so an unload that waited for it
                        // knows the capsule's stores are released.
                        worker.await;
                        drop(counted);
                    });
                }
            }
            Submitted::Refused => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if self.parts.limits.cancel.is_cancelled() {
                    return Err(InvokeError::Unloaded(name()));
                }
                tracing::warn!(
                    target: "capsule::audit::dispatch",
                    capsule = %self.identity.name,
                    principal = %principal,
                    "handler call dropped: the principal's queue is full"
                );
                return Err(InvokeError::QueueFull {
                    capsule: name(),
                    principal,
                });
            }
        }
        result
            .await
            .unwrap_or_else(|_| Err(InvokeError::Unloaded(name())))
    }

    /// Serves queued calls until the capsule unloads, keeping one instance between calls of
    /// the same principal.
    async fn worker(self: Arc<Self>) {
        let mut pooled: Option<Pooled> = None;
        while let Some((principal, call)) = self.calls.next().await {
            let result = self
                .run_call(
                    &mut pooled,
                    &principal,
                    call.action,
                    call.payload,
                    call.caller,
                )
                .await;
            let counter = if result.is_ok() {
                &self.counters.completed
            } else {
                &self.counters.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Err(InvokeError::Trapped(_) | InvokeError::Interrupted(_)) = &result {
                self.counters.traps.fetch_add(1, Ordering::Relaxed);
            }
            // The caller may have stopped waiting; the result is then simply dropped.
            let _unheard = call.reply.send(result);
        }
    }

    async fn run_call(
        &self,
        pooled: &mut Option<Pooled>,
        principal: &PrincipalId,
        action: String,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Result<HookResponse, InvokeError> {
        let name = || self.identity.name.clone();
        let scope = self.parts.scopes.build(caller, true);
        let profile = match &scope.profile {
            Ok(p) => Arc::clone(p),
            Err(reason) => {
                return Err(InvokeError::PrincipalRefused {
                    principal: principal.clone(),
                    reason: reason.to_string(),
                });
            }
        };
        // Another principal's guest memory is never reused: such an instance is replaced.
        if pooled.as_ref().is_some_and(|p| &p.principal != principal) {
            *pooled = None;
            self.counters.resets.fetch_add(1, Ordering::Relaxed);
        }
        let mut instance = match pooled.take() {
            Some(p) => p,
            None => {
                self.instantiate_call(&scope, profile.quotas.max_memory_bytes)
                    .await?
            }
        };
        {
            let state = instance.store.data_mut();
            state.set_scope(Some(scope));
            state
                .limits
                .memory
                .retarget(principal, profile.quotas.max_memory_bytes);
            state.limits.cpu = CpuMeter::Call {
                elapsed: 0,
                deadline: self.deadline_windows(profile.quotas.max_timeout_secs),
            };
        }
        if self.fuel {
            let budget = profile
                .quotas
                .max_cpu_fuel_per_sec
                .map_or(u64::MAX, |per_sec| {
                    per_sec.saturating_mul(profile.quotas.max_timeout_secs)
                });
            if let Err(e) = instance.store.set_fuel(budget) {
                return Err(InvokeError::Trapped(format!("cannot set fuel: {e:#}")));
            }
        }
        instance.store.set_epoch_deadline(1);
        let span = tracing::debug_span!(
            "handler",
            capsule = %self.identity.name,
            principal = %principal,
            action = %action,
        );
        let result = instance
            .hook
            .call_async(&mut instance.store, (action, payload))
            .instrument(span)
            .await;
        instance.store.data_mut().set_scope(None);
        match result {
            Ok((response,)) => {
                *pooled = Some(instance);
                Ok(response)
            }
            // The Store whose call did not complete is discarded here, never reused.
            Err(e) => Err(match classify(&e) {
                Ok(Interrupt::Unloaded) => InvokeError::Unloaded(name()),
                Ok(i) => InvokeError::Interrupted(i),
                Err(msg) => InvokeError::Trapped(msg),
            }),
        }
    }
}

impl Capsule {
    pub(crate) fn from_inner(inner: Arc<CapsuleInner>) -> Self {
        Self { inner }
    }

    /// The capsule's name (its id).
    pub fn name(&self) -> &str {
        &self.inner.identity.name
    }

    /// This load's session UUID (the `source-id` of its messages).
    pub fn session(&self) -> Uuid {
        self.inner.identity.session
    }

    /// The principal the capsule was loaded for.
    pub fn owner(&self) -> &PrincipalId {
        &self.inner.identity.owner
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
        let mut rx = self.inner.run_exit.clone();
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
        let principal = principal.unwrap_or_else(|| self.inner.identity.owner.clone());
        let caller = Caller {
            attribution: Attribution::Verified(principal),
            source: Uuid::nil(),
            timestamp_ms: unix_ms(),
            hops: 0,
        };
        self.inner
            .call(action.to_string(), payload.to_vec(), caller)
            .await
    }

    /// The uplinks this capsule registered.
    pub fn uplinks(&self) -> Vec<crate::host::uplink::Uplink> {
        self.inner.parts.uplink.registered.lock().clone()
    }

    /// Everything an operator sees of this capsule in `capsule ps` and `capsule metrics`: its
    /// messages in and out, losses, refusals, traps, queue depths, handler calls and the
    /// per-principal memory peaks of its Stores.
    pub fn stats(&self) -> crate::CapsuleStats {
        let mut stats = crate::CapsuleStats {
            calls: self.call_stats(),
            memory: self.inner.parts.limits.ledger.snapshot(),
            ..Default::default()
        };
        self.inner.parts.bus.counters.fill(&mut stats);
        stats.traps = self.inner.counters.traps.load(Ordering::Relaxed);
        if let Some(RunExit::Trapped(_) | RunExit::Interrupted(Interrupt::CpuBudget { .. })) =
            self.run_exit()
        {
            stats.traps += 1;
        }
        stats
    }

    /// Counters of this capsule's handler calls.
    pub fn call_stats(&self) -> CallStats {
        let c = &self.inner.counters;
        CallStats {
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            queued: self.inner.calls.queued() as u64,
        }
    }

    /// Instantiates the capsule once in a fresh Store, then discards it: a health check that
    /// proves the capsule can be instantiated now (pool capacity included), and the measure of
    /// what one instantiation costs.
    pub async fn check_instantiate(&self) -> Result<(), InvokeError> {
        if self.inner.parts.limits.cancel.is_cancelled() {
            return Err(InvokeError::Unloaded(self.inner.identity.name.clone()));
        }
        let mut store = self.inner.new_store(CpuMeter::Call {
            elapsed: 0,
            deadline: 1,
        });
        self.inner
            .pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| InvokeError::Instantiate {
                capsule: self.inner.identity.name.clone(),
                reason: format!("{e:#}"),
            })
    }

    /// Starts unloading without waiting: waiting host calls answer `closed` and running guest
    /// code is interrupted at its next epoch boundary.
    pub(crate) fn cancel(&self) {
        self.inner.parts.limits.cancel.cancel();
        self.inner.engine.increment_epoch();
    }

    /// Whether [`unload`](Self::unload) has been called.
    pub fn is_unloaded(&self) -> bool {
        self.inner.unloaded.load(Ordering::SeqCst)
    }

    /// Unloads the capsule: cancels every waiting host call, interrupts running guest code,
    /// waits for the run loop and any handler call to end, and unregisters the capsule.
    pub async fn unload(&self) {
        if self.inner.unloaded.swap(true, Ordering::SeqCst) {
            return;
        }
        // No new handler calls reach it from now on.
        if let Some(d) = self.inner.dispatcher.upgrade() {
            d.unbind(&std::mem::take(&mut *self.inner.bindings.lock()));
        }
        self.inner.parts.limits.cancel.cancel();
        self.inner.engine.increment_epoch();
        let task = self.inner.run_task.lock().take();
        if let Some(mut task) = task {
            loop {
                tokio::select! {
                    _ = &mut task => break,
                    () = tokio::time::sleep(self.inner.window) => {
                        // Without a ticker nothing else advances the epoch: do it here so a
                        // guest spinning in wasm reaches its interrupt check.
                        if self.inner.epoch_mode == EpochMode::Manual {
                            self.inner.engine.increment_epoch();
                        }
                    }
                }
            }
        }
        self.inner.calls.close(&self.inner.identity.name);
        // Workers hold the capsule's stores (and through them its storage handles); the unload
        // is over only when they are gone. A worker inside wasm is interrupted at its next epoch.
        let stopped = self.inner.calls.workers_stopped();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => break,
                () = tokio::time::sleep(self.inner.window) => {
                    if self.inner.epoch_mode == EpochMode::Manual {
                        self.inner.engine.increment_epoch();
                    }
                }
            }
        }
        if let Some(registry) = self.inner.registry.upgrade() {
            registry.remove(&self.inner.identity.session);
        }
        if let Some(dir) = &self.inner.parts.overlay_dir
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the overlay directory");
        }
        tracing::info!(capsule = %self.inner.identity.name, "capsule unloaded");
    }

    /// Applies the capsule's pending workspace changes (overlay workspaces only).
    pub fn commit_workspace(&self) -> Result<(), capsule_vfs::VfsError> {
        self.inner.parts.fs.workspace.commit()
    }

    /// Discards the capsule's pending workspace changes (overlay workspaces only).
    pub fn rollback_workspace(&self) -> Result<(), capsule_vfs::VfsError> {
        self.inner.parts.fs.workspace.rollback()
    }
}

impl Drop for CapsuleInner {
    fn drop(&mut self) {
        self.parts.limits.cancel.cancel();
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(&self.identity.session);
        }
    }
}
