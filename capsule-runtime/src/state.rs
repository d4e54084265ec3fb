//! What every capability of a Store shares, and nothing capability-specific: who the capsule
//! is, which principal the current call is for (the invocation scope, and the answers every
//! view reads from it), the lifecycle call in progress, where guest output goes, the budgets
//! and the one resource table. Each capability keeps its own context in its own module under
//! `host/`; this module knows none of them.

use std::collections::HashMap;
use std::sync::Arc;

use capsule_bus::PrincipalId;
use capsule_vfs::Mount;
use parking_lot::Mutex;
use uuid::Uuid;
use wasmtime::component::ResourceTable;

use crate::lifecycle::LifecyclePhase;
use crate::limits::{CpuMeter, LimitsCtx, LimitsShared, MAX_STORE_RESOURCES, MemoryMeter};
use crate::logsink::LogSink;
use crate::scope::{InvocationScope, ProfileGrant, ScopeFactory};

/// Who a capsule instance is. Fixed when the capsule is loaded.
#[derive(Debug)]
pub(crate) struct CapsuleIdentity {
    /// The capsule's name (its id).
    pub(crate) name: String,
    /// This load's session UUID: the `source-id` of everything it publishes.
    pub(crate) session: Uuid,
    /// The principal the capsule was loaded for.
    pub(crate) owner: PrincipalId,
}

/// The capsule-wide parts every Store is built from, whatever capabilities the capsule has.
#[derive(Debug)]
pub(crate) struct CoreParts {
    pub(crate) identity: Arc<CapsuleIdentity>,
    /// The owner's profile as resolved at load.
    pub(crate) owner_profile: ProfileGrant,
    pub(crate) scopes: Arc<ScopeFactory>,
    pub(crate) limits: Arc<LimitsShared>,
    /// The owner's log file for this capsule, where output goes while nobody else is in scope.
    pub(crate) owner_log: Option<LogSink>,
}

impl CoreParts {
    /// The owner's memory quota (nothing, when the owner's profile is refused).
    pub(crate) fn owner_quota(&self) -> u64 {
        match &self.owner_profile {
            Ok(p) => p.quotas.max_memory_bytes,
            Err(_) => 0,
        }
    }

    /// A fresh core for a Store whose memory is charged to `principal` under `memory_quota`.
    pub(crate) fn store_core(
        &self,
        principal: &PrincipalId,
        memory_quota: u64,
        cpu: CpuMeter,
        output: OutputRoute,
    ) -> StoreCore {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_STORE_RESOURCES);
        StoreCore {
            identity: Arc::clone(&self.identity),
            owner_profile: self.owner_profile.clone(),
            scopes: Arc::clone(&self.scopes),
            scope: None,
            phase: None,
            output,
            table,
            limits: LimitsCtx {
                shared: Arc::clone(&self.limits),
                memory: MemoryMeter::new(
                    principal.clone(),
                    memory_quota,
                    Arc::clone(&self.limits.ledger),
                ),
                cpu,
                cancel_seen: false,
            },
        }
    }
}

/// The part of one Store's data every capability shares.
pub(crate) struct StoreCore {
    pub(crate) identity: Arc<CapsuleIdentity>,
    pub(crate) owner_profile: ProfileGrant,
    pub(crate) scopes: Arc<ScopeFactory>,
    /// Who the current call acts for; `None` between calls and in run loops until a drain.
    pub(crate) scope: Option<InvocationScope>,
    /// Set only on the Store running `astrid-install` or `astrid-upgrade`.
    pub(crate) phase: Option<LifecyclePhase>,
    /// Where the guest's stdout/stderr go; follows `scope`.
    pub(crate) output: OutputRoute,
    pub(crate) table: ResourceTable,
    pub(crate) limits: LimitsCtx,
}

impl StoreCore {
    /// Installs (or, with `None`, removes) the invocation scope, re-pointing guest output at
    /// the log of whoever is then in scope.
    pub(crate) fn set_scope(&mut self, scope: Option<InvocationScope>) {
        self.scope = scope;
        self.output.follow(Scoped {
            identity: &self.identity,
            owner_profile: &self.owner_profile,
            scope: &self.scope,
        });
    }
}

impl std::fmt::Debug for StoreCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCore")
            .field("capsule", &self.identity.name)
            .field("session", &self.identity.session)
            .field(
                "scope",
                &self.scope.as_ref().map(|s| s.principal.to_string()),
            )
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// What a capability's view borrows of its Store's core: who is in scope (read-only), the
/// lifecycle call in progress, the budgets and the resource table. Only IPC, which installs
/// scopes when it drains messages, borrows the scope mutably, and builds its view itself.
pub(crate) struct CoreView<'a> {
    pub(crate) scoped: Scoped<'a>,
    pub(crate) scopes: &'a ScopeFactory,
    pub(crate) phase: &'a Option<LifecyclePhase>,
    pub(crate) limits: &'a mut LimitsCtx,
    pub(crate) table: &'a mut ResourceTable,
}

impl StoreCore {
    /// The core as a capability's view sees it.
    pub(crate) fn view(&mut self) -> CoreView<'_> {
        CoreView {
            scoped: Scoped {
                identity: &self.identity,
                owner_profile: &self.owner_profile,
                scope: &self.scope,
            },
            scopes: &self.scopes,
            phase: &self.phase,
            limits: &mut self.limits,
            table: &mut self.table,
        }
    }
}

/// Read-only answers about who is in scope, shared by every view.
#[derive(Clone, Copy)]
pub(crate) struct Scoped<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) owner_profile: &'a ProfileGrant,
    pub(crate) scope: &'a Option<InvocationScope>,
}

impl<'a> Scoped<'a> {
    /// The principal the current call acts for: the scope's, else the owner.
    pub(crate) fn principal(&self) -> &'a PrincipalId {
        self.scope
            .as_ref()
            .map_or(&self.identity.owner, |s| &s.principal)
    }

    /// The quota profile in force: the scope's (resolved for every principal, the owner
    /// included), else the owner's load-time profile.
    pub(crate) fn profile(&self) -> &'a ProfileGrant {
        self.scope
            .as_ref()
            .map_or(self.owner_profile, |s| &s.profile)
    }

    /// The log file records go to: the scoped principal's when it is not the owner.
    pub(crate) fn log(&self, owner_log: Option<&'a LogSink>) -> Option<&'a LogSink> {
        match self.scope {
            Some(s) if s.principal != self.identity.owner => {
                debug_assert!(
                    s.overlays.is_some(),
                    "a non-owner scope without overlays would fall back to the owner's log"
                );
                s.overlays.as_ref().and_then(|o| o.log.as_ref())
            }
            _ => owner_log,
        }
    }

    /// The home mount of the principal in scope.
    pub(crate) fn home(&self, owner_home: Option<&'a Arc<Mount>>) -> Option<&'a Arc<Mount>> {
        match self.scope {
            Some(s) if s.principal != self.identity.owner => {
                debug_assert!(
                    s.overlays.is_some(),
                    "a non-owner scope without overlays would fall back to the owner's home"
                );
                s.overlays.as_ref().and_then(|o| o.home.as_ref())
            }
            _ => owner_home,
        }
    }

    /// The scratch mount of the principal in scope.
    pub(crate) fn tmp(&self, owner_tmp: Option<&'a Arc<Mount>>) -> Option<&'a Arc<Mount>> {
        match self.scope {
            Some(s) if s.principal != self.identity.owner => {
                debug_assert!(
                    s.overlays.is_some(),
                    "a non-owner scope without overlays would fall back to the owner's tmp"
                );
                s.overlays.as_ref().and_then(|o| o.tmp.as_ref())
            }
            _ => owner_tmp,
        }
    }

    /// The env overlay in force for a non-owner principal, `None` when the owner is in scope.
    pub(crate) fn env_overlay(&self) -> Option<&'a HashMap<String, String>> {
        match self.scope {
            Some(s) if s.principal != self.identity.owner => {
                debug_assert!(
                    s.overlays.is_some(),
                    "a non-owner scope without overlays would fall back to the owner's env"
                );
                s.overlays.as_ref().map(|o| o.env.as_ref())
            }
            _ => None,
        }
    }
}

/// Where a Store's stdout and stderr go: the log of the principal in scope. The Store's core
/// re-points it whenever its scope changes; every output stream the guest opens shares it.
#[derive(Clone, Debug)]
pub(crate) struct OutputRoute {
    owner: Option<LogSink>,
    current: Arc<Mutex<Option<LogSink>>>,
}

impl OutputRoute {
    /// A route to the owner's log, where output goes while nobody else is in scope.
    pub(crate) fn new(owner: Option<LogSink>) -> Self {
        Self {
            current: Arc::new(Mutex::new(owner.clone())),
            owner,
        }
    }

    /// Points the route at the log of whoever `scoped` says is in scope (never the owner's
    /// log for another principal: that principal's own, or none).
    pub(crate) fn follow(&self, scoped: Scoped<'_>) {
        *self.current.lock() = scoped.log(self.owner.as_ref()).cloned();
    }

    /// The log of whoever `scoped` says is in scope, without re-pointing the route.
    pub(crate) fn for_scope(&self, scoped: Scoped<'_>) -> Option<LogSink> {
        scoped.log(self.owner.as_ref()).cloned()
    }

    /// The log output goes to now.
    pub(crate) fn sink(&self) -> Option<LogSink> {
        self.current.lock().clone()
    }
}
