//! Attacks on the byte-rate limiter with explicit instants: bursts aligned to clock ticks of
//! any size (including just before and just after a tick), refunds, and many principals
//! sharing a capsule never let more through than one burst plus what the rate earned over the
//! time spanned, and one principal's spent bucket never costs another anything.

use std::time::{Duration, Instant};

use capsule_bus::{PrincipalId, Rate, RateLimiter};
use uuid::Uuid;

fn pid(s: &str) -> PrincipalId {
    PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `chunk`-byte messages at each instant until one is refused; returns the bytes
/// accepted.
fn drain_at(
    lim: &RateLimiter,
    cap: Uuid,
    who: &PrincipalId,
    rate: Rate,
    chunk: u64,
    at: Instant,
) -> u64 {
    let mut taken = 0;
    while lim.check_at(cap, who, chunk, rate, at).is_ok() {
        taken += chunk;
        assert!(taken <= rate.burst, "more than a burst at one instant");
    }
    taken
}

#[test]
fn bursts_aligned_to_any_tick_never_exceed_burst_plus_earned() {
    let rate = Rate {
        bytes_per_sec: 1_000,
        burst: 250,
    };
    let ticks = [
        Duration::from_nanos(1),
        Duration::from_micros(999),
        Duration::from_millis(1),
        Duration::from_millis(4),
        Duration::from_nanos(15_625_000),
        Duration::from_millis(100),
        Duration::from_millis(250),
        Duration::from_millis(1_000),
        Duration::from_millis(3_000),
    ];
    for tick in ticks {
        for chunk in [1, 3, 7, 250] {
            let lim = RateLimiter::default();
            let cap = Uuid::new_v4();
            let who = pid("alice");
            let t0 = Instant::now();
            let mut accepted = 0u64;
            let mut last = t0;
            // Just before, at and just after each tick: a bucket refilled on a coarse clock
            // that rounds up, or a refill counted twice across a boundary, shows here.
            for k in 0..120u32 {
                let at = t0 + tick * k;
                for at in [
                    at.checked_sub(Duration::from_nanos(1))
                        .unwrap_or(at)
                        .max(last),
                    at,
                    at + Duration::from_nanos(1),
                ] {
                    accepted += drain_at(&lim, cap, &who, rate, chunk, at);
                    last = at;
                }
            }
            let span = last.saturating_duration_since(t0).as_secs_f64();
            let bound = rate.burst as f64 + rate.bytes_per_sec as f64 * span;
            assert!(
                accepted as f64 <= bound + 1e-6,
                "tick {tick:?}, chunk {chunk}: {accepted} accepted over {span} s, bound {bound}"
            );
        }
    }
}

#[test]
fn refunds_never_raise_a_bucket_past_what_was_taken() {
    let rate = Rate::per_second(100);
    let lim = RateLimiter::default();
    let cap = Uuid::new_v4();
    let who = pid("alice");
    let t0 = Instant::now();
    assert!(lim.check_at(cap, &who, 60, rate, t0).is_ok());
    // Refunds of bytes never taken, or taken by another key, give nothing.
    for _ in 0..10 {
        lim.refund(cap, &who, 100, rate);
    }
    lim.refund(Uuid::new_v4(), &who, 100, rate);
    assert_eq!(drain_at(&lim, cap, &who, rate, 1, t0), 100);
    assert!(lim.check_at(cap, &who, 1, rate, t0).is_err());
}

#[test]
fn a_spent_bucket_costs_other_principals_and_capsules_nothing() {
    let rate = Rate::per_second(1_000);
    let lim = RateLimiter::new(64);
    let cap = Uuid::new_v4();
    let t0 = Instant::now();
    let mallory = pid("mallory");
    assert_eq!(drain_at(&lim, cap, &mallory, rate, 1, t0), 1_000);
    for i in 0..200 {
        let who = pid(&format!("p{i}"));
        // Every other principal gets a whole burst at the same instant, however many came.
        assert_eq!(drain_at(&lim, cap, &who, rate, 100, t0), 1_000, "p{i}");
        assert_eq!(
            drain_at(&lim, Uuid::new_v4(), &mallory, rate, 500, t0),
            1_000,
            "mallory on another capsule"
        );
    }
    assert!(lim.len() <= 64 + 16, "{} buckets", lim.len());
}
