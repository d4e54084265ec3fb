//! The WASI preview 2 context of a capsule, locked down: no environment, no arguments, no
//! preopened directories, no network; stdin is closed and stdout/stderr are written, line by
//! line, to the capsule log of the principal in scope when the guest writes (the owner's when
//! nobody else is in scope), exactly where `sys.log` records go. WASI is a capability like
//! the `astrid:*` ones; the interfaces it links are accepted by [`WASI_P2`] name at any
//! `0.2.x` version rather than listed in `host.wit`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::Linker;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::error::LoadError;
use crate::host::{Assembly, Capability, HostState, InstanceCx};
use crate::state::OutputRoute;

/// The WASI preview 2 interfaces linked (locked down) for guests built for `wasm32-wasip2`.
pub(crate) const WASI_P2: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The WASI capability; wasmtime-wasi reaches its context through [`WasiView`].
pub(crate) struct WasiHost;

impl Capability for WasiHost {
    const INTERFACES: &'static [&'static str] = &[];
    type Shared = ();
    type Ctx = WasiCtx;

    fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        crate::host::wasi_poll::link(linker)
    }

    fn assemble(_cx: &Assembly<'_>) -> Result<(), LoadError> {
        Ok(())
    }

    fn instance((): &(), cx: &InstanceCx<'_>) -> WasiCtx {
        locked_down(cx.output, cx.stderr_tail.cloned())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.caps.wasi,
            table: &mut self.core.table,
        }
    }
}

/// Most bytes a guest may hand to stdout/stderr per write.
const WRITE_BUDGET: usize = 64 * 1024;

/// Most bytes of stderr an [`OutputTail`] keeps.
const TAIL_BYTES: usize = 2048;

/// The last bytes a guest wrote to stderr, kept so a failing lifecycle call can report the
/// guest's own words (a Rust guest prints its panic message there before it traps).
#[derive(Clone, Debug, Default)]
pub(crate) struct OutputTail(Arc<Mutex<Vec<u8>>>);

impl OutputTail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock();
        tail.extend_from_slice(bytes);
        if tail.len() > TAIL_BYTES {
            let cut = tail.len() - TAIL_BYTES;
            tail.drain(..cut);
        }
    }

    /// The last non-empty line written, if any.
    pub(crate) fn last_line(&self) -> Option<String> {
        let tail = self.0.lock();
        String::from_utf8_lossy(&tail)
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    }
}

/// stdout or stderr of a capsule, feeding the log its route points at.
#[derive(Clone, Debug)]
struct LogOutput {
    route: OutputRoute,
    stream: &'static str,
    tail: Option<OutputTail>,
}

impl LogOutput {
    fn emit(&self, bytes: &[u8]) {
        match self.route.sink() {
            Some(sink) => sink.write_output(self.stream, bytes),
            None => tracing::warn!(
                stream = self.stream,
                bytes = bytes.len(),
                "the capsule log of the principal in scope is unavailable; guest output dropped"
            ),
        }
        if let Some(tail) = &self.tail {
            tail.push(bytes);
        }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.emit(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for LogOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.emit(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A locked-down WASI context whose stdout and stderr go where `route` points; stderr is also
/// kept in `tail` when one is given.
fn locked_down(route: &OutputRoute, tail: Option<OutputTail>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(LogOutput {
            route: route.clone(),
            stream: "STDOUT",
            tail: None,
        })
        .stderr(LogOutput {
            route: route.clone(),
            stream: "STDERR",
            tail,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}
