//! The bus: publish finds matching routes through the pattern index and enqueues one shared
//! message on each (up to the fan-out cap); receivers drain their own route and unregister it
//! when dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use capsule_ids::PrincipalId;
use parking_lot::RwLock;

use crate::index::PatternIndex;
use crate::message::{Message, Outgoing};
use crate::route::{Batch, Drain, Route, RouteLimits, RouteStats, Scope};
use crate::topic::{Topic, TopicPattern};

/// Tunable limits of a [`Bus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusConfig {
    /// Payload bytes a route may hold across all its principal queues (default 1 MiB).
    pub route_max_bytes: usize,
    /// Messages one principal's queue in one route may hold (default 16 384).
    pub queue_max_messages: usize,
    /// Routes one publish is delivered to at most (default 256).
    pub max_fanout: usize,
    /// Deficit-round-robin quantum in bytes; every message is charged at least this much
    /// (default 1 KiB).
    pub drr_quantum: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            route_max_bytes: 1024 * 1024,
            queue_max_messages: 16_384,
            max_fanout: 256,
            drr_quantum: 1024,
        }
    }
}

/// A [`BusConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusConfigError {
    /// A limit that must be at least 1 was 0.
    #[error("bus setting `{0}` must be at least 1")]
    Zero(&'static str),
}

impl BusConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), BusConfigError> {
        for (name, v) in [
            ("route_max_bytes", self.route_max_bytes),
            ("queue_max_messages", self.queue_max_messages),
            ("max_fanout", self.max_fanout),
            ("drr_quantum", self.drr_quantum),
        ] {
            if v == 0 {
                return Err(BusConfigError::Zero(name));
            }
        }
        Ok(())
    }

    fn route_limits(&self) -> RouteLimits {
        RouteLimits {
            max_bytes: self.route_max_bytes,
            max_queue_messages: self.queue_max_messages,
            quantum: self.drr_quantum,
        }
    }
}

/// What one publish did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// The sequence number the message was given.
    pub seq: u64,
    /// Routes the message was enqueued on.
    pub delivered: usize,
    /// Routes that refused it (larger than the route's byte bound, or closing); each counted
    /// it as dropped.
    pub refused: usize,
    /// Matching, in-scope routes beyond the fan-out cap, which counted it as dropped.
    pub cut: usize,
}

impl PublishReport {
    /// Whether the fan-out cap kept the message from some subscribers (the host reports this
    /// to the publisher as backpressure).
    pub fn is_cut(&self) -> bool {
        self.cut > 0
    }
}

#[derive(Debug)]
struct BusInner {
    config: BusConfig,
    index: RwLock<PatternIndex<Arc<Route>>>,
    seq: AtomicU64,
    next_route: AtomicU64,
}

/// A principal-aware publish/subscribe bus. Cloning shares the same bus.
#[derive(Clone, Debug)]
pub struct Bus {
    inner: Arc<BusInner>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// A bus with the default limits.
    pub fn new() -> Self {
        Self::build(BusConfig::default())
    }

    /// A bus with custom limits.
    pub fn with_config(config: BusConfig) -> Result<Self, BusConfigError> {
        config.validate()?;
        Ok(Self::build(config))
    }

    fn build(config: BusConfig) -> Self {
        Self {
            inner: Arc::new(BusInner {
                config,
                index: RwLock::new(PatternIndex::new()),
                seq: AtomicU64::new(1),
                next_route: AtomicU64::new(1),
            }),
        }
    }

    /// The limits this bus runs with.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Number of live subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.inner.index.read().len()
    }

    /// Publishes one message to every matching subscription whose scope admits it.
    pub fn publish(&self, out: Outgoing) -> PublishReport {
        self.publish_to(out, None)
    }

    /// Publishes `outs` in order, each exactly as [`publish`](Self::publish) does, but wakes
    /// each waiting receiver once after the last message rather than at the first message
    /// of every run that finds its queue empty: a bridge handing over a burst then costs its
    /// subscribers one wake-up, not one per message. Returns one report per message.
    pub fn publish_batch(&self, outs: impl IntoIterator<Item = Outgoing>) -> Vec<PublishReport> {
        let mut wake: Vec<Arc<Route>> = Vec::new();
        let reports = outs
            .into_iter()
            .map(|out| self.publish_to(out, Some(&mut wake)))
            .collect();
        for route in wake {
            route.wake();
        }
        reports
    }

    /// [`publish`](Self::publish); with `defer`, routes to wake are added to it (once each)
    /// instead of being woken now.
    fn publish_to(&self, out: Outgoing, mut defer: Option<&mut Vec<Arc<Route>>>) -> PublishReport {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let msg = Arc::new(Message::new(seq, crate::clock::unix_ms(), out));
        let key = msg.principal();
        let cap = self.inner.config.max_fanout;
        let mut report = PublishReport {
            seq: msg.seq(),
            ..PublishReport::default()
        };
        let index = self.inner.index.read();
        index.for_each_match(&msg.topic, |route| {
            if !route.scope.admits(key) {
                return;
            }
            if report.delivered + report.refused < cap {
                let queued = match defer.as_deref_mut() {
                    None => route.deliver(Arc::clone(&msg)),
                    Some(wake) => {
                        let (queued, woke) = route.enqueue(Arc::clone(&msg));
                        if woke && !wake.iter().any(|r| Arc::ptr_eq(r, route)) {
                            wake.push(Arc::clone(route));
                        }
                        queued
                    }
                };
                if queued {
                    report.delivered += 1;
                } else {
                    report.refused += 1;
                }
            } else {
                route.count_cut();
                report.cut += 1;
            }
        });
        report
    }

    /// Reports `lost` messages on `topic`, attributed like `key` (`None` = system), that never
    /// reached this bus (a bridge from another host saw a gap in a publisher's sequence):
    /// every matching subscription whose scope admits `key` counts them as admitted and
    /// dropped, so its next drain reports them. Returns the number of subscriptions told.
    pub fn report_loss(&self, topic: &Topic, key: Option<&PrincipalId>, lost: u64) -> usize {
        if lost == 0 {
            return 0;
        }
        let mut told = 0;
        self.inner.index.read().for_each_match(topic, |route| {
            if route.scope.admits(key) {
                route.count_lost(lost);
                told += 1;
            }
        });
        told
    }

    /// Opens a subscription on `pattern` admitting the principals `scope` allows.
    pub fn subscribe(&self, pattern: TopicPattern, scope: Scope) -> Receiver {
        let id = self.inner.next_route.fetch_add(1, Ordering::Relaxed);
        let route = Arc::new(Route::new(id, scope, self.inner.config.route_limits()));
        self.inner
            .index
            .write()
            .insert(&pattern, id, Arc::clone(&route));
        Receiver {
            route,
            pattern,
            bus: Arc::downgrade(&self.inner),
        }
    }
}

/// The receiving end of one subscription. Dropping it removes the route from the bus.
#[derive(Debug)]
pub struct Receiver {
    route: Arc<Route>,
    pattern: TopicPattern,
    bus: Weak<BusInner>,
}

impl Receiver {
    /// The route's identity, unique within its bus.
    pub fn id(&self) -> u64 {
        self.route.id
    }

    /// The pattern this subscription was opened on.
    pub fn pattern(&self) -> &TopicPattern {
        &self.pattern
    }

    /// The principals this subscription admits.
    pub fn scope(&self) -> &Scope {
        &self.route.scope
    }

    /// Takes queued messages without waiting: the first one always, then more while their
    /// payloads fit in `byte_budget`.
    pub fn try_drain(&mut self, byte_budget: usize) -> Drain {
        self.route.drain(byte_budget, usize::MAX)
    }

    /// Like [`try_drain`](Self::try_drain), returning at most `max_messages` messages.
    pub fn try_drain_limited(&mut self, byte_budget: usize, max_messages: usize) -> Drain {
        self.route.drain(byte_budget, max_messages)
    }

    /// Like [`try_drain`](Self::try_drain), but every message of the batch has the
    /// attribution of the first (same principal, or all system; all claimed or none): the
    /// batch ends where the next message in fair order belongs to someone else. Whoever acts
    /// on the batch in one principal's scope is then right for every message in it.
    pub fn try_drain_one_principal(&mut self, byte_budget: usize) -> Drain {
        self.route
            .drain_batch(byte_budget, usize::MAX, Batch::OneAttribution)
    }

    /// Waits up to `timeout` for a message, then drains what is queued within `byte_budget`.
    /// On timeout the drain is empty (it still reports losses).
    pub async fn recv(&mut self, timeout: Duration, byte_budget: usize) -> Drain {
        // A timeout only means there is nothing to take yet; the drain below reports that.
        let _elapsed = tokio::time::timeout(timeout, self.route.ready()).await;
        self.route.drain(byte_budget, usize::MAX)
    }

    /// [`recv`](Self::recv) whose batch is one principal's, as
    /// [`try_drain_one_principal`](Self::try_drain_one_principal) describes.
    pub async fn recv_one_principal(&mut self, timeout: Duration, byte_budget: usize) -> Drain {
        let _elapsed = tokio::time::timeout(timeout, self.route.ready()).await;
        self.route
            .drain_batch(byte_budget, usize::MAX, Batch::OneAttribution)
    }

    /// A handle that observes whether this subscription has something to take.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            route: Arc::clone(&self.route),
        }
    }

    /// Counters of this subscription.
    pub fn stats(&self) -> RouteStats {
        self.route.stats()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.index.write().remove(&self.pattern, self.route.id);
        }
        self.route.close();
    }
}

/// Observes a subscription's readiness without owning it; a real pollable is built on this.
///
/// Ready means "a message is queued" or "the subscription was dropped" (so nobody waits on a
/// dead subscription forever).
#[derive(Clone, Debug)]
pub struct Readiness {
    route: Arc<Route>,
}

impl Readiness {
    /// Whether a message is queued now, or the subscription is gone.
    pub fn is_ready(&self) -> bool {
        self.route.is_ready()
    }

    /// Whether the subscription was dropped.
    pub fn is_closed(&self) -> bool {
        self.route.is_closed()
    }

    /// Resolves once [`is_ready`](Self::is_ready) would answer `true`.
    pub async fn ready(&self) {
        self.route.ready().await;
    }

    /// Counters of the observed subscription (its queue depth included), without owning it.
    pub fn stats(&self) -> RouteStats {
        self.route.stats()
    }
}
