//! Listeners of `astrid:net`: a loopback TCP listener, or the capsule's one Unix listener.
//! A host task accepts into a bounded backlog (at most [`BACKLOG`] connections wait; the
//! kernel queues the rest) and stops when the handle is dropped or the capsule unloads; a
//! connection handed to the guest takes one of the owner's socket slots (none left: the
//! connection is closed and the call answers `quota`). The Unix socket's directory is created
//! by the host, must be a real directory (never a symlink) and its socket file is removed when
//! the listener goes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capsule_security::PrincipalId;
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::net::host::{
    ErrorCode, HostTcpListener, HostUnixListener, TcpListener, TcpStream, UnixListener,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;

use super::socket::SocketEntry;
use super::{BACKLOG, Conn, NetError, NetShared, NetView, UNIX_SOCKET_NAME, code};
use crate::host::poll::{ReadySignal, signal_pollable};

/// Bytes a socket's stream view holds in the host before its reader (or the socket) catches
/// up.
pub(crate) const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// Connections accepted and not yet taken.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    queue: Mutex<VecDeque<Conn>>,
    /// Woken when a connection arrives.
    arrived: Notify,
    /// Woken when one is taken.
    taken: Notify,
}

impl ReadySignal for Backlog {
    fn is_ready(&self) -> bool {
        !self.queue.lock().is_empty()
    }

    fn wait(self: Arc<Self>) -> BoxFuture<'static, ()> {
        async move {
            loop {
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.is_ready() {
                    return;
                }
                arrived.await;
            }
        }
        .boxed()
    }
}

/// The claim on a capsule's Unix socket path; dropping it removes the socket file.
#[derive(Debug)]
pub(crate) struct UnixGuard {
    bound: Arc<Mutex<bool>>,
    path: PathBuf,
}

impl UnixGuard {
    /// Claims the capsule's socket path in `dir`: `address-in-use` while another listener of
    /// the capsule holds it. The directory is created owner-only and must not be a symlink;
    /// a stale socket left by an earlier run is removed, anything else there is refused.
    pub(crate) fn claim(bound: &Arc<Mutex<bool>>, dir: &Path) -> Result<Self, NetError> {
        let mut held = bound.lock();
        if *held {
            return Err(NetError::InUse);
        }
        let unavailable = |what: String| NetError::NotAvailable(what);
        std::fs::create_dir_all(dir).map_err(|e| unavailable(e.kind().to_string()))?;
        let meta = std::fs::symlink_metadata(dir).map_err(|e| unavailable(e.kind().to_string()))?;
        if !meta.file_type().is_dir() {
            return Err(unavailable(
                "the socket directory is not a directory".into(),
            ));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| unavailable(e.kind().to_string()))?;
        }
        let path = dir.join(UNIX_SOCKET_NAME);
        // `sun_path` holds 108 bytes with its NUL.
        if path.as_os_str().len() > 107 {
            return Err(unavailable(format!(
                "the socket path `{}` is longer than a Unix socket address allows",
                path.display()
            )));
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt;
                if !m.file_type().is_socket() {
                    return Err(unavailable(
                        "something other than a socket is at the socket path".into(),
                    ));
                }
                std::fs::remove_file(&path).map_err(|e| unavailable(e.kind().to_string()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unavailable(e.kind().to_string())),
        }
        *held = true;
        Ok(Self {
            bound: Arc::clone(bound),
            path,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        *self.bound.lock() = false;
    }
}

/// What a listener accepts from.
enum Source {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Source {
    async fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Self::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Self::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        }
    }
}

/// Accepts into `backlog` until `stop`; the listening socket closes when this returns.
async fn accept_loop(source: Source, backlog: Arc<Backlog>, stop: CancellationToken) {
    let work = async {
        loop {
            loop {
                let taken = backlog.taken.notified();
                tokio::pin!(taken);
                taken.as_mut().enable();
                if backlog.queue.lock().len() < BACKLOG {
                    break;
                }
                taken.await;
            }
            match source.accept().await {
                Ok(conn) => {
                    backlog.queue.lock().push_back(conn);
                    backlog.arrived.notify_waiters();
                }
                // A failed accept (the peer left, or no descriptors for now) is retried after
                // a pause instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::select! {
        biased;
        () = stop.cancelled() => {}
        () = work => {}
    }
    for conn in backlog.queue.lock().drain(..) {
        conn.shut_all();
    }
}

/// A listener in the resource table.
pub(crate) struct ListenerEntry {
    backlog: Arc<Backlog>,
    local: Option<String>,
    owner: PrincipalId,
    shared: Arc<NetShared>,
    stop: CancellationToken,
    _guard: Option<UnixGuard>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for ListenerEntry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ListenerEntry {
    fn start(
        source: Source,
        local: Option<String>,
        guard: Option<UnixGuard>,
        owner: PrincipalId,
        slot: OwnedSemaphorePermit,
        shared: Arc<NetShared>,
        stop: CancellationToken,
    ) -> Self {
        let backlog = Arc::new(Backlog::default());
        tokio::spawn(accept_loop(source, Arc::clone(&backlog), stop.clone()));
        Self {
            backlog,
            local,
            owner,
            shared,
            stop,
            _guard: guard,
            _slot: slot,
        }
    }

    pub(crate) fn tcp(
        l: tokio::net::TcpListener,
        owner: PrincipalId,
        slot: OwnedSemaphorePermit,
        shared: Arc<NetShared>,
        stop: CancellationToken,
    ) -> Self {
        let local = l.local_addr().ok().map(|a| a.to_string());
        Self::start(Source::Tcp(l), local, None, owner, slot, shared, stop)
    }

    pub(crate) fn unix(
        l: tokio::net::UnixListener,
        guard: UnixGuard,
        owner: PrincipalId,
        slot: OwnedSemaphorePermit,
        shared: Arc<NetShared>,
        stop: CancellationToken,
    ) -> Self {
        Self::start(
            Source::Unix(l),
            None,
            Some(guard),
            owner,
            slot,
            shared,
            stop,
        )
    }
}

impl NetView<'_> {
    fn listener(&mut self, rep: u32) -> wasmtime::Result<Result<&mut ListenerEntry, NetError>> {
        let principal = self.core.scoped.principal().clone();
        let entry = self
            .core
            .table
            .get_mut(&Resource::<ListenerEntry>::new_borrow(rep))?;
        Ok(if entry.owner == principal {
            Ok(entry)
        } else {
            Err(NetError::InvalidHandle)
        })
    }

    /// Takes the next accepted connection, waiting at most `wait` (`None`: the call
    /// deadline); `Ok(None)` when none arrived in time.
    async fn take(
        &mut self,
        rep: u32,
        wait: Option<Duration>,
    ) -> wasmtime::Result<Result<Option<Resource<TcpStream>>, ErrorCode>> {
        let (backlog, owner, shared) = match self.listener(rep)? {
            Ok(l) => (
                Arc::clone(&l.backlog),
                l.owner.clone(),
                Arc::clone(&l.shared),
            ),
            Err(e) => return Ok(Err(code(&e))),
        };
        let most = self
            .core
            .scoped
            .profile()
            .as_ref()
            .map_or(Duration::from_secs(30), |p| {
                Duration::from_secs(p.quotas.max_timeout_secs)
            });
        let limit = wait.map_or(most, |w| w.min(most));
        let got = self
            .waiting(async {
                let arrived = tokio::time::timeout(limit, Arc::clone(&backlog).wait()).await;
                Ok(arrived.ok().and_then(|()| backlog.queue.lock().pop_front()))
            })
            .await?;
        let conn = match got {
            Ok(Some(conn)) => conn,
            Ok(None) if wait.is_some() => return Ok(Ok(None)),
            Ok(None) => return Ok(Err(ErrorCode::Timeout)),
            Err(e) => return Ok(Err(code(&e))),
        };
        backlog.taken.notify_waiters();
        let slot = match self.profile().and_then(|p| shared.slot(&owner, false, p)) {
            Ok(slot) => slot,
            Err(e) => {
                conn.shut_all();
                shared.audit(&owner, "accept", &e);
                return Ok(Err(code(&e)));
            }
        };
        let conn = Arc::new(conn);
        shared.track(&conn);
        let entry = SocketEntry::new(conn, owner, slot);
        Ok(Ok(Some(Resource::new_own(
            self.core.table.push(entry)?.rep(),
        ))))
    }

    fn readiness(&mut self, rep: u32) -> wasmtime::Result<Resource<Pollable>> {
        let signal: Arc<dyn ReadySignal> = match self.listener(rep)? {
            Ok(l) => Arc::clone(&l.backlog) as Arc<dyn ReadySignal>,
            Err(_) => Arc::new(Backlog::default()),
        };
        signal_pollable(self.core.table, signal)
    }

    fn drop_listener(&mut self, rep: u32) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<ListenerEntry>::new_own(rep))?;
        Ok(())
    }
}

fn accepted(
    r: wasmtime::Result<Result<Option<Resource<TcpStream>>, ErrorCode>>,
) -> wasmtime::Result<Result<Resource<TcpStream>, ErrorCode>> {
    Ok(r?.and_then(|s| s.ok_or(ErrorCode::Timeout)))
}

impl HostTcpListener for NetView<'_> {
    async fn accept(
        &mut self,
        self_: Resource<TcpListener>,
    ) -> wasmtime::Result<Result<Resource<TcpStream>, ErrorCode>> {
        accepted(self.take(self_.rep(), None).await)
    }

    async fn poll_accept(
        &mut self,
        self_: Resource<TcpListener>,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<Option<Resource<TcpStream>>, ErrorCode>> {
        self.take(self_.rep(), Some(Duration::from_millis(timeout_ms)))
            .await
    }

    async fn local_addr(
        &mut self,
        self_: Resource<TcpListener>,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        Ok(match self.listener(self_.rep())? {
            Ok(l) => l
                .local
                .clone()
                .ok_or_else(|| code(&NetError::Unknown("no local address".into()))),
            Err(e) => Err(code(&e)),
        })
    }

    async fn subscribe_readiness(
        &mut self,
        self_: Resource<TcpListener>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        self.readiness(self_.rep())
    }

    async fn drop(&mut self, rep: Resource<TcpListener>) -> wasmtime::Result<()> {
        self.drop_listener(rep.rep())
    }
}

impl HostUnixListener for NetView<'_> {
    async fn accept(
        &mut self,
        self_: Resource<UnixListener>,
    ) -> wasmtime::Result<Result<Resource<TcpStream>, ErrorCode>> {
        accepted(self.take(self_.rep(), None).await)
    }

    async fn poll_accept(
        &mut self,
        self_: Resource<UnixListener>,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<Option<Resource<TcpStream>>, ErrorCode>> {
        self.take(self_.rep(), Some(Duration::from_millis(timeout_ms)))
            .await
    }

    async fn subscribe_readiness(
        &mut self,
        self_: Resource<UnixListener>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        self.readiness(self_.rep())
    }

    async fn drop(&mut self, rep: Resource<UnixListener>) -> wasmtime::Result<()> {
        self.drop_listener(rep.rep())
    }
}
