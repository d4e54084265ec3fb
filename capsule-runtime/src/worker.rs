//! Handler calls of a loaded capsule: `invoke` runs the call on the caller's task when nobody
//! waits and a slot is free, and queues it otherwise for a worker task. A call gets its
//! principal's warm instance, else a spare, else a fresh one instantiated on its path; an
//! instance serves one principal only and is discarded when a call on it did not complete. A
//! call runs in its principal's invocation scope, under that principal's memory quota, deadline
//! and fuel, and the scope is removed on every exit path. A call whose caller stops waiting
//! still runs to its end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use capsule_bus::PrincipalId;
use tracing::Instrument;

use crate::calls::{Job, Slot, Submitted};
use crate::capsule::CapsuleInner;
use crate::inspect::HOOK;
use crate::instance::classify;
use crate::limits::{CpuMeter, Interrupt};
use crate::outcome::{HookResponse, InvokeError};
use crate::scope::{Caller, InvocationScope};
use crate::spares::{Pooled, Taken};

type CallResult = Result<HookResponse, InvokeError>;

/// A call running on its caller's task; if the caller stops waiting, the rest of the call is
/// moved to a task of its own, so a call once started always ends as it would on a worker.
struct Finishing(Option<Pin<Box<dyn Future<Output = CallResult> + Send>>>);

impl Future for Finishing {
    type Output = CallResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        let Some(fut) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let out = fut.as_mut().poll(cx);
        if out.is_ready() {
            self.0 = None;
        }
        out
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        if let Some(fut) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _unheard = fut.await;
            });
        }
    }
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
        let fresh_store = || {
            let mut store = self.new_store_for(
                CpuMeter::call(1, self.window),
                principal,
                memory_quota,
                None,
            );
            store.data_mut().core.set_scope(Some(scope.clone()));
            store
        };
        let fail = |source: wasmtime::Error| InvokeError::Instantiate {
            capsule: self.identity().name.clone(),
            source,
        };
        let mut store = fresh_store();
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            // Kept instances only save time: when the pool is full, the slots they hold go
            // back to this call, which tries once more on a store of its own.
            Err(first) => {
                drop(store);
                let full =
                    (self.spare_ceiling.as_ref()).is_some_and(|c| c.may_be_full(&self.engine));
                if !full || crate::spares::shed_kept(&self.engine) == 0 {
                    return Err(fail(first));
                }
                store = fresh_store();
                self.pre.instantiate_async(&mut store).await.map_err(fail)?
            }
        };
        let hook = instance
            .get_typed_func::<(String, Vec<u8>), (HookResponse,)>(&mut store, HOOK)
            .map_err(fail)?;
        Ok(Pooled {
            store,
            hook,
            principal: Some(principal.clone()),
            overlays: None,
        })
    }

    /// Runs a call of `astrid-hook-trigger` caused by `caller` and returns its result. With
    /// `inline`, the call may run on this task (when nobody waits and a slot is free); without,
    /// it always goes through the queue (callers running several calls at once on one task).
    pub(crate) async fn call(
        self: &Arc<Self>,
        action: String,
        payload: Vec<u8>,
        caller: Caller,
        inline: bool,
    ) -> CallResult {
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
        let job = Job {
            action,
            payload,
            caller,
        };
        match self.calls.submit(&principal, job, inline) {
            Submitted::Inline(job, slot) => {
                let me = Arc::clone(self);
                Finishing(Some(Box::pin(async move {
                    let result = me.serve(&principal, job).await;
                    if let Some(slot) = slot.finish() {
                        me.start_worker(slot);
                    }
                    result
                })))
                .await
            }
            Submitted::Queued(result, slot) => {
                if let Some(slot) = slot {
                    self.start_worker(slot);
                }
                result
                    .await
                    .unwrap_or_else(|_| Err(InvokeError::Unloaded(name())))
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
                Err(InvokeError::QueueFull {
                    capsule: name(),
                    principal,
                })
            }
        }
    }

    fn start_worker(self: &Arc<Self>, slot: Slot) {
        let worker = Arc::clone(self).worker(slot);
        tokio::spawn(worker);
    }

    /// Serves queued calls until the queues are empty or closed; the slot is given back then.
    async fn worker(self: Arc<Self>, mut slot: Slot) {
        while let Some((principal, call)) = self.calls.next(&mut slot) {
            let result = self.serve(&principal, call.job).await;
            // The caller may have stopped waiting; the result is then simply dropped.
            let _unheard = call.reply.send(result);
        }
    }

    /// Runs one call on an instance of `principal`'s and counts how it ended.
    async fn serve(self: &Arc<Self>, principal: &PrincipalId, job: Job) -> CallResult {
        let result = self.run_call(principal, job).await;
        let trapped = matches!(
            &result,
            Err(InvokeError::Trapped(_) | InvokeError::Interrupted(_))
        );
        self.counters.ended(result.is_ok(), trapped);
        result
    }

    /// An instance for `principal` under `quota` from what [`Instances::take`] found: its own
    /// warm one, a spare that fits the quota, or a fresh one instantiated now.
    async fn instance_for(
        self: &Arc<Self>,
        taken: Taken,
        scope: &InvocationScope,
        quota: u64,
    ) -> Result<Pooled, InvokeError> {
        let principal = &scope.principal;
        let (spare, reset) = match taken {
            // A warm instance holds what it grew to; after the principal's quota was lowered
            // below that, it is dropped and the call starts afresh under the new quota.
            Taken::Warm(pooled) if pooled.store.data().core.limits.memory.size() <= quota => {
                return Ok(pooled);
            }
            Taken::Warm(over) => {
                drop(over);
                (None, false)
            }
            Taken::Spare { pooled, reset, .. } => (Some(pooled), reset),
            Taken::Nothing { reset, .. } => (None, reset),
        };
        if reset {
            self.counters.reset();
        }
        // A spare whose memory is already beyond this principal's quota is not for it: a fresh
        // instance made under the quota then fails the way it must.
        if let Some(mut spare) = spare {
            if spare.store.data().core.limits.memory.size() <= quota {
                spare.principal = Some(principal.clone());
                self.counters.spare_used();
                return Ok(spare);
            }
            drop(self.instances.return_spare(spare));
        }
        self.instantiate_call(scope, quota).await
    }

    async fn run_call(self: &Arc<Self>, principal: &PrincipalId, job: Job) -> CallResult {
        let name = || self.identity().name.clone();
        let Job {
            action,
            payload,
            caller,
        } = job;
        let (taken, needs) = self.instances.take(principal);
        self.after_take(needs);
        // A warm instance whose home or tmp the operator has moved or replaced since may hold
        // handles opened in the old one: it is dropped, and the call starts afresh.
        let mut taken = match taken {
            Taken::Warm(p) if p.overlays.as_ref().is_some_and(|o| o.dirs_moved()) => {
                self.discard(p);
                Taken::Nothing {
                    reset: false,
                    resources: None,
                }
            }
            other => other,
        };
        // Only the principal's own warm instance, or its own resources kept from one, offer
        // resources to reuse, and the scope reuses them only for that same principal.
        let cached = match &mut taken {
            Taken::Warm(p) => p
                .principal
                .clone()
                .zip(p.overlays.clone())
                .filter(|(whose, _)| whose == principal),
            Taken::Spare { resources, .. } | Taken::Nothing { resources, .. } => {
                resources.take().map(|r| (principal.clone(), r))
            }
        };
        let scope = self.core.scopes.build_reusing(caller, true, cached);
        let profile = match &scope.profile {
            Ok(p) => Arc::clone(p),
            Err(reason) => {
                // A refused principal keeps nothing: its warm instance is dropped, a spare
                // goes back unused.
                if let Taken::Spare { pooled, .. } = taken {
                    drop(self.instances.return_spare(pooled));
                }
                return Err(InvokeError::PrincipalRefused {
                    principal: principal.clone(),
                    reason: reason.clone(),
                });
            }
        };
        let quota = profile.quotas.max_memory_bytes;
        let mut instance = self.instance_for(taken, &scope, quota).await?;
        debug_assert_eq!(instance.principal.as_ref(), Some(principal));
        {
            let state = &mut instance.store.data_mut().core;
            state.set_scope(Some(scope));
            state.limits.memory.retarget(principal, quota);
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
        let core = &mut instance.store.data_mut().core;
        let overlays = core
            .scope
            .as_ref()
            .filter(|s| &s.principal == principal)
            .and_then(|s| s.overlays.clone());
        core.set_scope(None);
        match result {
            Ok((response,)) => {
                instance.overlays = overlays;
                // Kept warm for this principal alone; an instance it displaces (or this one,
                // when the capsule is closing) is discarded.
                if let Some(old) = self.instances.put(instance) {
                    self.discard(old);
                }
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
