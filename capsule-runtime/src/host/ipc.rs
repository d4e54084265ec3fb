//! `astrid:ipc/host@1.0.0`: publish, publish-as, subscribe and subscriptions. Every guest
//! mistake is an `IpcError` mapped to the WIT error code by one exhaustive match; a missing
//! table entry is a broken host invariant and traps. Each call emits one audit event.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::{
    Attribution, Bus, Drain, JsonPayload, Message, Outgoing, PayloadError, PrincipalError,
    PrincipalId, Rate, RateLimited, RateLimiter, Receiver, Scope, Topic, TopicError, TopicPattern,
};
use capsule_security::{CapsulePolicy, Decision, Manifest};
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::ipc::host::{
    ErrorCode, Host, HostSubscription, InterceptorBinding, IpcEnvelope, IpcMessage,
    PrincipalAttribution, Subscription,
};
use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::error::LoadError;
use crate::host::poll::{PollSource, PollableEntry};
use crate::host::{Assembly, Capability, HostState, InstanceCx, audit};
use crate::limits::LimitsCtx;
use crate::scope::{InvocationScope, PrincipalRefusal, ProfileGrant, ScopeFactory, audit_rule};
use crate::state::{CapsuleIdentity, OutputRoute, Scoped};
use crate::stats::IpcCounters;

/// Largest payload one publish may carry.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most payload bytes one `poll` or `recv` returns (the first message always comes through).
pub const MAX_DRAIN_BYTES: usize = 1024 * 1024;
/// Most live subscriptions per capsule instance.
pub const MAX_SUBSCRIPTIONS: usize = 128;
/// Longest `recv` wait; longer requests are clamped.
pub const MAX_RECV_TIMEOUT_MS: u64 = 60_000;
/// Deepest hop count a published message may carry. A call serving a message `h` hops deep
/// publishes at `h + 1`; a publish that would go past this depth (a handler feeding its own
/// topic, or a cycle of capsules) is refused with `quota` and audited.
pub const MAX_HOP_DEPTH: u8 = 16;
/// The window over which an uplink's new claimed principals are counted against its owner's
/// `max_claimed_principals_per_minute`.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(60);

/// The `astrid:ipc` capability.
pub(crate) struct IpcHost;

/// A handler binding as reported by `get-interceptor-bindings`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Binding {
    id: u64,
    action: String,
    topic: String,
}

/// Capsule-wide data of the IPC capability.
#[derive(Debug)]
pub(crate) struct IpcShared {
    bus: Bus,
    limiter: Arc<RateLimiter>,
    policy: Arc<CapsulePolicy>,
    bindings: Vec<Binding>,
    /// Whether the owner holds the audit firehose grant (from its profile, never the manifest).
    pub(crate) audit_firehose: bool,
    /// Principals this capsule introduced with `publish-as` in the current minute.
    introductions: Mutex<Introductions>,
    /// What the capsule published, received, lost and was refused.
    pub(crate) counters: IpcCounters,
}

/// Refusals one instance writes to its capsule log; later ones are only audited.
pub const MAX_LOGGED_REFUSALS: u32 = 32;

/// The IPC context of one Store.
#[derive(Debug)]
pub(crate) struct IpcCtx {
    shared: Arc<IpcShared>,
    /// Live subscriptions of this instance.
    subscriptions: usize,
    /// Refusals written to the capsule's log by this instance (bounded, so a guest that
    /// retries a refused call in a loop cannot turn its log into a disk-writing loop).
    refusals_logged: std::cell::Cell<u32>,
    /// The topic this instance last published on, parsed and allowed by its `[publish]` ACL:
    /// a guest publishing on one topic in a loop pays a comparison instead of a parse, an
    /// allocation and an ACL walk. Only this instance's own allowed publishes fill it, so it
    /// tells nothing about anyone else's.
    last_topic: Option<Topic>,
}

/// The view `astrid:ipc` is implemented on.
pub(crate) struct IpcView<'a> {
    identity: &'a CapsuleIdentity,
    owner_profile: &'a ProfileGrant,
    scopes: &'a ScopeFactory,
    scope: &'a mut Option<InvocationScope>,
    /// Re-pointed when a drain installs another principal's scope.
    output: &'a OutputRoute,
    ipc: &'a mut IpcCtx,
    limits: &'a mut LimitsCtx,
    table: &'a mut ResourceTable,
}

impl IpcView<'_> {
    fn scoped(&self) -> Scoped<'_> {
        Scoped {
            identity: self.identity,
            owner_profile: self.owner_profile,
            scope: self.scope,
        }
    }
}

impl HasData for IpcHost {
    type Data<'a> = IpcView<'a>;
}

fn view(state: &mut HostState) -> IpcView<'_> {
    let core = &mut state.core;
    IpcView {
        identity: &core.identity,
        owner_profile: &core.owner_profile,
        scopes: &core.scopes,
        scope: &mut core.scope,
        output: &core.output,
        ipc: &mut state.caps.ipc,
        limits: &mut core.limits,
        table: &mut core.table,
    }
}

impl Capability for IpcHost {
    const INTERFACES: &'static [&'static str] = &["astrid:ipc/host@1.0.0"];
    type Shared = Arc<IpcShared>;
    type Ctx = IpcCtx;

    fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        capsule_wit::astrid::ipc::host::add_to_linker::<HostState, IpcHost>(linker, view)
    }

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        Ok(Arc::new(IpcShared {
            bus: cx.services.bus.clone(),
            limiter: Arc::clone(&cx.services.limiter),
            policy: Arc::clone(cx.policy),
            bindings: bindings(cx.manifest),
            audit_firehose: cx.owner_profile.audit_firehose(),
            introductions: Mutex::default(),
            counters: IpcCounters::default(),
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        IpcCtx {
            shared: Arc::clone(shared),
            subscriptions: 0,
            refusals_logged: std::cell::Cell::new(0),
            last_topic: None,
        }
    }
}

/// The handler bindings `get-interceptor-bindings` reports, numbered in manifest order.
fn bindings(manifest: &Manifest) -> Vec<Binding> {
    manifest
        .handlers()
        .enumerate()
        .map(|(i, (pattern, h))| Binding {
            id: i as u64,
            action: h.action.clone(),
            topic: pattern.as_str().to_string(),
        })
        .collect()
}

/// Why an IPC call failed. Each variant is a fact about the guest's request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IpcError {
    /// The topic breaks the grammar.
    #[error("invalid topic: {0}")]
    Topic(TopicError),
    /// The pattern breaks the grammar.
    #[error("invalid topic pattern: {0}")]
    Pattern(TopicError),
    /// The pattern has more than one `*`, or a `*` that is not the last segment.
    #[error("subscription patterns allow one `*`, only as the last segment: `{0}`")]
    PatternShape(String),
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload is {0} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge(usize),
    /// The payload is not one JSON value.
    #[error(transparent)]
    Payload(PayloadError),
    /// `publish-as` named an invalid principal.
    #[error("invalid principal: {0}")]
    Principal(PrincipalError),
    /// The manifest does not grant this.
    #[error("capability denied: {0}")]
    Denied(String),
    /// The principal in scope may not act (malformed profile, or disabled).
    #[error("principal refused: {0}")]
    PrincipalRefused(PrincipalRefusal),
    /// The principal's byte budget is spent.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// The uplink capsule's own byte budget, which every principal it claims also spends, is
    /// spent.
    #[error("the uplink's own budget is spent: {0}")]
    UplinkRateLimited(RateLimited),
    /// The message would be more than [`MAX_HOP_DEPTH`] hops away from the publish that
    /// started the chain: a publish loop.
    #[error(
        "publish refused: {hops} hops deep, past the hop depth of {MAX_HOP_DEPTH} (a publish loop?)"
    )]
    HopLimit {
        /// The hop count the message would have carried.
        hops: u16,
    },
    /// The uplink introduced as many new principals this minute as its owner's quota allows.
    #[error(
        "this uplink introduced {limit} new principals in the last minute \
         (quota max_claimed_principals_per_minute)"
    )]
    TooManyClaims {
        /// The quota.
        limit: u32,
    },
    /// The fan-out cap kept the message from some subscribers.
    #[error("fan-out cap reached: {cut} subscriptions did not get the message")]
    Backpressure {
        /// Subscriptions that missed it.
        cut: usize,
    },
    /// The instance holds [`MAX_SUBSCRIPTIONS`] subscriptions already.
    #[error("at most {MAX_SUBSCRIPTIONS} live subscriptions per capsule instance")]
    SubscriptionQuota,
    /// The instance's resource table is full.
    #[error(
        "the instance holds {} resources, the most one instance may",
        crate::limits::MAX_STORE_RESOURCES
    )]
    ResourcesFull,
    /// The capsule is being unloaded.
    #[error("the capsule is unloading")]
    Closed,
}

impl IpcError {
    /// The WIT error code the guest sees.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::Topic(_)
            | Self::Pattern(_)
            | Self::PatternShape(_)
            | Self::PayloadTooLarge(_)
            | Self::Payload(_)
            | Self::Principal(_) => ErrorCode::InvalidInput,
            Self::Denied(_) | Self::PrincipalRefused(_) => ErrorCode::CapabilityDenied,
            Self::RateLimited(_) | Self::UplinkRateLimited(_) | Self::TooManyClaims { .. } => {
                ErrorCode::RateLimited
            }
            Self::Backpressure { .. } => ErrorCode::Backpressure,
            Self::SubscriptionQuota | Self::ResourcesFull | Self::HopLimit { .. } => {
                ErrorCode::Quota
            }
            Self::Closed => ErrorCode::Closed,
        }
    }
}

/// Distinct principals an uplink capsule introduced with `publish-as` in the current
/// [`CLAIM_WINDOW`]; at most the owner's quota of them are kept.
#[derive(Debug, Default)]
struct Introductions {
    window: Option<Instant>,
    seen: HashSet<PrincipalId>,
}

impl Introductions {
    /// Whether `principal` may be claimed now: already introduced in this window, or new while
    /// fewer than `limit` were.
    fn admit(&mut self, principal: &PrincipalId, limit: u32, now: Instant) -> bool {
        if self
            .window
            .is_none_or(|start| now.saturating_duration_since(start) >= CLAIM_WINDOW)
        {
            self.window = Some(now);
            self.seen.clear();
        }
        if self.seen.contains(principal) {
            return true;
        }
        if self.seen.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return false;
        }
        self.seen.insert(principal.clone());
        true
    }
}

/// A subscription as kept in the resource table.
#[derive(Debug)]
struct SubscriptionEntry {
    receiver: Receiver,
}

fn entry_handle(r: &Resource<Subscription>) -> Resource<SubscriptionEntry> {
    Resource::new_borrow(r.rep())
}

fn wit_attribution(a: Attribution) -> PrincipalAttribution {
    match a {
        Attribution::Verified(p) => PrincipalAttribution::Verified(p.to_string()),
        Attribution::Claimed(p) => PrincipalAttribution::Claimed(p.to_string()),
        Attribution::System => PrincipalAttribution::System,
    }
}

fn wit_message(m: &Message) -> IpcMessage {
    IpcMessage {
        topic: m.topic.as_str().to_string(),
        payload: m.payload.as_str().to_string(),
        source_id: m.source.to_string(),
        principal: wit_attribution(m.attribution()),
    }
}

impl IpcView<'_> {
    fn audit(&self, op: &'static str, topic: &str, size: u64, error: Option<&IpcError>) {
        if let Some(IpcError::Denied(_) | IpcError::PrincipalRefused(_)) = error {
            self.ipc.shared.counters.denied();
        }
        if let Some(IpcError::Denied(reason)) = error {
            self.log_refusal(op, topic, reason);
        }
        let principal = self.scoped().principal();
        audit::ipc(
            &self.identity.name,
            principal,
            op,
            topic,
            size,
            error.map(|e| e as &dyn std::fmt::Display),
        );
    }

    /// Tells the capsule's author, in the log of the principal in scope, why an ACL refused a
    /// publish or subscribe: the topic or pattern, the reason, and the ACL it was checked
    /// against. At most [`MAX_LOGGED_REFUSALS`] per instance.
    fn log_refusal(&self, op: &str, target: &str, reason: &str) {
        let logged = self.ipc.refusals_logged.get();
        if logged >= MAX_LOGGED_REFUSALS {
            return;
        }
        self.ipc.refusals_logged.set(logged + 1);
        let policy = &self.ipc.shared.policy;
        let (section, acl) = if op.starts_with("subscribe") {
            ("[subscribe]", policy.subscribe_acl())
        } else {
            ("[publish]", policy.publish_acl())
        };
        let entries: Vec<&str> = acl.iter().map(TopicPattern::as_str).collect();
        let held = if entries.is_empty() {
            "nothing".to_string()
        } else {
            entries.join(", ")
        };
        let mut message = format!(
            "{op} `{}` refused (capability-denied): {reason}; the {section} ACL holds: {held}",
            audit::field(target)
        );
        if logged + 1 == MAX_LOGGED_REFUSALS {
            message.push_str(" (further refusals of this instance are not logged)");
        }
        if let Some(sink) = self.output.for_scope(self.scoped()) {
            sink.write("warn", &message);
        }
    }

    /// The shared publish path: validation and ACL first, so a refused publish costs nothing,
    /// then the byte budget (for `publish-as`, also the uplink's own budget and its
    /// introductions), then delivery.
    fn publish_checked(
        &mut self,
        topic: &str,
        payload: String,
        attribution: Attribution,
        charged: &PrincipalId,
        claimed_by_uplink: bool,
    ) -> Result<(), IpcError> {
        let topic = match &self.ipc.last_topic {
            // Remembered only once the ACL allowed it, and this instance's ACL never changes.
            Some(last) if last.as_str() == topic => last.clone(),
            _ => {
                let parsed = Topic::parse(topic).map_err(IpcError::Topic)?;
                if let Decision::Denied(reason) = self.ipc.shared.policy.may_publish(&parsed) {
                    return Err(IpcError::Denied(reason));
                }
                self.ipc.last_topic = Some(parsed.clone());
                parsed
            }
        };
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(IpcError::PayloadTooLarge(payload.len()));
        }
        let payload = JsonPayload::parse(payload).map_err(IpcError::Payload)?;
        // One step further than the message whose handling publishes this one.
        let hops = self
            .scope
            .as_ref()
            .map_or(0, |s| u16::from(s.caller.hops) + 1);
        let hops = match u8::try_from(hops) {
            Ok(h) if h <= MAX_HOP_DEPTH => h,
            _ => return Err(IpcError::HopLimit { hops }),
        };
        let rate = match self.scoped().profile() {
            Ok(p) => Rate::per_second(p.quotas.max_ipc_throughput_bytes),
            Err(reason) => return Err(IpcError::PrincipalRefused(reason.clone())),
        };
        // An uplink pays for the principals it claims: each is one of a bounded number of
        // introductions per minute, and its bytes also come out of the uplink's own budget.
        let own = if claimed_by_uplink {
            let owner = match self.owner_profile {
                Ok(p) => p,
                Err(reason) => return Err(IpcError::PrincipalRefused(reason.clone())),
            };
            let limit = owner.quotas.max_claimed_principals_per_minute;
            if !self
                .ipc
                .shared
                .introductions
                .lock()
                .admit(charged, limit, Instant::now())
            {
                return Err(IpcError::TooManyClaims { limit });
            }
            (charged != &self.identity.owner).then(|| {
                (
                    &self.identity.owner,
                    Rate::per_second(owner.quotas.max_ipc_throughput_bytes),
                )
            })
        } else {
            None
        };
        let (limiter, session, bytes) = (
            &self.ipc.shared.limiter,
            self.identity.session,
            payload.len() as u64,
        );
        limiter
            .check(session, charged, bytes, rate)
            .map_err(IpcError::RateLimited)?;
        if let Some((owner, own_rate)) = own
            && let Err(e) = limiter.check(session, owner, bytes, own_rate)
        {
            limiter.refund(session, charged, bytes, rate);
            return Err(IpcError::UplinkRateLimited(e));
        }
        let report = self.ipc.shared.bus.publish(Outgoing {
            topic,
            payload,
            source: self.identity.session,
            attribution,
            hops,
        });
        self.ipc.shared.counters.published();
        if report.is_cut() {
            return Err(IpcError::Backpressure { cut: report.cut });
        }
        Ok(())
    }

    fn subscribe_checked(&mut self, pattern: &str) -> Result<Receiver, IpcError> {
        let pattern = TopicPattern::parse(pattern).map_err(IpcError::Pattern)?;
        let stars = pattern.wildcard_count();
        if stars > 1 || (stars == 1 && !pattern.has_trailing_wildcard()) {
            return Err(IpcError::PatternShape(pattern.to_string()));
        }
        if let Decision::Denied(reason) = self.ipc.shared.policy.may_subscribe(&pattern) {
            return Err(IpcError::Denied(reason));
        }
        if self.ipc.subscriptions >= MAX_SUBSCRIPTIONS {
            return Err(IpcError::SubscriptionQuota);
        }
        // An audit-covering subscription sees only its owner's entries unless the owner's
        // profile grants the firehose.
        let mut scope = audit_rule(
            &pattern,
            &self.identity.owner,
            self.ipc.shared.audit_firehose,
        );
        if scope != Scope::All {
            tracing::info!(
                target: "capsule::audit::ipc",
                capsule = %self.identity.name,
                owner = %self.identity.owner,
                pattern = %pattern,
                "audit-covering subscription scoped to its owner"
            );
        }
        // Opened while a handler call serves P, the subscription is P's: it admits P's
        // messages and the system's, so nobody else can inject into P's call.
        if let Some(serving) = self.scope.as_ref().filter(|s| s.pinned) {
            let principal = serving.principal.clone();
            scope = scope
                .intersect(&Scope::PrincipalAndSystem(principal.clone()))
                .ok_or_else(|| {
                    IpcError::Denied(format!(
                        "`{pattern}` covers audit entries, of which this capsule sees only its \
                         owner's; opened while serving `{principal}` it would admit nothing"
                    ))
                })?;
            tracing::info!(
                target: "capsule::audit::ipc",
                capsule = %self.identity.name,
                principal = %principal,
                pattern = %pattern,
                "subscription scoped to the principal in scope"
            );
        }
        let receiver = self.ipc.shared.bus.subscribe(pattern, scope);
        self.ipc.shared.counters.watch(receiver.readiness());
        Ok(receiver)
    }

    /// Turns a drain into an envelope and installs the scope of its first message. The drain
    /// carries one attribution only, so that scope is right for every message in it; an empty
    /// drain leaves the scope as it was.
    fn deliver(&mut self, drain: Drain) -> IpcEnvelope {
        self.ipc
            .shared
            .counters
            .received(drain.messages.len(), drain.dropped);
        if let Some(first) = drain.messages.first() {
            self.scopes.install_for_message(self.scope, first);
            self.output.follow(self.scoped());
        }
        IpcEnvelope {
            messages: drain.messages.iter().map(|m| wit_message(m)).collect(),
            dropped: drain.dropped,
            lagged: drain.lagged,
        }
    }
}

impl Host for IpcView<'_> {
    fn publish(
        &mut self,
        topic: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let principal = self.scoped().principal();
        let size = payload.len() as u64;
        // Serving a claimed principal, the capsule's messages are claimed too.
        let attribution = if self.scope.as_ref().is_some_and(|s| s.is_claimed()) {
            Attribution::Claimed(principal.clone())
        } else {
            Attribution::Verified(principal.clone())
        };
        let charged = attribution.principal().unwrap_or(principal).clone();
        let result = self.publish_checked(&topic, payload, attribution, &charged, false);
        self.audit("publish", &topic, size, result.as_ref().err());
        Ok(result.map_err(|e| e.code()))
    }

    fn publish_as(
        &mut self,
        topic: String,
        payload: String,
        principal: String,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let size = payload.len() as u64;
        let result = (|| {
            if let Decision::Denied(reason) = self.ipc.shared.policy.may_act_as_uplink() {
                return Err(IpcError::Denied(reason));
            }
            let claimed = PrincipalId::parse(&principal).map_err(IpcError::Principal)?;
            self.publish_checked(
                &topic,
                payload,
                Attribution::Claimed(claimed.clone()),
                &claimed,
                true,
            )
        })();
        self.audit("publish-as", &topic, size, result.as_ref().err());
        Ok(result.map_err(|e| e.code()))
    }

    fn subscribe(
        &mut self,
        topic_pattern: String,
    ) -> wasmtime::Result<Result<Resource<Subscription>, ErrorCode>> {
        let result = self.subscribe_checked(&topic_pattern);
        let result = result.and_then(|receiver| {
            // A full table drops the entry, and with it the route.
            let entry = self
                .table
                .push(SubscriptionEntry { receiver })
                .map_err(|_| IpcError::ResourcesFull)?;
            self.ipc.subscriptions += 1;
            Ok(Resource::new_own(entry.rep()))
        });
        self.audit(
            "subscribe",
            &topic_pattern,
            self.ipc.subscriptions as u64,
            result.as_ref().err(),
        );
        Ok(result.map_err(|e| e.code()))
    }

    fn get_interceptor_bindings(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<InterceptorBinding>, ErrorCode>> {
        let bindings: Vec<InterceptorBinding> = self
            .ipc
            .shared
            .bindings
            .iter()
            .map(|b| InterceptorBinding {
                handle_id: b.id,
                action: b.action.clone(),
                topic: b.topic.clone(),
            })
            .collect();
        self.audit("get-interceptor-bindings", "", bindings.len() as u64, None);
        Ok(Ok(bindings))
    }
}

impl HostSubscription for IpcView<'_> {
    fn poll(
        &mut self,
        self_: Resource<Subscription>,
    ) -> wasmtime::Result<Result<IpcEnvelope, ErrorCode>> {
        let entry = self.table.get_mut(&entry_handle(&self_))?;
        let pattern = entry.receiver.pattern().to_string();
        if self.limits.shared.cancel.is_cancelled() {
            self.audit("subscription.poll", &pattern, 0, Some(&IpcError::Closed));
            return Ok(Err(ErrorCode::Closed));
        }
        let drain = entry.receiver.try_drain_one_principal(MAX_DRAIN_BYTES);
        let envelope = self.deliver(drain);
        self.audit(
            "subscription.poll",
            &pattern,
            envelope.messages.len() as u64,
            None,
        );
        Ok(Ok(envelope))
    }

    async fn recv(
        &mut self,
        self_: Resource<Subscription>,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<IpcEnvelope, ErrorCode>> {
        let io = self.limits.shared.io.clone();
        let timeout = Duration::from_millis(timeout_ms.min(MAX_RECV_TIMEOUT_MS));
        let entry = self.table.get_mut(&entry_handle(&self_))?;
        let pattern = entry.receiver.pattern().to_string();
        // What a run loop spends waiting here is not CPU it used; a `recv(0)` waits nothing.
        let drain = self
            .limits
            .race(async {
                let _permit = io.acquire().await.ok()?;
                Some(
                    entry
                        .receiver
                        .recv_one_principal(timeout, MAX_DRAIN_BYTES)
                        .await,
                )
            })
            .await?
            .flatten();
        let Some(drain) = drain else {
            self.audit("subscription.recv", &pattern, 0, Some(&IpcError::Closed));
            return Ok(Err(ErrorCode::Closed));
        };
        let envelope = self.deliver(drain);
        self.audit(
            "subscription.recv",
            &pattern,
            envelope.messages.len() as u64,
            None,
        );
        Ok(Ok(envelope))
    }

    fn subscribe_readiness(
        &mut self,
        self_: Resource<Subscription>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        let readiness = self.table.get(&entry_handle(&self_))?.receiver.readiness();
        let pollable = self
            .table
            .push(PollableEntry::new(PollSource::Subscription(readiness)))?;
        Ok(Resource::new_own(pollable.rep()))
    }

    fn drop(&mut self, rep: Resource<Subscription>) -> wasmtime::Result<()> {
        let entry = self
            .table
            .delete(Resource::<SubscriptionEntry>::new_own(rep.rep()))?;
        self.ipc.subscriptions = self.ipc.subscriptions.saturating_sub(1);
        self.audit(
            "subscription.drop",
            entry.receiver.pattern().as_str(),
            0,
            None,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn introductions_are_bounded_per_window() {
        let mut intro = Introductions::default();
        let t0 = Instant::now();
        assert!(intro.admit(&pid("a"), 2, t0));
        assert!(intro.admit(&pid("b"), 2, t0));
        assert!(!intro.admit(&pid("c"), 2, t0), "a third new principal");
        assert!(
            intro.admit(&pid("a"), 2, t0),
            "a known one is no introduction"
        );
        let later = t0 + CLAIM_WINDOW;
        assert!(
            intro.admit(&pid("c"), 2, later),
            "a new window starts afresh"
        );
        assert_eq!(intro.seen.len(), 1);
        assert!(
            !intro.admit(&pid("z"), 0, later),
            "a quota of zero admits no one new"
        );
    }
}
