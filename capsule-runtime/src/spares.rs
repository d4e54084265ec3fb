//! The instances a capsule keeps between handler calls. A *warm* instance has served exactly
//! one principal and serves only that principal again; a *spare* is a fresh instance that has
//! run no handler yet and is handed to exactly one principal, then kept warm for it alone. No
//! instance ever serves a second principal. Spares are made in the background by one keeper task
//! per capsule, only while the capsule is being called (none for a capsule never called), at
//! most a few per capsule; everything kept is dropped once the capsule has been idle for
//! [`IDLE_DISCARD`], and at unload.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use capsule_bus::PrincipalId;
use parking_lot::Mutex;
use tokio::sync::Notify;
use wasmtime::Store;
use wasmtime::component::TypedFunc;

use crate::capsule::CapsuleInner;
use crate::host::HostState;
use crate::inspect::HOOK;
use crate::limits::CpuMeter;
use crate::outcome::HookResponse;
use crate::scope::Overlays;

/// How long a capsule goes without handler calls before its warm instances and spares are
/// dropped (the next call then instantiates on its path again).
pub(crate) const IDLE_DISCARD: Duration = Duration::from_secs(30);

/// How long the keeper waits before trying again after a spare failed to instantiate (the
/// pool may be full or the machine too busy for the instantiation's one epoch window).
const SPARE_RETRY: Duration = Duration::from_millis(50);

/// Failed spares in a row after which the keeper waits for the next call that wants one.
const SPARE_ATTEMPTS: u32 = 40;

/// Most spares one capsule keeps ready.
pub(crate) const MAX_SPARES: usize = 2;

/// Most displaced instances waiting for the keeper to drop them; past it the call that
/// displaced one drops it itself.
const MAX_DISCARD: usize = 2;

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
    /// A spare, now the principal's alone; `reset` when it replaces another principal's.
    Spare { pooled: Pooled, reset: bool },
    /// Nothing to reuse: the caller instantiates on its path; `reset` as above.
    Nothing { reset: bool },
}

#[derive(Default)]
struct Stash {
    /// Instances that served one principal each, oldest first.
    warm: VecDeque<Pooled>,
    spares: Vec<Pooled>,
    /// Instances to drop off the call path.
    discard: Vec<Pooled>,
    /// Whether a keeper task runs.
    keeper: bool,
    /// Bumped by every call; the keeper discards everything after a quiet period.
    activity: u64,
    /// Whether the capsule has needed a fresh instance since the keeper last looked.
    wanted: bool,
    /// Whether the last spare failed to instantiate (no retry until a call wants one again).
    failing: bool,
    closed: bool,
}

/// The instances one capsule keeps between handler calls.
pub(crate) struct Instances {
    stash: Mutex<Stash>,
    wake: Notify,
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
            max_warm: max_warm.max(1),
            max_spares,
        }
    }

    /// An instance for `principal`: its own warm one, else a spare. The second value says the
    /// caller must start the keeper.
    pub(crate) fn take(&self, principal: &PrincipalId) -> (Taken, bool) {
        let mut st = self.stash.lock();
        st.activity = st.activity.wrapping_add(1);
        if let Some(at) = st
            .warm
            .iter()
            .rposition(|p| p.principal.as_ref() == Some(principal))
            && let Some(pooled) = st.warm.remove(at)
        {
            return (Taken::Warm(pooled), false);
        }
        let reset = !st.warm.is_empty();
        st.wanted = true;
        st.failing = false;
        let taken = match st.spares.pop() {
            Some(pooled) => Taken::Spare { pooled, reset },
            None => Taken::Nothing { reset },
        };
        let start = self.max_spares > 0 && !st.closed && !st.keeper;
        if start {
            st.keeper = true;
        } else {
            self.wake.notify_one();
        }
        (taken, start)
    }

    /// Keeps `pooled` warm for the principal it served. Returns it when the capsule is closing
    /// (the caller drops it); an older instance over the bound is dropped by the keeper, or
    /// returned when there is none or [`MAX_DISCARD`] already wait for it.
    pub(crate) fn put(&self, pooled: Pooled) -> Option<Pooled> {
        let mut st = self.stash.lock();
        if st.closed || pooled.principal.is_none() {
            return Some(pooled);
        }
        st.warm.push_back(pooled);
        if st.warm.len() <= self.max_warm {
            return None;
        }
        let oldest = st.warm.pop_front();
        // The keeper drops displaced instances off the call path, but only a few at a time:
        // a keeper that cannot keep up (starved by callers that never yield, or waiting after
        // a failed spare) must not hold pool slots until the pool refuses calls.
        if st.keeper && st.discard.len() < MAX_DISCARD {
            st.discard.extend(oldest);
            self.wake.notify_one();
            None
        } else {
            oldest
        }
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

    /// Drops everything kept and refuses to keep more; the keeper stops.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut st = self.stash.lock();
            st.closed = true;
            let mut all: Vec<Pooled> = st.warm.drain(..).collect();
            all.append(&mut st.spares);
            all.append(&mut st.discard);
            all
        };
        drop(dropped);
        self.wake.notify_one();
    }

    /// Instances kept now: warm ones and spares.
    pub(crate) fn kept(&self) -> (usize, usize) {
        let st = self.stash.lock();
        (st.warm.len(), st.spares.len())
    }
}

impl CapsuleInner {
    /// Starts the keeper that refills this capsule's spares and drops what it discards.
    pub(crate) fn start_keeper(self: &Arc<Self>) {
        let Some(guard) = self.calls.helper() else {
            self.instances.stash.lock().keeper = false;
            return;
        };
        let weak = Arc::downgrade(self);
        let instances = Arc::clone(&self.instances);
        tokio::spawn(async move {
            keep(weak, &instances).await;
            // Nothing of the capsule is held any more when the guard counts the keeper out.
            drop(guard);
        });
    }

    /// A spare: a fresh instance for no principal yet, instantiated in the owner's context
    /// (like the run loop) and charged to the owner until a principal takes it.
    async fn instantiate_spare(&self) -> Option<Pooled> {
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

/// The keeper loop: drop discarded instances, top the spares up while calls want them, and
/// drop everything after [`IDLE_DISCARD`] without calls.
async fn keep(capsule: Weak<CapsuleInner>, instances: &Instances) {
    let mut seen = u64::MAX;
    let mut failures = 0u32;
    // Whether the last wait ran its whole course: only then has the capsule been quiet for
    // IDLE_DISCARD. A wake (an instance to discard, a spare wanted) says nothing of idleness.
    let mut waited_out = false;
    loop {
        let (discard, refill) = {
            let mut st = instances.stash.lock();
            if st.closed {
                st.keeper = false;
                return;
            }
            let refill = st.wanted && !st.failing && st.spares.len() < instances.max_spares;
            if !refill {
                st.wanted = false;
            }
            (std::mem::take(&mut st.discard), refill)
        };
        drop(discard);
        if refill {
            let Some(inner) = capsule.upgrade() else {
                break;
            };
            let spare = inner.instantiate_spare().await;
            drop(inner);
            let retry = {
                let mut st = instances.stash.lock();
                match spare {
                    Some(spare) if !st.closed => {
                        failures = 0;
                        st.spares.push(spare);
                    }
                    Some(_) => {}
                    None => {
                        failures += 1;
                        st.failing = true;
                    }
                }
                st.failing && failures < SPARE_ATTEMPTS
            };
            if retry {
                tokio::time::sleep(SPARE_RETRY).await;
                instances.stash.lock().failing = false;
            }
            continue;
        }
        failures = 0;
        {
            let mut st = instances.stash.lock();
            if waited_out && st.activity == seen {
                // A whole quiet period: give everything back.
                let mut all: Vec<Pooled> = st.warm.drain(..).collect();
                all.append(&mut st.spares);
                all.append(&mut st.discard);
                st.keeper = false;
                drop(st);
                drop(all);
                return;
            }
            seen = st.activity;
        }
        waited_out = tokio::time::timeout(IDLE_DISCARD, instances.wake.notified())
            .await
            .is_err();
    }
    instances.stash.lock().keeper = false;
}
