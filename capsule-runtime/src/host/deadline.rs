//! The one race every waiting host call runs: a wait ends when it is done, when the capsule
//! unloads, or when the wall-clock deadline of the bounded call it runs in passes. Epoch
//! interruption only counts while wasm code runs, so without this race a handler parked in a
//! host wait (a socket nobody answers, a pollable nobody readies, a long sleep) would keep its
//! worker slot for as long as it liked. A deadline overrun traps the call with
//! [`Interrupt::Deadline`], exactly as an epoch-deadline overrun does; run loops have no
//! deadline, so their waits race unload only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capsule::CapsuleInner;
use crate::limits::{CpuMeter, Interrupt, LimitsCtx};

/// Beyond this, a wall-clock deadline is no deadline: the timer wheel cannot take an instant
/// near the end of the clock's range (it rounds up past it and panics), and a call allowed
/// ten years is unbounded in practice (its epoch deadline still holds).
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl CpuMeter {
    /// The meter of a bounded call allowed `windows` epoch windows of running and `timeout`
    /// of wall-clock time from now, waits included. A timeout too large to represent means no
    /// wall-clock deadline (the epoch deadline still holds).
    pub(crate) fn call(windows: u64, timeout: Duration) -> Self {
        Self::Call {
            elapsed: 0,
            deadline: windows,
            until: Instant::now().checked_add(timeout),
        }
    }

    /// When a bounded call must end, with the interrupt it then ends with; `None` for run
    /// loops.
    fn wall_deadline(&self) -> Option<(Instant, Interrupt)> {
        match self {
            Self::RunLoop { .. } => None,
            Self::Call {
                deadline, until, ..
            } => until
                .filter(|t| t.saturating_duration_since(Instant::now()) <= FOREVER)
                .map(|t| (t, Interrupt::Deadline { windows: *deadline })),
        }
    }
}

impl CapsuleInner {
    /// The meter of a call (handler, interceptor or lifecycle hook) whose profile allows
    /// `timeout_secs`: the same quota bounds its running time in epoch windows and its whole
    /// duration, waits included, in wall-clock time.
    pub(crate) fn call_meter(&self, timeout_secs: u64) -> CpuMeter {
        CpuMeter::call(
            self.deadline_windows(timeout_secs),
            Duration::from_secs(timeout_secs),
        )
    }
}

impl LimitsCtx {
    /// Waits for `wait`, racing the capsule's unloading and the current call's deadline.
    /// `Ok(Some(out))` when the wait finished, `Ok(None)` when the capsule unloads (the caller
    /// answers as it does for unload: `closed`, `cancelled`, …), `Err(interrupt)` when the
    /// call's deadline passed: the host function must return it as a trap (`?` does), so the
    /// call ends as an epoch-deadline overrun does and the guest sees no answer. The time
    /// spent is counted as waiting for the run-loop CPU meter.
    pub(crate) async fn race<F: Future>(
        &mut self,
        wait: F,
    ) -> Result<Option<F::Output>, Interrupt> {
        let cancel = self.shared.cancel.clone();
        let deadline = self.cpu.wall_deadline();
        let started = Instant::now();
        let passed = async {
            match &deadline {
                Some((until, _)) => tokio::time::sleep_until((*until).into()).await,
                None => std::future::pending().await,
            }
        };
        let out = tokio::select! {
            biased;
            () = cancel.cancelled() => Ok(None),
            () = passed => Err(deadline.map_or(Interrupt::Unloaded, |(_, i)| i)),
            out = wait => Ok(Some(out)),
        };
        self.cpu.add_wait(started.elapsed());
        if let Err(interrupt) = &out {
            tracing::debug!(%interrupt, "a host wait outlived its call's deadline");
        }
        out
    }

    /// Runs `work` on the blocking pool (see `LimitsShared::blocking`), racing the call's
    /// deadline both while it queues for a pool permit and while the work runs: the pool is
    /// shared by every capsule, so without this race a call queued behind other principals'
    /// blocking work would hold its worker slot past its deadline. On the deadline the work,
    /// if it started, still ends on its pool thread and its result is dropped unreported:
    /// the call traps, so the guest is told nothing it could take as done.
    pub(crate) async fn blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Option<Result<T, tokio::task::JoinError>>, Interrupt> {
        let shared = Arc::clone(&self.shared);
        Ok(self.race(shared.blocking(work)).await?.flatten())
    }

    /// A place on the blocking pool, queueing for it raced like any wait (`Ok(None)` on
    /// unload), for work that must run to its end once started and so cannot be cut
    /// halfway: the caller hands the place to `LimitsShared::blocking_with`.
    pub(crate) async fn blocking_place(
        &mut self,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Interrupt> {
        let shared = Arc::clone(&self.shared);
        Ok(self.race(shared.blocking_permit()).await?.flatten())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn run_loops_have_no_wall_deadline_and_calls_do() {
        assert_eq!(CpuMeter::run_loop(3).wall_deadline(), None);
        let call = CpuMeter::call(7, Duration::from_secs(3600));
        let Some((until, interrupt)) = call.wall_deadline() else {
            panic!("a call has a wall-clock deadline");
        };
        assert!(until > Instant::now());
        assert_eq!(interrupt, Interrupt::Deadline { windows: 7 });
        assert_eq!(
            CpuMeter::call(7, Duration::MAX).wall_deadline(),
            None,
            "an unrepresentable timeout leaves only the epoch deadline"
        );
    }

    fn ctx(blocking_permits: usize, cpu: CpuMeter) -> LimitsCtx {
        let ledger = Arc::new(crate::limits::MemoryLedger::default());
        LimitsCtx {
            shared: Arc::new(crate::limits::LimitsShared {
                io: Arc::new(tokio::sync::Semaphore::new(1)),
                blocking: Arc::new(tokio::sync::Semaphore::new(blocking_permits)),
                cancel: tokio_util::sync::CancellationToken::new(),
                ledger: Arc::clone(&ledger),
            }),
            memory: crate::limits::MemoryMeter::new(
                capsule_bus::PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
                1 << 20,
                ledger,
            ),
            cpu,
            cancel_seen: false,
        }
    }

    #[tokio::test]
    async fn a_call_queued_for_the_blocking_pool_ends_at_its_deadline() {
        // No permit is ever free: every pool thread is busy with other capsules' work.
        let mut c = ctx(0, CpuMeter::call(3, Duration::from_millis(50)));
        let queued = tokio::time::timeout(Duration::from_secs(60), c.blocking(|| 1)).await;
        assert_eq!(
            queued.ok().map(|r| r.err()),
            Some(Some(Interrupt::Deadline { windows: 3 })),
            "the queued call must trap at its deadline"
        );
        // A run loop has no deadline: only unload ends its queueing.
        let mut run = ctx(0, CpuMeter::run_loop(3));
        let cancel = run.shared.cancel.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            cancel.cancel();
        });
        let out = run.blocking(|| 1).await;
        assert!(
            matches!(out, Ok(None)),
            "unload answers a queued run-loop wait"
        );
        // And a free permit runs the work.
        let mut free = ctx(1, CpuMeter::call(3, Duration::from_secs(3600)));
        assert!(matches!(free.blocking(|| 7).await, Ok(Some(Ok(7)))));
        // Queueing for a place alone (a process start) ends at the deadline too, and a
        // free place is handed out and given back when dropped.
        let mut c = ctx(0, CpuMeter::call(3, Duration::from_millis(50)));
        let queued = tokio::time::timeout(Duration::from_secs(60), c.blocking_place()).await;
        assert_eq!(
            queued.ok().map(|r| r.err()),
            Some(Some(Interrupt::Deadline { windows: 3 })),
            "a start queued for the pool must trap at its deadline"
        );
        let place = free.blocking_place().await;
        assert!(matches!(place, Ok(Some(_))), "a free place is taken");
        assert_eq!(free.shared.blocking.available_permits(), 0);
        drop(place);
        assert_eq!(free.shared.blocking.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_deadline_at_the_end_of_the_clock_is_no_deadline() {
        // The latest instant this clock can represent, to the nanosecond: an operator's
        // `max_timeout_secs` can land a call's deadline there.
        let now = Instant::now();
        let mut far = Duration::ZERO;
        let mut step = Duration::from_secs(1 << 62);
        while !step.is_zero() {
            if now.checked_add(far + step).is_some() {
                far += step;
            }
            step /= 2;
        }
        let end = now.checked_add(far);
        let mut c = ctx(
            1,
            CpuMeter::Call {
                elapsed: 0,
                deadline: 1,
                until: end,
            },
        );
        assert_eq!(c.race(async { 5 }).await, Ok(Some(5)));
    }
}
