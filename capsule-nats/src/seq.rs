//! Per-publisher sequence numbers: the sending side numbers each publisher's messages per topic
//! from 1 without holes, and the receiving side turns every hole it sees into a counted loss.
//! Both tables are bounded; a key pushed out of a full table simply starts over (the sender at
//! 1, the receiver at whatever comes next), which can hide a loss at that one point but never
//! invents one.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Keys each table keeps before forgetting the oldest.
pub const SEQ_TABLE_CAPACITY: usize = 65_536;

/// A map that forgets its oldest key when full.
#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub(crate) fn entry(&mut self, key: &K, init: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(key) {
            while self.map.len() >= self.capacity {
                match self.order.pop_front() {
                    Some(old) => {
                        self.map.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(key.clone());
            self.map.insert(key.clone(), init());
        }
        // Present: inserted just above when absent.
        match self.map.get_mut(key) {
            Some(v) => v,
            None => unreachable!("key inserted above"),
        }
    }
}

/// The sending side: the next number of each publisher's stream.
#[derive(Debug)]
pub struct Numbering<K> {
    next: Bounded<K, u64>,
}

impl<K: Hash + Eq + Clone> Numbering<K> {
    /// A table keeping at most `capacity` publishers.
    pub fn new(capacity: usize) -> Self {
        Self {
            next: Bounded::new(capacity),
        }
    }

    /// The number of `key`'s next message: 1, 2, 3, …
    pub fn next(&mut self, key: &K) -> u64 {
        let n = self.next.entry(key, || 1);
        let this = *n;
        *n = n.saturating_add(1);
        this
    }
}

/// What the receiving side concluded from one sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The first message seen from this publisher, or the one right after the last.
    InOrder,
    /// `n` messages are missing between the last one seen and this one.
    Gap(u64),
    /// Not after the last one seen: the publisher's numbering started over.
    Restarted,
}

/// The receiving side: the last number seen from each publisher.
#[derive(Debug)]
pub struct Tracking<K> {
    last: Bounded<K, u64>,
}

impl<K: Hash + Eq + Clone> Tracking<K> {
    /// A table keeping at most `capacity` publishers.
    pub fn new(capacity: usize) -> Self {
        Self {
            last: Bounded::new(capacity),
        }
    }

    /// Records `seq` from `key` and says how it relates to the last one seen.
    pub fn observe(&mut self, key: &K, seq: u64) -> Observed {
        let mut fresh = false;
        let last = self.last.entry(key, || {
            fresh = true;
            seq
        });
        if fresh {
            return Observed::InOrder;
        }
        let prev = *last;
        *last = seq;
        if seq == prev.saturating_add(1) {
            Observed::InOrder
        } else if seq > prev {
            Observed::Gap(seq - prev - 1)
        } else {
            Observed::Restarted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_is_per_key_and_gapless() {
        let mut n = Numbering::new(4);
        assert_eq!(
            (n.next(&"a"), n.next(&"a"), n.next(&"b"), n.next(&"a")),
            (1, 2, 1, 3)
        );
    }

    #[test]
    fn tracking_counts_exactly_the_holes() {
        let mut t = Tracking::new(4);
        assert_eq!(t.observe(&"a", 5), Observed::InOrder);
        assert_eq!(t.observe(&"a", 6), Observed::InOrder);
        assert_eq!(t.observe(&"a", 10), Observed::Gap(3));
        assert_eq!(t.observe(&"b", 1), Observed::InOrder);
        assert_eq!(t.observe(&"a", 2), Observed::Restarted);
        assert_eq!(t.observe(&"a", 3), Observed::InOrder);
    }

    #[test]
    fn full_tables_forget_the_oldest_key() {
        let mut t = Tracking::new(2);
        t.observe(&1, 1);
        t.observe(&2, 1);
        t.observe(&3, 1);
        // Key 1 was forgotten: its next number is a fresh start, not a gap.
        assert_eq!(t.observe(&1, 9), Observed::InOrder);
        let mut n = Numbering::new(1);
        n.next(&1);
        n.next(&2);
        assert_eq!(n.next(&1), 1);
    }
}
