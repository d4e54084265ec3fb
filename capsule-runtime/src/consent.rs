//! Run-time approval of a capsule's actions (`astrid:approval`), beside the load-time
//! [`Approver`](crate::Approver) and the lifecycle [`Elicitor`](crate::Elicitor). Contract: a
//! capsule's request is decided by the runtime's [`ApprovalHandler`] — without one, or when it
//! does not answer within its [`ApprovalHandler::timeout`], the action is not approved; an
//! "allow always" decision is stored durably for that principal and capsule and answers later
//! requests for the same (action, resource) without asking, until the embedder revokes it
//! ([`Runtime::revoke_allowance`](crate::Runtime::revoke_allowance)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use capsule_bus::PrincipalId;
use capsule_store::AllowanceStore;
use futures::future::BoxFuture;
use parking_lot::RwLock;

/// How long a request waits for a handler that does not say otherwise.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a capsule asks to be approved, as the handler sees it. `action` and `resource` come
/// from the guest: they are checked (bounded, no control characters) before a handler sees
/// them, but a handler that prints them should still escape them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActionRequest {
    /// Unique within the runtime, in request order.
    pub id: u64,
    /// The asking capsule.
    pub capsule: String,
    /// The principal the capsule acts for.
    pub principal: PrincipalId,
    /// Whether that principal was only claimed by an uplink.
    pub claimed: bool,
    /// The action the capsule intends to take.
    pub action: String,
    /// The resource it applies to.
    pub resource: String,
}

impl ActionRequest {
    /// A request, for tests of a handler.
    pub fn new(
        id: u64,
        capsule: &str,
        principal: PrincipalId,
        action: &str,
        resource: &str,
    ) -> Self {
        Self {
            id,
            capsule: capsule.to_string(),
            principal,
            claimed: false,
            action: action.to_string(),
            resource: resource.to_string(),
        }
    }
}

/// A handler's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionDecision {
    /// Not approved.
    Deny,
    /// Approved this once.
    AllowOnce,
    /// Approved while this load of the capsule lasts (for this principal).
    AllowSession,
    /// Approved from now on for this principal and capsule, until revoked.
    AllowAlways,
}

impl ActionDecision {
    /// The decision's name in audit entries and on the control socket.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::AllowOnce => "once",
            Self::AllowSession => "session",
            Self::AllowAlways => "always",
        }
    }

    /// Parses [`ActionDecision::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deny" => Some(Self::Deny),
            "once" => Some(Self::AllowOnce),
            "session" => Some(Self::AllowSession),
            "always" => Some(Self::AllowAlways),
            _ => None,
        }
    }
}

/// Decides capsules' approval requests (a terminal, a control socket, a UI, a test).
pub trait ApprovalHandler: Send + Sync + 'static {
    /// Decides `request`. A future that never resolves is denied after [`Self::timeout`].
    fn decide(&self, request: ActionRequest) -> BoxFuture<'static, ActionDecision>;

    /// How long a request may wait for [`Self::decide`].
    fn timeout(&self) -> Duration {
        DEFAULT_APPROVAL_TIMEOUT
    }
}

/// The runtime-wide part of approvals: the handler and the stored allowances.
pub(crate) struct Desk {
    handler: RwLock<Option<Arc<dyn ApprovalHandler>>>,
    /// `None` when the table could not be opened: every request that needs it fails with
    /// `store-unavailable`.
    pub(crate) allowances: Option<AllowanceStore>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Desk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desk")
            .field("handler", &self.handler.read().is_some())
            .finish_non_exhaustive()
    }
}

impl Desk {
    pub(crate) fn new(allowances: Option<AllowanceStore>) -> Self {
        Self {
            handler: RwLock::new(None),
            allowances,
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn set_handler(&self, handler: Arc<dyn ApprovalHandler>) {
        *self.handler.write() = Some(handler);
    }

    pub(crate) fn handler(&self) -> Option<Arc<dyn ApprovalHandler>> {
        self.handler.read().clone()
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
