//! Per-principal caches stay bounded: a map keyed by principal holds at most
//! [`PRINCIPAL_CACHE_CAPACITY`] entries; when a new principal needs room, entries idle for
//! [`PRINCIPAL_IDLE_TTL`] go first, then the least recently used. However many principals pass
//! through (an uplink can claim arbitrary ones), the host's memory for them does not grow.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Most principals a per-principal cache (profiles, the memory ledger) holds at once.
pub const PRINCIPAL_CACHE_CAPACITY: usize = 1024;

/// How long a principal's cache entry may go unused before it is the first to be dropped.
pub const PRINCIPAL_IDLE_TTL: Duration = Duration::from_secs(600);

/// A value and when it was last used.
#[derive(Clone, Debug)]
pub(crate) struct Used<V> {
    pub(crate) value: V,
    pub(crate) at: Instant,
}

/// A map with a capacity, trimmed when full.
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    entries: HashMap<K, Used<V>>,
    capacity: usize,
    idle: Duration,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize, idle: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            idle,
        }
    }

    /// The entry of `key`, marked used at `now`.
    pub(crate) fn get_mut(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        self.entries.get_mut(key).map(|e| {
            e.at = now;
            &mut e.value
        })
    }

    /// The entry of `key`, created with `make` (after making room) when missing; marked used.
    pub(crate) fn entry(&mut self, key: &K, now: Instant, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains_key(key) {
            self.make_room(now);
        }
        let e = self.entries.entry(key.clone()).or_insert_with(|| Used {
            value: make(),
            at: now,
        });
        e.at = now;
        &mut e.value
    }

    /// Inserts or replaces `key`'s value (after making room), marked used at `now`.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) {
        if !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        self.entries.insert(key, Used { value, at: now });
    }

    /// Takes `key`'s value out.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|e| e.value)
    }

    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.capacity {
            return;
        }
        let idle = self.idle;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.at) < idle);
        while self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.entries.remove(&k);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, e)| (k, &e.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut m = BoundedMap::new(4, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..100u32 {
            m.insert(i, i, t0 + Duration::from_millis(u64::from(i)));
            assert!(m.len() <= 4);
        }
        // The most recently used survive.
        let mut keys: Vec<u32> = m.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![96, 97, 98, 99]);
    }

    #[test]
    fn idle_entries_go_first_and_use_refreshes() {
        let mut m = BoundedMap::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        m.insert("a", 1, t0);
        m.insert("b", 2, t0);
        m.insert("c", 3, t0 + Duration::from_secs(5));
        // `a` is used again, so `b` is the one that has idled out by t0 + 12 s.
        assert_eq!(
            m.get_mut(&"a", t0 + Duration::from_secs(11)).copied(),
            Some(1)
        );
        *m.entry(&"d", t0 + Duration::from_secs(12), || 4) += 10;
        let mut keys: Vec<&str> = m.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec!["a", "c", "d"]);
        assert_eq!(m.get_mut(&"d", t0).copied(), Some(14));
    }
}
