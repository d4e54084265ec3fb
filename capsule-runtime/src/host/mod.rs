//! The capabilities a capsule is served, one module each, and the one list that wires them.
//! A capability owns its shared part (built once per loaded capsule from the manifest, the
//! grant and the runtime's services), its per-Store context, its view of the Store and the
//! marker that selects that view, its linker registration and its host functions. Loading,
//! Store creation, linking, unloading and the served-interface list all walk
//! [`capabilities!`]'s list, which expands to plain fields and static calls: reaching a
//! capability's context from a host call is a field access, with no lookup, lock or allocation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use capsule_bus::{Bus, RateLimiter};
use capsule_security::{CapsulePolicy, Manifest, PrincipalProfile};
use capsule_vfs::Mount;
use parking_lot::RwLock;
use wasmtime::component::Linker;

use crate::config::RuntimeConfig;
use crate::error::LoadError;
use crate::lifecycle::Elicitor;
use crate::logsink::LogSink;
use crate::registry::Registry;
use crate::state::{CapsuleIdentity, CoreView, OutputRoute, StoreCore};
use capsule_store::KvStore;
use capsule_store::SecretStore;

/// Makes `View<'_, Ctx>` what the host functions of capability `$cap` run on: the usual
/// marker, for every capability that needs no view of its own.
macro_rules! runs_on_view {
    ($cap:ty) => {
        impl wasmtime::component::HasData for $cap {
            type Data<'a> = $crate::host::View<'a, <$cap as $crate::host::Capability>::Ctx>;
        }
    };
}

/// The usual [`Capability::link`]: registers the host functions of the generated bindings
/// module `$m`, each run on the capability's [`View`].
macro_rules! link_bindings {
    ($($m:ident)::+) => {
        fn link(
            linker: &mut wasmtime::component::Linker<$crate::host::HostState>,
        ) -> wasmtime::Result<()> {
            $($m)::+::add_to_linker::<$crate::host::HostState, Self>(
                linker,
                $crate::host::view::<Self>,
            )
        }
    };
}

pub(crate) mod approval;
pub(crate) mod audit;
pub(crate) mod deadline;
pub(crate) mod elicit;
pub(crate) mod fs;
pub(crate) mod http;
pub(crate) mod identity;
pub(crate) mod ipc;
pub(crate) mod kv;
pub(crate) mod net;
pub(crate) mod pipe;
pub(crate) mod poll;
pub(crate) mod process;
pub(crate) mod streams;
pub(crate) mod sys;
#[cfg(test)]
mod tidy;
pub(crate) mod uplink;
pub(crate) mod wasi;
pub(crate) mod wasi_poll;

/// One capability. Implemented by the `HasData` marker that selects its view, so the type
/// named in the list is also the one its linker registration uses.
pub(crate) trait Capability {
    /// The `astrid:*` interfaces it serves, as `package/interface@version`. Each must be
    /// imported by the `imports` world of `capsule-wit/wit/host.wit` (the tidy test checks
    /// both directions, and that the linker really serves them).
    const INTERFACES: &'static [&'static str];
    /// Built once per loaded capsule; every Store of the capsule shares it.
    type Shared: Send + Sync + std::fmt::Debug + 'static;
    /// Built for every Store, for the principal it starts out serving.
    type Ctx: Send + 'static;
    /// Registers its host functions.
    fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()>;
    /// Builds the shared part for a capsule being loaded.
    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError>;
    /// Builds the context of one new Store.
    fn instance(shared: &Self::Shared, cx: &InstanceCx<'_>) -> Self::Ctx;
    /// Runs once when the capsule has unloaded and none of its Stores is left.
    fn unloaded(_shared: &Self::Shared) {}
}

/// What a capability's host functions run on: the Store's core as views see it (who is in
/// scope, read-only) and the capability's own context, nothing of any other capability.
pub(crate) struct View<'a, C> {
    pub(crate) core: CoreView<'a>,
    pub(crate) ctx: &'a mut C,
}

/// Where a capability's context lives in a Store; implemented by the list.
pub(crate) trait Slot: Capability {
    /// The capability's context among all of them.
    fn slot(caps: &mut Contexts) -> &mut Self::Ctx;
}

/// The view of capability `C` of `state`: the getter a capability's `link` hands to its
/// generated `add_to_linker`.
pub(crate) fn view<C: Slot>(state: &mut HostState) -> View<'_, C::Ctx> {
    View {
        core: state.core.view(),
        ctx: C::slot(&mut state.caps),
    }
}

/// The data of one `wasmtime::Store`: what every capability shares, and each capability's
/// own context.
pub(crate) struct HostState {
    pub(crate) core: StoreCore,
    pub(crate) caps: Contexts,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

/// What the runtime offers every capability, shared by all capsules.
pub(crate) struct Services {
    pub(crate) bus: Bus,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) kv: Arc<KvStore>,
    pub(crate) secrets: Arc<SecretStore>,
    /// Loaded capsules, for `check-capsule-capability`.
    pub(crate) registry: Arc<Registry>,
    /// Who answers `elicit`; each capsule takes a snapshot when it loads.
    pub(crate) elicitor: RwLock<Option<Arc<dyn Elicitor>>>,
    /// Where uplink capsules hand inbound messages.
    pub(crate) inbound: tokio::sync::mpsc::Sender<uplink::InboundMessage>,
    /// The airlock and resolver outbound connections go through.
    pub(crate) net: http::NetServices,
    /// Who decides `astrid:approval` requests, and the stored allowances.
    pub(crate) approvals: Arc<crate::consent::Desk>,
    /// Persistent host processes held while their capsule is reloaded.
    pub(crate) processes: Arc<process::Keeper>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("elicitor", &self.elicitor.read().is_some())
            .finish_non_exhaustive()
    }
}

/// The owner's own files for a capsule being loaded, opened once.
#[derive(Debug, Default)]
pub(crate) struct OwnerFiles {
    /// The owner's env overlay for this capsule.
    pub(crate) env: HashMap<String, String>,
    /// The owner's home (`home://`), when it could be opened.
    pub(crate) home: Option<Arc<Mount>>,
    /// The owner's scratch directory (`/tmp/`), when it could be opened.
    pub(crate) tmp: Option<Arc<Mount>>,
    /// The owner's log file for this capsule, when it could be opened.
    pub(crate) log: Option<LogSink>,
}

/// What a capability's shared part is built from when a capsule loads.
pub(crate) struct Assembly<'a> {
    pub(crate) identity: &'a CapsuleIdentity,
    pub(crate) manifest: &'a Manifest,
    /// The capsule's policy: `requested ∩ granted`.
    pub(crate) policy: &'a Arc<CapsulePolicy>,
    /// Each granted host directory, as the manifest writes it, mapped to the canonical
    /// directory that was checked and is to be mounted.
    pub(crate) mounts: &'a HashMap<PathBuf, PathBuf>,
    /// The owner's profile (usable: a refused owner fails the load before this).
    pub(crate) owner_profile: &'a PrincipalProfile,
    pub(crate) owner_files: &'a OwnerFiles,
    pub(crate) config: &'a RuntimeConfig,
    pub(crate) services: &'a Services,
}

/// What a capability's per-Store context is built from.
pub(crate) struct InstanceCx<'a> {
    /// Where the Store's guest output goes.
    pub(crate) output: &'a OutputRoute,
    /// Where the Store's stderr is also kept, for a lifecycle call's error.
    pub(crate) stderr_tail: Option<&'a wasi::OutputTail>,
}

/// Declares the capability list: the per-capsule and per-Store structs with one field per
/// capability, and the walks over it. Order is link order.
macro_rules! capabilities {
    ($($field:ident: $cap:ty),* $(,)?) => {
        /// The shared part of every capability of one loaded capsule.
        pub(crate) struct Shared {
            $(pub(crate) $field: <$cap as Capability>::Shared,)*
        }

        /// The context of every capability in one Store.
        pub(crate) struct Contexts {
            $(pub(crate) $field: <$cap as Capability>::Ctx,)*
        }

        impl Shared {
            /// Builds every capability's shared part, in list order; the first failure fails
            /// the load.
            pub(crate) fn assemble(cx: &Assembly<'_>) -> Result<Self, LoadError> {
                Ok(Self {
                    $($field: <$cap as Capability>::assemble(cx)?,)*
                })
            }

            /// Builds every capability's context for one new Store.
            pub(crate) fn instance(&self, cx: &InstanceCx<'_>) -> Contexts {
                Contexts {
                    $($field: <$cap as Capability>::instance(&self.$field, cx),)*
                }
            }

            /// Tells every capability its capsule is gone.
            pub(crate) fn unloaded(&self) {
                $(<$cap as Capability>::unloaded(&self.$field);)*
            }
        }

        $(
            impl Slot for $cap {
                fn slot(caps: &mut Contexts) -> &mut <$cap as Capability>::Ctx {
                    &mut caps.$field
                }
            }
        )*

        impl std::fmt::Debug for Shared {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Shared")
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }

        /// The linker every capsule of a runtime is instantiated with.
        pub(crate) fn build_linker(
            engine: &wasmtime::Engine,
        ) -> wasmtime::Result<Linker<HostState>> {
            let mut linker = Linker::new(engine);
            $(<$cap as Capability>::link(&mut linker)?;)*
            Ok(linker)
        }

        /// The `astrid:*` interfaces served, capability by capability, in link order.
        const SERVED: &[&[&str]] = &[$(<$cap as Capability>::INTERFACES,)*];
    };
}

capabilities! {
    wasi: wasi::WasiHost,
    poll: poll::PollHost,
    ipc: ipc::IpcHost,
    sys: sys::SysHost,
    kv: kv::KvHost,
    fs: fs::FsHost,
    elicit: elicit::ElicitHost,
    uplink: uplink::UplinkHost,
    streams: streams::StreamsHost,
    http: http::HttpHost,
    net: net::NetHost,
    identity: identity::IdentityHost,
    approval: approval::ApprovalHost,
    process: process::ProcessHost,
}

/// Every `astrid:*` interface this host serves (`package/interface@version`), in link order.
pub(crate) fn served_interfaces() -> impl Iterator<Item = &'static str> {
    SERVED
        .iter()
        .flat_map(|interfaces| interfaces.iter().copied())
}
