//! Interceptor dispatch. Every published message reaches one tap subscription (bounded and
//! fair across principals like any route); its topic is matched against the handler bindings of
//! the loaded capsules with the bus's own matcher, and the matching handlers run as a chain
//! ordered by (priority, capsule, action). Handlers of equal priority run concurrently and see
//! the same payload; `continue` with data replaces the payload for the next priority level (only
//! with valid JSON within the payload limit: anything else is a failed, audited link),
//! `final` ends the chain, `deny`/`abort` end it and are audited; a failed handler is logged and
//! the chain goes on. A binding whose pattern covers the audit topic sees only its owner's audit
//! entries unless the owner holds the firehose grant: the audit rule of runtime subscriptions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use capsule_bus::{Bus, JsonPayload, Message, PatternIndex, Receiver, Scope, TopicPattern};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::capsule::CapsuleInner;
use crate::host::audit::field;
use crate::host::ipc::MAX_PAYLOAD_BYTES;
use crate::outcome::Verdict;
use crate::outcomes::{DispatchOutcomes, LinkResult, OutcomeSender};
use crate::scope::{Caller, audit_rule};

/// One handler declared by `handler = "…"` in a capsule's `[subscribe]`.
#[derive(Debug)]
pub(crate) struct Binding {
    id: u64,
    capsule: Weak<CapsuleInner>,
    capsule_name: String,
    action: String,
    priority: u32,
    /// Whose messages the handler may see (the audit rule of runtime subscriptions).
    scope: Scope,
}

/// A `continue` answer's data as the next level's payload: one JSON value within the payload
/// limit, like any published payload.
fn replacement_payload(data: String) -> Result<JsonPayload, String> {
    if data.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "{} bytes; the payload limit is {MAX_PAYLOAD_BYTES}",
            data.len()
        ));
    }
    JsonPayload::parse(data).map_err(|e| e.to_string())
}

/// Counters of the dispatcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatchStats {
    /// Messages that matched at least one handler.
    pub chains: u64,
    /// Chains ended early by `final`, `deny` or `abort`.
    pub stopped: u64,
    /// Handler calls that failed, were dropped, or answered `continue` with data that is not
    /// a valid payload (the chain went on).
    pub failed_links: u64,
    /// Messages the tap lost because it was full (each counted by the bus, too).
    pub tap_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    chains: AtomicU64,
    stopped: AtomicU64,
    failed_links: AtomicU64,
    tap_dropped: AtomicU64,
}

/// The runtime-wide dispatcher.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    index: RwLock<PatternIndex<Arc<Binding>>>,
    next_id: AtomicU64,
    cancel: CancellationToken,
    started: Mutex<bool>,
    counters: Counters,
    /// The bus the tap reads, where denials are also published as audit entries.
    bus: std::sync::OnceLock<Bus>,
    /// Every link's outcome, for embedders that read them.
    outcomes: OutcomeSender,
}

impl Dispatcher {
    pub(crate) fn new() -> Self {
        Self {
            index: RwLock::new(PatternIndex::new()),
            next_id: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            started: Mutex::new(false),
            counters: Counters::default(),
            bus: std::sync::OnceLock::new(),
            outcomes: OutcomeSender::new(),
        }
    }

    /// A reader of every link outcome from now on.
    pub(crate) fn outcomes(&self) -> DispatchOutcomes {
        self.outcomes.subscribe()
    }

    pub(crate) fn stats(&self) -> DispatchStats {
        let c = &self.counters;
        DispatchStats {
            chains: c.chains.load(Ordering::Relaxed),
            stopped: c.stopped.load(Ordering::Relaxed),
            failed_links: c.failed_links.load(Ordering::Relaxed),
            tap_dropped: c.tap_dropped.load(Ordering::Relaxed),
        }
    }

    /// Binds every handler of `capsule`, and has the capsule remove them first thing when it
    /// unloads.
    pub(crate) fn bind(self: &Arc<Self>, bus: &Bus, capsule: &Arc<CapsuleInner>) {
        let bound = self.bind_handlers(bus, capsule);
        if bound.is_empty() {
            return;
        }
        let dispatcher = Arc::downgrade(self);
        capsule.on_unload(move || {
            if let Some(d) = dispatcher.upgrade() {
                d.unbind(&bound);
            }
        });
    }

    /// Binds every handler of `capsule`; returns the binding ids (for [`unbind`](Self::unbind)).
    fn bind_handlers(
        self: &Arc<Self>,
        bus: &Bus,
        capsule: &Arc<CapsuleInner>,
    ) -> Vec<(u64, TopicPattern)> {
        let handlers: Vec<(TopicPattern, String, u32)> = capsule
            .manifest
            .handlers()
            .map(|(pattern, h)| (pattern.clone(), h.action.clone(), h.priority))
            .collect();
        if handlers.is_empty() {
            return Vec::new();
        }
        self.ensure_started(bus);
        let owner = &capsule.identity().owner;
        let firehose = capsule.caps.ipc.audit_firehose;
        let mut index = self.index.write();
        handlers
            .into_iter()
            .map(|(pattern, action, priority)| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let scope = audit_rule(&pattern, owner, firehose);
                if scope != Scope::All {
                    tracing::info!(
                        target: "capsule::audit::dispatch",
                        capsule = %capsule.identity().name,
                        owner = %owner,
                        pattern = %pattern,
                        action = %action,
                        "audit-covering handler scoped to its owner"
                    );
                }
                let binding = Arc::new(Binding {
                    id,
                    capsule: Arc::downgrade(capsule),
                    capsule_name: capsule.identity().name.clone(),
                    action,
                    priority,
                    scope,
                });
                index.insert(&pattern, id, binding);
                (id, pattern)
            })
            .collect()
    }

    /// Removes bindings made by [`bind_handlers`](Self::bind_handlers).
    fn unbind(&self, bindings: &[(u64, TopicPattern)]) {
        let mut index = self.index.write();
        for (id, pattern) in bindings {
            index.remove(pattern, *id);
        }
    }

    /// Subscribes the tap and starts the dispatch loop, once.
    fn ensure_started(self: &Arc<Self>, bus: &Bus) {
        let mut started = self.started.lock();
        if *started {
            return;
        }
        let Ok(all) = TopicPattern::parse("*") else {
            return;
        };
        let receiver = bus.subscribe(all, Scope::All);
        let _first = self.bus.set(bus.clone());
        tokio::spawn(Arc::clone(self).run(receiver));
        *started = true;
    }

    async fn run(self: Arc<Self>, mut tap: Receiver) {
        loop {
            let drain = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                drain = tap.recv(Duration::from_secs(3600), 1024 * 1024) => drain,
            };
            if drain.dropped > 0 {
                self.counters
                    .tap_dropped
                    .fetch_add(drain.dropped, Ordering::Relaxed);
                tracing::warn!(
                    target: "capsule::audit::dispatch",
                    dropped = drain.dropped,
                    "dispatch tap full: messages were not offered to handlers"
                );
            }
            for msg in drain.messages {
                self.dispatch(msg);
            }
        }
    }

    fn dispatch(self: &Arc<Self>, msg: Arc<Message>) {
        let mut matched: Vec<Arc<Binding>> = Vec::new();
        let key = msg.principal();
        self.index.read().for_each_match(&msg.topic, |b| {
            if b.scope.admits(key) {
                matched.push(Arc::clone(b));
            }
        });
        if matched.is_empty() {
            return;
        }
        matched.sort_by(|a, b| {
            (a.priority, &a.capsule_name, &a.action, a.id).cmp(&(
                b.priority,
                &b.capsule_name,
                &b.action,
                b.id,
            ))
        });
        self.counters.chains.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(Arc::clone(self).chain(matched, msg));
    }

    async fn chain(self: Arc<Self>, bindings: Vec<Arc<Binding>>, msg: Arc<Message>) {
        let caller = Caller::of(&msg);
        let mut payload: Vec<u8> = msg.payload.as_str().as_bytes().to_vec();
        let mut start = 0;
        while start < bindings.len() {
            let priority = bindings[start].priority;
            let end = bindings[start..]
                .iter()
                .position(|b| b.priority != priority)
                .map_or(bindings.len(), |n| start + n);
            let level = &bindings[start..end];
            // A lone handler runs on this task; handlers of one level run side by side.
            let inline = level.len() == 1;
            let calls = level.iter().map(|b| {
                let (payload, caller) = (payload.clone(), caller.clone());
                async move {
                    match b.capsule.upgrade() {
                        Some(capsule) => Some(
                            capsule
                                .call(b.action.clone(), payload, caller, inline)
                                .await,
                        ),
                        None => None,
                    }
                }
            });
            let results = futures::future::join_all(calls).await;
            let mut replacement: Option<JsonPayload> = None;
            let mut stop = false;
            for (b, result) in level.iter().zip(results) {
                let Some(result) = result else { continue };
                match result {
                    Ok(response) => match response.verdict() {
                        Verdict::Continue => {
                            let Some(data) = response.data else {
                                self.outcomes.send(&b.capsule_name, &b.action, &msg, || {
                                    LinkResult::Continue { replaced: false }
                                });
                                continue;
                            };
                            match replacement_payload(data) {
                                Ok(data) => {
                                    let replaced = replacement.is_none();
                                    if replaced {
                                        replacement = Some(data);
                                    }
                                    self.outcomes.send(&b.capsule_name, &b.action, &msg, || {
                                        LinkResult::Continue { replaced }
                                    });
                                }
                                Err(why) => {
                                    self.outcomes.send(&b.capsule_name, &b.action, &msg, || {
                                        LinkResult::InvalidData {
                                            reason: why.clone(),
                                        }
                                    });
                                    self.counters.failed_links.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(
                                        target: "capsule::audit::dispatch",
                                        capsule = %b.capsule_name,
                                        action = %b.action,
                                        topic = %msg.topic,
                                        principal = %caller.attribution.principal().map_or("system", |p| p.as_str()),
                                        reason = %field(&why),
                                        "handler returned invalid continue data"
                                    );
                                }
                            }
                        }
                        Verdict::Final => {
                            stop = true;
                            self.outcomes
                                .send(&b.capsule_name, &b.action, &msg, || LinkResult::Final);
                        }
                        verdict @ (Verdict::Deny | Verdict::Abort) => {
                            stop = true;
                            let decision = verdict.as_str();
                            let reason = response.data.as_deref().unwrap_or("");
                            self.outcomes.send(&b.capsule_name, &b.action, &msg, || {
                                let reason = reason.to_string();
                                if verdict == Verdict::Deny {
                                    LinkResult::Deny { reason }
                                } else {
                                    LinkResult::Abort { reason }
                                }
                            });
                            tracing::info!(
                                target: "capsule::audit::dispatch",
                                capsule = %b.capsule_name,
                                action = %b.action,
                                decision,
                                topic = %msg.topic,
                                principal = %caller.attribution.principal().map_or("system", |p| p.as_str()),
                                reason = %field(reason),
                                "handler chain stopped"
                            );
                            if let Some(capsule) = b.capsule.upgrade() {
                                capsule.caps.ipc.counters.handler_denied();
                            }
                            if let Some(bus) = self.bus.get() {
                                crate::host::audit::publish_denial(
                                    bus,
                                    &msg,
                                    &b.capsule_name,
                                    &b.action,
                                    decision,
                                    reason,
                                );
                            }
                        }
                        Verdict::Unknown => {
                            self.outcomes.send(&b.capsule_name, &b.action, &msg, || {
                                LinkResult::Unknown {
                                    returned: response.action.clone(),
                                }
                            });
                            tracing::warn!(
                                capsule = %b.capsule_name,
                                action = %b.action,
                                returned = %field(&response.action),
                                "handler returned an unknown action; treated as continue"
                            );
                        }
                    },
                    Err(e) => {
                        self.outcomes.send(&b.capsule_name, &b.action, &msg, || {
                            LinkResult::Failed {
                                error: e.to_string(),
                            }
                        });
                        self.counters.failed_links.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            capsule = %b.capsule_name,
                            action = %b.action,
                            topic = %msg.topic,
                            error = %field(&e.to_string()),
                            "handler failed; the chain continues"
                        );
                    }
                }
            }
            if stop {
                self.counters.stopped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if let Some(data) = replacement {
                payload = data.as_str().as_bytes().to_vec();
            }
            start = end;
        }
    }

    /// Stops the dispatch loop.
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }
}
