//! `astrid:net/host@1.0.0`: sockets for capsules. A TCP connection goes only to an endpoint
//! granted by `net_connect`, its name resolved once by the host and every answer passed
//! through the airlock (IPv4-mapped and other embedded forms included), and is made only to
//! those checked addresses. Listeners are local only: TCP binds need a `net_bind` grant and a
//! loopback address (`127.0.0.0/8`, `::1`, `localhost`), never a wildcard or a public one;
//! the one Unix listener of a capsule (`net_bind = ["unix:"]`) lives in a host-owned directory
//! of the capsule (`<state>/run/<capsule>/net.sock`), which no guest can name or reach through
//! its files. UDP is not served (`udp-bind` is `capability-denied`).
//!
//! Every socket and listener belongs to the principal in scope when it was made: it counts
//! against that principal's `max_sockets` / `max_listeners` (beyond them: `quota`), and any
//! other principal using its handle gets `invalid-handle`. Unloading the capsule shuts every
//! socket down at once (the peer sees end of stream) and removes the Unix socket. `NetError`
//! maps to the WIT code by one exhaustive match; refusals (a `quota`, a refused or failed
//! `lookup-host` included) are audited on `capsule::audit::net`.

mod listen;
mod socket;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use capsule_security::{AirlockError, CapsulePolicy, Decision, PrincipalId, StaticResolver};
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::net::host::{
    ErrorCode, Host, HostUdpSocket, TcpListener, TcpStream, UdpDatagram, UdpSocket, UnixListener,
};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Resource;

use crate::error::LoadError;
use crate::host::audit::field;
use crate::host::http::NET_AUDIT_TARGET;
use crate::host::{Assembly, Capability, InstanceCx, View};

pub(crate) use socket::Conn;

/// How long connecting to one checked address may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes one `read` or `read-bytes` returns.
pub(crate) const MAX_READ_BYTES: usize = 64 * 1024;
/// Connections a listener holds accepted before the guest takes them.
pub(crate) const BACKLOG: usize = 16;
/// File name of a capsule's Unix listener in its run directory.
pub(crate) const UNIX_SOCKET_NAME: &str = "net.sock";

/// Why a network call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetError {
    /// The call would have to wait.
    #[error("would block")]
    WouldBlock,
    /// The socket is closed.
    #[error("closed")]
    Closed,
    /// Not granted, or a listener on a non-local address.
    #[error("not granted: {0}")]
    Denied(String),
    /// The airlock refused every address.
    #[error("airlock: {0}")]
    Airlock(String),
    /// The peer refused.
    #[error("connection refused")]
    Refused,
    /// The peer reset.
    #[error("connection reset")]
    Reset,
    /// A time limit expired.
    #[error("timed out")]
    Timeout,
    /// The local address is taken.
    #[error("address in use")]
    InUse,
    /// The local address cannot be used here.
    #[error("address not available: {0}")]
    NotAvailable(String),
    /// The name did not resolve.
    #[error("name lookup: {0}")]
    Unresolvable(String),
    /// The handle is not the calling principal's, or is spent.
    #[error("the handle is not a live socket of this principal")]
    InvalidHandle,
    /// A TCP option on a Unix connection.
    #[error("not a TCP connection")]
    NotTcp,
    /// A per-principal cap was reached.
    #[error("{0}")]
    Quota(&'static str),
    /// Anything else.
    #[error("{0}")]
    Unknown(String),
}

/// The WIT code a guest sees for `e`.
fn code(e: &NetError) -> ErrorCode {
    match e {
        NetError::WouldBlock => ErrorCode::WouldBlock,
        NetError::Closed => ErrorCode::Closed,
        NetError::Denied(_) => ErrorCode::CapabilityDenied,
        NetError::Airlock(_) => ErrorCode::AirlockRejected,
        NetError::Refused => ErrorCode::ConnectionRefused,
        NetError::Reset => ErrorCode::ConnectionReset,
        NetError::Timeout => ErrorCode::Timeout,
        NetError::InUse => ErrorCode::AddressInUse,
        NetError::NotAvailable(_) => ErrorCode::AddressNotAvailable,
        NetError::Unresolvable(_) => ErrorCode::NameUnresolvable,
        NetError::InvalidHandle => ErrorCode::InvalidHandle,
        NetError::NotTcp => ErrorCode::NotTcp,
        NetError::Quota(_) => ErrorCode::Quota,
        NetError::Unknown(u) => ErrorCode::Unknown(u.clone()),
    }
}

fn code_name(e: &NetError) -> &'static str {
    match e {
        NetError::Denied(_) => "capability-denied",
        NetError::Airlock(_) => "airlock-rejected",
        NetError::Unresolvable(_) => "name-unresolvable",
        NetError::Quota(_) => "quota",
        _ => "other",
    }
}

/// An I/O error as a guest sees it.
pub(crate) fn io_error(e: &std::io::Error) -> NetError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::WouldBlock => NetError::WouldBlock,
        K::ConnectionRefused => NetError::Refused,
        K::ConnectionReset | K::ConnectionAborted => NetError::Reset,
        K::BrokenPipe | K::NotConnected | K::UnexpectedEof => NetError::Closed,
        K::TimedOut => NetError::Timeout,
        K::AddrInUse => NetError::InUse,
        K::AddrNotAvailable => NetError::NotAvailable(e.kind().to_string()),
        _ => NetError::Unknown(e.kind().to_string()),
    }
}

/// The `astrid:net` capability.
pub(crate) struct NetHost;

/// Open sockets and listeners of one principal.
#[derive(Debug)]
struct Counters {
    sockets: Arc<Semaphore>,
    listeners: Arc<Semaphore>,
}

/// Capsule-wide part of `astrid:net`.
#[derive(Debug)]
pub(crate) struct NetShared {
    capsule: String,
    policy: Arc<CapsulePolicy>,
    airlock: capsule_security::Airlock,
    resolver: Arc<dyn capsule_security::Resolver>,
    /// Where the capsule's Unix listener lives.
    run_dir: PathBuf,
    counters: Mutex<HashMap<PrincipalId, Counters>>,
    /// Every connection made, to shut down on unload.
    live: Mutex<Vec<Weak<Conn>>>,
    /// Whether the Unix listener is bound (one per capsule).
    unix_bound: Arc<Mutex<bool>>,
}

impl NetShared {
    /// A slot for one more socket (or listener) of `principal`, or `quota`.
    fn slot(
        &self,
        principal: &PrincipalId,
        listener: bool,
        profile: &capsule_security::PrincipalProfile,
    ) -> Result<OwnedSemaphorePermit, NetError> {
        let mut map = self.counters.lock();
        if map.len() >= 1024 {
            map.retain(|_, c| {
                Arc::strong_count(&c.sockets) > 1 || Arc::strong_count(&c.listeners) > 1
            });
        }
        let q = &profile.quotas;
        let c = map.entry(principal.clone()).or_insert_with(|| Counters {
            sockets: Arc::new(Semaphore::new(q.max_sockets as usize)),
            listeners: Arc::new(Semaphore::new(q.max_listeners as usize)),
        });
        let (sem, what) = if listener {
            (&c.listeners, "the principal has its most listeners open")
        } else {
            (&c.sockets, "the principal has its most sockets open")
        };
        Arc::clone(sem)
            .try_acquire_owned()
            .map_err(|_| NetError::Quota(what))
    }

    /// Remembers `conn` so that unloading can shut it down.
    fn track(&self, conn: &Arc<Conn>) {
        let mut live = self.live.lock();
        if live.len() >= 256 && live.len().is_power_of_two() {
            live.retain(|w| w.strong_count() > 0);
        }
        live.push(Arc::downgrade(conn));
    }

    fn audit(&self, principal: &PrincipalId, target: &str, e: &NetError) {
        tracing::info!(
            target: NET_AUDIT_TARGET,
            capsule = %self.capsule,
            principal = principal.as_str(),
            host = &*field(target),
            code = code_name(e),
            reason = &*field(&e.to_string()),
            "socket operation refused"
        );
    }
}

/// The view `astrid:net` is implemented on.
type NetView<'a> = View<'a, Arc<NetShared>>;

runs_on_view!(NetHost);

impl Capability for NetHost {
    const INTERFACES: &'static [&'static str] = &["astrid:net/host@1.0.0"];
    type Shared = Arc<NetShared>;
    type Ctx = Arc<NetShared>;

    link_bindings!(capsule_wit::astrid::net::host);

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        // Without a `net_connect` grant nothing is ever resolved.
        let resolver: Arc<dyn capsule_security::Resolver> =
            if cx.policy.capabilities().net_connect.is_empty() {
                Arc::new(StaticResolver::new())
            } else {
                Arc::clone(&cx.services.net.resolver)
            };
        Ok(Arc::new(NetShared {
            capsule: cx.identity.name.clone(),
            policy: Arc::clone(cx.policy),
            airlock: cx.services.net.airlock.clone(),
            resolver,
            run_dir: cx.config.state_dir.join("run").join(&cx.identity.name),
            counters: Mutex::new(HashMap::new()),
            live: Mutex::new(Vec::new()),
            unix_bound: Arc::new(Mutex::new(false)),
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }

    fn unloaded(shared: &Self::Shared) {
        for conn in shared.live.lock().drain(..) {
            if let Some(conn) = conn.upgrade() {
                conn.shut_all();
            }
        }
    }
}

/// A loopback address to listen on, or why not.
fn loopback(host: &str) -> Result<IpAddr, NetError> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    let ip: IpAddr = h.parse().map_err(|_| {
        NetError::Denied(format!(
            "`{host}` is not a loopback address; listeners bind loopback only"
        ))
    })?;
    // Only the plain forms: a mapped `::ffff:127.0.0.1` is refused like any other.
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if ok {
        Ok(ip)
    } else {
        Err(NetError::Denied(format!(
            "`{host}` is not a loopback address; listeners bind loopback only"
        )))
    }
}

impl NetView<'_> {
    fn principal(&self) -> PrincipalId {
        self.core.scoped.principal().clone()
    }

    fn profile(&self) -> Result<&capsule_security::PrincipalProfile, NetError> {
        self.core
            .scoped
            .profile()
            .as_ref()
            .map(|p| &**p)
            .map_err(|_| NetError::Denied("the principal's profile is refused".into()))
    }

    /// Races `work` against the capsule's unloading (`closed`) and the call's deadline (a
    /// trap), counting the wait.
    async fn waiting<T>(
        &mut self,
        work: impl Future<Output = Result<T, NetError>>,
    ) -> wasmtime::Result<Result<T, NetError>> {
        Ok(self
            .core
            .limits
            .race(work)
            .await?
            .unwrap_or(Err(NetError::Closed)))
    }

    /// Connects to `host:port`; the outer `Err` is a trap (the call's deadline passed).
    async fn connect(
        &mut self,
        host: String,
        port: u16,
    ) -> wasmtime::Result<Result<socket::SocketEntry, NetError>> {
        let principal = self.principal();
        let shared = Arc::clone(self.ctx);
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let target = format!("{name}:{port}");
        let refuse = |e: NetError| {
            shared.audit(&principal, &target, &e);
            e
        };
        let slot = self
            .profile()
            .and_then(|p| shared.slot(&principal, false, p))
            .map_err(refuse);
        let slot = match slot {
            Ok(slot) => slot,
            Err(e) => return Ok(Err(e)),
        };
        if let Decision::Denied(reason) = shared.policy.may_connect(&name, port) {
            return Ok(Err(refuse(NetError::Denied(reason))));
        }
        let (airlock, resolver, lookup) = (
            shared.airlock.clone(),
            Arc::clone(&shared.resolver),
            name.clone(),
        );
        let admitted = self
            .waiting(async move {
                tokio::task::spawn_blocking(move || airlock.admit(&lookup, port, &*resolver))
                    .await
                    .map_err(|_| NetError::Unknown("name lookup stopped".into()))
            })
            .await?;
        let addrs: Vec<SocketAddr> = match admitted {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(e)) => {
                return Ok(Err(refuse(match e {
                    AirlockError::Resolve(e) => NetError::Unresolvable(e.to_string()),
                    AirlockError::Refused { refusal, .. } => NetError::Airlock(refusal.to_string()),
                })));
            }
            Err(e) => return Ok(Err(e)),
        };
        let stream = self
            .waiting(async {
                let mut last = NetError::Unknown("no address to connect to".into());
                for addr in &addrs {
                    match tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    {
                        Ok(Ok(s)) => return Ok(s),
                        Ok(Err(e)) => last = io_error(&e),
                        Err(_) => last = NetError::Timeout,
                    }
                }
                Err(last)
            })
            .await?;
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => return Ok(Err(e)),
        };
        let conn = Arc::new(Conn::Tcp(stream));
        shared.track(&conn);
        Ok(Ok(socket::SocketEntry::new(conn, principal, slot)))
    }

    fn bind_tcp_now(&mut self, host: &str, port: u16) -> Result<listen::ListenerEntry, NetError> {
        let principal = self.principal();
        let shared = Arc::clone(self.ctx);
        let refuse = |e: NetError| {
            shared.audit(&principal, &format!("{host}:{port}"), &e);
            e
        };
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if let Decision::Denied(reason) = shared.policy.may_bind(&name, port) {
            return Err(refuse(NetError::Denied(reason)));
        }
        let ip = loopback(host).map_err(refuse)?;
        let slot = self
            .profile()
            .and_then(|p| shared.slot(&principal, true, p))
            .map_err(refuse)?;
        let std_listener =
            std::net::TcpListener::bind(SocketAddr::new(ip, port)).map_err(|e| io_error(&e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| io_error(&e))?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|e| io_error(&e))?;
        Ok(listen::ListenerEntry::tcp(
            listener,
            principal,
            slot,
            Arc::clone(self.ctx),
            self.core.limits.shared.cancel.child_token(),
        ))
    }

    fn bind_unix_now(&mut self) -> Result<listen::ListenerEntry, NetError> {
        let principal = self.principal();
        let shared = Arc::clone(self.ctx);
        let refuse = |e: NetError| {
            shared.audit(&principal, "unix:", &e);
            e
        };
        if let Decision::Denied(reason) = shared.policy.may_bind_unix("") {
            return Err(refuse(NetError::Denied(reason)));
        }
        let slot = self
            .profile()
            .and_then(|p| shared.slot(&principal, true, p))
            .map_err(refuse)?;
        let guard =
            listen::UnixGuard::claim(&shared.unix_bound, &shared.run_dir).map_err(refuse)?;
        let listener = tokio::net::UnixListener::bind(guard.path()).map_err(|e| io_error(&e))?;
        Ok(listen::ListenerEntry::unix(
            listener,
            guard,
            principal,
            slot,
            Arc::clone(self.ctx),
            self.core.limits.shared.cancel.child_token(),
        ))
    }
}

impl Host for NetView<'_> {
    async fn bind_unix(&mut self) -> wasmtime::Result<Result<Resource<UnixListener>, ErrorCode>> {
        match self.bind_unix_now() {
            Ok(entry) => Ok(Ok(Resource::new_own(self.core.table.push(entry)?.rep()))),
            Err(e) => Ok(Err(code(&e))),
        }
    }

    async fn bind_tcp(
        &mut self,
        host: String,
        port: u16,
    ) -> wasmtime::Result<Result<Resource<TcpListener>, ErrorCode>> {
        match self.bind_tcp_now(&host, port) {
            Ok(entry) => Ok(Ok(Resource::new_own(self.core.table.push(entry)?.rep()))),
            Err(e) => Ok(Err(code(&e))),
        }
    }

    async fn connect_tcp(
        &mut self,
        host: String,
        port: u16,
    ) -> wasmtime::Result<Result<Resource<TcpStream>, ErrorCode>> {
        match self.connect(host, port).await? {
            Ok(entry) => Ok(Ok(Resource::new_own(self.core.table.push(entry)?.rep()))),
            Err(e) => {
                tracing::debug!(capsule = %self.ctx.capsule, error = %e, "net connect failed");
                Ok(Err(code(&e)))
            }
        }
    }

    async fn udp_bind(
        &mut self,
        host: String,
        port: u16,
    ) -> wasmtime::Result<Result<Resource<UdpSocket>, ErrorCode>> {
        let e = NetError::Denied("UDP is not served by this host".into());
        self.ctx
            .audit(&self.principal(), &format!("udp {host}:{port}"), &e);
        Ok(Err(code(&e)))
    }

    /// Resolves `host` through the host's resolver and answers only the addresses the
    /// airlock admits, for a host some `net_connect` grant names.
    async fn lookup_host(
        &mut self,
        host: String,
    ) -> wasmtime::Result<Result<Vec<String>, ErrorCode>> {
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let granted = self
            .ctx
            .policy
            .capabilities()
            .net_connect
            .iter()
            .filter_map(|g| capsule_security::EndpointGrant::parse(g).ok())
            .any(|g| match g {
                capsule_security::EndpointGrant::Tcp { host, .. } => host == "*" || host == name,
                capsule_security::EndpointGrant::Unix(_) => false,
            });
        if !granted {
            let e = NetError::Denied(format!("`{name}` is not in `net_connect`"));
            self.ctx.audit(&self.principal(), &name, &e);
            return Ok(Err(code(&e)));
        }
        let (airlock, resolver) = (self.ctx.airlock.clone(), Arc::clone(&self.ctx.resolver));
        let answer = self
            .waiting(async move {
                tokio::task::spawn_blocking(move || airlock.admit(&name, 0, &*resolver))
                    .await
                    .map_err(|_| NetError::Unknown("name lookup stopped".into()))
            })
            .await?;
        let e = match answer {
            Ok(Ok(addrs)) => return Ok(Ok(addrs.iter().map(|a| a.ip().to_string()).collect())),
            Ok(Err(AirlockError::Resolve(e))) => NetError::Unresolvable(e.to_string()),
            Ok(Err(AirlockError::Refused { refusal, .. })) => {
                NetError::Airlock(refusal.to_string())
            }
            Err(e) => e,
        };
        self.ctx.audit(&self.principal(), &host, &e);
        Ok(Err(code(&e)))
    }
}

/// No UDP socket can exist (`udp-bind` always fails), so every method answers
/// `invalid-handle`.
impl HostUdpSocket for NetView<'_> {
    async fn send_to(
        &mut self,
        _self_: Resource<UdpSocket>,
        _data: Vec<u8>,
        _peer_host: String,
        _peer_port: u16,
    ) -> wasmtime::Result<Result<u32, ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn recv_from(
        &mut self,
        _self_: Resource<UdpSocket>,
        _max_bytes: u32,
    ) -> wasmtime::Result<Result<Option<UdpDatagram>, ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn connect(
        &mut self,
        _self_: Resource<UdpSocket>,
        _peer_host: String,
        _peer_port: u16,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn disconnect(
        &mut self,
        _self_: Resource<UdpSocket>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn send(
        &mut self,
        _self_: Resource<UdpSocket>,
        _data: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn recv(
        &mut self,
        _self_: Resource<UdpSocket>,
        _max_bytes: u32,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn peer_addr(
        &mut self,
        _self_: Resource<UdpSocket>,
    ) -> wasmtime::Result<Result<Option<String>, ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn set_read_timeout(
        &mut self,
        _self_: Resource<UdpSocket>,
        _timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn local_addr(
        &mut self,
        _self_: Resource<UdpSocket>,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        Ok(Err(ErrorCode::InvalidHandle))
    }

    async fn subscribe_readable(
        &mut self,
        _self_: Resource<UdpSocket>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        let closed = crate::host::pipe::Pipe::new(1);
        closed.finish(crate::host::pipe::End::Done);
        crate::host::poll::signal_pollable(
            self.core.table,
            Arc::new(crate::host::pipe::Readable(closed)),
        )
    }

    async fn drop(&mut self, _rep: Resource<UdpSocket>) -> wasmtime::Result<()> {
        Ok(())
    }
}
