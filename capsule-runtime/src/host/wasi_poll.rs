//! `wasi:io/poll` as wasmtime-wasi serves it, but with every wait raced like the host's own:
//! `poll` and `pollable.block` end when the capsule unloads or the call's deadline passes
//! (both trap: the WASI interface has no error to return). WASI's only pollables a locked-down
//! guest can wait on for long are `wasi:clocks/monotonic-clock` subscriptions (no sockets, no
//! files, stdin closed, stdout/stderr always ready), so this is what bounds a guest that sleeps
//! through WASI clocks, however long the duration it asked for.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{self, Host, HostPollable};

use crate::host::HostState;
use crate::limits::{Interrupt, LimitsCtx};

/// The Store parts a raced WASI wait needs: the table holding the pollables and the limits
/// holding the cancellation and the deadline.
pub(crate) struct RacedPoll<'a> {
    table: &'a mut ResourceTable,
    limits: &'a mut LimitsCtx,
}

/// Selects [`RacedPoll`] as the view `wasi:io/poll` runs on.
pub(crate) struct RacedPollHost;

impl HasData for RacedPollHost {
    type Data<'a> = RacedPoll<'a>;
}

fn raced_poll(state: &mut HostState) -> RacedPoll<'_> {
    RacedPoll {
        table: &mut state.core.table,
        limits: &mut state.core.limits,
    }
}

/// Links the raced `wasi:io/poll` over the one wasmtime-wasi linked before.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = poll::add_to_linker::<HostState, RacedPollHost>(linker, raced_poll);
    linker.allow_shadowing(false);
    linked
}

/// A finished race's answer, or the trap that ends the call: unload or deadline.
fn settled<T>(raced: Result<Option<wasmtime::Result<T>>, Interrupt>) -> wasmtime::Result<T> {
    match raced {
        Ok(Some(answer)) => answer,
        Ok(None) => Err(wasmtime::Error::new(Interrupt::Unloaded)),
        Err(overrun) => Err(wasmtime::Error::new(overrun)),
    }
}

impl Host for RacedPoll<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let table = &mut *self.table;
        settled(self.limits.race(Host::poll(table, pollables)).await)
    }
}

impl HostPollable for RacedPoll<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let table = &mut *self.table;
        settled(self.limits.race(HostPollable::block(table, pollable)).await)
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        HostPollable::ready(self.table, pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        HostPollable::drop(self.table, pollable)
    }
}
