//! The WASI preview 2 context of a capsule, locked down: no environment, no arguments, no
//! preopened directories, no network; stdin is closed and stdout/stderr are written to the
//! owner's capsule log, line by line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::logsink::LogSink;

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

/// stdout or stderr of a capsule, feeding its log.
#[derive(Clone, Debug)]
struct LogOutput {
    sink: Option<LogSink>,
    stream: &'static str,
    tail: Option<OutputTail>,
}

impl LogOutput {
    fn emit(&self, bytes: &[u8]) {
        if let Some(sink) = &self.sink {
            sink.write_output(self.stream, bytes);
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

/// A locked-down WASI context whose stdout and stderr go to `log`; stderr is also kept in
/// `tail` when one is given.
pub(crate) fn locked_down(log: Option<LogSink>, tail: Option<OutputTail>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(LogOutput {
            sink: log.clone(),
            stream: "STDOUT",
            tail: None,
        })
        .stderr(LogOutput {
            sink: log,
            stream: "STDERR",
            tail,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}
