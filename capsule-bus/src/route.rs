//! One subscription's delivery state: a bounded FIFO per publishing principal, drained by
//! deficit round robin, with exact loss accounting (`admitted == delivered + dropped + queued`).
//!
//! Fairness: on each visit a principal's queue earns one quantum of credit and sends while its
//! head message fits the credit; every message is charged at least one quantum, so a light
//! principal waits behind at most one quantum's worth (at least one message) of any other
//! principal's traffic per round, and large messages are shared out by bytes.

use std::collections::VecDeque;
use std::sync::Arc;

use capsule_ids::PrincipalId;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::message::Message;

/// Which publishing principals a subscription admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Messages of every principal and of the system.
    All,
    /// Only messages attributed to this principal.
    Principal(PrincipalId),
    /// Messages attributed to this principal, and system messages.
    PrincipalAndSystem(PrincipalId),
    /// Only system messages.
    System,
}

impl Scope {
    /// Whether a message whose queue key is `key` (`None` = system) is admitted.
    pub fn admits(&self, key: Option<&PrincipalId>) -> bool {
        match self {
            Self::All => true,
            Self::Principal(p) => key == Some(p),
            Self::PrincipalAndSystem(p) => key.is_none() || key == Some(p),
            Self::System => key.is_none(),
        }
    }

    /// The scope admitting exactly what both `self` and `other` admit; `None` when that is
    /// nobody (two different principals).
    pub fn intersect(&self, other: &Scope) -> Option<Scope> {
        use Scope::{All, Principal, PrincipalAndSystem, System};
        match (self, other) {
            (All, s) | (s, All) => Some(s.clone()),
            (System, Principal(_)) | (Principal(_), System) => None,
            (System, _) | (_, System) => Some(System),
            (Principal(a), Principal(b) | PrincipalAndSystem(b))
            | (PrincipalAndSystem(b), Principal(a)) => (a == b).then(|| Principal(a.clone())),
            // Both admit the system; they share a principal only if it is the same one.
            (PrincipalAndSystem(a), PrincipalAndSystem(b)) => Some(if a == b {
                PrincipalAndSystem(a.clone())
            } else {
                System
            }),
        }
    }
}

/// How far one drain may reach across principals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Any principals, in fair order.
    Mixed,
    /// Only messages attributed like the first one taken.
    OneAttribution,
}

/// Limits of one route; see [`BusConfig`](crate::BusConfig).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouteLimits {
    pub(crate) max_bytes: usize,
    pub(crate) max_queue_messages: usize,
    pub(crate) quantum: usize,
}

/// Counters of one route since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Messages that matched the pattern and passed the scope.
    pub admitted: u64,
    /// Messages handed to the receiver.
    pub delivered: u64,
    /// Messages lost: evicted when a queue was full, refused, or cut by the fan-out cap.
    pub dropped: u64,
    /// Messages waiting in the queues now.
    pub queued: u64,
    /// Payload bytes waiting in the queues now.
    pub queued_bytes: u64,
}

/// The result of one drain.
#[derive(Debug, Default)]
pub struct Drain {
    /// Messages in delivery order.
    pub messages: Vec<Arc<Message>>,
    /// Messages lost since the previous drain (evictions, refusals, fan-out cuts).
    pub dropped: u64,
    /// Messages still queued after this drain: how far the receiver is behind.
    pub lagged: u64,
}

/// Most messages a drain makes room for up front.
const DRAIN_PREALLOC: usize = 1024;

/// How many emptied principal queues a route keeps allocated for reuse.
const IDLE_QUEUES_KEPT: usize = 8;

#[derive(Debug)]
struct PrincipalQueue {
    key: Option<PrincipalId>,
    items: VecDeque<Arc<Message>>,
    bytes: usize,
    deficit: usize,
    active: bool,
}

/// Outcome of enqueuing one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Push {
    /// Queued behind other messages.
    Queued,
    /// Queued into an empty route: waiters must be woken.
    Woke,
    /// Counted as dropped without being queued.
    Refused,
}

#[derive(Debug, Default)]
struct RouteState {
    slots: Vec<Option<PrincipalQueue>>,
    free: Vec<usize>,
    by_key: FxHashMap<Option<PrincipalId>, usize>,
    /// Slots with queued messages, in round-robin order; the front is being visited.
    active: VecDeque<usize>,
    /// Whether the front of `active` has received its quantum for the current visit.
    granted: bool,
    /// Consecutive visits that ended without sending (drives the skip-ahead).
    idle_visits: usize,
    idle_queues: usize,
    /// The slot [`slot_for`](Self::slot_for) answered last (checked against the key on use,
    /// so a slot since freed or reused is never mistaken for it).
    last_slot: usize,
    bytes: usize,
    len: usize,
    admitted: u64,
    delivered: u64,
    dropped_total: u64,
    dropped_pending: u64,
    closed: bool,
}

impl RouteState {
    fn queue_mut(&mut self, slot: usize) -> Option<&mut PrincipalQueue> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// The slot of `key`'s queue, made (idle) if it has none. The slot that took the last
    /// message is tried first: a stream from one principal needs no hash lookup.
    fn slot_for(&mut self, key: Option<&PrincipalId>) -> usize {
        let last = self.last_slot;
        if self
            .slots
            .get(last)
            .and_then(Option::as_ref)
            .is_some_and(|q| q.key.as_ref() == key)
        {
            return last;
        }
        if let Some(&slot) = self.by_key.get(&key.cloned()) {
            self.last_slot = slot;
            return slot;
        }
        let queue = PrincipalQueue {
            key: key.cloned(),
            items: VecDeque::new(),
            bytes: 0,
            deficit: 0,
            active: false,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(queue);
                s
            }
            None => {
                self.slots.push(Some(queue));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(key.cloned(), slot);
        self.idle_queues += 1;
        self.last_slot = slot;
        slot
    }

    /// Called when a queue has just become empty and left the active ring.
    fn retire(&mut self, slot: usize) {
        let Some(q) = self.queue_mut(slot) else {
            return;
        };
        q.deficit = 0;
        q.active = false;
        self.idle_queues += 1;
        if self.idle_queues > IDLE_QUEUES_KEPT {
            if let Some(q) = self.slots[slot].take() {
                self.by_key.remove(&q.key);
            }
            self.free.push(slot);
            self.idle_queues -= 1;
        }
    }

    fn count_drop(&mut self, n: u64) {
        self.dropped_total += n;
        self.dropped_pending += n;
    }

    /// Removes the oldest message of the queue in `slot`; returns its cost.
    fn evict_oldest(&mut self, slot: usize) -> bool {
        let Some(q) = self.queue_mut(slot) else {
            return false;
        };
        let Some(old) = q.items.pop_front() else {
            return false;
        };
        let cost = old.cost();
        q.bytes -= cost;
        let emptied = q.items.is_empty();
        self.bytes -= cost;
        self.len -= 1;
        self.count_drop(1);
        if emptied {
            if let Some(pos) = self.active.iter().position(|&s| s == slot) {
                self.active.remove(pos);
                if pos == 0 {
                    self.granted = false;
                }
            }
            self.retire(slot);
        }
        true
    }

    /// The active queue holding the most payload bytes.
    fn heaviest(&self) -> Option<usize> {
        self.active.iter().copied().max_by_key(|&s| {
            self.slots
                .get(s)
                .and_then(Option::as_ref)
                .map_or(0, |q| q.bytes)
        })
    }

    /// Adds an admitted message, or refuses it when it can never fit or the route is closed.
    fn push(&mut self, msg: Arc<Message>, limits: &RouteLimits) -> Push {
        self.admitted += 1;
        let cost = msg.cost();
        if cost > limits.max_bytes || self.closed {
            self.count_drop(1);
            return Push::Refused;
        }
        let mut slot = self.slot_for(msg.principal());
        let mut evicted = false;
        // Per-principal message bound: the principal pays with its own oldest message.
        let full = self
            .queue_mut(slot)
            .is_some_and(|q| q.items.len() >= limits.max_queue_messages);
        if full {
            evicted |= self.evict_oldest(slot);
        }
        // Route byte bound: the heaviest principal pays, so a flood cannot push out a light
        // principal's messages.
        while self.bytes + cost > limits.max_bytes {
            match self.heaviest() {
                Some(victim) => {
                    if !self.evict_oldest(victim) {
                        break;
                    }
                    evicted = true;
                }
                None => break,
            }
        }
        let was_empty = self.len == 0;
        if evicted {
            // An eviction may have retired and freed this slot; look it up again.
            slot = self.slot_for(msg.principal());
        }
        let Some(q) = self.queue_mut(slot) else {
            self.count_drop(1);
            return Push::Refused;
        };
        q.items.push_back(msg);
        q.bytes += cost;
        let activate = !q.active;
        q.active = true;
        if activate {
            self.idle_queues -= 1;
            self.active.push_back(slot);
        }
        self.bytes += cost;
        self.len += 1;
        if was_empty { Push::Woke } else { Push::Queued }
    }

    /// Gives every active queue the credit of `rounds` visits at once, so that a head message
    /// many quanta large does not cost one loop iteration per quantum.
    fn skip_ahead(&mut self, quantum: usize) {
        let mut rounds = usize::MAX;
        for &s in &self.active {
            if let Some(q) = self.slots.get(s).and_then(Option::as_ref) {
                let head = q.items.front().map_or(0, |m| m.cost().max(quantum));
                let need = head.saturating_sub(q.deficit).div_ceil(quantum);
                rounds = rounds.min(need.saturating_sub(1));
            }
        }
        if rounds == 0 || rounds == usize::MAX {
            return;
        }
        let credit = rounds.saturating_mul(quantum);
        let active: Vec<usize> = self.active.iter().copied().collect();
        for s in active {
            if let Some(q) = self.queue_mut(s) {
                q.deficit = q.deficit.saturating_add(credit);
            }
        }
    }

    /// Pops the next message in DRR order, unless its payload exceeds `room` or it is not
    /// attributed like `like` (when given): then nothing is taken, and the next drain starts
    /// where this one stopped.
    fn pop(
        &mut self,
        room: usize,
        quantum: usize,
        like: Option<(Option<&PrincipalId>, bool)>,
    ) -> Option<Arc<Message>> {
        loop {
            let slot = *self.active.front()?;
            let granted = self.granted;
            let Some(q) = self.queue_mut(slot) else {
                // A slot in the ring always holds a queue; repair rather than spin.
                self.active.pop_front();
                self.granted = false;
                continue;
            };
            if let Some((principal, claimed)) = like {
                // Checked before the visit earns credit, so stopping here costs the next
                // principal nothing.
                let differs = q.key.as_ref() != principal
                    || q.items.front().is_some_and(|m| m.is_claimed() != claimed);
                if differs {
                    return None;
                }
            }
            if !granted {
                q.deficit = q.deficit.saturating_add(quantum);
            }
            let Some(head) = q.items.front() else {
                self.active.pop_front();
                self.granted = false;
                self.retire(slot);
                continue;
            };
            let charge = head.cost().max(quantum);
            if charge <= q.deficit {
                if head.cost() > room {
                    self.granted = true;
                    return None;
                }
                q.deficit -= charge;
                let msg = q.items.pop_front()?;
                q.bytes -= msg.cost();
                let emptied = q.items.is_empty();
                self.granted = true;
                self.bytes -= msg.cost();
                self.len -= 1;
                self.delivered += 1;
                self.idle_visits = 0;
                if emptied {
                    self.active.pop_front();
                    self.granted = false;
                    self.retire(slot);
                }
                return Some(msg);
            }
            // This visit is over; the next queue gets its quantum.
            self.active.rotate_left(1);
            self.granted = false;
            self.idle_visits += 1;
            if self.idle_visits >= self.active.len() {
                self.skip_ahead(quantum);
                self.idle_visits = 0;
            }
        }
    }
}

/// A subscription's route: pattern, scope, queues and the readiness signal.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) id: u64,
    pub(crate) scope: Scope,
    limits: RouteLimits,
    state: Mutex<RouteState>,
    notify: Notify,
}

impl Route {
    pub(crate) fn new(id: u64, scope: Scope, limits: RouteLimits) -> Self {
        Self {
            id,
            scope,
            limits,
            state: Mutex::new(RouteState::default()),
            notify: Notify::new(),
        }
    }

    /// Enqueues an admitted message, evicting as the bounds require; `false` when the message
    /// was refused (counted as dropped) instead.
    pub(crate) fn deliver(&self, msg: Arc<Message>) -> bool {
        let (queued, wake) = self.enqueue(msg);
        if wake {
            self.wake();
        }
        queued
    }

    /// [`deliver`](Self::deliver) without waking the receiver: answers whether the message
    /// was queued and whether the receiver must be woken ([`wake`](Self::wake)) for it.
    pub(crate) fn enqueue(&self, msg: Arc<Message>) -> (bool, bool) {
        let outcome = self.state.lock().push(msg, &self.limits);
        (outcome != Push::Refused, outcome == Push::Woke)
    }

    /// Wakes whoever waits for this route to become ready.
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// Counts an admitted message that the fan-out cap kept from this route.
    pub(crate) fn count_cut(&self) {
        let mut st = self.state.lock();
        st.admitted += 1;
        st.count_drop(1);
    }

    /// Counts `n` messages that were lost before they reached this route (on another host,
    /// or on the link from it) as admitted and dropped.
    pub(crate) fn count_lost(&self, n: u64) {
        // `n` comes from another host: saturate rather than overflow on a hostile figure.
        let mut st = self.state.lock();
        st.admitted = st.admitted.saturating_add(n);
        st.dropped_total = st.dropped_total.saturating_add(n);
        st.dropped_pending = st.dropped_pending.saturating_add(n);
    }

    /// Drains in DRR order: the first message always, then more while their payloads fit in
    /// `budget` bytes, at most `max_messages` in all.
    pub(crate) fn drain(&self, budget: usize, max_messages: usize) -> Drain {
        self.drain_batch(budget, max_messages, Batch::Mixed)
    }

    /// [`drain`](Self::drain), ending the batch early as `batch` asks.
    pub(crate) fn drain_batch(&self, budget: usize, max_messages: usize, batch: Batch) -> Drain {
        let mut st = self.state.lock();
        // Sized once for what may be taken (within reason), not grown message by message.
        let mut messages: Vec<Arc<Message>> =
            Vec::with_capacity(st.len.min(max_messages).min(DRAIN_PREALLOC));
        let mut used = 0usize;
        while messages.len() < max_messages {
            let room = if messages.is_empty() {
                usize::MAX
            } else {
                budget.saturating_sub(used)
            };
            let like = match (batch, messages.first()) {
                (Batch::OneAttribution, Some(first)) => {
                    Some((first.principal(), first.is_claimed()))
                }
                _ => None,
            };
            match st.pop(room, self.limits.quantum, like) {
                Some(m) => {
                    used = used.saturating_add(m.cost());
                    messages.push(m);
                }
                None => break,
            }
        }
        let dropped = std::mem::take(&mut st.dropped_pending);
        Drain {
            messages,
            dropped,
            lagged: st.len as u64,
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        let st = self.state.lock();
        st.len > 0 || st.closed
    }

    /// Resolves once the route holds a message or is closed.
    pub(crate) async fn ready(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_ready() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    pub(crate) fn stats(&self) -> RouteStats {
        let st = self.state.lock();
        RouteStats {
            admitted: st.admitted,
            delivered: st.delivered,
            dropped: st.dropped_total,
            queued: st.len as u64,
            queued_bytes: st.bytes as u64,
        }
    }
}
