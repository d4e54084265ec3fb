//! Handler calls of a loaded capsule: `invoke` queues a call on the capsule's `CallQueue`;
//! lazily spawned workers (up to the pool size) each keep one pooled instance, replaced when
//! the next call is for another principal or the last one did not complete. A call runs in
//! its principal's invocation scope, under that principal's memory quota, deadline and fuel,
//! and the scope is removed on every exit path.

use std::sync::Arc;

use capsule_bus::PrincipalId;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime::component::TypedFunc;

use crate::calls::{Call, Submitted};
use crate::capsule::CapsuleInner;
use crate::host::HostState;
use crate::inspect::HOOK;
use crate::instance::classify;
use crate::limits::{CpuMeter, Interrupt};
use crate::outcome::{HookResponse, InvokeError};
use crate::scope::{Caller, InvocationScope};

/// A worker's instance: kept between calls for the same principal, rebuilt when the principal
/// changes or a call did not complete.
struct Pooled {
    store: Store<HostState>,
    hook: TypedFunc<(String, Vec<u8>), (HookResponse,)>,
    principal: PrincipalId,
}

impl CapsuleInner {
    /// A fresh instance for `scope`'s principal: instantiated under that principal's memory
    /// quota and ledger, with its scope (and so its output route) in place from the start.
    async fn instantiate_call(
        &self,
        scope: &InvocationScope,
        memory_quota: u64,
    ) -> Result<Pooled, InvokeError> {
        let principal = &scope.principal;
        let mut store = self.new_store_for(
            CpuMeter::call(1, self.window),
            principal,
            memory_quota,
            None,
        );
        store.data_mut().core.set_scope(Some(scope.clone()));
        let fail = |source: wasmtime::Error| InvokeError::Instantiate {
            capsule: self.identity().name.clone(),
            source,
        };
        let instance = self.pre.instantiate_async(&mut store).await.map_err(fail)?;
        let hook = instance
            .get_typed_func::<(String, Vec<u8>), (HookResponse,)>(&mut store, HOOK)
            .map_err(fail)?;
        Ok(Pooled {
            store,
            hook,
            principal: principal.clone(),
        })
    }

    /// Queues a call of `astrid-hook-trigger` caused by `caller` and waits for its result.
    pub(crate) async fn call(
        self: &Arc<Self>,
        action: String,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Result<HookResponse, InvokeError> {
        let name = || self.identity().name.clone();
        if !self.report.exports.hook {
            return Err(InvokeError::NoHook(name()));
        }
        if self.core.limits.cancel.is_cancelled() {
            return Err(InvokeError::Unloaded(name()));
        }
        let principal = caller
            .attribution
            .principal()
            .cloned()
            .unwrap_or_else(|| self.identity().owner.clone());
        let (reply, result) = tokio::sync::oneshot::channel();
        let call = Call {
            action,
            payload,
            caller,
            reply,
        };
        match self.calls.submit(&principal, call) {
            Submitted::Queued(spawn) => {
                if spawn {
                    let counted = self.calls.worker_guard();
                    let worker = Arc::clone(self).worker();
                    tokio::spawn(async move {
                        // The worker future (and its hold on the capsule) is gone before the
                        // guard reports the worker stopped, so an unload that waited for it
                        // knows the capsule's stores are released.
                        worker.await;
                        drop(counted);
                    });
                }
            }
            Submitted::Refused => {
                self.counters.dropped();
                if self.core.limits.cancel.is_cancelled() {
                    return Err(InvokeError::Unloaded(name()));
                }
                tracing::warn!(
                    target: "capsule::audit::dispatch",
                    capsule = %self.identity().name,
                    principal = %principal,
                    "handler call dropped: the principal's queue is full"
                );
                return Err(InvokeError::QueueFull {
                    capsule: name(),
                    principal,
                });
            }
        }
        result
            .await
            .unwrap_or_else(|_| Err(InvokeError::Unloaded(name())))
    }

    /// Serves queued calls until the capsule unloads, keeping one instance between calls of
    /// the same principal.
    async fn worker(self: Arc<Self>) {
        let mut pooled: Option<Pooled> = None;
        while let Some((principal, call)) = self.calls.next().await {
            let result = self
                .run_call(
                    &mut pooled,
                    &principal,
                    call.action,
                    call.payload,
                    call.caller,
                )
                .await;
            let trapped = matches!(
                &result,
                Err(InvokeError::Trapped(_) | InvokeError::Interrupted(_))
            );
            self.counters.ended(result.is_ok(), trapped);
            // The caller may have stopped waiting; the result is then simply dropped.
            let _unheard = call.reply.send(result);
        }
    }

    async fn run_call(
        &self,
        pooled: &mut Option<Pooled>,
        principal: &PrincipalId,
        action: String,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Result<HookResponse, InvokeError> {
        let name = || self.identity().name.clone();
        let scope = self.core.scopes.build(caller, true);
        let profile = match &scope.profile {
            Ok(p) => Arc::clone(p),
            Err(reason) => {
                return Err(InvokeError::PrincipalRefused {
                    principal: principal.clone(),
                    reason: reason.clone(),
                });
            }
        };
        // Another principal's guest memory is never reused: such an instance is replaced.
        if pooled.as_ref().is_some_and(|p| &p.principal != principal) {
            *pooled = None;
            self.counters.reset();
        }
        let mut instance = match pooled.take() {
            Some(p) => p,
            None => {
                self.instantiate_call(&scope, profile.quotas.max_memory_bytes)
                    .await?
            }
        };
        {
            let state = &mut instance.store.data_mut().core;
            state.set_scope(Some(scope));
            state
                .limits
                .memory
                .retarget(principal, profile.quotas.max_memory_bytes);
            state.limits.cpu = self.call_meter(profile.quotas.max_timeout_secs);
        }
        if self.fuel {
            let budget = profile
                .quotas
                .max_cpu_fuel_per_sec
                .map_or(u64::MAX, |per_sec| {
                    per_sec.saturating_mul(profile.quotas.max_timeout_secs)
                });
            if let Err(e) = instance.store.set_fuel(budget) {
                return Err(InvokeError::Trapped(format!("cannot set fuel: {e:#}")));
            }
        }
        instance.store.set_epoch_deadline(1);
        let span = tracing::debug_span!(
            "handler",
            capsule = %self.identity().name,
            principal = %principal,
            action = %action,
        );
        let result = instance
            .hook
            .call_async(&mut instance.store, (action, payload))
            .instrument(span)
            .await;
        instance.store.data_mut().core.set_scope(None);
        match result {
            Ok((response,)) => {
                *pooled = Some(instance);
                Ok(response)
            }
            // The Store whose call did not complete is discarded here, never reused.
            Err(e) => Err(match classify(&e) {
                Ok(Interrupt::Unloaded) => InvokeError::Unloaded(name()),
                Ok(i) => InvokeError::Interrupted(i),
                Err(msg) => InvokeError::Trapped(msg),
            }),
        }
    }
}
