//! `astrid:uplink/host@1.0.0`: capsules granted `uplink = true` register uplinks (at most 32
//! each, no duplicate (name, platform)) and hand inbound messages from external platforms to the
//! host's bounded inbound channel; a full channel drops the message and says so (`false`).

use std::sync::Arc;

use capsule_security::{CapsulePolicy, Decision};
use capsule_wit::astrid::uplink::host::{ErrorCode, Host, UplinkProfile as WitProfile};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::LoadError;
use crate::host::{Assembly, Capability, InstanceCx, View};

/// Most uplinks one capsule may register.
pub const MAX_UPLINKS: usize = 32;
/// Largest inbound message content, in bytes.
pub const MAX_INBOUND_CONTENT: usize = 1024 * 1024;

/// How an uplink interacts with people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkProfile {
    /// Conversational.
    Chat,
    /// Interactive sessions.
    Interactive,
    /// One-way notifications.
    Notify,
    /// A bridge to another system.
    Bridge,
}

/// An uplink a capsule registered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Uplink {
    /// The id handed to the capsule.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The platform it serves.
    pub platform: String,
    /// Its profile.
    pub profile: UplinkProfile,
}

/// A message an uplink capsule received from an external user.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboundMessage {
    /// The capsule that received it.
    pub capsule: String,
    /// The uplink it came through.
    pub uplink: Uplink,
    /// The sender's id on the platform.
    pub platform_user_id: String,
    /// The content.
    pub content: String,
}

/// The `astrid:uplink` capability.
pub(crate) struct UplinkHost;

/// Capsule-wide data of the uplink capability.
#[derive(Debug)]
pub(crate) struct UplinkShared {
    policy: Arc<CapsulePolicy>,
    /// The uplinks the capsule registered.
    pub(crate) registered: Mutex<Vec<Uplink>>,
    inbound: mpsc::Sender<InboundMessage>,
}

/// The view `astrid:uplink` is implemented on.
type UplinkView<'a> = View<'a, Arc<UplinkShared>>;

runs_on_view!(UplinkHost);

impl Capability for UplinkHost {
    const INTERFACES: &'static [&'static str] = &["astrid:uplink/host@1.0.0"];
    type Shared = Arc<UplinkShared>;
    type Ctx = Arc<UplinkShared>;

    link_bindings!(capsule_wit::astrid::uplink::host);

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        Ok(Arc::new(UplinkShared {
            policy: Arc::clone(cx.policy),
            registered: Mutex::new(Vec::new()),
            inbound: cx.services.inbound.clone(),
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Host for UplinkView<'_> {
    fn uplink_register(
        &mut self,
        name: String,
        platform: String,
        profile: WitProfile,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        if let Decision::Denied(_) = self.ctx.policy.may_act_as_uplink() {
            return Ok(Err(ErrorCode::CapabilityDenied));
        }
        if !valid_name(&name) || !valid_name(&platform) {
            return Ok(Err(ErrorCode::InvalidInput));
        }
        let profile = match profile {
            WitProfile::Chat => UplinkProfile::Chat,
            WitProfile::Interactive => UplinkProfile::Interactive,
            WitProfile::Notify => UplinkProfile::Notify,
            WitProfile::Bridge => UplinkProfile::Bridge,
        };
        let mut registered = self.ctx.registered.lock();
        if registered.len() >= MAX_UPLINKS {
            return Ok(Err(ErrorCode::Quota));
        }
        if registered
            .iter()
            .any(|u| u.name == name && u.platform == platform)
        {
            return Ok(Err(ErrorCode::InvalidInput));
        }
        let id = uuid::Uuid::new_v4().to_string();
        registered.push(Uplink {
            id: id.clone(),
            name,
            platform,
            profile,
        });
        tracing::info!(capsule = %self.core.scoped.identity.name, uplink = %id, "uplink registered");
        Ok(Ok(id))
    }

    fn uplink_send(
        &mut self,
        uplink_id: String,
        platform_user_id: String,
        content: String,
    ) -> wasmtime::Result<Result<bool, ErrorCode>> {
        if let Decision::Denied(_) = self.ctx.policy.may_act_as_uplink() {
            return Ok(Err(ErrorCode::CapabilityDenied));
        }
        let Some(uplink) = self
            .ctx
            .registered
            .lock()
            .iter()
            .find(|u| u.id == uplink_id)
            .cloned()
        else {
            return Ok(Err(ErrorCode::UnknownUplink));
        };
        if platform_user_id.is_empty()
            || platform_user_id.len() > 256
            || content.len() > MAX_INBOUND_CONTENT
        {
            return Ok(Err(ErrorCode::InvalidInput));
        }
        let message = InboundMessage {
            capsule: self.core.scoped.identity.name.clone(),
            uplink,
            platform_user_id,
            content,
        };
        Ok(match self.ctx.inbound.try_send(message) {
            Ok(()) => Ok(true),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    target: "capsule::audit::dispatch",
                    capsule = %self.core.scoped.identity.name,
                    "inbound channel full: uplink message dropped"
                );
                Ok(false)
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(ErrorCode::NoSession),
        })
    }
}
