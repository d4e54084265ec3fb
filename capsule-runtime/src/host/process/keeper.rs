//! The host-owned keeper of persistent children across a reload. While
//! `Runtime::reload` replaces a capsule, the old instance's persistent children (running, or
//! exited and still within their retention, with their output rings and exit) are parked
//! here under the capsule's name; only a capsule loaded under that same name during that
//! same reload takes them back, and only if it is still granted persistence and each child's
//! program and arguments. A record keeps the principal that started it, so after the reload,
//! as before it, only that principal finds it by id. Whatever is not taken back when the
//! reload ends (the new capsule failed to load, has another name, or lost the grant) is
//! killed with its tree, and so is everything parked when the host shuts down: outside a
//! reload, unloading a capsule still kills every child it has.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::child::Proc;
use super::shutdown;
use super::uids::UidMap;

/// Persistent children held between two instances of a capsule; one per runtime.
#[derive(Debug, Default)]
pub(crate) struct Keeper {
    state: Mutex<State>,
    /// One reload at a time, so two reloads of a name never share or steal parked children.
    reloads: tokio::sync::Mutex<()>,
    /// Source of reload tokens.
    next: AtomicU64,
    /// The user id each principal's children run as.
    pub(super) uids: Arc<UidMap>,
}

tokio::task_local! {
    /// The token of the reload whose own load runs in this task: a load racing the reload
    /// (another task loading a capsule of the same name, possibly for another owner, while
    /// the old instance is gone and the new one not yet in) must not take its children.
    static RELOADING: u64;
}

#[derive(Debug, Default)]
struct State {
    /// Names being reloaded now.
    reloading: HashMap<String, Parked>,
    /// Set at shutdown: nothing is parked any more.
    closed: bool,
}

#[derive(Debug, Default)]
struct Parked {
    /// Only the load run by [`Reload::load`] with this token takes these children.
    token: u64,
    /// Unloaded with the old instance, not yet taken back.
    waiting: Vec<Arc<Proc>>,
    /// Taken back by the new instance; killed if its load fails after all.
    adopted: Vec<Arc<Proc>>,
}

/// A reload in progress; dropping it ends the reload (see [`Reload::loaded`]).
pub(crate) struct Reload<'a> {
    keeper: &'a Keeper,
    name: String,
    token: u64,
    loaded: bool,
    _one_at_a_time: tokio::sync::MutexGuard<'a, ()>,
}

impl Keeper {
    /// A keeper whose children run as the ids `uids` assigns.
    pub(crate) fn new(uids: Arc<UidMap>) -> Self {
        Self {
            uids,
            ..Self::default()
        }
    }

    /// Starts reloading the capsule `name`: until the returned guard is dropped, unloading a
    /// capsule of that name parks its persistent children instead of killing them.
    pub(crate) async fn begin(&self, name: &str) -> Reload<'_> {
        let guard = self.reloads.lock().await;
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.state.lock().reloading.insert(
            name.to_string(),
            Parked {
                token,
                ..Parked::default()
            },
        );
        Reload {
            keeper: self,
            name: name.to_string(),
            token,
            loaded: false,
            _one_at_a_time: guard,
        }
    }

    /// Keeps the persistent ones of `procs` (unloaded with capsule `name`) if `name` is being
    /// reloaded; returns the ones to kill.
    pub(super) fn park(&self, name: &str, procs: Vec<Arc<Proc>>) -> Vec<Arc<Proc>> {
        let mut state = self.state.lock();
        if state.closed {
            return procs;
        }
        let Some(parked) = state.reloading.get_mut(name) else {
            return procs;
        };
        let (keep, kill): (Vec<_>, Vec<_>) = procs.into_iter().partition(|p| p.persistent);
        parked.waiting.extend(keep);
        kill
    }

    /// Hands the children parked under `name` that `wanted` accepts to the capsule loading
    /// under that name, if that load is the reload's own (see [`Reload::load`]).
    pub(super) fn adopt(&self, name: &str, wanted: impl Fn(&Proc) -> bool) -> Vec<Arc<Proc>> {
        let mut state = self.state.lock();
        let Some(parked) = state.reloading.get_mut(name) else {
            return Vec::new();
        };
        if RELOADING.try_with(|t| *t).ok() != Some(parked.token) {
            return Vec::new();
        }
        let (take, leave): (Vec<_>, Vec<_>) = std::mem::take(&mut parked.waiting)
            .into_iter()
            .partition(|p| wanted(p));
        parked.waiting = leave;
        parked.adopted.extend(take.iter().cloned());
        take
    }

    /// Kills everything still parked and parks nothing from now on (host shutdown).
    pub(crate) fn close(&self) {
        let procs: Vec<Arc<Proc>> = {
            let mut state = self.state.lock();
            state.closed = true;
            state
                .reloading
                .values_mut()
                .flat_map(|p| std::mem::take(&mut p.waiting))
                .collect()
        };
        shutdown(&procs);
    }
}

impl Reload<'_> {
    /// Runs `load` as this reload's own load: only a capsule assembled inside it takes the
    /// parked children back.
    pub(crate) async fn load<F: std::future::Future>(&self, load: F) -> F::Output {
        RELOADING.scope(self.token, load).await
    }

    /// Records that the new capsule loaded: what it took back is its own from now on.
    pub(crate) fn loaded(&mut self) {
        self.loaded = true;
    }
}

impl Drop for Reload<'_> {
    fn drop(&mut self) {
        let Some(parked) = self.keeper.state.lock().reloading.remove(&self.name) else {
            return;
        };
        let mut doomed = parked.waiting;
        if !self.loaded {
            // The instance that took them never went live (its load failed or was abandoned).
            doomed.extend(parked.adopted);
        }
        shutdown(&doomed);
    }
}
