//! Stores of a loaded capsule, and the calls that get a Store of their own: the run loop and
//! the lifecycle call. Every Store gets the memory limiter, the epoch callback and (when
//! metering is on) fuel, and one context per capability, built from the capsule's shared parts.

use std::sync::Arc;

use capsule_bus::PrincipalId;
use tracing::Instrument;
use wasmtime::{Store, UpdateDeadline};

use crate::capsule::CapsuleInner;
use crate::error::LifecycleFailure;
use crate::host::{HostState, InstanceCx, wasi::OutputTail};
use crate::inspect::{INSTALL, RUN, UPGRADE};
use crate::lifecycle::LifecyclePhase;
use crate::limits::{CpuMeter, Interrupt};
use crate::outcome::RunExit;
use crate::state::OutputRoute;

/// How a guest call ended when it did not return: the host's interrupt, or the guest's trap
/// (its message).
pub(crate) fn classify(err: &wasmtime::Error) -> Result<Interrupt, String> {
    if let Some(i) = err.downcast_ref::<Interrupt>() {
        return Ok(i.clone());
    }
    if matches!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::OutOfFuel)
    ) {
        return Ok(Interrupt::OutOfFuel);
    }
    Err(format!("{err:#}"))
}

impl CapsuleInner {
    /// A fresh Store for the owner, with the limiter and the epoch callback installed.
    pub(crate) fn new_store(&self, cpu: CpuMeter) -> Store<HostState> {
        let owner = &self.core.identity.owner;
        self.new_store_for(cpu, owner, self.core.owner_quota(), None)
    }

    /// A fresh Store whose linear memory, from instantiation on, is charged to `principal`
    /// under `memory_quota`; its stderr is also kept in `tail` when one is given.
    pub(crate) fn new_store_for(
        &self,
        cpu: CpuMeter,
        principal: &PrincipalId,
        memory_quota: u64,
        tail: Option<&OutputTail>,
    ) -> Store<HostState> {
        let output = OutputRoute::new(self.core.owner_log.clone());
        let caps = self.caps.instance(&InstanceCx {
            output: &output,
            stderr_tail: tail,
        });
        let core = self.core.store_core(principal, memory_quota, cpu, output);
        let mut store = Store::new(&self.engine, HostState { core, caps });
        store.limiter(|s| &mut s.core.limits.memory);
        store.epoch_deadline_callback(|mut ctx| {
            ctx.data_mut()
                .core
                .limits
                .at_epoch()
                .map_err(wasmtime::Error::new)?;
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        if self.fuel {
            // Run loops and lifecycle calls are bounded by epochs; handler calls get their
            // own budget before each call.
            if let Err(e) = store.set_fuel(u64::MAX) {
                tracing::error!(error = %e, "cannot fuel a new store");
            }
        }
        store
    }

    /// Runs `run` to completion on its own Store and records how it ended.
    pub(crate) async fn run_loop(self: Arc<Self>) {
        let mut store = self.new_store(CpuMeter::run_loop(self.max_busy_windows));
        let identity = &self.core.identity;
        let outcome = async {
            let instance = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| RunExit::Failed(format!("{e:#}")))?;
            let run = instance
                .get_typed_func::<(), ()>(&mut store, RUN)
                .map_err(|e| RunExit::Failed(format!("{e:#}")))?;
            store.set_epoch_deadline(1);
            run.call_async(&mut store, ())
                .await
                .map_err(|e| match classify(&e) {
                    Ok(i) => RunExit::Interrupted(i),
                    Err(msg) => RunExit::Trapped(msg),
                })
        }
        .instrument(tracing::debug_span!(
            "run",
            capsule = %identity.name,
            principal = %identity.owner,
        ))
        .await;
        let exit_value = match outcome {
            Ok(()) => RunExit::Returned,
            Err(e) => e,
        };
        match &exit_value {
            RunExit::Returned => tracing::debug!(capsule = %identity.name, "run returned"),
            other => tracing::warn!(capsule = %identity.name, exit = %other, "run loop ended"),
        }
        self.run_exit.send_replace(Some(exit_value));
    }

    /// Runs `astrid-install` or `astrid-upgrade` in a Store of its own (limits included), with
    /// `astrid:elicit` enabled for its duration.
    pub(crate) async fn run_lifecycle(
        &self,
        phase: LifecyclePhase,
    ) -> Result<(), LifecycleFailure> {
        let timeout = match &self.core.owner_profile {
            Ok(p) => p.quotas.max_timeout_secs,
            Err(refusal) => return Err(LifecycleFailure::Refused(refusal.clone())),
        };
        let export = match phase {
            LifecyclePhase::Install => INSTALL,
            LifecyclePhase::Upgrade { .. } => UPGRADE,
        };
        let tail = OutputTail::default();
        let identity = &self.core.identity;
        let mut store = self.new_store_for(
            self.call_meter(timeout),
            &identity.owner,
            self.core.owner_quota(),
            Some(&tail),
        );
        store.data_mut().core.phase = Some(phase);
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(LifecycleFailure::Start)?;
        let func = instance
            .get_typed_func::<(), ()>(&mut store, export)
            .map_err(LifecycleFailure::Start)?;
        store.set_epoch_deadline(1);
        let span = tracing::debug_span!(
            "lifecycle",
            capsule = %identity.name,
            principal = %identity.owner,
            phase = export,
        );
        func.call_async(&mut store, ())
            .instrument(span)
            .await
            .map_err(|e| {
                let why = match classify(&e) {
                    Ok(i) => i.to_string(),
                    Err(msg) => msg,
                };
                tracing::debug!(capsule = %identity.name, error = %why, "lifecycle call failed");
                // The guest's words say what went wrong; the trap kind says how it ended, and the
                // wasm backtrace (in the debug log above) helps nobody reading a load error.
                LifecycleFailure::Guest(
                    match (tail.last_line(), e.downcast_ref::<wasmtime::Trap>()) {
                        (Some(said), Some(trap)) => format!("{said} ({trap})"),
                        (Some(said), None) => format!("{said} ({why})"),
                        (None, _) => why,
                    },
                )
            })
    }

    /// `timeout_secs` in epoch windows (at least one).
    pub(crate) fn deadline_windows(&self, timeout_secs: u64) -> u64 {
        let window_ms = self.window.as_millis().max(1);
        let ms = u128::from(timeout_secs) * 1000;
        u64::try_from(ms.div_ceil(window_ms))
            .unwrap_or(u64::MAX)
            .max(1)
    }
}
