//! The WASI preview 2 context of a capsule, locked down: no environment, no arguments, no
//! preopened directories, no network; stdin is closed and stdout/stderr are written, line by
//! line, to the capsule log of the principal in scope when the guest writes (the owner's when
//! nobody else is in scope), exactly where `sys.log` records go.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::logsink::LogSink;
use crate::state::Scoped;

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

/// Where a Store's stdout and stderr go: the log of the principal in scope. The Store's host
/// state re-points it whenever its scope changes; every output stream the guest opens shares it.
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

    fn sink(&self) -> Option<LogSink> {
        self.current.lock().clone()
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
pub(crate) fn locked_down(route: &OutputRoute, tail: Option<OutputTail>) -> WasiCtx {
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
