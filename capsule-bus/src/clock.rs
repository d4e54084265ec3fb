//! The publish timestamp: wall-clock milliseconds since the Unix epoch, never ahead of the
//! precise wall clock and behind it by no more than the kernel's last timekeeping update.
//!
//! A message's timestamp is informational (the caller context a handler sees, the control
//! socket's listing, back-dating in the host's log); ordering is the sequence number's job.
//! Reading the precise clock costs a timer read and a conversion on every publish, so on Linux
//! the kernel's coarse real-time clock is read instead: the time at the last tick (1–10 ms,
//! 4 ms on a 250 Hz kernel), a plain load from the vDSO page.

/// Milliseconds since the Unix epoch now, to the kernel's tick where a coarse clock exists.
/// Never later than `SystemTime::now()` read at the same moment; 0 before the epoch.
pub(crate) fn unix_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        match (u64::try_from(t.tv_sec), u64::try_from(t.tv_nsec)) {
            (Ok(s), Ok(ns)) => s.saturating_mul(1000).saturating_add(ns / 1_000_000),
            // A clock set before 1970.
            _ => 0,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    fn precise_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    #[test]
    fn the_timestamp_is_never_ahead_of_the_wall_clock_and_close_behind_it() {
        // A tick is at most 10 ms on any Linux configuration (100 Hz). Preemption between the
        // reads only makes the coarse reading later, so the lower bound is the clock's own
        // staleness; 100 ms leaves room for a delayed tick on a loaded virtual machine.
        for _ in 0..1000 {
            let before = precise_ms();
            let coarse = unix_ms();
            let after = precise_ms();
            assert!(coarse <= after, "coarse {coarse} ahead of {after}");
            assert!(
                coarse + 100 >= before,
                "coarse {coarse} far behind {before}"
            );
        }
    }
}
