//! Host functions, one module per WIT interface, and the linker that serves them. Each
//! interface is added by its own `add_to_linker` with its own narrow view of the Store.

use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::state::{ElicitHost, FsHost, HostState, IpcHost, KvHost, PollHost, SysHost, UplinkHost};

pub(crate) mod audit;
pub(crate) mod elicit;
pub(crate) mod fs;
pub(crate) mod ipc;
pub(crate) mod kv;
pub(crate) mod poll;
pub(crate) mod sys;
pub(crate) mod uplink;
pub(crate) mod wasi;

/// The linker every capsule of a runtime is instantiated with.
pub(crate) fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capsule_wit::astrid::io::poll::add_to_linker::<HostState, PollHost>(
        &mut linker,
        HostState::poll_view,
    )?;
    capsule_wit::astrid::ipc::host::add_to_linker::<HostState, IpcHost>(
        &mut linker,
        HostState::ipc_view,
    )?;
    capsule_wit::astrid::sys::host::add_to_linker::<HostState, SysHost>(
        &mut linker,
        HostState::sys_view,
    )?;
    capsule_wit::astrid::kv::host::add_to_linker::<HostState, KvHost>(
        &mut linker,
        HostState::kv_view,
    )?;
    capsule_wit::astrid::fs::host::add_to_linker::<HostState, FsHost>(
        &mut linker,
        HostState::fs_view,
    )?;
    capsule_wit::astrid::elicit::host::add_to_linker::<HostState, ElicitHost>(
        &mut linker,
        HostState::elicit_view,
    )?;
    capsule_wit::astrid::uplink::host::add_to_linker::<HostState, UplinkHost>(
        &mut linker,
        HostState::uplink_view,
    )?;
    Ok(linker)
}
