//! `astrid:approval/host@1.0.0`: a capsule asks before it acts, for the principal in scope.
//! A request is checked (action and resource 1 to `MAX_APPROVAL_FIELD_BYTES` bytes, no
//! control characters or invisible ones: `invalid-input` otherwise, and nobody is asked), then
//! answered by, in order: a session allowance of this load for that principal, a stored
//! "allow always" allowance for that principal and capsule (`allowance`), or the runtime's
//! [`ApprovalHandler`](crate::ApprovalHandler). A principal the host refuses (disabled, or its
//! profile unreadable) is `denied` without anyone being asked and without any allowance
//! counting, as every other capability refuses it. No handler means `denied`; a handler that
//! does not answer within its timeout means `timeout` (the action is not approved), and so does
//! the capsule unloading while it waits. Each principal has at most
//! [`MAX_WAITING_PER_PRINCIPAL`] request of one capsule load waiting for the handler at a time;
//! another one is refused at once with `unknown("…already waiting…")`, so one principal's
//! unanswered requests never hold more than one of the capsule's workers and never crowd the
//! operator's list. Every request and every decision is audited under
//! [`APPROVAL_TARGET`] and published on the audit topic attributed to the principal, so an
//! audit subscriber scoped to that principal sees its own approvals and nobody else's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use capsule_bus::{Attribution, PrincipalId};
use capsule_security::CapsuleName;
use capsule_store::{Allowance, AllowanceError};
use capsule_wit::astrid::approval::host::{
    ApprovalDecision, ApprovalRequest as WitRequest, ApprovalResponse, ErrorCode, Host,
};
use parking_lot::Mutex;

use crate::consent::{ActionDecision, ActionRequest, Desk};
use crate::error::LoadError;
use crate::host::audit::field;
use crate::host::{Assembly, Capability, InstanceCx, View};

/// Tracing target of approval audit events.
pub const APPROVAL_TARGET: &str = "capsule::audit::approval";

/// Most session allowances one loaded capsule keeps (over all principals); beyond it, a
/// session decision approves only the request it answered.
const MAX_SESSION_ALLOWANCES: usize = 1024;

/// Most requests of one principal (verified and claimed counted apart) one loaded capsule has
/// waiting for the handler at once.
pub(crate) const MAX_WAITING_PER_PRINCIPAL: usize = 1;

/// The `astrid:approval` capability.
pub(crate) struct ApprovalHost;

/// Capsule-wide part: the runtime's desk, the bus for audit entries, and this load's session
/// allowances.
#[derive(Debug)]
pub(crate) struct ApprovalShared {
    desk: Arc<Desk>,
    bus: capsule_bus::Bus,
    capsule: Option<CapsuleName>,
    session: Mutex<HashSet<(PrincipalId, bool, String, String)>>,
    /// The principals (and whether claimed) with a request waiting for the handler, and how
    /// many.
    waiting: Arc<Mutex<HashMap<(PrincipalId, bool), usize>>>,
}

/// One principal's place among the requests waiting for the handler, given back however the
/// wait ends (decided, timed out, or the call dropped at unload).
struct Waiting {
    waiting: Arc<Mutex<HashMap<(PrincipalId, bool), usize>>>,
    key: (PrincipalId, bool),
}

impl Waiting {
    /// Takes a place for `key`, or `None` when it holds [`MAX_WAITING_PER_PRINCIPAL`] already.
    fn take(
        waiting: &Arc<Mutex<HashMap<(PrincipalId, bool), usize>>>,
        key: (PrincipalId, bool),
    ) -> Option<Self> {
        let mut held = waiting.lock();
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= MAX_WAITING_PER_PRINCIPAL {
            return None;
        }
        *n += 1;
        Some(Self {
            waiting: Arc::clone(waiting),
            key,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut held = self.waiting.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The view `astrid:approval` is implemented on.
type ApprovalView<'a> = View<'a, Arc<ApprovalShared>>;

runs_on_view!(ApprovalHost);

impl Capability for ApprovalHost {
    const INTERFACES: &'static [&'static str] = &["astrid:approval/host@1.0.0"];
    type Shared = Arc<ApprovalShared>;
    type Ctx = Arc<ApprovalShared>;

    link_bindings!(capsule_wit::astrid::approval::host);

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        Ok(Arc::new(ApprovalShared {
            desk: Arc::clone(&cx.services.approvals),
            bus: cx.services.bus.clone(),
            capsule: CapsuleName::parse(&cx.identity.name).ok(),
            session: Mutex::new(HashSet::new()),
            waiting: Arc::new(Mutex::new(HashMap::new())),
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }
}

/// Why a request was not decided.
#[derive(Debug, thiserror::Error)]
enum ApprovalError {
    /// The action or resource is malformed.
    #[error(transparent)]
    Invalid(AllowanceError),
    /// The allowance store failed or is missing.
    #[error("allowances unavailable: {0}")]
    Store(AllowanceError),
    /// No decision in time (or the capsule unloaded while waiting).
    #[error("no decision in time")]
    Timeout,
    /// The principal has a request of this capsule waiting for the handler already.
    #[error(
        "an approval request of this principal is already waiting (at most {MAX_WAITING_PER_PRINCIPAL})"
    )]
    AlreadyWaiting,
    /// The call's deadline passed while waiting: the call is trapped, the guest hears nothing.
    #[error("{0}")]
    Overrun(crate::limits::Interrupt),
}

fn code(e: &ApprovalError) -> ErrorCode {
    match e {
        ApprovalError::Invalid(_) => ErrorCode::InvalidInput,
        ApprovalError::Store(_) => ErrorCode::StoreUnavailable,
        ApprovalError::Timeout => ErrorCode::Timeout,
        e @ ApprovalError::AlreadyWaiting => ErrorCode::Unknown(e.to_string()),
        // Never answered: `request_approval` traps instead.
        ApprovalError::Overrun(_) => ErrorCode::Timeout,
    }
}

fn wit_decision(d: &Decided) -> ApprovalDecision {
    match d {
        Decided::Handler(ActionDecision::Deny) | Decided::NoHandler | Decided::Refused => {
            ApprovalDecision::Denied
        }
        Decided::Handler(ActionDecision::AllowOnce) | Decided::AlwaysNotStored => {
            ApprovalDecision::Approved
        }
        Decided::Handler(ActionDecision::AllowSession) => ApprovalDecision::ApprovedSession,
        Decided::Handler(ActionDecision::AllowAlways) => ApprovalDecision::ApprovedAlways,
        Decided::Session | Decided::Stored => ApprovalDecision::Allowance,
    }
}

/// How a request was decided.
#[derive(Debug)]
enum Decided {
    /// A session allowance covered it.
    Session,
    /// A stored allowance covered it.
    Stored,
    /// No handler is set.
    NoHandler,
    /// The principal is refused (disabled, or its profile unreadable): nobody is asked.
    Refused,
    /// The handler decided.
    Handler(ActionDecision),
    /// The handler said "always" but the allowance could not be stored: approved once.
    AlwaysNotStored,
}

impl Decided {
    fn outcome(&self) -> String {
        match self {
            Self::Session => "session-allowance".into(),
            Self::Stored => "allowance".into(),
            Self::NoHandler => "deny (no handler)".into(),
            Self::Refused => "deny (principal refused)".into(),
            Self::Handler(d) => d.as_str().into(),
            Self::AlwaysNotStored => "once (always could not be stored)".into(),
        }
    }
}

impl ApprovalShared {
    /// Records one audit event and publishes it on the audit topic as `attribution`.
    fn audit(
        &self,
        attribution: &Attribution,
        request: &ActionRequest,
        op: &'static str,
        outcome: &str,
    ) {
        let capsule = request.capsule.as_str();
        let principal = request.principal.as_str();
        let (action, resource) = (field(&request.action), field(&request.resource));
        tracing::info!(
            target: APPROVAL_TARGET,
            capsule, principal, op, id = request.id,
            action = %action, resource = %resource, outcome, "approval"
        );
        let body = serde_json::json!({
            "kind": op,
            "id": request.id,
            "capsule": capsule,
            "principal": principal,
            "action": action,
            "resource": resource,
            "outcome": outcome,
        });
        let (Ok(topic), Ok(payload)) = (
            capsule_bus::Topic::parse(capsule_bus::AUDIT_TOPIC),
            capsule_bus::JsonPayload::parse(body.to_string()),
        ) else {
            tracing::error!("approval audit entry could not be formed");
            return;
        };
        self.bus.publish(capsule_bus::Outgoing {
            topic,
            payload,
            source: uuid::Uuid::nil(),
            attribution: attribution.clone(),
            hops: 0,
        });
    }
}

impl ApprovalView<'_> {
    async fn decide(&mut self, request: WitRequest) -> Result<Decided, ApprovalError> {
        let shared = Arc::clone(self.ctx);
        let scoped = self.core.scoped;
        let principal = scoped.principal().clone();
        let claimed = scoped.scope.as_ref().is_some_and(|s| s.is_claimed());
        let Some(capsule) = shared.capsule.clone() else {
            return Err(ApprovalError::Store(AllowanceError::Storage(
                "the capsule name is not a storable one".into(),
            )));
        };
        let allowance = Allowance::new(
            principal.clone(),
            capsule,
            &request.action,
            &request.target_resource,
        )
        .map_err(|e| {
            tracing::info!(
                target: APPROVAL_TARGET,
                capsule = %scoped.identity.name, principal = principal.as_str(),
                op = "approval.invalid",
                action = %field(&request.action), resource = %field(&request.target_resource),
                error = %e, "approval"
            );
            ApprovalError::Invalid(e)
        })?;
        let attribution = if claimed {
            Attribution::Claimed(principal.clone())
        } else {
            Attribution::Verified(principal.clone())
        };
        let asked = ActionRequest {
            id: shared.desk.next_id(),
            capsule: scoped.identity.name.clone(),
            principal: principal.clone(),
            claimed,
            action: allowance.action.clone(),
            resource: allowance.resource.clone(),
        };
        shared.audit(&attribution, &asked, "approval.requested", "asked");
        // A refused principal acts through no capability: nobody is asked for it and no
        // allowance it held counts while it is refused.
        let decided = match scoped.profile() {
            Err(reason) => {
                tracing::info!(
                    target: APPROVAL_TARGET,
                    capsule = %scoped.identity.name, principal = principal.as_str(),
                    op = "approval.refused", id = asked.id, error = %reason, "approval"
                );
                Ok(Decided::Refused)
            }
            Ok(_) => self.answer(&shared, &asked, allowance).await,
        };
        let outcome = match &decided {
            Ok(d) => d.outcome(),
            Err(e) => format!("error: {e}"),
        };
        shared.audit(&attribution, &asked, "approval.decided", &outcome);
        decided
    }

    async fn answer(
        &mut self,
        shared: &Arc<ApprovalShared>,
        asked: &ActionRequest,
        allowance: Allowance,
    ) -> Result<Decided, ApprovalError> {
        let key = (
            asked.principal.clone(),
            asked.claimed,
            asked.action.clone(),
            asked.resource.clone(),
        );
        if shared.session.lock().contains(&key) {
            return Ok(Decided::Session);
        }
        // Claimed principals never get standing allowances: a claim must not be able to
        // reuse, or create, what the real principal was granted.
        let store = if asked.claimed {
            None
        } else {
            Some(shared.desk.allowances.clone().ok_or(ApprovalError::Store(
                AllowanceError::Storage("the allowance table could not be opened".into()),
            ))?)
        };
        if let Some(store) = store.clone() {
            let check = allowance.clone();
            match self
                .core
                .limits
                .blocking(move || store.covers(&check))
                .await
                .map_err(ApprovalError::Overrun)?
            {
                None => return Err(ApprovalError::Timeout),
                Some(Err(_)) | Some(Ok(Err(_))) => {
                    return Err(ApprovalError::Store(AllowanceError::Storage(
                        "the allowance lookup failed".into(),
                    )));
                }
                Some(Ok(Ok(true))) => return Ok(Decided::Stored),
                Some(Ok(Ok(false))) => {}
            }
        }
        let Some(handler) = shared.desk.handler() else {
            return Ok(Decided::NoHandler);
        };
        let Some(_place) = Waiting::take(&shared.waiting, (key.0.clone(), key.1)) else {
            return Err(ApprovalError::AlreadyWaiting);
        };
        let timeout = handler.timeout();
        let decision = match self
            .core
            .limits
            .race(tokio::time::timeout(timeout, handler.decide(asked.clone())))
            .await
        {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(_)) | None) => return Err(ApprovalError::Timeout),
            Err(overrun) => return Err(ApprovalError::Overrun(overrun)),
        };
        match decision {
            ActionDecision::AllowSession => {
                let mut session = shared.session.lock();
                if session.len() < MAX_SESSION_ALLOWANCES {
                    session.insert(key);
                }
            }
            ActionDecision::AllowAlways => {
                let Some(store) = store else {
                    return Ok(Decided::AlwaysNotStored);
                };
                let stored = self
                    .core
                    .limits
                    .blocking(move || store.allow(&allowance))
                    .await
                    .map_err(ApprovalError::Overrun)?;
                if !matches!(stored, Some(Ok(Ok(())))) {
                    tracing::warn!(capsule = %asked.capsule, "an allow-always decision was not stored");
                    return Ok(Decided::AlwaysNotStored);
                }
            }
            ActionDecision::Deny | ActionDecision::AllowOnce => {}
        }
        Ok(Decided::Handler(decision))
    }
}

impl Host for ApprovalView<'_> {
    async fn request_approval(
        &mut self,
        request: WitRequest,
    ) -> wasmtime::Result<Result<ApprovalResponse, ErrorCode>> {
        match self.decide(request).await {
            Err(ApprovalError::Overrun(overrun)) => Err(overrun.into()),
            decided => Ok(decided
                .map(|d| ApprovalResponse {
                    decision: wit_decision(&d),
                })
                .map_err(|e| code(&e))),
        }
    }
}
