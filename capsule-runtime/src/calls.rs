//! The handler-call queue of one capsule: a bounded FIFO per principal, served round robin, so a
//! principal flooding a capsule delays another principal's calls by at most one in-flight call
//! per slot. A full queue refuses the call (the caller counts and audits the drop); nothing
//! queues without bound. At most `max_slots` calls run at once; a call that finds nobody
//! waiting and a slot free runs on its caller's task, with no hand-off; queued calls are served
//! by worker tasks that hold a slot each and stop as soon as the queues are empty.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use capsule_bus::PrincipalId;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::outcome::{HookResponse, InvokeError};
use crate::scope::Caller;

/// What a handler call asks for: `astrid-hook-trigger(action, payload)`, caused by `caller`.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) action: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) caller: Caller,
}

/// Where a queued call's result goes.
pub(crate) type Reply = oneshot::Sender<Result<HookResponse, InvokeError>>;

/// One queued call of `astrid-hook-trigger`.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) job: Job,
    pub(crate) reply: Reply,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<PrincipalId, VecDeque<Call>>,
    /// Principals with queued calls, in round-robin order.
    ring: VecDeque<PrincipalId>,
    /// Slots held: calls running on their caller's task plus worker tasks.
    running: usize,
    /// Background helpers (the spare-instance keeper) that hold Stores of the capsule.
    helpers: usize,
    closed: bool,
}

/// What [`CallQueue::submit`] decided.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// Nobody waits and a slot was free: the caller runs the job itself, holding the slot.
    Inline(Job, Slot),
    /// Queued; the result arrives on the receiver. With a slot, the caller must start a worker
    /// holding it.
    Queued(
        oneshot::Receiver<Result<HookResponse, InvokeError>>,
        Option<Slot>,
    ),
    /// The principal's queue is full (or the capsule is closing); the call was dropped.
    Refused,
}

/// The right to run calls of the capsule: held by a call running on its caller's task or by a
/// worker. Dropping it gives it back and wakes an unload waiting for the last one.
#[derive(Debug)]
pub(crate) struct Slot(Option<Arc<CallQueue>>);

impl Slot {
    /// Gives the slot back after a call ran on its caller's task, or keeps it (returned) when
    /// calls queued meanwhile: the caller then starts a worker with it to serve them.
    pub(crate) fn finish(mut self) -> Option<Slot> {
        let queue = self.0.take()?;
        let keep = {
            let mut st = queue.state.lock();
            if !st.closed && !st.ring.is_empty() {
                true
            } else {
                st.running -= 1;
                false
            }
        };
        if keep {
            return Some(Slot(Some(queue)));
        }
        queue.check_stopped();
        None
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            queue.state.lock().running -= 1;
            queue.check_stopped();
        }
    }
}

/// Counts a background helper out when it stops, however it stops.
#[derive(Debug)]
pub(crate) struct HelperGuard(Arc<CallQueue>);

impl Drop for HelperGuard {
    fn drop(&mut self) {
        self.0.state.lock().helpers -= 1;
        self.0.check_stopped();
    }
}

/// Per-principal call queues; at most `max_slots` calls run at once.
#[derive(Debug)]
pub(crate) struct CallQueue {
    state: Mutex<State>,
    /// Woken when the last slot or helper is given back.
    stopped: Notify,
    per_principal: usize,
    max_slots: usize,
}

impl CallQueue {
    pub(crate) fn new(per_principal: usize, max_slots: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            stopped: Notify::new(),
            per_principal: per_principal.max(1),
            max_slots: max_slots.max(1),
        }
    }

    /// Runs `job` for `principal` on the caller's task when `inline` is allowed, nobody waits
    /// and a slot is free; queues it otherwise, refusing it when that principal's queue is full.
    pub(crate) fn submit(
        self: &Arc<Self>,
        principal: &PrincipalId,
        job: Job,
        inline: bool,
    ) -> Submitted {
        let mut st = self.state.lock();
        if st.closed {
            return Submitted::Refused;
        }
        let free = st.running < self.max_slots;
        if inline && free && st.ring.is_empty() {
            st.running += 1;
            return Submitted::Inline(job, Slot(Some(Arc::clone(self))));
        }
        let queue = st.queues.entry(principal.clone()).or_default();
        if queue.len() >= self.per_principal {
            return Submitted::Refused;
        }
        let was_empty = queue.is_empty();
        let (reply, result) = oneshot::channel();
        queue.push_back(Call { job, reply });
        if was_empty {
            st.ring.push_back(principal.clone());
        }
        let slot = free.then(|| {
            st.running += 1;
            Slot(Some(Arc::clone(self)))
        });
        Submitted::Queued(result, slot)
    }

    /// The next queued call in round-robin order for the worker holding `slot`; `None` once
    /// the queues are empty or closed, and the slot is then given back.
    pub(crate) fn next(&self, slot: &mut Slot) -> Option<(PrincipalId, Call)> {
        {
            let mut st = self.state.lock();
            while !st.closed {
                let Some(principal) = st.ring.pop_front() else {
                    break;
                };
                let (call, more) = match st.queues.get_mut(&principal) {
                    Some(q) => (q.pop_front(), !q.is_empty()),
                    None => (None, false),
                };
                if more {
                    st.ring.push_back(principal.clone());
                } else {
                    st.queues.remove(&principal);
                }
                if let Some(call) = call {
                    return Some((principal, call));
                }
            }
            if slot.0.take().is_some() {
                st.running -= 1;
            }
        }
        self.check_stopped();
        None
    }

    /// A guard counting a background helper in, so an unload waits for it; `None` once closed.
    pub(crate) fn helper(self: &Arc<Self>) -> Option<HelperGuard> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        st.helpers += 1;
        Some(HelperGuard(Arc::clone(self)))
    }

    fn check_stopped(&self) {
        let idle = {
            let st = self.state.lock();
            st.running == 0 && st.helpers == 0
        };
        if idle {
            self.stopped.notify_waiters();
        }
    }

    /// Closes the queue: every queued call is answered with `Unloaded`; workers stop after the
    /// call they run.
    pub(crate) fn close(&self, capsule: &str) {
        let drained: Vec<Call> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.ring.clear();
            st.queues.drain().flat_map(|(_, q)| q).collect()
        };
        for call in drained {
            // The caller may have gone away; nothing to tell then.
            let _unheard = call
                .reply
                .send(Err(InvokeError::Unloaded(capsule.to_string())));
        }
    }

    /// Resolves once no slot is held and no helper runs. Call after [`CallQueue::close`], which
    /// stops new calls.
    pub(crate) async fn workers_stopped(&self) {
        loop {
            let stopped = self.stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            {
                let st = self.state.lock();
                if st.running == 0 && st.helpers == 0 {
                    return;
                }
            }
            stopped.await;
        }
    }

    /// Calls waiting (not running) now.
    pub(crate) fn queued(&self) -> usize {
        self.state.lock().queues.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_bus::Attribution;

    fn job(tag: &str) -> Job {
        Job {
            action: tag.to_string(),
            payload: Vec::new(),
            caller: Caller {
                attribution: Attribution::System,
                source: uuid::Uuid::nil(),
                timestamp_ms: 0,
                hops: 0,
            },
        }
    }

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn queued(
        q: &Arc<CallQueue>,
        p: &str,
        tag: &str,
    ) -> (
        oneshot::Receiver<Result<HookResponse, InvokeError>>,
        Option<Slot>,
    ) {
        match q.submit(&pid(p), job(tag), false) {
            Submitted::Queued(rx, slot) => (rx, slot),
            other => panic!("{tag} must queue: {other:?}"),
        }
    }

    #[tokio::test]
    async fn principals_are_served_round_robin() {
        let q = Arc::new(CallQueue::new(100, 1));
        let (_rx, slot) = queued(&q, "heavy", "h0");
        let mut slot = slot.unwrap_or_else(|| panic!("the first call gets the slot"));
        for i in 1..50 {
            assert!(queued(&q, "heavy", &format!("h{i}")).1.is_none());
        }
        for i in 0..3 {
            queued(&q, "light", &format!("l{i}"));
        }
        let mut order = Vec::new();
        for _ in 0..8 {
            let (p, c) = q.next(&mut slot).unwrap_or_else(|| panic!("closed"));
            order.push(format!("{p}:{}", c.job.action));
        }
        assert_eq!(
            order,
            vec![
                "heavy:h0", "light:l0", "heavy:h1", "light:l1", "heavy:h2", "light:l2", "heavy:h3",
                "heavy:h4"
            ]
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_close_answers_everyone() {
        let q = Arc::new(CallQueue::new(2, 1));
        let (mut ra, slot) = queued(&q, "p", "a");
        let mut slot = slot.unwrap_or_else(|| panic!("the first call starts a worker"));
        assert!(queued(&q, "p", "b").1.is_none());
        assert!(matches!(
            q.submit(&pid("p"), job("c"), false),
            Submitted::Refused
        ));
        queued(&q, "other", "d");
        assert_eq!(q.queued(), 3);
        q.close("cap");
        assert!(matches!(ra.try_recv(), Ok(Err(InvokeError::Unloaded(_)))));
        assert!(q.next(&mut slot).is_none());
        assert!(matches!(
            q.submit(&pid("p"), job("e"), true),
            Submitted::Refused
        ));
        q.workers_stopped().await;
    }

    #[tokio::test]
    async fn a_call_runs_inline_only_when_nobody_waits_and_a_slot_is_free() {
        let q = Arc::new(CallQueue::new(4, 1));
        let Submitted::Inline(_, first) = q.submit(&pid("a"), job("1"), true) else {
            panic!("an idle capsule runs the call on the caller's task");
        };
        // The only slot is taken: the next call queues, and nobody else starts a worker.
        let (_rx, slot) = queued(&q, "b", "2");
        assert!(slot.is_none());
        assert!(matches!(
            q.submit(&pid("c"), job("3"), true),
            Submitted::Queued(_, None)
        ));
        // The inline caller keeps its slot for a worker, which serves both in order.
        let mut worker = first
            .finish()
            .unwrap_or_else(|| panic!("queued calls keep the slot"));
        let served: Vec<String> = std::iter::from_fn(|| q.next(&mut worker))
            .map(|(p, c)| format!("{p}:{}", c.job.action))
            .collect();
        assert_eq!(served, vec!["b:2", "c:3"]);
        // Everything given back: an unload would not wait, and the next call runs inline.
        q.workers_stopped().await;
        let Submitted::Inline(_, again) = q.submit(&pid("a"), job("4"), true) else {
            panic!("a free slot again");
        };
        assert!(again.finish().is_none());
        let helper = q.helper();
        assert!(helper.is_some());
        q.close("cap");
        assert!(q.helper().is_none(), "no helper starts after close");
        drop(helper);
        q.workers_stopped().await;
    }
}
