//! Operator-facing counters of a loaded capsule: what it published and received, what it lost,
//! what was refused, how its calls ended, how deep its queues are and how much memory each
//! principal made it use. Counting is a relaxed atomic add on paths that already do far more
//! work, so it costs nothing measurable; reading takes a consistent-enough snapshot (each
//! counter is exact, the set is not one atomic instant).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use capsule_bus::{PrincipalId, Readiness};
use parking_lot::Mutex;

use crate::limits::MemoryStats;

/// Counters of one capsule, as [`Capsule::stats`](crate::Capsule::stats) reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapsuleStats {
    /// Messages the capsule published (`publish` and `publish-as` that reached the bus).
    pub published: u64,
    /// Messages its subscriptions handed to it (`poll` and `recv`).
    pub received: u64,
    /// Messages its subscriptions lost before it took them (full queues, fan-out cuts), as
    /// reported to it on its drains.
    pub dropped: u64,
    /// IPC requests refused by its policy (`capability-denied`: ACL, uplink, refused principal).
    pub denied: u64,
    /// Messages its handlers stopped with `deny` or `abort`.
    pub handler_denials: u64,
    /// Handler calls that trapped or were interrupted (deadline, fuel, memory), plus its run
    /// loop if that ended by a trap or an interrupt other than unloading.
    pub traps: u64,
    /// Messages waiting in its live subscriptions now.
    pub queued_messages: u64,
    /// Live subscriptions it holds now.
    pub subscriptions: u64,
    /// Its handler calls.
    pub calls: CallStats,
    /// The largest linear memory each principal made one of its Stores reach, and refused
    /// growths, by principal.
    pub memory: HashMap<PrincipalId, MemoryStats>,
}

/// Counters of a capsule's handler calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Calls served by a spare: a fresh instance made off the call path, before any
    /// principal took it.
    pub spares_used: u64,
    /// Spares ready now.
    pub spares_ready: u64,
    /// Instances kept now for the principal each served (at most the handler pool size).
    pub warm: u64,
}

/// What a capsule's handler workers add to.
#[derive(Debug, Default)]
pub(crate) struct CallCounters {
    completed: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    resets: AtomicU64,
    spares_used: AtomicU64,
    traps: AtomicU64,
}

impl CallCounters {
    /// A call ended: completed, or failed (a trap or an interrupt also counts as a trap).
    pub(crate) fn ended(&self, ok: bool, trapped: bool) {
        let counter = if ok { &self.completed } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        if trapped {
            self.traps.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn spare_used(&self) {
        self.spares_used.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn traps(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
    }

    /// The counters, with `queued` calls waiting now and `(warm, spares)` instances kept.
    pub(crate) fn snapshot(&self, queued: u64, kept: (usize, usize)) -> CallStats {
        CallStats {
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            queued,
            spares_used: self.spares_used.load(Ordering::Relaxed),
            spares_ready: kept.1 as u64,
            warm: kept.0 as u64,
        }
    }
}

/// The counters a capsule's host calls and the dispatcher add to.
#[derive(Debug, Default)]
pub(crate) struct IpcCounters {
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    denied: AtomicU64,
    handler_denials: AtomicU64,
    /// Readiness handles of the capsule's subscriptions, for their live queue depth; closed
    /// ones are pruned whenever a new one is added or the stats are read.
    subscriptions: Mutex<Vec<Readiness>>,
}

impl IpcCounters {
    pub(crate) fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, messages: usize, dropped: u64) {
        self.received.fetch_add(messages as u64, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    pub(crate) fn denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handler_denied(&self) {
        self.handler_denials.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn watch(&self, subscription: Readiness) {
        let mut subs = self.subscriptions.lock();
        subs.retain(|s| !s.is_closed());
        subs.push(subscription);
    }

    /// Fills the IPC part of `stats`.
    pub(crate) fn fill(&self, stats: &mut CapsuleStats) {
        stats.published = self.published.load(Ordering::Relaxed);
        stats.received = self.received.load(Ordering::Relaxed);
        stats.dropped = self.dropped.load(Ordering::Relaxed);
        stats.denied = self.denied.load(Ordering::Relaxed);
        stats.handler_denials = self.handler_denials.load(Ordering::Relaxed);
        let mut subs = self.subscriptions.lock();
        subs.retain(|s| !s.is_closed());
        stats.subscriptions = subs.len() as u64;
        stats.queued_messages = subs.iter().map(|s| s.stats().queued).sum();
    }
}
