//! Per-Store resource meters: linear memory may never grow past the quota of the principal the
//! Store currently runs for (a refused growth is a failed `memory.grow` the guest sees, not a
//! host crash), every principal's peak is recorded, CPU use is metered in epoch windows (a run
//! loop by the share of each window it spent running rather than waiting), and every Store's
//! resource table holds at most [`MAX_STORE_RESOURCES`] entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::PrincipalId;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wasmtime::ResourceLimiter;

use crate::bounded::{BoundedMap, PRINCIPAL_CACHE_CAPACITY, PRINCIPAL_IDLE_TTL};

/// Most entries (subscriptions, pollables, file handles, WASI streams, …) one Store's resource
/// table holds. A call that would add one more fails: with `quota` where the interface has an
/// error to return, otherwise (`subscribe-readiness`, WASI) by trapping the guest.
pub const MAX_STORE_RESOURCES: usize = 4096;

/// Most table elements a guest table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Per-principal memory statistics: one ledger for the runtime, and one per capsule that
/// forwards every record to the runtime's, so both views stay complete. Each is bounded like
/// every per-principal cache (a principal idle long enough, or the least recently charged one,
/// is forgotten when room is needed).
#[derive(Debug)]
pub(crate) struct MemoryLedger {
    peaks: Mutex<BoundedMap<PrincipalId, MemoryStats>>,
    parent: Option<Arc<MemoryLedger>>,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self {
            peaks: Mutex::new(BoundedMap::new(
                PRINCIPAL_CACHE_CAPACITY,
                PRINCIPAL_IDLE_TTL,
            )),
            parent: None,
        }
    }
}

/// Memory statistics of one principal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Largest linear memory any Store reached while running for the principal, in bytes.
    pub peak_bytes: u64,
    /// Growth requests refused because they exceeded the principal's quota.
    pub refused_grows: u64,
}

impl MemoryLedger {
    /// A ledger (a capsule's) whose records also reach `parent` (the runtime's).
    pub(crate) fn child_of(parent: Arc<MemoryLedger>) -> Self {
        Self {
            parent: Some(parent),
            ..Self::default()
        }
    }

    fn record(&self, principal: &PrincipalId, bytes: u64) {
        {
            let mut peaks = self.peaks.lock();
            let entry = peaks.entry(principal, Instant::now(), MemoryStats::default);
            entry.peak_bytes = entry.peak_bytes.max(bytes);
        }
        if let Some(parent) = &self.parent {
            parent.record(principal, bytes);
        }
    }

    fn refuse(&self, principal: &PrincipalId) {
        self.peaks
            .lock()
            .entry(principal, Instant::now(), MemoryStats::default)
            .refused_grows += 1;
        if let Some(parent) = &self.parent {
            parent.refuse(principal);
        }
    }

    pub(crate) fn snapshot(&self) -> HashMap<PrincipalId, MemoryStats> {
        self.peaks
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// The memory limiter of one Store, re-targeted whenever the Store starts running for a
/// different principal.
#[derive(Debug)]
pub(crate) struct MemoryMeter {
    quota: u64,
    principal: PrincipalId,
    ledger: Arc<MemoryLedger>,
    /// The linear memory size last allowed: what a principal the Store is retargeted to
    /// starts out using.
    size: u64,
}

impl MemoryMeter {
    pub(crate) fn new(principal: PrincipalId, quota: u64, ledger: Arc<MemoryLedger>) -> Self {
        Self {
            quota,
            principal,
            ledger,
            size: 0,
        }
    }

    /// The linear memory the Store has been allowed so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Charges further growth to `principal` under `quota`; the memory the Store already has
    /// counts towards the principal's peak, since it runs with it.
    pub(crate) fn retarget(&mut self, principal: &PrincipalId, quota: u64) {
        if &self.principal != principal {
            self.principal = principal.clone();
        }
        self.quota = quota;
        if self.size > 0 {
            self.ledger.record(&self.principal, self.size);
        }
    }
}

impl ResourceLimiter for MemoryMeter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.quota {
            self.ledger.refuse(&self.principal);
            tracing::info!(
                principal = %self.principal,
                desired,
                quota = self.quota,
                "refused linear memory growth beyond the principal's quota"
            );
            return Ok(false);
        }
        self.ledger.record(&self.principal, desired);
        self.size = self.size.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Share of a window a run loop may spend running (not waiting in `recv`, `poll`, a pollable
/// or `sleep-ns`) before the window counts as busy, in percent.
pub const RUN_LOOP_BUSY_SHARE_PERCENT: u32 = 50;

/// Why a Store was interrupted at an epoch boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Interrupt {
    /// A run loop was busy (ran for more than [`RUN_LOOP_BUSY_SHARE_PERCENT`] of the time
    /// instead of waiting) for the configured number of consecutive windows.
    #[error("run loop kept the CPU busy for {windows} consecutive epoch windows")]
    CpuBudget {
        /// Windows counted when it was stopped.
        windows: u32,
    },
    /// A call ran past its deadline.
    #[error("call exceeded its deadline of {windows} epoch windows")]
    Deadline {
        /// The deadline in windows.
        windows: u64,
    },
    /// The capsule is being unloaded.
    #[error("capsule unloaded")]
    Unloaded,
    /// A call used up its fuel budget.
    #[error("call ran out of fuel")]
    OutOfFuel,
}

/// How a Store's CPU use is judged at each epoch boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CpuMeter {
    /// A background loop: may run forever as long as it spends most of its time waiting for
    /// events. What counts is the time it waited, not whether it called a waiting function:
    /// a `recv(0)` or a 1 ms sleep between bursts of work does not make a spinner cooperative.
    RunLoop {
        /// When the current window began (the previous epoch boundary seen).
        since: Instant,
        /// Time spent in waiting host calls since then.
        waited: Duration,
        /// Consecutive busy windows.
        busy: u32,
        /// Busy windows allowed in a row.
        max: u32,
    },
    /// A bounded call: trapped once its deadline has passed, whether it is running (counted
    /// in epoch windows) or waiting in a host call (`until`, raced by every host wait: see
    /// `host::deadline`).
    Call {
        /// Windows elapsed.
        elapsed: u64,
        /// Windows allowed.
        deadline: u64,
        /// When the call must have ended, waits included; `None` when too far to represent.
        until: Option<Instant>,
    },
}

impl CpuMeter {
    /// A run-loop meter whose first window starts now.
    pub(crate) fn run_loop(max: u32) -> Self {
        Self::RunLoop {
            since: Instant::now(),
            waited: Duration::ZERO,
            busy: 0,
            max,
        }
    }

    /// Notes that the guest spent `waited` blocked in a host call, waiting for an event.
    pub(crate) fn add_wait(&mut self, waited: Duration) {
        if let Self::RunLoop { waited: total, .. } = self {
            *total = total.saturating_add(waited);
        }
    }

    /// Accounts one epoch window; `Err` when the Store must be interrupted.
    pub(crate) fn tick(&mut self) -> Result<(), Interrupt> {
        self.tick_at(Instant::now())
    }

    /// [`tick`](Self::tick) at `now`.
    pub(crate) fn tick_at(&mut self, now: Instant) -> Result<(), Interrupt> {
        match self {
            Self::RunLoop {
                since,
                waited,
                busy,
                max,
            } => {
                let elapsed = now.saturating_duration_since(*since);
                let ran = elapsed.saturating_sub(std::mem::take(waited));
                *since = now;
                let share = u128::from(RUN_LOOP_BUSY_SHARE_PERCENT);
                if ran.as_nanos() * 100 > elapsed.as_nanos() * share {
                    *busy += 1;
                    if *busy >= *max {
                        return Err(Interrupt::CpuBudget { windows: *busy });
                    }
                } else {
                    *busy = 0;
                }
                Ok(())
            }
            Self::Call {
                elapsed, deadline, ..
            } => {
                *elapsed += 1;
                if *elapsed > *deadline {
                    return Err(Interrupt::Deadline { windows: *deadline });
                }
                Ok(())
            }
        }
    }
}

/// A capsule's budgets, shared by all of its Stores.
#[derive(Debug)]
pub(crate) struct LimitsShared {
    /// Bounds async I/O waits (`recv`, `pollable.block`, `poll`).
    pub(crate) io: Arc<Semaphore>,
    /// Bounds blocking host work.
    pub(crate) blocking: Arc<Semaphore>,
    /// Cancelled when the capsule unloads; every waiting host call races it.
    pub(crate) cancel: CancellationToken,
    /// Per-principal memory peaks of this capsule (forwarded to the runtime-wide ledger).
    pub(crate) ledger: Arc<MemoryLedger>,
}

/// The budgets of one Store.
#[derive(Debug)]
pub(crate) struct LimitsCtx {
    pub(crate) shared: Arc<LimitsShared>,
    pub(crate) memory: MemoryMeter,
    pub(crate) cpu: CpuMeter,
    /// Set at the first epoch boundary after unload began: the guest gets one window to
    /// return on its own (its waiting calls already answered `closed`) before it is trapped.
    pub(crate) cancel_seen: bool,
}

impl LimitsShared {
    /// Runs blocking work on the blocking pool, bounded by the blocking semaphore. `None` when
    /// the capsule unloads first (the work may still finish; its result is dropped and never
    /// reported as done). `Some(Err)` only if the work itself panicked: a host bug.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<Result<T, tokio::task::JoinError>> {
        let permit = self.blocking_permit().await?;
        self.blocking_with(permit, work).await
    }

    /// A place on the blocking pool, or `None` when the capsule unloads first. Taken apart
    /// from the work so that a caller can race the queueing alone against a deadline and
    /// keep the work itself, once started, running to its end.
    pub(crate) async fn blocking_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            permit = Arc::clone(&self.blocking).acquire_owned() => permit.ok(),
        }
    }

    /// Runs `work` on the blocking pool in the place `permit` holds, racing only the unload
    /// (as [`Self::blocking`] does once it has its place).
    pub(crate) async fn blocking_with<T: Send + 'static>(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<Result<T, tokio::task::JoinError>> {
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            done = task => Some(done),
        }
    }
}

impl LimitsCtx {
    /// The epoch callback's judgement at a boundary: trap once unloading has had its window,
    /// or when the CPU meter says so; otherwise keep running.
    pub(crate) fn at_epoch(&mut self) -> Result<(), Interrupt> {
        if self.shared.cancel.is_cancelled() {
            if std::mem::replace(&mut self.cancel_seen, true) {
                return Err(Interrupt::Unloaded);
            }
            return Ok(());
        }
        self.cpu.tick()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn growth_past_quota_is_refused_and_counted() {
        let ledger = Arc::new(MemoryLedger::default());
        let mut m = MemoryMeter::new(pid("a"), 1000, ledger.clone());
        assert!(m.memory_growing(0, 800, None).unwrap_or(false));
        assert!(!m.memory_growing(800, 1001, None).unwrap_or(true));
        m.retarget(&pid("b"), 5000);
        assert!(m.memory_growing(800, 4000, None).unwrap_or(false));
        let s = ledger.snapshot();
        assert_eq!(
            s[&pid("a")],
            MemoryStats {
                peak_bytes: 800,
                refused_grows: 1
            }
        );
        assert_eq!(s[&pid("b")].peak_bytes, 4000);
    }

    #[test]
    fn the_ledger_stays_bounded_under_principal_churn() {
        let ledger = Arc::new(MemoryLedger::default());
        let mut m = MemoryMeter::new(pid("first"), 1 << 20, ledger.clone());
        for i in 0..PRINCIPAL_CACHE_CAPACITY + 50 {
            m.retarget(&pid(&format!("p{i}")), 1 << 20);
            assert!(m.memory_growing(0, 4096, None).unwrap_or(false));
        }
        assert_eq!(ledger.snapshot().len(), PRINCIPAL_CACHE_CAPACITY);
    }

    #[test]
    fn run_loop_survives_while_it_waits_and_is_stopped_when_it_runs() {
        let window = Duration::from_millis(20);
        let t0 = Instant::now();
        let mut c = CpuMeter::RunLoop {
            since: t0,
            waited: Duration::ZERO,
            busy: 0,
            max: 3,
        };
        let mut now = t0;
        for _ in 0..100 {
            now += window;
            c.add_wait(Duration::from_millis(15));
            assert_eq!(c.tick_at(now), Ok(()));
        }
        // A long wait followed by a little work is one idle window, however long.
        now += Duration::from_secs(30);
        c.add_wait(Duration::from_secs(30) - Duration::from_millis(1));
        assert_eq!(c.tick_at(now), Ok(()));
        // Waiting 1 ms out of every 20 is running, not waiting.
        for _ in 0..2 {
            now += window;
            c.add_wait(Duration::from_millis(1));
            assert_eq!(c.tick_at(now), Ok(()));
        }
        now += window;
        assert_eq!(c.tick_at(now), Err(Interrupt::CpuBudget { windows: 3 }));
    }

    #[test]
    fn one_idle_window_resets_the_count() {
        let t0 = Instant::now();
        let mut c = CpuMeter::run_loop(3);
        let mut now = t0 + Duration::from_millis(1);
        for _ in 0..10 {
            now += Duration::from_millis(20);
            assert_eq!(c.tick_at(now), Ok(()));
            now += Duration::from_millis(20);
            assert_eq!(c.tick_at(now), Ok(()));
            now += Duration::from_millis(20);
            c.add_wait(Duration::from_millis(19));
            assert_eq!(c.tick_at(now), Ok(()));
        }
    }

    #[test]
    fn calls_stop_at_their_deadline() {
        let mut c = CpuMeter::call(2, Duration::from_secs(3600));
        c.add_wait(Duration::from_secs(1));
        assert_eq!(c.tick(), Ok(()));
        assert_eq!(c.tick(), Ok(()));
        assert_eq!(c.tick(), Err(Interrupt::Deadline { windows: 2 }));
    }
}
