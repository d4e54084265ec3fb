//! Per-Store resource meters: linear memory may never grow past the quota of the principal the
//! Store currently runs for (a refused growth is a failed `memory.grow` the guest sees, not a
//! host crash), every principal's peak is recorded, and CPU use is metered in epoch windows.

use std::collections::HashMap;
use std::sync::Arc;

use capsule_bus::PrincipalId;
use parking_lot::Mutex;
use wasmtime::ResourceLimiter;

/// Most table elements a guest table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Per-principal memory statistics: one ledger for the runtime, and one per capsule that
/// forwards every record to the runtime's, so both views stay complete.
#[derive(Debug, Default)]
pub(crate) struct MemoryLedger {
    peaks: Mutex<HashMap<PrincipalId, MemoryStats>>,
    parent: Option<Arc<MemoryLedger>>,
}

/// Memory statistics of one principal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
            peaks: Mutex::default(),
            parent: Some(parent),
        }
    }

    fn record(&self, principal: &PrincipalId, bytes: u64) {
        {
            let mut peaks = self.peaks.lock();
            let entry = peaks.entry(principal.clone()).or_default();
            entry.peak_bytes = entry.peak_bytes.max(bytes);
        }
        if let Some(parent) = &self.parent {
            parent.record(principal, bytes);
        }
    }

    fn refuse(&self, principal: &PrincipalId) {
        self.peaks
            .lock()
            .entry(principal.clone())
            .or_default()
            .refused_grows += 1;
        if let Some(parent) = &self.parent {
            parent.refuse(principal);
        }
    }

    pub(crate) fn snapshot(&self) -> HashMap<PrincipalId, MemoryStats> {
        self.peaks.lock().clone()
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

/// Why a Store was interrupted at an epoch boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Interrupt {
    /// A run loop burned CPU for the configured number of consecutive windows without waiting.
    #[error("run loop burned CPU for {windows} consecutive epoch windows without waiting in recv")]
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
    /// A background loop: may run forever as long as it keeps waiting for events.
    RunLoop {
        /// Set by waiting host calls; cleared at each window.
        yielded: bool,
        /// Consecutive windows without a wait.
        busy: u32,
        /// Windows allowed.
        max: u32,
    },
    /// A bounded call: trapped once its deadline has passed.
    Call {
        /// Windows elapsed.
        elapsed: u64,
        /// Windows allowed.
        deadline: u64,
    },
}

impl CpuMeter {
    /// Notes that the guest waited for an event (it is a cooperative loop, not a spinner).
    pub(crate) fn note_wait(&mut self) {
        if let Self::RunLoop { yielded, .. } = self {
            *yielded = true;
        }
    }

    /// Accounts one epoch window; `Err` when the Store must be interrupted.
    pub(crate) fn tick(&mut self) -> Result<(), Interrupt> {
        match self {
            Self::RunLoop { yielded, busy, max } => {
                if std::mem::take(yielded) {
                    *busy = 0;
                } else {
                    *busy += 1;
                    if *busy >= *max {
                        return Err(Interrupt::CpuBudget { windows: *busy });
                    }
                }
                Ok(())
            }
            Self::Call { elapsed, deadline } => {
                *elapsed += 1;
                if *elapsed > *deadline {
                    return Err(Interrupt::Deadline { windows: *deadline });
                }
                Ok(())
            }
        }
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
    fn run_loop_survives_while_it_waits() {
        let mut c = CpuMeter::RunLoop {
            yielded: false,
            busy: 0,
            max: 3,
        };
        for _ in 0..100 {
            c.note_wait();
            assert_eq!(c.tick(), Ok(()));
        }
        assert_eq!(c.tick(), Ok(()));
        assert_eq!(c.tick(), Ok(()));
        assert_eq!(c.tick(), Err(Interrupt::CpuBudget { windows: 3 }));
    }

    #[test]
    fn calls_stop_at_their_deadline() {
        let mut c = CpuMeter::Call {
            elapsed: 0,
            deadline: 2,
        };
        c.note_wait();
        assert_eq!(c.tick(), Ok(()));
        assert_eq!(c.tick(), Ok(()));
        assert_eq!(c.tick(), Err(Interrupt::Deadline { windows: 2 }));
    }
}
