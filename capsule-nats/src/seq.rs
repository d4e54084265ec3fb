//! Per-publisher sequence numbers: the sending side numbers each publisher's messages per topic
//! from 1 without holes, and the receiving side turns every hole it sees into a counted loss.
//! Each numbered stream also has an epoch, strictly greater than every earlier stream's of the
//! same host, so the receiver tells a publisher that started over (a newer epoch; its messages
//! before the first one seen of it are lost, as every epoch numbers from 1) from a copy of an
//! old message played back to it (an older epoch, or a number already seen), which it
//! refuses. A tail mark (a stream's last number, sent when the link may have lost the end of
//! a stream) shows the receiver a hole that no later message would reveal. Both tables are
//! bounded; a key pushed out of a full table simply starts over (the
//! sender with a new epoch at 1, the receiver at whatever comes next), which can hide a loss or
//! let one replayed message through at that one point but never invents a loss.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Keys each table keeps before forgetting the oldest.
pub const SEQ_TABLE_CAPACITY: usize = 65_536;

/// The largest hole one message may reveal. A jump beyond it is no plausible loss (a
/// publisher would have had to number four billion messages it never sent) but a forged or
/// corrupt number, refused so that it cannot blow up every subscriber's loss counter.
pub const MAX_GAP: u64 = 1 << 32;

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

/// Hands out stream epochs: nanoseconds since the Unix epoch when the clock allows, and
/// always strictly more than the last one given, so a host that restarts starts above its
/// earlier streams as long as its clock did not go back.
#[derive(Debug, Default)]
pub(crate) struct Epochs {
    last: u64,
}

impl Epochs {
    pub(crate) fn next(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last = now.max(self.last.saturating_add(1));
        self.last
    }
}

/// The sending side: each publisher's stream epoch and next number.
#[derive(Debug)]
pub struct Numbering<K> {
    next: Bounded<K, (u64, u64)>,
    epochs: Epochs,
}

impl<K: Hash + Eq + Clone> Numbering<K> {
    /// A table keeping at most `capacity` publishers.
    pub fn new(capacity: usize) -> Self {
        Self {
            next: Bounded::new(capacity),
            epochs: Epochs::default(),
        }
    }

    /// The epoch of `key`'s stream and the number of its next message: 1, 2, 3, …
    pub fn next(&mut self, key: &K) -> (u64, u64) {
        let epochs = &mut self.epochs;
        let (epoch, n) = self.next.entry(key, || (epochs.next(), 1));
        let this = *n;
        *n = n.saturating_add(1);
        (*epoch, this)
    }
}

/// What the receiving side concluded from one stream epoch and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The first message seen from this publisher, or the one right after the last.
    InOrder,
    /// `n` messages are missing between the last one seen and this one.
    Gap(u64),
    /// A newer stream epoch: the publisher's numbering started over. Every epoch numbers
    /// from 1, so a receiver that followed the publisher and first sees the new epoch at `n`
    /// missed the `lost = n - 1` messages before it.
    Restarted {
        /// Messages of the new epoch missed before this one.
        lost: u64,
    },
    /// A number already seen in this stream, or an older stream: a copy played back. Refused;
    /// the record is unchanged.
    Replayed,
    /// More than the allowed gap past the last one seen: a forged or corrupt number. Refused;
    /// the record is unchanged.
    Implausible,
}

/// The receiving side: the stream epoch and last number seen from each publisher.
#[derive(Debug)]
pub struct Tracking<K> {
    last: Bounded<K, (u64, u64)>,
}

impl<K: Hash + Eq + Clone> Tracking<K> {
    /// A table keeping at most `capacity` publishers.
    pub fn new(capacity: usize) -> Self {
        Self {
            last: Bounded::new(capacity),
        }
    }

    /// Records `seq` of stream `epoch` from `key` unless it is refused, and says how it
    /// relates to the last one seen. A number more than `max_gap` past the last one seen is
    /// [`Observed::Implausible`].
    pub fn observe(&mut self, key: &K, epoch: u64, seq: u64, max_gap: u64) -> Observed {
        let seen = self.peek(key, epoch, seq, max_gap);
        if !matches!(seen, Observed::Replayed | Observed::Implausible) {
            *self.last.entry(key, || (epoch, seq)) = (epoch, seq);
        }
        seen
    }

    /// The epoch of the last number recorded for `key`, if any.
    pub fn epoch(&self, key: &K) -> Option<u64> {
        self.last.get(key).map(|&(epoch, _)| epoch)
    }

    /// What [`observe`](Self::observe) would say, without recording anything.
    pub fn peek(&self, key: &K, epoch: u64, seq: u64, max_gap: u64) -> Observed {
        let Some(&(prev_epoch, prev)) = self.last.get(key) else {
            return Observed::InOrder;
        };
        if epoch > prev_epoch {
            let lost = seq - 1;
            if lost > max_gap {
                return Observed::Implausible;
            }
            return Observed::Restarted { lost };
        }
        if epoch < prev_epoch || seq <= prev {
            return Observed::Replayed;
        }
        let gap = seq - prev - 1;
        if gap > max_gap {
            return Observed::Implausible;
        }
        if gap == 0 {
            Observed::InOrder
        } else {
            Observed::Gap(gap)
        }
    }

    /// Records that `key`'s stream `epoch` had reached `last` when its publisher said so (a
    /// tail mark) and says what that reveals: the numbers after the last one seen up to
    /// `last` are lost. A mark at or behind what was seen says nothing (marks repeat); one of
    /// an older stream is a copy played back; a first sight only starts the record, as a
    /// message would.
    pub fn observe_tail(&mut self, key: &K, epoch: u64, last: u64, max_gap: u64) -> Observed {
        let mut fresh = false;
        let rec = self.last.entry(key, || {
            fresh = true;
            (epoch, last)
        });
        if fresh {
            return Observed::InOrder;
        }
        let (prev_epoch, prev) = *rec;
        if epoch > prev_epoch {
            if last > max_gap {
                return Observed::Implausible;
            }
            *rec = (epoch, last);
            return Observed::Restarted { lost: last };
        }
        if epoch < prev_epoch {
            return Observed::Replayed;
        }
        if last <= prev {
            return Observed::InOrder;
        }
        let gap = last - prev;
        if gap > max_gap {
            return Observed::Implausible;
        }
        *rec = (epoch, last);
        Observed::Gap(gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_is_per_key_and_gapless_with_rising_epochs() {
        let mut n = Numbering::new(4);
        let (a1, a2, b1, a3) = (n.next(&"a"), n.next(&"a"), n.next(&"b"), n.next(&"a"));
        assert_eq!((a1.1, a2.1, b1.1, a3.1), (1, 2, 1, 3));
        assert_eq!((a1.0, a1.0), (a2.0, a3.0), "one stream, one epoch");
        assert!(b1.0 > a1.0, "a later stream has a later epoch");
    }

    #[test]
    fn tracking_counts_exactly_the_holes() {
        let mut t = Tracking::new(4);
        let m = u64::MAX;
        assert_eq!(t.observe(&"a", 1, 5, m), Observed::InOrder);
        assert_eq!(t.observe(&"a", 1, 6, m), Observed::InOrder);
        assert_eq!(t.observe(&"a", 1, 10, m), Observed::Gap(3));
        assert_eq!(t.observe(&"b", 1, 1, m), Observed::InOrder);
        assert_eq!(t.observe(&"a", 2, 2, m), Observed::Restarted { lost: 1 });
        assert_eq!(t.observe(&"a", 2, 3, m), Observed::InOrder);
        assert_eq!(t.observe(&"a", 3, 1, m), Observed::Restarted { lost: 0 });
    }

    #[test]
    fn replays_and_implausible_jumps_are_refused_and_change_nothing() {
        let mut t = Tracking::new(4);
        assert_eq!(t.observe(&"a", 5, 1, 10), Observed::InOrder);
        assert_eq!(t.observe(&"a", 5, 2, 10), Observed::InOrder);
        assert_eq!(t.observe(&"a", 5, 2, 10), Observed::Replayed);
        assert_eq!(t.observe(&"a", 5, 1, 10), Observed::Replayed);
        assert_eq!(t.observe(&"a", 4, 9, 10), Observed::Replayed);
        assert_eq!(t.observe(&"a", 5, 14, 10), Observed::Implausible);
        assert_eq!(t.observe(&"a", 5, u64::MAX, 10), Observed::Implausible);
        assert_eq!(t.observe(&"a", 5, 13, 10), Observed::Gap(10));
        assert_eq!(t.observe(&"a", 5, 14, 10), Observed::InOrder);
        // A new epoch may not jump either: its numbering starts at 1 too.
        assert_eq!(t.observe(&"a", 6, 12, 10), Observed::Implausible);
        assert_eq!(t.observe(&"a", 5, 15, 10), Observed::InOrder);
        assert_eq!(t.observe(&"a", 6, 11, 10), Observed::Restarted { lost: 10 });
    }

    #[test]
    fn tail_marks_reveal_the_missed_end_of_a_stream_once() {
        let mut t = Tracking::new(4);
        let m = u64::MAX;
        assert_eq!(t.observe(&"a", 5, 1, m), Observed::InOrder);
        assert_eq!(t.observe_tail(&"a", 5, 1, m), Observed::InOrder);
        assert_eq!(t.observe_tail(&"a", 5, 4, m), Observed::Gap(3));
        assert_eq!(
            t.observe_tail(&"a", 5, 4, m),
            Observed::InOrder,
            "marks repeat"
        );
        assert_eq!(t.observe_tail(&"a", 5, 2, m), Observed::InOrder);
        assert_eq!(t.observe(&"a", 5, 5, m), Observed::InOrder, "no loss twice");
        assert_eq!(t.observe(&"a", 5, 4, m), Observed::Replayed);
        assert_eq!(t.observe_tail(&"a", 4, 9, m), Observed::Replayed);
        assert_eq!(t.observe_tail(&"a", 5, 5 + 11, 10), Observed::Implausible);
        assert_eq!(t.observe_tail(&"a", 6, 11, 10), Observed::Implausible);
        assert_eq!(
            t.observe_tail(&"a", 6, 3, m),
            Observed::Restarted { lost: 3 }
        );
        assert_eq!(t.observe(&"a", 6, 4, m), Observed::InOrder);
        // A first sight starts the record without a loss, as a first message does.
        assert_eq!(t.observe_tail(&"b", 1, 9, m), Observed::InOrder);
        assert_eq!(t.observe(&"b", 1, 10, m), Observed::InOrder);
    }

    #[test]
    fn full_tables_forget_the_oldest_key() {
        let mut t = Tracking::new(2);
        t.observe(&1, 1, 1, u64::MAX);
        t.observe(&2, 1, 1, u64::MAX);
        t.observe(&3, 1, 1, u64::MAX);
        // Key 1 was forgotten: its next number is a fresh start, not a gap.
        assert_eq!(t.observe(&1, 1, 9, u64::MAX), Observed::InOrder);
        let mut n = Numbering::new(1);
        let first = n.next(&1);
        n.next(&2);
        let again = n.next(&1);
        assert_eq!(again.1, 1);
        assert!(
            again.0 > first.0,
            "a forgotten stream restarts under a new epoch"
        );
    }
}
