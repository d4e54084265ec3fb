//! `astrid:identity/host@1.0.0`: the host's user directory (`capsule-store`'s
//! [`IdentityStore`], in the runtime's database), served only to capsules the operator granted
//! `identity`, each call at the level it needs: `resolve` for `identity-resolve` and
//! `identity-list-links`, `link` for `identity-link` and `identity-unlink`, `admin` for
//! `identity-create-user`. A lower grant, or none, answers `capability-denied`.
//!
//! Which principal's data a call reaches depends on who is in scope:
//! - **the capsule's owner, verified** (the capsule acting for itself, as an uplink does when it
//!   maps a platform user to a host user): the whole directory, at the granted level;
//! - **any other verified principal P**: only P's own entries. Resolving an identity linked to
//!   someone else, or unlinking it, answers `link-not-found` exactly as if it were not linked;
//!   linking to, or listing the links of, another user, and creating users, answer
//!   `capability-denied`. Linking an identity someone else holds answers `already-linked`
//!   (uniqueness needs it) without saying whose it is;
//! - **a claimed principal** (introduced by an uplink, the owner's name included): P's own
//!   entries read-only; every change answers `capability-denied`, so a claim never binds or
//!   frees a platform identity.
//!
//! A principal whose profile is refused (disabled, or unreadable) reaches nothing: every call
//! answers `capability-denied`, as KV, files and IPC refuse it.
//!
//! The directory is host-wide: users a capsule creates and links it makes are charged to it and
//! bounded by the runtime's [`IdentityLimits`](capsule_store::identity::IdentityLimits), so one
//! capsule filling its share never stops another (beyond it: `unknown("limit reached: …")`).
//!
//! Every call runs on the blocking pool; every change and every refusal is audited under
//! [`IDENTITY_TARGET`] with guest text escaped and cut. Store failures reach the guest as
//! `store-unavailable`, with the backend's text only in the host log.

use std::sync::Arc;

use capsule_bus::PrincipalId;
use capsule_security::{CapsuleName, CapsulePolicy, IdentityLevel};
use capsule_store::identity::{Link, parse_user};
use capsule_store::{IdentityError, IdentityStore, PlatformIdentity};
use capsule_wit::astrid::identity::host::{
    ErrorCode, Host, IdentityCreateUserRequest, IdentityCreateUserResponse, IdentityLinkRequest,
    IdentityResolveRequest, IdentityResolveResponse, IdentityUnlinkRequest, PlatformLink,
};

use crate::error::LoadError;
use crate::host::audit::field;
use crate::host::{Assembly, Capability, InstanceCx, View};

/// Tracing target of identity audit events.
pub const IDENTITY_TARGET: &str = "capsule::audit::identity";

/// The `astrid:identity` capability.
pub(crate) struct IdentityHost;

/// Capsule-wide part: the grant and, for a capsule granted `identity`, the directory.
#[derive(Debug)]
pub(crate) struct IdentityShared {
    policy: Arc<CapsulePolicy>,
    /// `None` when the capsule holds no grant (it is never asked) or the directory could not
    /// be opened (every call answers `store-unavailable`).
    store: Option<IdentityStore>,
    /// Who the directory charges for this capsule's changes (`None` only for a name the
    /// directory cannot record: every call then answers `store-unavailable`).
    capsule: Option<CapsuleName>,
}

/// The view `astrid:identity` is implemented on.
type IdentityView<'a> = View<'a, Arc<IdentityShared>>;

runs_on_view!(IdentityHost);

impl Capability for IdentityHost {
    const INTERFACES: &'static [&'static str] = &["astrid:identity/host@1.0.0"];
    type Shared = Arc<IdentityShared>;
    type Ctx = Arc<IdentityShared>;

    link_bindings!(capsule_wit::astrid::identity::host);

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        let granted = cx.policy.may_identity(IdentityLevel::Resolve).is_allowed();
        let capsule = CapsuleName::parse(&cx.identity.name).ok();
        let store = granted
            .then(|| {
                let limits = cx.config.identity_limits;
                IdentityStore::open(&cx.services.kv).map(|s| s.with_limits(limits))
            })
            .and_then(|opened| {
                opened
                    .inspect_err(|e| {
                        tracing::warn!(capsule = %cx.identity.name, error = %e, "identity directory unavailable");
                    })
                    .ok()
            });
        Ok(Arc::new(IdentityShared {
            policy: Arc::clone(cx.policy),
            store,
            capsule,
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }
}

/// Why an identity call failed.
#[derive(Debug, thiserror::Error)]
enum IdentityCallError {
    /// The grant's level is too low, or the principal in scope may not do this.
    #[error("refused: {0}")]
    Denied(&'static str),
    /// The principal in scope is disabled or its profile is unreadable: like every other
    /// capability, identity acts for no refused principal.
    #[error("principal refused: {0}")]
    PrincipalRefused(String),
    /// The directory said no.
    #[error(transparent)]
    Store(#[from] IdentityError),
    /// The directory could not be opened when the capsule loaded.
    #[error("the identity directory is unavailable")]
    Unavailable,
    /// The capsule began unloading while the call waited.
    #[error("the capsule is unloading")]
    Unloading,
}

fn code(e: &IdentityCallError) -> ErrorCode {
    match e {
        IdentityCallError::Denied(_) | IdentityCallError::PrincipalRefused(_) => {
            ErrorCode::CapabilityDenied
        }
        IdentityCallError::Store(e) => match e {
            IdentityError::InvalidInput(_) => ErrorCode::InvalidInput,
            IdentityError::UserNotFound => ErrorCode::UserNotFound,
            IdentityError::LinkNotFound => ErrorCode::LinkNotFound,
            IdentityError::AlreadyLinked => ErrorCode::AlreadyLinked,
            IdentityError::Full { what, limit } => {
                ErrorCode::Unknown(format!("limit reached: at most {limit} {what}"))
            }
            IdentityError::Storage(_) => ErrorCode::StoreUnavailable,
        },
        IdentityCallError::Unavailable => ErrorCode::StoreUnavailable,
        IdentityCallError::Unloading => ErrorCode::Unknown("the capsule is unloading".into()),
    }
}

/// Whose entries the principal in scope reaches.
#[derive(Clone, Debug)]
enum Reach {
    /// The verified owner: the whole directory.
    Directory,
    /// A verified principal: its own entries.
    Own(PrincipalId),
    /// A claimed principal: its own entries, read-only.
    OwnReadOnly(PrincipalId),
}

impl Reach {
    /// The one user this reach is confined to, if any.
    fn confined_to(&self) -> Option<&PrincipalId> {
        match self {
            Self::Directory => None,
            Self::Own(p) | Self::OwnReadOnly(p) => Some(p),
        }
    }
}

fn to_wit(link: Link) -> PlatformLink {
    PlatformLink {
        platform: link.identity.platform().to_string(),
        platform_user_id: link.identity.platform_user_id().to_string(),
        linked_at: link.linked_at,
        method: link.method,
    }
}

impl IdentityView<'_> {
    fn reach(&self) -> Reach {
        let scoped = self.core.scoped;
        let principal = scoped.principal().clone();
        match scoped.scope {
            Some(s) if s.is_claimed() => Reach::OwnReadOnly(principal),
            _ if principal == scoped.identity.owner => Reach::Directory,
            _ => Reach::Own(principal),
        }
    }

    /// Checks the grant for `level`, then runs `op` with the principal's reach on the blocking
    /// pool, and audits the call (`subject` is the guest text it was about).
    async fn run<T: Send + 'static>(
        &mut self,
        op: &'static str,
        level: IdentityLevel,
        subject: String,
        work: impl FnOnce(&IdentityStore, &CapsuleName, &Reach) -> Result<T, IdentityCallError>
        + Send
        + 'static,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        let reach = self.reach();
        let result = if let Err(reason) = self.core.scoped.profile() {
            Err(IdentityCallError::PrincipalRefused(reason.to_string()))
        } else if !self.ctx.policy.may_identity(level).is_allowed() {
            Err(IdentityCallError::Denied(match level {
                IdentityLevel::Resolve => "identity is not granted",
                IdentityLevel::Link => "identity is not granted at level `link`",
                IdentityLevel::Admin => "identity is not granted at level `admin`",
            }))
        } else if let (Some(store), Some(capsule)) =
            (self.ctx.store.clone(), self.ctx.capsule.clone())
        {
            let reach = reach.clone();
            let done = self
                .core
                .limits
                .blocking(move || work(&store, &capsule, &reach))
                .await;
            let done = match done {
                Ok(done) => done,
                Err(overrun) => {
                    // The work may still finish on its pool thread: the audit log says so.
                    let scoped = self.core.scoped;
                    tracing::info!(
                        target: IDENTITY_TARGET,
                        capsule = scoped.identity.name.as_str(),
                        principal = scoped.principal().as_str(),
                        op, subject = %field(&subject),
                        error = %overrun, "identity call cut at its deadline, possibly done"
                    );
                    return Err(overrun.into());
                }
            };
            match done {
                None => Err(IdentityCallError::Unloading),
                Some(Err(panic)) => {
                    return Err(wasmtime::Error::msg(format!(
                        "identity worker failed: {panic}"
                    )));
                }
                Some(Ok(result)) => result,
            }
        } else {
            Err(IdentityCallError::Unavailable)
        };
        let scoped = self.core.scoped;
        let capsule = scoped.identity.name.as_str();
        let principal = scoped.principal().as_str();
        match &result {
            Ok(_) if op == "resolve" || op == "list-links" => {}
            Ok(_) => tracing::info!(
                target: IDENTITY_TARGET,
                capsule, principal, op, subject = %field(&subject), "identity"
            ),
            Err(e) => {
                if matches!(e, IdentityCallError::Store(IdentityError::Storage(_))) {
                    tracing::warn!(capsule, error = %e, "identity call failed");
                }
                tracing::info!(
                    target: IDENTITY_TARGET,
                    capsule, principal, op, subject = %field(&subject),
                    error = %field(&e.to_string()), "identity refused"
                );
            }
        }
        Ok(result.map_err(|e| code(&e)))
    }
}

/// `platform/user` for the audit log, each part escaped and cut.
fn subject(platform: &str, user: &str) -> String {
    format!("{}/{}", field(platform), field(user))
}

impl Host for IdentityView<'_> {
    async fn identity_resolve(
        &mut self,
        request: IdentityResolveRequest,
    ) -> wasmtime::Result<Result<IdentityResolveResponse, ErrorCode>> {
        let about = subject(&request.platform, &request.platform_user_id);
        self.run(
            "resolve",
            IdentityLevel::Resolve,
            about,
            move |store, _, reach| {
                let identity = PlatformIdentity::new(&request.platform, &request.platform_user_id)?;
                let link = store
                    .resolve(&identity)?
                    .filter(|l| reach.confined_to().is_none_or(|p| *p == l.user))
                    .ok_or(IdentityError::LinkNotFound)?;
                let display_name = store.user(&link.user)?.and_then(|u| u.display_name);
                Ok(IdentityResolveResponse {
                    user_id: link.user.to_string(),
                    display_name,
                })
            },
        )
        .await
    }

    async fn identity_link(
        &mut self,
        request: IdentityLinkRequest,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let about = format!(
            "{} -> {}",
            subject(&request.platform, &request.platform_user_id),
            field(&request.astrid_user_id)
        );
        self.run(
            "link",
            IdentityLevel::Link,
            about,
            move |store, capsule, reach| {
                let identity = PlatformIdentity::new(&request.platform, &request.platform_user_id)?;
                let user = parse_user(&request.astrid_user_id)?;
                match reach {
                    Reach::OwnReadOnly(_) => {
                        return Err(IdentityCallError::Denied("a claimed principal cannot link"));
                    }
                    Reach::Own(p) if *p != user => {
                        return Err(IdentityCallError::Denied(
                            "a principal links only to itself",
                        ));
                    }
                    Reach::Own(_) | Reach::Directory => {}
                }
                store.link_for(capsule, &identity, &user, &request.method)?;
                Ok(())
            },
        )
        .await
    }

    async fn identity_unlink(
        &mut self,
        request: IdentityUnlinkRequest,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let about = subject(&request.platform, &request.platform_user_id);
        self.run(
            "unlink",
            IdentityLevel::Link,
            about,
            move |store, _, reach| {
                let identity = PlatformIdentity::new(&request.platform, &request.platform_user_id)?;
                if let Reach::OwnReadOnly(_) = reach {
                    return Err(IdentityCallError::Denied(
                        "a claimed principal cannot unlink",
                    ));
                }
                store.unlink(&identity, reach.confined_to())?;
                Ok(())
            },
        )
        .await
    }

    async fn identity_create_user(
        &mut self,
        request: IdentityCreateUserRequest,
    ) -> wasmtime::Result<Result<IdentityCreateUserResponse, ErrorCode>> {
        let about = field(request.display_name.as_deref().unwrap_or_default()).into_owned();
        self.run(
            "create-user",
            IdentityLevel::Admin,
            about,
            move |store, capsule, reach| {
                if !matches!(reach, Reach::Directory) {
                    return Err(IdentityCallError::Denied(
                        "only the capsule's owner creates users",
                    ));
                }
                let id = store.create_user_for(capsule, request.display_name.as_deref())?;
                Ok(IdentityCreateUserResponse {
                    user_id: id.to_string(),
                })
            },
        )
        .await
    }

    async fn identity_list_links(
        &mut self,
        astrid_user_id: String,
    ) -> wasmtime::Result<Result<Vec<PlatformLink>, ErrorCode>> {
        let about = field(&astrid_user_id).into_owned();
        self.run(
            "list-links",
            IdentityLevel::Resolve,
            about,
            move |store, _, reach| {
                let user = parse_user(&astrid_user_id)?;
                if reach.confined_to().is_some_and(|p| *p != user) {
                    return Err(IdentityCallError::Denied(
                        "a principal lists only its own links",
                    ));
                }
                Ok(store.links(&user)?.into_iter().map(to_wit).collect())
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_text_never_reaches_the_guest() {
        let e = IdentityCallError::Store(IdentityError::Storage("redb: /var/lib/x".into()));
        assert!(matches!(code(&e), ErrorCode::StoreUnavailable));
        let full = IdentityCallError::Store(IdentityError::Full {
            what: "users",
            limit: 3,
        });
        match code(&full) {
            ErrorCode::Unknown(text) => assert!(text.contains("at most 3 users"), "{text}"),
            other => panic!("{other:?}"),
        }
    }
}
