//! `astrid:elicit/host@1.0.0`: questions to the operator, only while `astrid-install` or
//! `astrid-upgrade` runs (`not-in-lifecycle` otherwise). Answers come from the runtime's
//! [`Elicitor`](crate::Elicitor); secret answers go straight into the encrypted secret store for
//! the owner and are reported to the guest only as `secret-stored`.

use std::sync::Arc;
use std::time::Duration;

use capsule_wit::astrid::elicit::host::{
    ElicitRequest, ElicitResponse, ElicitType, ErrorCode, Host,
};

use crate::error::LoadError;
use crate::host::{Assembly, Capability, InstanceCx, View};
use crate::lifecycle::{ElicitAnswer, ElicitKind, ElicitPrompt, ElicitRefusal, Elicitor};
use crate::limits::Interrupt;
use capsule_store::{SecretScope, SecretStore};

/// Longest key or description accepted.
const MAX_TEXT: usize = 4096;

/// The `astrid:elicit` capability.
pub(crate) struct ElicitHost;

/// Capsule-wide data of the elicit capability.
pub(crate) struct ElicitShared {
    /// Who answers (the runtime's elicitor when the capsule was loaded).
    elicitor: Option<Arc<dyn Elicitor>>,
    secrets: Arc<SecretStore>,
    /// How long an operator has to answer one question.
    timeout: Duration,
}

impl std::fmt::Debug for ElicitShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElicitShared")
            .field("elicitor", &self.elicitor.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The view `astrid:elicit` is implemented on (the core's lifecycle phase says whether
/// questions are allowed: only during install or upgrade).
type ElicitView<'a> = View<'a, Arc<ElicitShared>>;

runs_on_view!(ElicitHost);

impl Capability for ElicitHost {
    const INTERFACES: &'static [&'static str] = &["astrid:elicit/host@1.0.0"];
    type Shared = Arc<ElicitShared>;
    type Ctx = Arc<ElicitShared>;

    link_bindings!(capsule_wit::astrid::elicit::host);

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        Ok(Arc::new(ElicitShared {
            elicitor: cx.services.elicitor.read().clone(),
            secrets: Arc::clone(&cx.services.secrets),
            timeout: cx.config.elicit_timeout,
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }
}

impl ElicitView<'_> {
    fn check_phase(&self) -> Result<(), ErrorCode> {
        if self.core.phase.is_none() {
            return Err(ErrorCode::NotInLifecycle);
        }
        Ok(())
    }

    async fn ask(&mut self, request: ElicitRequest) -> Result<ElicitResponse, Refused> {
        self.check_phase()?;
        if request.key.is_empty() || request.key.len() > 256 || request.key.contains('\0') {
            return Err(ErrorCode::InvalidInput.into());
        }
        if request.description.len() > MAX_TEXT {
            return Err(ErrorCode::InvalidInput.into());
        }
        let kind = match request.kind {
            ElicitType::Text => ElicitKind::Text,
            ElicitType::Secret => ElicitKind::Secret,
            ElicitType::Select => ElicitKind::Select,
            ElicitType::Array => ElicitKind::Array,
        };
        if kind == ElicitKind::Select && request.options.as_ref().is_none_or(Vec::is_empty) {
            return Err(ErrorCode::InvalidInput.into());
        }
        let shared = Arc::clone(self.ctx);
        let Some(elicitor) = shared.elicitor.clone() else {
            return Err(ErrorCode::Unknown(
                "no elicitation handler is configured on this host".into(),
            )
            .into());
        };
        let prompt = ElicitPrompt {
            capsule: self.core.scoped.identity.name.clone(),
            principal: self.core.scoped.identity.owner.clone(),
            kind,
            key: request.key.clone(),
            description: request.description.clone(),
            options: request.options.clone(),
            default: request.default_value.clone(),
        };
        // The question races the hook's deadline too: a hook waiting for an answer nobody
        // gives ends at its deadline, like any other wait of a bounded call.
        let asked = tokio::time::timeout(shared.timeout, elicitor.elicit(prompt));
        let answer = match self.core.limits.race(asked).await {
            Err(overrun) => return Err(Refused::Overrun(overrun)),
            Ok(None) => return Err(ErrorCode::Cancelled.into()),
            Ok(Some(Err(_))) => return Err(ErrorCode::Timeout.into()),
            Ok(Some(Ok(Err(ElicitRefusal::Cancelled)))) => return Err(ErrorCode::Cancelled.into()),
            Ok(Some(Ok(Err(ElicitRefusal::Unavailable(why))))) => {
                // The operator side's reason (a terminal error, say) stays in the host log.
                tracing::warn!(capsule = %self.core.scoped.identity.name, reason = %why, "nobody can answer an elicit question");
                return Err(ErrorCode::Unknown("nobody can answer".into()).into());
            }
            Ok(Some(Ok(Ok(answer)))) => answer,
        };
        let out = match (kind, answer) {
            (ElicitKind::Secret, ElicitAnswer::Secret(value)) => {
                let store = Arc::clone(&shared.secrets);
                let (owner, capsule, key) = (
                    self.core.scoped.identity.owner.clone(),
                    self.core.scoped.identity.name.clone(),
                    request.key,
                );
                let stored = self
                    .core
                    .limits
                    .blocking(move || {
                        store.set(&SecretScope::Principal(owner), &capsule, &key, &value)
                    })
                    .await
                    .map_err(Refused::Overrun)?;
                match stored {
                    Some(Ok(Ok(()))) => Ok(ElicitResponse::SecretStored),
                    None => Err(ErrorCode::Cancelled),
                    Some(Ok(Err(_))) | Some(Err(_)) => Err(ErrorCode::StoreUnavailable),
                }
            }
            (ElicitKind::Select, ElicitAnswer::Value(v)) => {
                if request.options.as_ref().is_some_and(|o| o.contains(&v)) {
                    Ok(ElicitResponse::Value(v))
                } else {
                    Err(ErrorCode::InvalidInput)
                }
            }
            (ElicitKind::Text, ElicitAnswer::Value(v)) => Ok(ElicitResponse::Value(v)),
            (ElicitKind::Array, ElicitAnswer::Values(v)) => Ok(ElicitResponse::Values(v)),
            (_, _) => Err(ErrorCode::Unknown(
                "the answer does not match the kind of question".into(),
            )),
        };
        out.map_err(Refused::Code)
    }
}

/// Why a question got no answer: a code the guest is told, or the hook's deadline, which
/// traps the hook instead.
enum Refused {
    Code(ErrorCode),
    Overrun(Interrupt),
}

impl From<ErrorCode> for Refused {
    fn from(code: ErrorCode) -> Self {
        Self::Code(code)
    }
}

impl Host for ElicitView<'_> {
    async fn elicit(
        &mut self,
        request: ElicitRequest,
    ) -> wasmtime::Result<Result<ElicitResponse, ErrorCode>> {
        match self.ask(request).await {
            Ok(answer) => Ok(Ok(answer)),
            Err(Refused::Code(code)) => Ok(Err(code)),
            Err(Refused::Overrun(overrun)) => Err(overrun.into()),
        }
    }

    async fn has_secret(&mut self, key: String) -> wasmtime::Result<Result<bool, ErrorCode>> {
        if let Err(e) = self.check_phase() {
            return Ok(Err(e));
        }
        let store = Arc::clone(&self.ctx.secrets);
        let (owner, capsule) = (
            self.core.scoped.identity.owner.clone(),
            self.core.scoped.identity.name.clone(),
        );
        let found = self
            .core
            .limits
            .blocking(move || -> Result<bool, capsule_store::SecretError> {
                Ok(store.has(&SecretScope::Principal(owner), &capsule, &key)?
                    || store.has(&SecretScope::Host, &capsule, &key)?)
            })
            .await?;
        Ok(match found {
            Some(Ok(Ok(has))) => Ok(has),
            None => Err(ErrorCode::Cancelled),
            Some(Ok(Err(capsule_store::SecretError::InvalidName(_)))) => {
                Err(ErrorCode::InvalidInput)
            }
            Some(Ok(Err(_))) | Some(Err(_)) => Err(ErrorCode::StoreUnavailable),
        })
    }
}
