//! The instances a capsule keeps between handler calls. A *warm* instance has served exactly
//! one principal and serves only that principal again; a *spare* is a fresh instance that has
//! run no handler yet and is handed to exactly one principal, then kept warm for it alone. No
//! instance ever serves a second principal. When a warm instance is displaced, its principal's
//! resources (home, tmp, log, env overlay: never its instance) are kept for that principal's
//! next call, for at most as many principals as warm instances are kept, and reused only for
//! the same principal and only while still current. Spares are made by the spare maker thread
//! ([`crate::spare_maker`]), which callers cannot starve, only while the capsule is being called
//! (none for a capsule never called), one request queued per capsule and at most a few spares
//! each; instances displaced from the warm set are dropped there too, at most [`MAX_DISCARD`]
//! waiting per capsule. Everything kept is dropped once the capsule has been idle for
//! [`IDLE_DISCARD`], and at unload.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use capsule_bus::PrincipalId;
use parking_lot::Mutex;
use tokio::sync::Notify;
use wasmtime::Store;
use wasmtime::component::TypedFunc;

use crate::calls::HelperGuard;
use crate::capsule::CapsuleInner;
use crate::host::HostState;
use crate::inspect::HOOK;
use crate::limits::CpuMeter;
use crate::outcome::HookResponse;
use crate::scope::Overlays;
use crate::spare_maker::{self, Work};

/// How long a capsule goes without handler calls before its warm instances and spares are
/// dropped (the next call then instantiates on its path again).
pub(crate) const IDLE_DISCARD: Duration = Duration::from_secs(30);

/// How long after a spare failed to instantiate (the pool may be full, or the machine too
/// busy for the instantiation's one epoch window) no new one is asked for.
const SPARE_RETRY: Duration = Duration::from_millis(50);

/// Most spares one capsule keeps ready.
pub(crate) const MAX_SPARES: usize = 2;

/// Most displaced instances of one capsule waiting for the maker thread to drop them; past it
/// the call that displaced one drops it itself, so a maker thread that cannot keep up never
/// holds pool slots until the pool refuses calls.
pub(crate) const MAX_DISCARD: usize = 2;

/// How full spares may make the engine's pool: they are made only while the live component
/// instances and memories stay below these marks, so the last quarter of the pool (at least
/// one slot) is always left to calls that must instantiate. Spares only save time; a call must
/// never be refused because other capsules' spares hold the slots it needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpareCeiling {
    instances: u64,
    memories: usize,
    total_instances: u64,
    total_memories: usize,
}

impl SpareCeiling {
    /// The marks for a pool of `pool`'s size.
    pub(crate) fn of(pool: &crate::config::PoolingConfig) -> Self {
        let below = |total: u64| total.saturating_sub((total / 4).max(1));
        let memories = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            instances: below(u64::from(pool.max_instances)),
            memories: memories(below(u64::from(pool.max_memories))),
            total_instances: u64::from(pool.max_instances),
            total_memories: memories(u64::from(pool.max_memories)),
        }
    }

    /// Whether one more spare fits under the marks in `engine`'s pool now.
    fn has_room(&self, engine: &wasmtime::Engine) -> bool {
        engine.pooling_allocator_metrics().is_none_or(|m| {
            m.component_instances() < self.instances && m.memories() < self.memories
        })
    }

    /// Whether `engine`'s pool may be too full for one more instance (a component instance
    /// takes one instance slot and up to [`MEMORIES_PER_INSTANCE`] memories).
    pub(crate) fn may_be_full(&self, engine: &wasmtime::Engine) -> bool {
        engine.pooling_allocator_metrics().is_some_and(|m| {
            m.component_instances() >= self.total_instances
                || m.memories() + MEMORIES_PER_INSTANCE > self.total_memories
        })
    }
}

/// Most memories one component instance takes from the pool (the engine's
/// `max_memories_per_component`).
pub(crate) const MEMORIES_PER_INSTANCE: usize = 8;

/// Capsules that have had spares made, so that a call finding the pool full can take back
/// the slots their spares hold, whichever capsule they belong to.
static HOLDERS: Mutex<Vec<Weak<CapsuleInner>>> = Mutex::new(Vec::new());

/// Lists `capsule` among the capsules that may hold spares (once per capsule).
pub(crate) fn list_holder(capsule: &Weak<CapsuleInner>, inner: &CapsuleInner) {
    if inner.instances.listed.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut all = HOLDERS.lock();
    all.retain(|w| w.strong_count() > 0);
    all.push(Weak::clone(capsule));
}

/// Drops every instance kept between calls (spares, and warm instances no call is using) by
/// the capsules of `engine`'s pool; returns how many went. Kept instances only save time, so
/// a call that needs a slot comes first.
pub(crate) fn shed_kept(engine: &wasmtime::Engine) -> usize {
    let holders: Vec<Arc<CapsuleInner>> = HOLDERS.lock().iter().filter_map(Weak::upgrade).collect();
    let mut shed = Vec::new();
    for holder in holders
        .iter()
        .filter(|h| wasmtime::Engine::same(&h.engine, engine))
    {
        let mut st = holder.instances.stash.lock();
        shed.append(&mut st.spares);
        shed.extend(st.warm.drain(..));
    }
    let n = shed.len();
    drop(shed);
    n
}

/// One instance of the capsule with its hook, and the principal it serves (`None`: a spare
/// that has served nobody yet).
pub(crate) struct Pooled {
    pub(crate) store: Store<HostState>,
    pub(crate) hook: TypedFunc<(String, Vec<u8>), (HookResponse,)>,
    pub(crate) principal: Option<PrincipalId>,
    /// The resources of `principal` its last call ran with, reused by its next call on this
    /// instance while they are current; never handed to anyone else, since the instance is
    /// not.
    pub(crate) overlays: Option<Overlays>,
}

/// What [`Instances::take`] found for a principal.
pub(crate) enum Taken {
    /// The principal's own warm instance.
    Warm(Pooled),
    /// A spare, now the principal's alone; `reset` when it replaces another principal's;
    /// `resources`: the principal's own, kept from its displaced warm instance.
    Spare {
        pooled: Pooled,
        reset: bool,
        resources: Option<Overlays>,
    },
    /// Nothing to reuse: the caller instantiates on its path; `reset` and `resources` as
    /// above.
    Nothing {
        reset: bool,
        resources: Option<Overlays>,
    },
}

/// What the caller of [`Instances::take`] must start (see [`CapsuleInner::after_take`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Needs {
    /// The task that drops everything kept after [`IDLE_DISCARD`] without calls.
    idle_watch: bool,
    /// A request to the maker thread for one more spare.
    refill: bool,
}

/// What the maker thread did with a refill request.
pub(crate) enum Made {
    /// A fresh instance for no principal yet.
    Spare(Pooled),
    /// Instantiation failed.
    Failed,
    /// Nothing was tried (the capsule is closing, or the request could not be queued).
    Skipped,
}

#[derive(Default)]
struct Stash {
    /// Instances that served one principal each, oldest first.
    warm: VecDeque<Pooled>,
    /// The resources of principals whose warm instance was displaced, oldest first; at most
    /// `max_warm`, one entry per principal.
    resources: VecDeque<(PrincipalId, Overlays)>,
    spares: Vec<Pooled>,
    /// Whether a refill request is queued for the maker thread or running there.
    making: bool,
    /// When the last spare failed to instantiate.
    failed_at: Option<Instant>,
    /// Whether the idle watch runs; spares are kept only while it does, so whatever it
    /// drops after a quiet period is not made again until the next call.
    watching: bool,
    /// Bumped by every call; the idle watch drops everything after a quiet period.
    activity: u64,
    closed: bool,
}

/// The instances one capsule keeps between handler calls.
pub(crate) struct Instances {
    stash: Mutex<Stash>,
    /// Wakes the idle watch at close.
    wake: Notify,
    /// Displaced instances handed to the maker thread and not dropped yet.
    discarding: AtomicUsize,
    /// Whether the capsule is in [`HOLDERS`].
    listed: AtomicBool,
    max_warm: usize,
    max_spares: usize,
}

impl Instances {
    /// Keeps at most `max_warm` warm instances (one per call that can run at once) and
    /// `max_spares` spares.
    pub(crate) fn new(max_warm: usize, max_spares: usize) -> Self {
        Self {
            stash: Mutex::new(Stash::default()),
            wake: Notify::new(),
            discarding: AtomicUsize::new(0),
            listed: AtomicBool::new(false),
            max_warm: max_warm.max(1),
            max_spares,
        }
    }

    /// An instance for `principal`: its own warm one, else a spare. The second value says
    /// what the caller must start.
    pub(crate) fn take(&self, principal: &PrincipalId) -> (Taken, Needs) {
        let mut st = self.stash.lock();
        st.activity = st.activity.wrapping_add(1);
        let mut needs = Needs::default();
        if !st.closed && !st.watching {
            st.watching = true;
            needs.idle_watch = true;
        }
        if let Some(at) = st
            .warm
            .iter()
            .rposition(|p| p.principal.as_ref() == Some(principal))
            && let Some(pooled) = st.warm.remove(at)
        {
            return (Taken::Warm(pooled), needs);
        }
        let reset = !st.warm.is_empty();
        let resources = st
            .resources
            .iter()
            .position(|(whose, _)| whose == principal)
            .and_then(|at| st.resources.remove(at))
            .map(|(_, r)| r);
        let taken = match st.spares.pop() {
            Some(pooled) => Taken::Spare {
                pooled,
                reset,
                resources,
            },
            None => Taken::Nothing { reset, resources },
        };
        let retry_ok = st.failed_at.is_none_or(|t| t.elapsed() >= SPARE_RETRY);
        if self.max_spares > 0 && !st.closed && !st.making && retry_ok {
            st.making = true;
            needs.refill = true;
        }
        (taken, needs)
    }

    /// Keeps `pooled` warm for the principal it served. Returns it when the capsule is closing,
    /// or the oldest warm instance when the bound is passed: the caller discards it, and that
    /// instance's principal's resources (taken out of it) are kept for its next call.
    pub(crate) fn put(&self, pooled: Pooled) -> Option<Pooled> {
        let mut st = self.stash.lock();
        if st.closed || pooled.principal.is_none() {
            return Some(pooled);
        }
        st.warm.push_back(pooled);
        if st.warm.len() <= self.max_warm {
            return None;
        }
        let mut old = st.warm.pop_front()?;
        if let (Some(whose), Some(resources)) = (old.principal.clone(), old.overlays.take()) {
            st.resources.retain(|(p, _)| *p != whose);
            st.resources.push_back((whose, resources));
            if st.resources.len() > self.max_warm {
                st.resources.pop_front();
            }
        }
        Some(old)
    }

    /// Gives back a spare nobody used (it did not fit the principal that took it); returns it
    /// when it cannot be kept.
    pub(crate) fn return_spare(&self, spare: Pooled) -> Option<Pooled> {
        let mut st = self.stash.lock();
        if st.closed || spare.principal.is_some() || st.spares.len() >= self.max_spares {
            return Some(spare);
        }
        st.spares.push(spare);
        None
    }

    /// Takes what the maker thread made. Returns whether it must make another (the request
    /// then stays open), and a spare that cannot be kept (the capsule is closing or idle).
    pub(crate) fn made(&self, made: Made) -> (bool, Option<Pooled>) {
        let mut st = self.stash.lock();
        st.making = false;
        match made {
            Made::Spare(spare) => {
                st.failed_at = None;
                if st.closed || !st.watching || st.spares.len() >= self.max_spares {
                    return (false, Some(spare));
                }
                st.spares.push(spare);
                let again = st.spares.len() < self.max_spares;
                st.making = again;
                (again, None)
            }
            Made::Failed => {
                st.failed_at = Some(Instant::now());
                (false, None)
            }
            Made::Skipped => (false, None),
        }
    }

    /// Drops everything kept (instances and resources) and refuses to keep more; the idle
    /// watch stops.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut st = self.stash.lock();
            st.closed = true;
            let mut all: Vec<Pooled> = st.warm.drain(..).collect();
            all.append(&mut st.spares);
            (all, std::mem::take(&mut st.resources))
        };
        drop(dropped);
        self.wake.notify_one();
    }

    /// Instances kept now: warm ones and spares.
    pub(crate) fn kept(&self) -> (usize, usize) {
        let st = self.stash.lock();
        (st.warm.len(), st.spares.len())
    }

    /// Counts one more displaced instance waiting for the maker thread, unless
    /// [`MAX_DISCARD`] already wait.
    fn reserve_discard(&self) -> bool {
        self.discarding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_DISCARD).then_some(n + 1)
            })
            .is_ok()
    }

    /// One displaced instance handed to the maker thread is gone.
    pub(crate) fn discarded(&self) {
        self.discarding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A displaced instance on its way to the maker thread: dropped there (or here, if it never
/// got there), then counted out of [`Instances`] and of the capsule's helpers.
pub(crate) struct Discard {
    pooled: Option<Pooled>,
    instances: Arc<Instances>,
    _guard: HelperGuard,
    handle: Option<tokio::runtime::Handle>,
}

impl Drop for Discard {
    fn drop(&mut self) {
        let _entered = self.handle.as_ref().map(tokio::runtime::Handle::enter);
        drop(self.pooled.take());
        self.instances.discarded();
    }
}

impl CapsuleInner {
    /// Starts what [`Instances::take`] asked for: the idle watch, and a refill on the maker
    /// thread.
    pub(crate) fn after_take(self: &Arc<Self>, needs: Needs) {
        if needs.idle_watch {
            self.start_idle_watch();
        }
        if needs.refill {
            let sent = tokio::runtime::Handle::try_current()
                .map_err(drop)
                .and_then(|h| {
                    spare_maker::send(Work::Refill(Arc::downgrade(self), h)).map_err(drop)
                });
            if sent.is_err() {
                drop(self.instances.made(Made::Skipped));
            }
        }
    }

    /// Drops an instance displaced from the warm set: on the maker thread when fewer than
    /// [`MAX_DISCARD`] already wait there, here otherwise.
    pub(crate) fn discard(&self, pooled: Pooled) {
        if !self.instances.reserve_discard() {
            drop(pooled);
            return;
        }
        let Some(guard) = self.calls.helper() else {
            drop(pooled);
            self.instances.discarded();
            return;
        };
        let work = Discard {
            pooled: Some(pooled),
            instances: Arc::clone(&self.instances),
            _guard: guard,
            handle: tokio::runtime::Handle::try_current().ok(),
        };
        // Without a maker thread the work comes back and is dropped here.
        drop(spare_maker::send(Work::Discard(Box::new(work))));
    }

    fn start_idle_watch(&self) {
        let Some(guard) = self.calls.helper() else {
            self.instances.stash.lock().watching = false;
            return;
        };
        let instances = Arc::clone(&self.instances);
        tokio::spawn(async move {
            watch_idle(&instances).await;
            drop(guard);
        });
    }

    /// A spare: a fresh instance for no principal yet, instantiated in the owner's context
    /// (like the run loop) and charged to the owner until a principal takes it.
    pub(crate) async fn instantiate_spare(&self) -> Option<Pooled> {
        if let Some(ceiling) = &self.spare_ceiling
            && !ceiling.has_room(&self.engine)
        {
            return None;
        }
        let mut store = self.new_store(CpuMeter::call(1, self.window));
        let instance = self.pre.instantiate_async(&mut store).await.ok()?;
        let hook = instance
            .get_typed_func::<(String, Vec<u8>), (HookResponse,)>(&mut store, HOOK)
            .ok()?;
        Some(Pooled {
            store,
            hook,
            principal: None,
            overlays: None,
        })
    }
}

/// Drops everything kept once a whole [`IDLE_DISCARD`] passed without calls; ends then or at
/// close.
async fn watch_idle(instances: &Instances) {
    let mut seen = instances.stash.lock().activity;
    loop {
        let _woken = tokio::time::timeout(IDLE_DISCARD, instances.wake.notified()).await;
        let mut st = instances.stash.lock();
        if st.closed {
            st.watching = false;
            return;
        }
        if st.activity == seen {
            let mut all: Vec<Pooled> = st.warm.drain(..).collect();
            all.append(&mut st.spares);
            let resources = std::mem::take(&mut st.resources);
            st.watching = false;
            drop(st);
            drop((all, resources));
            return;
        }
        seen = st.activity;
    }
}
