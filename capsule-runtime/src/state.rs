//! Per-Store host state. `HostState` is a set of private per-capability contexts plus one
//! `ResourceTable` and one `Option<InvocationScope>`; each WIT interface is implemented on a
//! narrow view that borrows only the contexts it needs, so (for example) IPC code cannot reach
//! the sys context. Identity (capsule name, session, owner) is shared and immutable.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use capsule_bus::{Bus, PrincipalId, RateLimiter};
use capsule_security::CapsulePolicy;
use capsule_store::{KvStore, SecretStore};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wasmtime::component::{HasData, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use capsule_vfs::{Mount, Workspace};

use crate::host::wasi::OutputRoute;
use crate::limits::{CpuMeter, MemoryLedger, MemoryMeter};
use crate::logsink::LogSink;
use crate::registry::Registry;
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

/// A handler binding as reported by `get-interceptor-bindings`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) id: u64,
    pub(crate) action: String,
    pub(crate) topic: String,
}

/// Capsule-wide data of the bus capability.
#[derive(Debug)]
pub(crate) struct BusShared {
    pub(crate) bus: Bus,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) policy: Arc<CapsulePolicy>,
    pub(crate) bindings: Vec<Binding>,
    /// Whether the owner holds the audit firehose grant (from its profile, never the manifest).
    pub(crate) audit_firehose: bool,
    /// Principals this capsule introduced with `publish-as` in the current minute.
    pub(crate) introductions: parking_lot::Mutex<crate::host::ipc::Introductions>,
    /// What the capsule published, received, lost and was refused.
    pub(crate) counters: crate::stats::IpcCounters,
}

/// The bus context of one Store.
#[derive(Debug)]
pub(crate) struct BusCtx {
    pub(crate) shared: Arc<BusShared>,
    /// Live subscriptions of this instance.
    pub(crate) subscriptions: usize,
}

/// Capsule-wide data of the sys capability.
#[derive(Debug)]
pub(crate) struct SysShared {
    /// Manifest defaults of non-secret `[env]` keys.
    pub(crate) defaults: HashMap<String, String>,
    /// The owner's env overlay, consulted before the defaults when the owner is in scope.
    pub(crate) owner_env: HashMap<String, String>,
    /// Keys declared `type = "secret"`: never in any map above.
    pub(crate) secret_keys: HashSet<String>,
    /// Every `[env]` key the manifest declares: the only keys `get-config` answers.
    pub(crate) declared_keys: HashSet<String>,
    /// Capability names the capsule holds.
    pub(crate) capabilities: Vec<String>,
    /// The owner's log file for this capsule.
    pub(crate) owner_log: Option<LogSink>,
    /// Flipped by `signal-ready`.
    pub(crate) ready: watch::Sender<bool>,
    /// Loaded capsules, for `check-capsule-capability`.
    pub(crate) registry: Weak<Registry>,
}

/// The sys context of one Store.
#[derive(Debug)]
pub(crate) struct SysCtx {
    pub(crate) shared: Arc<SysShared>,
    /// Where secret-typed config keys are resolved.
    pub(crate) secrets: Arc<SecretStore>,
}

/// Capsule-wide data of the lifecycle capability.
pub(crate) struct LifecycleShared {
    /// Who answers `elicit` (snapshot taken at load).
    pub(crate) elicitor: Option<Arc<dyn crate::lifecycle::Elicitor>>,
    pub(crate) secrets: Arc<SecretStore>,
    /// How long an operator has to answer one question.
    pub(crate) timeout: std::time::Duration,
}

impl std::fmt::Debug for LifecycleShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleShared")
            .field("elicitor", &self.elicitor.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The lifecycle context of one Store.
#[derive(Debug)]
pub(crate) struct LifecycleCtx {
    pub(crate) shared: Arc<LifecycleShared>,
    /// Set only on the Store running `astrid-install` or `astrid-upgrade`.
    pub(crate) phase: Option<crate::lifecycle::LifecyclePhase>,
}

/// Capsule-wide data of the uplink capability.
#[derive(Debug)]
pub(crate) struct UplinkShared {
    pub(crate) policy: Arc<CapsulePolicy>,
    pub(crate) registered: parking_lot::Mutex<Vec<crate::host::uplink::Uplink>>,
    pub(crate) inbound: tokio::sync::mpsc::Sender<crate::host::uplink::InboundMessage>,
}

/// The uplink context of one Store.
#[derive(Debug)]
pub(crate) struct UplinkCtx {
    pub(crate) shared: Arc<UplinkShared>,
}

/// The KV context of one Store.
#[derive(Debug)]
pub(crate) struct KvCtx {
    pub(crate) store: Arc<KvStore>,
}

/// Capsule-wide data of the filesystem capability.
#[derive(Debug)]
pub(crate) struct FsShared {
    pub(crate) policy: Arc<CapsulePolicy>,
    /// The KV database, which keeps each principal's file usage beside its KV usage.
    pub(crate) storage: Arc<KvStore>,
    pub(crate) workspace: Arc<Workspace>,
    /// Host directories granted by absolute path, longest prefix first.
    pub(crate) absolute: Vec<(std::path::PathBuf, Arc<Mount>)>,
    pub(crate) owner_home: Option<Arc<Mount>>,
    pub(crate) owner_tmp: Option<Arc<Mount>>,
}

/// The filesystem context of one Store.
#[derive(Debug)]
pub(crate) struct FsCtx {
    pub(crate) shared: Arc<FsShared>,
    /// Open file handles of this instance.
    pub(crate) handles: usize,
}

/// Capsule-wide data of the limits capability.
#[derive(Debug)]
pub(crate) struct LimitsShared {
    /// Bounds async I/O waits (`recv`, `pollable.block`, `poll`).
    pub(crate) io: Arc<Semaphore>,
    /// Bounds blocking host work.
    pub(crate) blocking: Arc<Semaphore>,
    /// Cancelled when the capsule unloads; every waiting host call races it.
    pub(crate) cancel: CancellationToken,
    /// Per-principal memory peaks of this capsule (forwarded to the runtime-wide ledger).
    pub(crate) ledger: Arc<MemoryLedger>,
}

/// The limits context of one Store.
#[derive(Debug)]
pub(crate) struct LimitsCtx {
    pub(crate) shared: Arc<LimitsShared>,
    pub(crate) memory: MemoryMeter,
    pub(crate) cpu: CpuMeter,
    /// Set at the first epoch boundary after unload began: the guest gets one window to
    /// return on its own (its waiting calls already answered `closed`) before it is trapped.
    pub(crate) cancel_seen: bool,
}

impl LimitsShared {
    /// Runs blocking work on the blocking pool, bounded by the blocking semaphore. `None` when
    /// the capsule unloads first (the work may still finish; its result is dropped and never
    /// reported as done). `Some(Err)` only if the work itself panicked: a host bug.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<Result<T, tokio::task::JoinError>> {
        let permit = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return None,
            permit = Arc::clone(&self.blocking).acquire_owned() => permit.ok()?,
        };
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            done = task => Some(done),
        }
    }
}

/// The data of one `wasmtime::Store`.
pub(crate) struct HostState {
    pub(crate) identity: Arc<CapsuleIdentity>,
    pub(crate) owner_profile: ProfileGrant,
    pub(crate) scopes: Arc<ScopeFactory>,
    pub(crate) bus: BusCtx,
    pub(crate) sys: SysCtx,
    pub(crate) kv: KvCtx,
    pub(crate) fs: FsCtx,
    pub(crate) lifecycle: LifecycleCtx,
    pub(crate) uplink: UplinkCtx,
    pub(crate) limits: LimitsCtx,
    pub(crate) wasi: WasiCtx,
    /// Where the guest's stdout/stderr go; follows `scope`.
    pub(crate) output: OutputRoute,
    pub(crate) table: ResourceTable,
    pub(crate) scope: Option<InvocationScope>,
}

impl HostState {
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

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("capsule", &self.identity.name)
            .field("session", &self.identity.session)
            .field(
                "scope",
                &self.scope.as_ref().map(|s| s.principal.to_string()),
            )
            .field("subscriptions", &self.bus.subscriptions)
            .finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
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

/// The view `astrid:ipc` is implemented on.
pub(crate) struct IpcView<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) owner_profile: &'a ProfileGrant,
    pub(crate) scopes: &'a ScopeFactory,
    pub(crate) scope: &'a mut Option<InvocationScope>,
    /// Re-pointed when a drain installs another principal's scope.
    pub(crate) output: &'a OutputRoute,
    pub(crate) bus: &'a mut BusCtx,
    pub(crate) limits: &'a mut LimitsCtx,
    pub(crate) table: &'a mut ResourceTable,
}

impl IpcView<'_> {
    pub(crate) fn scoped(&self) -> Scoped<'_> {
        Scoped {
            identity: self.identity,
            owner_profile: self.owner_profile,
            scope: self.scope,
        }
    }
}

/// The view `astrid:sys` is implemented on.
pub(crate) struct SysView<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) owner_profile: &'a ProfileGrant,
    pub(crate) scopes: &'a ScopeFactory,
    pub(crate) scope: &'a Option<InvocationScope>,
    pub(crate) sys: &'a mut SysCtx,
    /// Read-only: `get-config("prev_version")` answers during an upgrade.
    pub(crate) lifecycle: &'a LifecycleCtx,
    pub(crate) limits: &'a mut LimitsCtx,
}

/// The view `astrid:elicit` is implemented on.
pub(crate) struct ElicitView<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) lifecycle: &'a mut LifecycleCtx,
    pub(crate) limits: &'a mut LimitsCtx,
}

/// The view `astrid:uplink` is implemented on.
pub(crate) struct UplinkView<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) uplink: &'a mut UplinkCtx,
}

/// Marker selecting [`ElicitView`] when linking `astrid:elicit`.
pub(crate) struct ElicitHost;
impl HasData for ElicitHost {
    type Data<'a> = ElicitView<'a>;
}

/// Marker selecting [`UplinkView`] when linking `astrid:uplink`.
pub(crate) struct UplinkHost;
impl HasData for UplinkHost {
    type Data<'a> = UplinkView<'a>;
}

impl SysView<'_> {
    pub(crate) fn scoped(&self) -> Scoped<'_> {
        Scoped {
            identity: self.identity,
            owner_profile: self.owner_profile,
            scope: self.scope,
        }
    }
}

/// The view `astrid:kv` is implemented on.
pub(crate) struct KvView<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) owner_profile: &'a ProfileGrant,
    pub(crate) scope: &'a Option<InvocationScope>,
    pub(crate) kv: &'a mut KvCtx,
    pub(crate) limits: &'a mut LimitsCtx,
}

impl KvView<'_> {
    pub(crate) fn scoped(&self) -> Scoped<'_> {
        Scoped {
            identity: self.identity,
            owner_profile: self.owner_profile,
            scope: self.scope,
        }
    }
}

/// The view `astrid:fs` is implemented on.
pub(crate) struct FsView<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) owner_profile: &'a ProfileGrant,
    pub(crate) scope: &'a Option<InvocationScope>,
    pub(crate) fs: &'a mut FsCtx,
    pub(crate) limits: &'a mut LimitsCtx,
    pub(crate) table: &'a mut ResourceTable,
}

impl FsView<'_> {
    pub(crate) fn scoped(&self) -> Scoped<'_> {
        Scoped {
            identity: self.identity,
            owner_profile: self.owner_profile,
            scope: self.scope,
        }
    }
}

/// Marker selecting [`KvView`] when linking `astrid:kv`.
pub(crate) struct KvHost;
impl HasData for KvHost {
    type Data<'a> = KvView<'a>;
}

/// Marker selecting [`FsView`] when linking `astrid:fs`.
pub(crate) struct FsHost;
impl HasData for FsHost {
    type Data<'a> = FsView<'a>;
}

/// The view `astrid:io/poll` is implemented on.
pub(crate) struct PollView<'a> {
    pub(crate) limits: &'a mut LimitsCtx,
    pub(crate) table: &'a mut ResourceTable,
}

/// Marker selecting [`IpcView`] when linking `astrid:ipc`.
pub(crate) struct IpcHost;
impl HasData for IpcHost {
    type Data<'a> = IpcView<'a>;
}

/// Marker selecting [`SysView`] when linking `astrid:sys`.
pub(crate) struct SysHost;
impl HasData for SysHost {
    type Data<'a> = SysView<'a>;
}

/// Marker selecting [`PollView`] when linking `astrid:io/poll`.
pub(crate) struct PollHost;
impl HasData for PollHost {
    type Data<'a> = PollView<'a>;
}

impl HostState {
    pub(crate) fn ipc_view(&mut self) -> IpcView<'_> {
        IpcView {
            identity: &self.identity,
            owner_profile: &self.owner_profile,
            scopes: &self.scopes,
            scope: &mut self.scope,
            output: &self.output,
            bus: &mut self.bus,
            limits: &mut self.limits,
            table: &mut self.table,
        }
    }

    pub(crate) fn sys_view(&mut self) -> SysView<'_> {
        SysView {
            identity: &self.identity,
            owner_profile: &self.owner_profile,
            scopes: &self.scopes,
            scope: &self.scope,
            sys: &mut self.sys,
            lifecycle: &self.lifecycle,
            limits: &mut self.limits,
        }
    }

    pub(crate) fn elicit_view(&mut self) -> ElicitView<'_> {
        ElicitView {
            identity: &self.identity,
            lifecycle: &mut self.lifecycle,
            limits: &mut self.limits,
        }
    }

    pub(crate) fn uplink_view(&mut self) -> UplinkView<'_> {
        UplinkView {
            identity: &self.identity,
            uplink: &mut self.uplink,
        }
    }

    pub(crate) fn kv_view(&mut self) -> KvView<'_> {
        KvView {
            identity: &self.identity,
            owner_profile: &self.owner_profile,
            scope: &self.scope,
            kv: &mut self.kv,
            limits: &mut self.limits,
        }
    }

    pub(crate) fn fs_view(&mut self) -> FsView<'_> {
        FsView {
            identity: &self.identity,
            owner_profile: &self.owner_profile,
            scope: &self.scope,
            fs: &mut self.fs,
            limits: &mut self.limits,
            table: &mut self.table,
        }
    }

    pub(crate) fn poll_view(&mut self) -> PollView<'_> {
        PollView {
            limits: &mut self.limits,
            table: &mut self.table,
        }
    }
}
