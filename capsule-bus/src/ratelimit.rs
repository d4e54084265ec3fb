//! Byte-rate limiting per (capsule instance, principal): a token bucket per key, safe to share
//! across threads, with memory bounded by a key cap (idle keys are pruned first, losslessly:
//! a full bucket is indistinguishable from a new one).

use std::time::Instant;

use capsule_ids::PrincipalId;
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::{Hash, Hasher};
use uuid::Uuid;

/// A byte rate: `bytes_per_sec` sustained, up to `burst` bytes at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sustained budget in bytes per second.
    pub bytes_per_sec: u64,
    /// Bucket capacity in bytes; a single message larger than this is always refused.
    pub burst: u64,
}

impl Rate {
    /// A rate whose burst is one second's worth.
    pub fn per_second(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            burst: bytes_per_sec,
        }
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateLimited {
    /// The bucket does not hold enough tokens right now.
    #[error("rate limit exceeded: {requested} bytes requested, {available} available")]
    Exhausted {
        /// Bytes the caller tried to send.
        requested: u64,
        /// Whole bytes currently available.
        available: u64,
    },
    /// The message is larger than the bucket can ever hold.
    #[error("message of {requested} bytes exceeds the burst size of {burst} bytes")]
    ExceedsBurst {
        /// Bytes the caller tried to send.
        requested: u64,
        /// The bucket capacity.
        burst: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// The rate of the bucket's latest check: what "refilled" means when idle buckets are
    /// pruned.
    rate: Rate,
}

impl Bucket {
    fn level_at(&self, now: Instant, rate: Rate) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate.bytes_per_sec as f64).min(rate.burst as f64)
    }

    /// Whether the bucket has refilled by `now` at its own rate, so that dropping it loses
    /// nothing (a new bucket starts full).
    fn is_full_at(&self, now: Instant) -> bool {
        self.level_at(now, self.rate) >= self.rate.burst as f64
    }
}

type Key = (Uuid, PrincipalId);

const SHARDS: usize = 16;

/// Token buckets keyed by (capsule instance, principal).
#[derive(Debug)]
pub struct RateLimiter {
    shards: Box<[Mutex<FxHashMap<Key, Bucket>>]>,
    max_keys_per_shard: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(65_536)
    }
}

impl RateLimiter {
    /// A limiter that keeps at most about `max_keys` buckets.
    pub fn new(max_keys: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(FxHashMap::default()))
            .collect();
        Self {
            shards,
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, capsule: &Uuid, principal: &PrincipalId) -> &Mutex<FxHashMap<Key, Bucket>> {
        let mut h = FxHasher::default();
        capsule.hash(&mut h);
        principal.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Takes `bytes` tokens from the bucket of (`capsule`, `principal`) at `rate`, or refuses
    /// without taking any.
    pub fn check(
        &self,
        capsule: Uuid,
        principal: &PrincipalId,
        bytes: u64,
        rate: Rate,
    ) -> Result<(), RateLimited> {
        self.check_at(capsule, principal, bytes, rate, Instant::now())
    }

    /// [`check`](Self::check) at an explicit instant (for deterministic tests).
    pub fn check_at(
        &self,
        capsule: Uuid,
        principal: &PrincipalId,
        bytes: u64,
        rate: Rate,
        now: Instant,
    ) -> Result<(), RateLimited> {
        if bytes > rate.burst {
            return Err(RateLimited::ExceedsBurst {
                requested: bytes,
                burst: rate.burst,
            });
        }
        let mut shard = self.shard(&capsule, principal).lock();
        let key = (capsule, principal.clone());
        if !shard.contains_key(&key) && shard.len() >= self.max_keys_per_shard {
            Self::make_room(&mut shard, now);
        }
        let bucket = shard.entry(key).or_insert(Bucket {
            tokens: rate.burst as f64,
            last: now,
            rate,
        });
        let level = bucket.level_at(now, rate);
        bucket.tokens = level;
        bucket.last = now;
        bucket.rate = rate;
        if (bytes as f64) <= level {
            bucket.tokens = level - bytes as f64;
            Ok(())
        } else {
            Err(RateLimited::Exhausted {
                requested: bytes,
                available: level as u64,
            })
        }
    }

    /// Gives back `bytes` taken by an earlier [`check`](Self::check) of the same key at
    /// `rate` (for a send that was refused by a later check and so never happened). The bucket
    /// never rises above its burst.
    pub fn refund(&self, capsule: Uuid, principal: &PrincipalId, bytes: u64, rate: Rate) {
        let mut shard = self.shard(&capsule, principal).lock();
        if let Some(bucket) = shard.get_mut(&(capsule, principal.clone())) {
            bucket.tokens = (bucket.tokens + bytes as f64).min(rate.burst as f64);
        }
    }

    /// Drops buckets that have refilled (losslessly); if none has, the least recently used.
    fn make_room(shard: &mut FxHashMap<Key, Bucket>, now: Instant) {
        let before = shard.len();
        shard.retain(|_, b| !b.is_full_at(now));
        if shard.len() < before {
            return;
        }
        let oldest = shard
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            shard.remove(&k);
        }
    }

    /// Drops every bucket that has refilled by `now`; returns how many were dropped.
    pub fn prune_idle(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut s = s.lock();
                let before = s.len();
                s.retain(|_, b| !b.is_full_at(now));
                before - s.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn alice() -> PrincipalId {
        PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn bucket_refuses_then_refills() {
        let lim = RateLimiter::default();
        let cap = Uuid::new_v4();
        let rate = Rate::per_second(1000);
        let t0 = Instant::now();
        assert!(lim.check_at(cap, &alice(), 600, rate, t0).is_ok());
        assert!(lim.check_at(cap, &alice(), 400, rate, t0).is_ok());
        assert_eq!(
            lim.check_at(cap, &alice(), 1, rate, t0),
            Err(RateLimited::Exhausted {
                requested: 1,
                available: 0
            })
        );
        // Half a second refills half the bucket.
        let t1 = t0 + Duration::from_millis(500);
        assert!(lim.check_at(cap, &alice(), 500, rate, t1).is_ok());
        assert!(lim.check_at(cap, &alice(), 1, rate, t1).is_err());
    }

    #[test]
    fn refusal_takes_nothing() {
        let lim = RateLimiter::default();
        let cap = Uuid::new_v4();
        let rate = Rate::per_second(100);
        let t0 = Instant::now();
        assert!(lim.check_at(cap, &alice(), 80, rate, t0).is_ok());
        assert!(lim.check_at(cap, &alice(), 30, rate, t0).is_err());
        assert!(lim.check_at(cap, &alice(), 20, rate, t0).is_ok());
    }

    #[test]
    fn a_refund_restores_what_was_taken_up_to_the_burst() {
        let lim = RateLimiter::default();
        let cap = Uuid::new_v4();
        let rate = Rate {
            bytes_per_sec: 1,
            burst: 100,
        };
        let t0 = Instant::now();
        assert!(lim.check_at(cap, &alice(), 100, rate, t0).is_ok());
        lim.refund(cap, &alice(), 60, rate);
        assert!(lim.check_at(cap, &alice(), 60, rate, t0).is_ok());
        assert!(lim.check_at(cap, &alice(), 10, rate, t0).is_err());
        // Refunds never lift a bucket past its burst, and unknown keys are left alone.
        lim.refund(cap, &alice(), 10_000, rate);
        assert!(lim.check_at(cap, &alice(), 101, rate, t0).is_err());
        let bob = PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}"));
        lim.refund(cap, &bob, 50, rate);
        assert_eq!(lim.len(), 1);
    }

    #[test]
    fn oversized_message_is_always_refused() {
        let lim = RateLimiter::default();
        let rate = Rate {
            bytes_per_sec: 10,
            burst: 50,
        };
        assert_eq!(
            lim.check(Uuid::new_v4(), &alice(), 51, rate),
            Err(RateLimited::ExceedsBurst {
                requested: 51,
                burst: 50
            })
        );
    }

    #[test]
    fn keys_are_independent() {
        let lim = RateLimiter::default();
        let rate = Rate::per_second(10);
        let t0 = Instant::now();
        let (c1, c2) = (Uuid::new_v4(), Uuid::new_v4());
        let bob = PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}"));
        assert!(lim.check_at(c1, &alice(), 10, rate, t0).is_ok());
        assert!(lim.check_at(c1, &alice(), 1, rate, t0).is_err());
        assert!(lim.check_at(c1, &bob, 10, rate, t0).is_ok());
        assert!(lim.check_at(c2, &alice(), 10, rate, t0).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_pruned() {
        let lim = RateLimiter::new(SHARDS * 4);
        let rate = Rate::per_second(100);
        let t0 = Instant::now();
        for i in 0..1000 {
            let p = PrincipalId::parse(&format!("p{i}")).unwrap_or_else(|e| panic!("{e}"));
            let _ = lim.check_at(Uuid::nil(), &p, 50, rate, t0);
        }
        assert!(lim.len() <= SHARDS * 4, "held {} buckets", lim.len());
        // After a full refill every bucket is idle and goes.
        let later = t0 + Duration::from_secs(2);
        let pruned = lim.prune_idle(later);
        assert!(pruned > 0);
        assert!(lim.is_empty());
    }

    #[test]
    fn an_idle_bucket_is_pruned_by_its_own_rate_not_another_keys() {
        let lim = RateLimiter::default();
        let (cap, t0) = (Uuid::new_v4(), Instant::now());
        let deep = Rate {
            bytes_per_sec: 1000,
            burst: 10_000,
        };
        assert!(lim.check_at(cap, &alice(), 10_000, deep, t0).is_ok());
        // Another key checked last, at a rate whose burst refills in one second.
        let bob = PrincipalId::parse("bob").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            lim.check_at(cap, &bob, 1, Rate::per_second(1000), t0)
                .is_ok()
        );
        let t2 = t0 + Duration::from_secs(2);
        // Bob's bucket is full again and goes; alice's holds 2 000 of 10 000 and must stay,
        // or her next check would start from a full burst.
        assert_eq!(lim.prune_idle(t2), 1);
        assert!(lim.check_at(cap, &alice(), 2000, deep, t2).is_ok());
        assert!(lim.check_at(cap, &alice(), 1, deep, t2).is_err());
    }

    #[test]
    fn concurrent_use_never_overspends() {
        let lim = std::sync::Arc::new(RateLimiter::default());
        let rate = Rate {
            bytes_per_sec: 1,
            burst: 1000,
        };
        let cap = Uuid::new_v4();
        let granted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lim = lim.clone();
                let granted = granted.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        if lim.check(cap, &alice(), 1, rate).is_ok() {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap_or_else(|_| panic!("thread panicked"));
        }
        // 1000 burst plus at most a few bytes of refill during the test.
        let g = granted.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1000..1100).contains(&g), "granted {g}");
    }
}
