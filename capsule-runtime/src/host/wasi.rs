//! The WASI preview 2 context of a capsule, locked down: no environment, no arguments, no
//! preopened directories, no network; stdin is closed and stdout/stderr are written to the
//! owner's capsule log, line by line.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::logsink::LogSink;

/// Most bytes a guest may hand to stdout/stderr per write.
const WRITE_BUDGET: usize = 64 * 1024;

/// stdout or stderr of a capsule, feeding its log.
#[derive(Clone, Debug)]
struct LogOutput {
    sink: Option<LogSink>,
    stream: &'static str,
}

impl LogOutput {
    fn emit(&self, bytes: &[u8]) {
        if let Some(sink) = &self.sink {
            sink.write_output(self.stream, bytes);
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

/// A locked-down WASI context whose stdout and stderr go to `log`.
pub(crate) fn locked_down(log: Option<LogSink>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(LogOutput {
            sink: log.clone(),
            stream: "STDOUT",
        })
        .stderr(LogOutput {
            sink: log,
            stream: "STDERR",
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}
