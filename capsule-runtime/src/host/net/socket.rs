//! Connected sockets of `astrid:net` (`tcp-stream`: a TCP connection or one accepted from the
//! capsule's Unix listener). Every call first checks that the principal in scope owns the
//! socket; every wait is bounded by the socket's timeout (at most the principal's call
//! deadline) and by the capsule's unloading. Dropping the handle, or unloading, shuts the
//! socket down so the peer sees end of stream at once. A socket has at most one live read
//! view and one live write view (`read-stream`, `write-stream`): each holds the host's
//! buffer of its direction until its task ends, so asking for another first waits (bounded
//! by the socket's timeout) for the previous one to end, and gets an already-failed stream
//! if it does not.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use capsule_security::PrincipalId;
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::io::streams::{InputStream, OutputStream};
use capsule_wit::astrid::net::host::{
    ErrorCode, HostTcpStream, NetReadStatus, ShutdownHow, TcpStream,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Resource;

use super::{MAX_READ_BYTES, NetError, NetView, code, io_error};
use crate::host::pipe::{End, Pipe, Read};
use crate::host::poll::{ReadySignal, signal_pollable};

/// A connected stream socket, shared by its handle, its stream views and their tasks.
#[derive(Debug)]
pub(crate) enum Conn {
    /// A TCP connection.
    Tcp(tokio::net::TcpStream),
    /// A connection accepted from a Unix listener.
    Unix(tokio::net::UnixStream),
}

impl Conn {
    fn sock(&self) -> socket2::SockRef<'_> {
        match self {
            Self::Tcp(s) => socket2::SockRef::from(s),
            Self::Unix(s) => socket2::SockRef::from(s),
        }
    }

    fn tcp(&self) -> Result<&tokio::net::TcpStream, NetError> {
        match self {
            Self::Tcp(s) => Ok(s),
            Self::Unix(_) => Err(NetError::NotTcp),
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_read(buf),
            Self::Unix(s) => s.try_read(buf),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_write(buf),
            Self::Unix(s) => s.try_write(buf),
        }
    }

    async fn readable(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.readable().await,
            Self::Unix(s) => s.readable().await,
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.writable().await,
            Self::Unix(s) => s.writable().await,
        }
    }

    fn read_ready_now(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let ready = match self {
            Self::Tcp(s) => s.poll_read_ready(&mut cx),
            Self::Unix(s) => s.poll_read_ready(&mut cx),
        };
        matches!(ready, Poll::Ready(_))
    }

    /// Shuts both directions down (the peer sees end of stream); errors mean it already is.
    pub(crate) fn shut_all(&self) {
        let _ = self.sock().shutdown(std::net::Shutdown::Both);
    }

    fn addr(&self, peer: bool) -> Result<String, NetError> {
        match self {
            Self::Tcp(s) => {
                let a = if peer { s.peer_addr() } else { s.local_addr() };
                a.map(|a| a.to_string()).map_err(|e| io_error(&e))
            }
            Self::Unix(_) => Ok("unix".to_string()),
        }
    }
}

/// What a socket's readers share: the connection, the bytes `peek` took off it, and the one
/// slot each of its stream views (a task and its buffer) takes while it runs.
#[derive(Debug)]
pub(crate) struct Shared {
    conn: Arc<Conn>,
    peeked: Mutex<Vec<u8>>,
    read_view: Arc<Semaphore>,
    write_view: Arc<Semaphore>,
}

impl Shared {
    /// Up to `max` bytes available now: peeked ones first. `Ok(None)`: nothing yet;
    /// `Ok(Some(empty))`: end of stream.
    fn read_now(&self, max: usize) -> Result<Option<Vec<u8>>, NetError> {
        {
            let mut peeked = self.peeked.lock();
            if !peeked.is_empty() {
                let n = max.min(peeked.len());
                return Ok(Some(peeked.drain(..n).collect()));
            }
        }
        let mut buf = vec![0; max.min(MAX_READ_BYTES)];
        match self.conn.try_read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(io_error(&e)),
        }
    }

    /// Waits (bounded by `limit`) until `read_now` answers something.
    async fn read_wait(&self, max: usize, limit: Duration) -> Result<Vec<u8>, NetError> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(b) = self.read_now(max)? {
                    return Ok(b);
                }
                self.conn.readable().await.map_err(|e| io_error(&e))?;
            }
        })
        .await
        .map_err(|_| NetError::Timeout)?
    }

    async fn write_all(&self, mut data: &[u8], limit: Duration) -> Result<(), NetError> {
        tokio::time::timeout(limit, async {
            while !data.is_empty() {
                self.conn.writable().await.map_err(|e| io_error(&e))?;
                match self.conn.try_write(data) {
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io_error(&e)),
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| NetError::Timeout)?
    }
}

impl ReadySignal for Shared {
    fn is_ready(&self) -> bool {
        !self.peeked.lock().is_empty() || self.conn.read_ready_now()
    }

    fn wait(self: Arc<Self>) -> BoxFuture<'static, ()> {
        async move {
            if self.peeked.lock().is_empty() {
                let _ = self.conn.readable().await;
            }
        }
        .boxed()
    }
}

/// A socket in the resource table.
pub(crate) struct SocketEntry {
    shared: Arc<Shared>,
    owner: PrincipalId,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    keepalive: Option<u64>,
    /// The owner's socket slot, freed with the entry.
    _slot: OwnedSemaphorePermit,
}

impl Drop for SocketEntry {
    fn drop(&mut self) {
        self.shared.conn.shut_all();
    }
}

impl SocketEntry {
    pub(crate) fn new(conn: Arc<Conn>, owner: PrincipalId, slot: OwnedSemaphorePermit) -> Self {
        Self {
            shared: Arc::new(Shared {
                conn,
                peeked: Mutex::new(Vec::new()),
                read_view: Arc::new(Semaphore::new(1)),
                write_view: Arc::new(Semaphore::new(1)),
            }),
            owner,
            read_timeout: None,
            write_timeout: None,
            keepalive: None,
            _slot: slot,
        }
    }
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A guest's read or write timeout: `None` waits as long as the call may, a zero is refused.
fn timeout(ms: Option<u64>) -> Result<Option<Duration>, NetError> {
    match ms {
        Some(0) => Err(NetError::Unknown("a timeout of 0 is not a timeout".into())),
        ms => Ok(ms.map(Duration::from_millis)),
    }
}

impl NetView<'_> {
    /// The socket behind `r`, if the principal in scope owns it.
    fn socket(
        &mut self,
        r: &Resource<TcpStream>,
    ) -> wasmtime::Result<Result<&mut SocketEntry, NetError>> {
        let principal = self.core.scoped.principal().clone();
        let entry = self
            .core
            .table
            .get_mut(&Resource::<SocketEntry>::new_borrow(r.rep()))?;
        Ok(if entry.owner == principal {
            Ok(entry)
        } else {
            Err(NetError::InvalidHandle)
        })
    }

    /// The longest a call may wait: the socket's timeout, capped by the call deadline.
    fn limit(&self, own: Option<Duration>) -> Duration {
        let most = self
            .core
            .scoped
            .profile()
            .as_ref()
            .map_or(Duration::from_secs(30), |p| {
                Duration::from_secs(p.quotas.max_timeout_secs)
            });
        own.map_or(most, |t| t.min(most))
    }

    /// Runs `f` on the socket behind `r` and maps the outcome.
    fn with<T>(
        &mut self,
        r: &Resource<TcpStream>,
        f: impl FnOnce(&mut SocketEntry) -> Result<T, NetError>,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        Ok(self.socket(r)?.and_then(f).map_err(|e| code(&e)))
    }

    /// A stream view for a socket the caller may not use: already failed.
    fn dead_pipe() -> Arc<Pipe> {
        Self::failed_pipe("not a live socket of this principal")
    }

    /// A stream view that failed with `why` before it started.
    fn failed_pipe(why: &str) -> Arc<Pipe> {
        let pipe = Pipe::new(1);
        pipe.finish(End::Failed(why.into()));
        pipe
    }

    /// The socket behind `r` with the view slot of one direction, once the previous view
    /// of that direction has ended (waiting at most the socket's timeout of that direction);
    /// `None` (after its stream view is made) if the caller may not use the socket or the
    /// previous view is still live.
    async fn view_slot(
        &mut self,
        r: &Resource<TcpStream>,
        write: bool,
    ) -> wasmtime::Result<Result<(Arc<Shared>, OwnedSemaphorePermit), &'static str>> {
        let (shared, own) = match self.socket(r)? {
            Ok(s) if write => (Arc::clone(&s.shared), s.write_timeout),
            Ok(s) => (Arc::clone(&s.shared), s.read_timeout),
            Err(_) => return Ok(Err("not a live socket of this principal")),
        };
        let limit = self.limit(own);
        let slot = Arc::clone(if write {
            &shared.write_view
        } else {
            &shared.read_view
        });
        let got = self
            .waiting(async {
                tokio::time::timeout(limit, slot.acquire_owned())
                    .await
                    .map_err(|_| NetError::Timeout)?
                    .map_err(|_| NetError::Closed)
            })
            .await?;
        Ok(match got {
            Ok(permit) => Ok((shared, permit)),
            Err(_) if write => Err("the socket's previous write stream has not ended"),
            Err(_) => Err("the socket's previous read stream has not ended"),
        })
    }
}

/// Moves bytes from the socket into `pipe` until end of stream, failure, the reader leaving
/// or the capsule unloading; holds the socket's read view slot until then.
async fn pump_in(
    shared: Arc<Shared>,
    pipe: Arc<Pipe>,
    cancel: tokio_util::sync::CancellationToken,
    _view: OwnedSemaphorePermit,
) {
    let work = async {
        loop {
            match shared.read_wait(MAX_READ_BYTES, Duration::MAX).await {
                Ok(b) if b.is_empty() => return End::Done,
                Ok(b) => {
                    if !pipe.push(Bytes::from(b)).await {
                        return End::Done;
                    }
                }
                Err(e) => return End::Failed(e.to_string()),
            }
        }
    };
    let end = tokio::select! {
        biased;
        () = cancel.cancelled() => End::Failed("the capsule is unloading".into()),
        () = pipe.reader_left() => End::Done,
        end = work => end,
    };
    pipe.finish(end);
}

/// Moves what the guest queues in `pipe` to the socket until the writer ends; holds the
/// socket's write view slot until then.
async fn pump_out(
    shared: Arc<Shared>,
    pipe: Arc<Pipe>,
    cancel: tokio_util::sync::CancellationToken,
    _view: OwnedSemaphorePermit,
) {
    let work = async {
        loop {
            pipe.readable().await;
            match pipe.try_read(MAX_READ_BYTES) {
                Read::Data(b) => {
                    if shared.write_all(&b, Duration::MAX).await.is_err() {
                        return;
                    }
                }
                Read::Empty => {}
                Read::End(_) => return,
            }
        }
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => {}
        () = work => {}
    }
    pipe.close_reader();
}

impl HostTcpStream for NetView<'_> {
    async fn read(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<NetReadStatus, ErrorCode>> {
        self.with(&self_, |s| {
            Ok(match s.shared.read_now(MAX_READ_BYTES)? {
                None => NetReadStatus::Pending,
                Some(b) if b.is_empty() => NetReadStatus::Closed,
                Some(b) => NetReadStatus::Data(b),
            })
        })
    }

    async fn write(
        &mut self,
        self_: Resource<TcpStream>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let (shared, own) = match self.socket(&self_)? {
            Ok(s) => (Arc::clone(&s.shared), s.write_timeout),
            Err(e) => return Ok(Err(code(&e))),
        };
        let limit = self.limit(own);
        let r = self.waiting(shared.write_all(&data, limit)).await?;
        Ok(r.map_err(|e| code(&e)))
    }

    /// Waits (up to the read timeout) for data; an empty list means end of stream.
    async fn read_bytes(
        &mut self,
        self_: Resource<TcpStream>,
        max_bytes: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        let (shared, own) = match self.socket(&self_)? {
            Ok(s) => (Arc::clone(&s.shared), s.read_timeout),
            Err(e) => return Ok(Err(code(&e))),
        };
        let limit = self.limit(own);
        let max = (max_bytes as usize).clamp(1, MAX_READ_BYTES);
        let r = self.waiting(shared.read_wait(max, limit)).await?;
        Ok(r.map_err(|e| code(&e)))
    }

    async fn write_bytes(
        &mut self,
        self_: Resource<TcpStream>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, ErrorCode>> {
        let (shared, own) = match self.socket(&self_)? {
            Ok(s) => (Arc::clone(&s.shared), s.write_timeout),
            Err(e) => return Ok(Err(code(&e))),
        };
        let limit = self.limit(own);
        let r = self
            .waiting(async {
                tokio::time::timeout(limit, async {
                    loop {
                        shared.conn.writable().await.map_err(|e| io_error(&e))?;
                        match shared.conn.try_write(&data) {
                            Ok(n) => return Ok(u32::try_from(n).unwrap_or(u32::MAX)),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(io_error(&e)),
                        }
                    }
                })
                .await
                .map_err(|_| NetError::Timeout)?
            })
            .await?;
        Ok(r.map_err(|e| code(&e)))
    }

    /// Waits (up to the read timeout) for data and answers it without consuming it; an empty
    /// list means end of stream.
    async fn peek(
        &mut self,
        self_: Resource<TcpStream>,
        max_bytes: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        let (shared, own) = match self.socket(&self_)? {
            Ok(s) => (Arc::clone(&s.shared), s.read_timeout),
            Err(e) => return Ok(Err(code(&e))),
        };
        let limit = self.limit(own);
        let max = (max_bytes as usize).clamp(1, MAX_READ_BYTES);
        let r = self
            .waiting(async {
                let have = shared.peeked.lock().len();
                if have < max && have == 0 {
                    let more = shared.read_wait(max, limit).await?;
                    shared.peeked.lock().extend_from_slice(&more);
                }
                let peeked = shared.peeked.lock();
                Ok(peeked[..max.min(peeked.len())].to_vec())
            })
            .await?;
        Ok(r.map_err(|e| code(&e)))
    }

    async fn shutdown(
        &mut self,
        self_: Resource<TcpStream>,
        how: ShutdownHow,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            let how = match how {
                ShutdownHow::Receive => std::net::Shutdown::Read,
                ShutdownHow::Send => std::net::Shutdown::Write,
                ShutdownHow::Both => std::net::Shutdown::Both,
            };
            s.shared.conn.sock().shutdown(how).map_err(|e| io_error(&e))
        })
    }

    async fn peer_addr(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        self.with(&self_, |s| s.shared.conn.addr(true))
    }

    async fn local_addr(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        self.with(&self_, |s| s.shared.conn.addr(false))
    }

    async fn set_nodelay(
        &mut self,
        self_: Resource<TcpStream>,
        nodelay: bool,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            s.shared
                .conn
                .tcp()?
                .set_nodelay(nodelay)
                .map_err(|e| io_error(&e))
        })
    }

    async fn nodelay(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<bool, ErrorCode>> {
        self.with(&self_, |s| {
            s.shared.conn.tcp()?.nodelay().map_err(|e| io_error(&e))
        })
    }

    async fn set_read_timeout(
        &mut self,
        self_: Resource<TcpStream>,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            s.read_timeout = timeout(timeout_ms)?;
            Ok(())
        })
    }

    async fn read_timeout(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<Option<u64>, ErrorCode>> {
        self.with(&self_, |s| Ok(millis(s.read_timeout)))
    }

    async fn set_write_timeout(
        &mut self,
        self_: Resource<TcpStream>,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            s.write_timeout = timeout(timeout_ms)?;
            Ok(())
        })
    }

    async fn write_timeout(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<Option<u64>, ErrorCode>> {
        self.with(&self_, |s| Ok(millis(s.write_timeout)))
    }

    async fn set_hop_limit(
        &mut self,
        self_: Resource<TcpStream>,
        hops: u32,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            let tcp = s.shared.conn.tcp()?;
            let v6 = tcp.local_addr().map_err(|e| io_error(&e))?.is_ipv6();
            let sock = socket2::SockRef::from(tcp);
            let r = if v6 {
                sock.set_unicast_hops_v6(hops)
            } else {
                sock.set_ttl_v4(hops)
            };
            r.map_err(|e| io_error(&e))
        })
    }

    async fn hop_limit(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<u32, ErrorCode>> {
        self.with(&self_, |s| {
            let tcp = s.shared.conn.tcp()?;
            let v6 = tcp.local_addr().map_err(|e| io_error(&e))?.is_ipv6();
            let sock = socket2::SockRef::from(tcp);
            let r = if v6 {
                sock.unicast_hops_v6()
            } else {
                sock.ttl_v4()
            };
            r.map_err(|e| io_error(&e))
        })
    }

    async fn set_keepalive(
        &mut self,
        self_: Resource<TcpStream>,
        keepalive_secs: Option<u64>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            let sock = socket2::SockRef::from(s.shared.conn.tcp()?);
            match keepalive_secs {
                Some(0) => {
                    return Err(NetError::Unknown(
                        "a keepalive of 0 seconds is not one".into(),
                    ));
                }
                Some(secs) => sock
                    .set_tcp_keepalive(
                        &socket2::TcpKeepalive::new().with_time(Duration::from_secs(secs)),
                    )
                    .map_err(|e| io_error(&e))?,
                None => sock.set_keepalive(false).map_err(|e| io_error(&e))?,
            }
            s.keepalive = keepalive_secs;
            Ok(())
        })
    }

    async fn keepalive(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<Option<u64>, ErrorCode>> {
        self.with(&self_, |s| {
            s.shared.conn.tcp()?;
            Ok(s.keepalive)
        })
    }

    async fn set_linger(
        &mut self,
        self_: Resource<TcpStream>,
        linger_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            socket2::SockRef::from(s.shared.conn.tcp()?)
                .set_linger(linger_ms.map(Duration::from_millis))
                .map_err(|e| io_error(&e))
        })
    }

    async fn linger(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<Option<u64>, ErrorCode>> {
        self.with(&self_, |s| {
            socket2::SockRef::from(s.shared.conn.tcp()?)
                .linger()
                .map(millis)
                .map_err(|e| io_error(&e))
        })
    }

    async fn set_reuseaddr(
        &mut self,
        self_: Resource<TcpStream>,
        reuse: bool,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.with(&self_, |s| {
            s.shared
                .conn
                .sock()
                .set_reuse_address(reuse)
                .map_err(|e| io_error(&e))
        })
    }

    async fn reuseaddr(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Result<bool, ErrorCode>> {
        self.with(&self_, |s| {
            s.shared
                .conn
                .sock()
                .reuse_address()
                .map_err(|e| io_error(&e))
        })
    }

    async fn subscribe_readable(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        let signal: Arc<dyn ReadySignal> = match self.socket(&self_)? {
            Ok(s) => Arc::clone(&s.shared) as Arc<dyn ReadySignal>,
            Err(_) => Arc::new(crate::host::pipe::Readable(Self::dead_pipe())),
        };
        signal_pollable(self.core.table, signal)
    }

    async fn read_stream(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Resource<InputStream>> {
        let pipe = match self.view_slot(&self_, false).await? {
            Ok((shared, view)) => {
                let pipe = Pipe::new(super::listen::STREAM_BUFFER_BYTES);
                tokio::spawn(pump_in(
                    shared,
                    Arc::clone(&pipe),
                    self.core.limits.shared.cancel.clone(),
                    view,
                ));
                pipe
            }
            Err(why) => Self::failed_pipe(why),
        };
        crate::host::streams::new_input(self.core.table, pipe)
    }

    async fn write_stream(
        &mut self,
        self_: Resource<TcpStream>,
    ) -> wasmtime::Result<Resource<OutputStream>> {
        let pipe = match self.view_slot(&self_, true).await? {
            Ok((shared, view)) => {
                let pipe = Pipe::new(super::listen::STREAM_BUFFER_BYTES);
                tokio::spawn(pump_out(
                    shared,
                    Arc::clone(&pipe),
                    self.core.limits.shared.cancel.clone(),
                    view,
                ));
                pipe
            }
            Err(_) => {
                let pipe = Pipe::new(1);
                pipe.close_reader();
                pipe
            }
        };
        crate::host::streams::new_output(self.core.table, pipe)
    }

    async fn drop(&mut self, rep: Resource<TcpStream>) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<SocketEntry>::new_own(rep.rep()))?;
        Ok(())
    }
}
