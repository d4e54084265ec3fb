//! `astrid:io/poll@1.0.0`: real pollables. A pollable observes a readiness source (a
//! subscription's queue, or another capability's `ReadySignal` such as a stream's data);
//! `block` and `poll` wait on the source itself, not on a timer, and race the capsule's
//! cancellation (so unload always wins) and the deadline of the call they run in.

use capsule_bus::Readiness;
use capsule_wit::astrid::io::poll::{ErrorCode, Host, HostPollable, Pollable};
use futures::future::{BoxFuture, FutureExt, select_all};
use wasmtime::component::Resource;

use crate::error::LoadError;
use crate::host::{Assembly, Capability, InstanceCx, View};

/// Most pollables one `poll` call may wait on.
pub const MAX_POLL_LIST: usize = 1024;

/// The `astrid:io/poll` capability. It keeps nothing of its own: pollables live in the
/// Store's resource table.
pub(crate) struct PollHost;

/// The view `astrid:io/poll` is implemented on.
type PollView<'a> = View<'a, ()>;

runs_on_view!(PollHost);

impl Capability for PollHost {
    const INTERFACES: &'static [&'static str] = &["astrid:io/poll@1.0.0"];
    type Shared = ();
    type Ctx = ();

    link_bindings!(capsule_wit::astrid::io::poll);

    fn assemble(_cx: &Assembly<'_>) -> Result<(), LoadError> {
        Ok(())
    }

    fn instance((): &(), _cx: &InstanceCx<'_>) {}
}

/// A new guest-owned pollable that is ready when `signal` says so.
pub(crate) fn signal_pollable(
    table: &mut wasmtime::component::ResourceTable,
    signal: std::sync::Arc<dyn ReadySignal>,
) -> wasmtime::Result<Resource<Pollable>> {
    let entry = table.push(PollableEntry::new(PollSource::Signal(signal)))?;
    Ok(Resource::new_own(entry.rep()))
}

/// A readiness source of another capability (a stream's data, a socket's room): ready once
/// the event happened, and a future that waits for it.
pub(crate) trait ReadySignal: Send + Sync + std::fmt::Debug {
    /// Whether the event has happened.
    fn is_ready(&self) -> bool;
    /// Waits until it has.
    fn wait(self: std::sync::Arc<Self>) -> BoxFuture<'static, ()>;
}

/// What a pollable observes.
#[derive(Debug, Clone)]
pub(crate) enum PollSource {
    /// Ready when the subscription has a queued message (or was dropped).
    Subscription(Readiness),
    /// Ready when another capability's signal says so.
    Signal(std::sync::Arc<dyn ReadySignal>),
    /// Ready when a host process exited, or (for logs) has unread output or exited.
    Process(crate::host::process::Readiness),
}

impl PollSource {
    fn is_ready(&self) -> bool {
        match self {
            Self::Subscription(r) => r.is_ready(),
            Self::Signal(s) => s.is_ready(),
            Self::Process(r) => r.is_ready(),
        }
    }

    fn wait(self) -> BoxFuture<'static, ()> {
        match self {
            Self::Subscription(r) => async move { r.ready().await }.boxed(),
            Self::Signal(s) => s.wait(),
            Self::Process(r) => r.ready().boxed(),
        }
    }
}

/// A pollable as kept in the resource table.
#[derive(Debug)]
pub(crate) struct PollableEntry {
    source: PollSource,
}

impl PollableEntry {
    pub(crate) fn new(source: PollSource) -> Self {
        Self { source }
    }
}

fn entry_handle(r: &Resource<Pollable>) -> Resource<PollableEntry> {
    Resource::new_borrow(r.rep())
}

impl PollView<'_> {
    /// Waits until any of `sources` is ready; `false` if the capsule was unloaded meanwhile,
    /// a trap if the call's deadline passed.
    async fn wait_any(&mut self, sources: Vec<PollSource>) -> wasmtime::Result<bool> {
        let io = self.core.limits.shared.io.clone();
        let done = self
            .core
            .limits
            .race(async {
                let Ok(_permit) = io.acquire().await else {
                    return false;
                };
                let futures: Vec<_> = sources.into_iter().map(PollSource::wait).collect();
                select_all(futures).await;
                true
            })
            .await?;
        Ok(done == Some(true))
    }
}

impl HostPollable for PollView<'_> {
    fn ready(&mut self, self_: Resource<Pollable>) -> wasmtime::Result<bool> {
        Ok(self
            .core
            .table
            .get(&entry_handle(&self_))?
            .source
            .is_ready())
    }

    async fn block(
        &mut self,
        self_: Resource<Pollable>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let source = self.core.table.get(&entry_handle(&self_))?.source.clone();
        if source.is_ready() {
            return Ok(Ok(()));
        }
        if self.wait_any(vec![source]).await? {
            Ok(Ok(()))
        } else {
            Ok(Err(ErrorCode::Cancelled))
        }
    }

    fn drop(&mut self, rep: Resource<Pollable>) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<PollableEntry>::new_own(rep.rep()))?;
        Ok(())
    }
}

impl Host for PollView<'_> {
    async fn poll(
        &mut self,
        pollables: Vec<Resource<Pollable>>,
    ) -> wasmtime::Result<Result<Vec<u32>, ErrorCode>> {
        if pollables.is_empty() {
            return Ok(Err(ErrorCode::InvalidInput));
        }
        if pollables.len() > MAX_POLL_LIST {
            return Ok(Err(ErrorCode::TooLarge));
        }
        let sources = pollables
            .iter()
            .map(|p| Ok(self.core.table.get(&entry_handle(p))?.source.clone()))
            .collect::<wasmtime::Result<Vec<PollSource>>>()?;
        let ready = |sources: &[PollSource]| -> Vec<u32> {
            sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_ready())
                .filter_map(|(i, _)| u32::try_from(i).ok())
                .collect()
        };
        let now = ready(&sources);
        if !now.is_empty() {
            return Ok(Ok(now));
        }
        if !self.wait_any(sources.clone()).await? {
            return Ok(Err(ErrorCode::Cancelled));
        }
        Ok(Ok(ready(&sources)))
    }
}
