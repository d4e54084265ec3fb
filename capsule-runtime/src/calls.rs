//! The handler-call queue of one capsule: a bounded FIFO per principal, served round robin, so a
//! principal flooding a capsule delays another principal's calls by at most one in-flight call
//! per worker. A full queue refuses the call (the caller counts and audits the drop); nothing
//! queues without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use capsule_bus::PrincipalId;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::outcome::{HookResponse, InvokeError};
use crate::scope::Caller;

/// One pending call of `astrid-hook-trigger`.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) action: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) caller: Caller,
    pub(crate) reply: oneshot::Sender<Result<HookResponse, InvokeError>>,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<PrincipalId, VecDeque<Call>>,
    /// Principals with queued calls, in round-robin order.
    ring: VecDeque<PrincipalId>,
    workers: usize,
    idle: usize,
    closed: bool,
}

/// What [`CallQueue::submit`] decided.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// Queued; `true` if the caller must start one more worker.
    Queued(bool),
    /// The principal's queue is full (or the capsule is closing); the call was dropped.
    Refused,
}

struct IdleGuard<'q>(&'q CallQueue);

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.0.state.lock().idle -= 1;
    }
}

/// Counts a worker out when it stops, however it stops, and wakes whoever waits for the last.
/// It owns its queue so it can outlive everything else the worker held.
pub(crate) struct WorkerGuard(Arc<CallQueue>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        let last = {
            let mut st = self.0.state.lock();
            st.workers -= 1;
            st.workers == 0
        };
        if last {
            self.0.stopped.notify_waiters();
        }
    }
}

/// Per-principal call queues served by up to `max_workers` workers.
#[derive(Debug)]
pub(crate) struct CallQueue {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when the last worker stops.
    stopped: Notify,
    per_principal: usize,
    max_workers: usize,
}

impl CallQueue {
    pub(crate) fn new(per_principal: usize, max_workers: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            stopped: Notify::new(),
            per_principal: per_principal.max(1),
            max_workers: max_workers.max(1),
        }
    }

    /// Queues `call` for `principal`; refuses it when that principal's queue is full.
    pub(crate) fn submit(&self, principal: &PrincipalId, call: Call) -> Submitted {
        let mut st = self.state.lock();
        if st.closed {
            return Submitted::Refused;
        }
        let queue = st.queues.entry(principal.clone()).or_default();
        if queue.len() >= self.per_principal {
            return Submitted::Refused;
        }
        let was_empty = queue.is_empty();
        queue.push_back(call);
        if was_empty {
            st.ring.push_back(principal.clone());
        }
        let spawn = st.idle == 0 && st.workers < self.max_workers;
        if spawn {
            st.workers += 1;
        }
        drop(st);
        self.notify.notify_one();
        Submitted::Queued(spawn)
    }

    /// The next call in round-robin order; `None` once the queue is closed.
    pub(crate) async fn next(&self) -> Option<(PrincipalId, Call)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if st.closed {
                    return None;
                }
                if let Some(principal) = st.ring.pop_front() {
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
                    continue;
                }
                st.idle += 1;
            }
            // Counted idle until woken, and un-counted even if this future is dropped.
            let _idle = IdleGuard(self);
            notified.await;
        }
    }

    /// Closes the queue: every queued call is answered with `Unloaded` and workers stop.
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
        self.notify.notify_waiters();
    }

    /// To be held by a worker for as long as it runs (the queue counted it when it asked for
    /// it), and dropped after the worker has let go of everything else.
    pub(crate) fn worker_guard(self: &Arc<Self>) -> WorkerGuard {
        WorkerGuard(Arc::clone(self))
    }

    /// Resolves once no worker runs. Call after [`CallQueue::close`], which stops them.
    pub(crate) async fn workers_stopped(&self) {
        loop {
            let stopped = self.stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if self.state.lock().workers == 0 {
                return;
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

    fn call(tag: &str) -> (Call, oneshot::Receiver<Result<HookResponse, InvokeError>>) {
        let (tx, rx) = oneshot::channel();
        (
            Call {
                action: tag.to_string(),
                payload: Vec::new(),
                caller: Caller {
                    attribution: Attribution::System,
                    source: uuid::Uuid::nil(),
                    timestamp_ms: 0,
                    hops: 0,
                },
                reply: tx,
            },
            rx,
        )
    }

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn principals_are_served_round_robin() {
        let q = CallQueue::new(100, 1);
        for i in 0..50 {
            assert!(matches!(
                q.submit(&pid("heavy"), call(&format!("h{i}")).0),
                Submitted::Queued(_)
            ));
        }
        for i in 0..3 {
            q.submit(&pid("light"), call(&format!("l{i}")).0);
        }
        let mut order = Vec::new();
        for _ in 0..8 {
            let (p, c) = q.next().await.unwrap_or_else(|| panic!("closed"));
            order.push(format!("{p}:{}", c.action));
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
        let q = CallQueue::new(2, 1);
        let (a, mut ra) = call("a");
        assert!(
            matches!(q.submit(&pid("p"), a), Submitted::Queued(true)),
            "the first call starts a worker"
        );
        assert!(matches!(
            q.submit(&pid("p"), call("b").0),
            Submitted::Queued(false)
        ));
        assert!(matches!(
            q.submit(&pid("p"), call("c").0),
            Submitted::Refused
        ));
        assert!(matches!(
            q.submit(&pid("other"), call("d").0),
            Submitted::Queued(false)
        ));
        assert_eq!(q.queued(), 3);
        q.close("cap");
        assert!(matches!(ra.try_recv(), Ok(Err(InvokeError::Unloaded(_)))));
        assert!(q.next().await.is_none());
        assert!(matches!(
            q.submit(&pid("p"), call("e").0),
            Submitted::Refused
        ));
    }
}
