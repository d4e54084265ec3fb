//! The outbound HTTP engine behind `astrid:http`: every hop (the first request and each
//! redirect) is checked against the capsule's `net` grant, its name resolved once by the
//! host and every answer passed through the airlock, and the connection made only to those
//! checked addresses (never by name), so nothing can re-resolve between check and connect.
//! TLS is rustls with the bundled Mozilla roots; the server name is the URL's host.
//! Idle keep-alive connections are pooled per (principal, scheme, host, port, checked
//! address): a request reuses one only after its own hop passed the grant and the airlock and
//! only if the address it resolved to is among the checked ones, and never for another
//! principal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use capsule_security::{Airlock, AirlockError, CapsulePolicy, Decision, PrincipalId, Resolver};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use url::Url;

use super::HttpError;

/// Most redirects one request follows; the next one is `protocol` ("too many redirects").
pub const MAX_REDIRECTS: u32 = 5;
/// How long connecting to one checked address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest URL a request may name, in bytes.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// Most request headers.
pub const MAX_REQUEST_HEADERS: usize = 128;

/// Idle connections kept per pool key.
pub(crate) const MAX_IDLE_PER_KEY: usize = 4;
/// Idle connections kept per capsule in all.
pub(crate) const MAX_IDLE: usize = 64;

/// The error a request body stream may end with.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// Every request body: a whole buffer, or bytes a guest streams.
pub(crate) type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A request body of `bytes` (empty when none).
pub(crate) fn full_body(bytes: Option<Bytes>) -> Body {
    Full::new(bytes.unwrap_or_default())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Headers the host sets itself: the guest may not, so a request cannot name another
/// virtual host than its (granted) URL or smuggle a second message.
const HOST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// Where outbound requests may go: the capsule's grant, the host's airlock and resolver.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    pub(crate) policy: Arc<CapsulePolicy>,
    pub(crate) airlock: Airlock,
    pub(crate) resolver: Arc<dyn Resolver>,
}

/// A refused hop, for the audit record.
#[derive(Debug)]
pub(crate) struct Refused {
    /// The host the hop named.
    pub(crate) host: String,
    /// Whether it was a redirect (not the URL the capsule gave).
    pub(crate) redirect: bool,
}

/// A request as the guest described it, validated.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Option<Bytes>,
}

impl Outgoing {
    /// Validates a guest request: an absolute `http`/`https` URL with a host and no
    /// credentials, a method token and well-formed headers the host does not own.
    pub(crate) fn parse(
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Self, HttpError> {
        if url.len() > MAX_URL_BYTES {
            return Err(HttpError::Invalid(format!(
                "the URL is longer than {MAX_URL_BYTES} bytes"
            )));
        }
        let url = check_url(url)?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| HttpError::Invalid("the method is not an HTTP token".into()))?;
        if headers.len() > MAX_REQUEST_HEADERS {
            return Err(HttpError::Invalid(format!(
                "more than {MAX_REQUEST_HEADERS} headers"
            )));
        }
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| HttpError::Invalid("a header name is malformed".into()))?;
                if HOST_HEADERS.contains(&name.as_str()) {
                    return Err(HttpError::Invalid(format!(
                        "the `{}` header is set by the host",
                        name.as_str()
                    )));
                }
                let value = HeaderValue::from_str(v)
                    .map_err(|_| HttpError::Invalid("a header value is malformed".into()))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            method,
            url,
            headers,
            body: body.map(Bytes::from),
        })
    }
}

fn check_url(text: &str) -> Result<Url, HttpError> {
    let url = Url::parse(text).map_err(|e| HttpError::Invalid(format!("bad URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HttpError::Invalid(format!(
            "scheme `{}` is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(HttpError::Invalid("the URL has no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(HttpError::Invalid(
            "credentials in the URL are not accepted".into(),
        ));
    }
    Ok(url)
}

/// The URL's host as grants and the resolver see it (IPv6 without brackets).
pub(crate) fn host_of(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        None => String::new(),
    }
}

impl Gate {
    /// Checks one hop and answers the addresses it may connect to.
    async fn admit(
        &self,
        url: &Url,
        redirect: bool,
    ) -> Result<Vec<SocketAddr>, (HttpError, Refused)> {
        let host = host_of(url);
        let refused = |e: HttpError| {
            (
                e,
                Refused {
                    host: host.clone(),
                    redirect,
                },
            )
        };
        let port = url.port_or_known_default().unwrap_or(80);
        if let Decision::Denied(reason) = self.policy.may_http_url(url.scheme(), &host, port) {
            return Err(refused(HttpError::Denied(reason)));
        }
        let (airlock, resolver, name) = (
            self.airlock.clone(),
            Arc::clone(&self.resolver),
            host.clone(),
        );
        // The system resolver blocks; the airlock's answer is the only list connected to.
        let answer = tokio::task::spawn_blocking(move || airlock.admit(&name, port, &*resolver))
            .await
            .map_err(|_| refused(HttpError::Unknown("name lookup stopped".into())))?;
        answer.map_err(|e| {
            refused(match e {
                AirlockError::Resolve(e) => HttpError::Dns(e.to_string()),
                AirlockError::Refused { refusal, .. } => HttpError::Airlock(refusal.to_string()),
            })
        })
    }
}

/// Any connection the engine speaks HTTP over.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The TLS client configuration: ring, the safe protocol versions, the bundled roots. Built
/// once; if it cannot be, every `https` request fails with `tls-error`.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, HttpError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(HttpError::Tls)
}

/// Connects to the first of `addrs` that answers, speaking TLS for `https`; answers the
/// connection and the address it reached.
async fn connect(
    url: &Url,
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<(Box<dyn Io>, SocketAddr), HttpError> {
    let mut last = HttpError::Connect("no address to connect to".into());
    let mut tcp = None;
    for addr in addrs {
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some((s, *addr));
                break;
            }
            Ok(Err(e)) => last = HttpError::Connect(e.kind().to_string()),
            Err(_) => last = HttpError::Timeout,
        }
    }
    let Some((tcp, addr)) = tcp else {
        return Err(last);
    };
    let _ = tcp.set_nodelay(true);
    if url.scheme() != "https" {
        return Ok((Box::new(tcp), addr));
    }
    let name = match url.host() {
        Some(url::Host::Domain(d)) => rustls::pki_types::ServerName::try_from(d.to_string())
            .map_err(|_| HttpError::Invalid("the host is not a valid TLS name".into()))?,
        Some(url::Host::Ipv4(a)) => {
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(a).into())
        }
        Some(url::Host::Ipv6(a)) => {
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V6(a).into())
        }
        None => return Err(HttpError::Invalid("the URL has no host".into())),
    };
    let tls = tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    Ok((Box::new(tls), addr))
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// What a request does about redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RedirectPolicy {
    /// Follow them (each hop re-checked), up to the limit.
    Follow,
    /// A redirect is `redirect-blocked`.
    Error,
    /// A redirect is returned as the response.
    Manual,
}

/// How one request treats redirects, schemes and time.
#[derive(Clone, Debug)]
pub(crate) struct Hops {
    /// The redirect policy.
    pub(crate) redirect: RedirectPolicy,
    /// Most redirects followed; the next is `too-many-redirects`.
    pub(crate) max_redirects: u32,
    /// Whether every hop must be `https`.
    pub(crate) https_only: bool,
    /// How long connecting to one address may take.
    pub(crate) connect: Duration,
    /// How long the response head may take once the request is sent.
    pub(crate) first_byte: Option<Duration>,
}

impl Default for Hops {
    fn default() -> Self {
        Self {
            redirect: RedirectPolicy::Follow,
            max_redirects: MAX_REDIRECTS,
            https_only: false,
            connect: CONNECT_TIMEOUT,
            first_byte: None,
        }
    }
}

/// Who a pooled connection belongs to and where it goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    principal: PrincipalId,
    scheme: String,
    host: String,
    port: u16,
    addr: SocketAddr,
}

/// A connection lent to one request, to be handed back when its body has been read.
#[derive(Debug)]
pub(crate) struct Checkout {
    key: PoolKey,
    sender: SendRequest<Body>,
}

/// Idle keep-alive connections of one capsule (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<SendRequest<Body>>>>,
}

impl Pool {
    fn key(principal: &PrincipalId, url: &Url, addr: SocketAddr) -> PoolKey {
        PoolKey {
            principal: principal.clone(),
            scheme: url.scheme().to_string(),
            host: host_of(url),
            port: url.port_or_known_default().unwrap_or(80),
            addr,
        }
    }

    /// An idle connection of `principal` to `url` at one of the checked `addrs`.
    fn take(
        &self,
        principal: &PrincipalId,
        url: &Url,
        addrs: &[SocketAddr],
    ) -> Option<(PoolKey, SendRequest<Body>)> {
        let mut idle = self.idle.lock();
        for addr in addrs {
            let key = Self::key(principal, url, *addr);
            if let Some(list) = idle.get_mut(&key) {
                while let Some(sender) = list.pop() {
                    if !sender.is_closed() {
                        return Some((key, sender));
                    }
                }
                idle.remove(&key);
            }
        }
        None
    }

    /// Hands a connection back after its response body ended.
    pub(crate) fn put(&self, checkout: Checkout) {
        if checkout.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let total: usize = idle.values().map(Vec::len).sum();
        if total >= MAX_IDLE {
            idle.retain(|_, list| {
                list.retain(|s| !s.is_closed());
                !list.is_empty()
            });
            if idle.values().map(Vec::len).sum::<usize>() >= MAX_IDLE {
                return;
            }
        }
        let list = idle.entry(checkout.key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(checkout.sender);
        }
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        self.idle.lock().clear();
    }
}

/// The final response of a request and how it got there.
#[derive(Debug)]
pub(crate) struct Sent {
    /// The response, its body still to be read.
    pub(crate) response: Response<Incoming>,
    /// The URL that answered.
    pub(crate) final_url: Url,
    /// Redirects followed.
    pub(crate) redirects: u32,
    /// The connection, to hand back to the pool once the body has been read.
    pub(crate) conn: Option<Checkout>,
}

/// Sends `req` through `gate` on behalf of `principal` (reusing its idle connections in
/// `pool`), following redirects as `hops` says (each re-checked), and answers the final
/// response with its body still to be read. `upload`, when given, is the body instead of
/// `req.body`; it cannot be replayed, so a redirect is then returned as the response (or
/// refused under `RedirectPolicy::Error`). `on_refused` is told about every refused hop.
pub(crate) async fn send(
    gate: &Gate,
    pool: &Pool,
    principal: &PrincipalId,
    mut req: Outgoing,
    hops: &Hops,
    mut upload: Option<Body>,
    on_refused: &(dyn Fn(&Refused, &HttpError) + Sync),
) -> Result<Sent, HttpError> {
    let mut redirects = 0;
    let streamed = upload.is_some();
    loop {
        if hops.https_only && req.url.scheme() != "https" {
            let e = HttpError::SchemeDenied;
            on_refused(
                &Refused {
                    host: host_of(&req.url),
                    redirect: redirects > 0,
                },
                &e,
            );
            return Err(e);
        }
        let addrs = match gate.admit(&req.url, redirects > 0).await {
            Ok(a) => a,
            Err((e, refused)) => {
                on_refused(&refused, &e);
                return Err(e);
            }
        };
        let (response, checkout) =
            exchange(pool, principal, &req, &addrs, hops, upload.take()).await?;
        let status = response.status();
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (true, Some(location)) = (is_redirect(status), location) else {
            return Ok(Sent {
                response,
                final_url: req.url,
                redirects,
                conn: Some(checkout),
            });
        };
        match hops.redirect {
            RedirectPolicy::Error => return Err(HttpError::RedirectBlocked),
            RedirectPolicy::Manual => {
                return Ok(Sent {
                    response,
                    final_url: req.url,
                    redirects,
                    conn: Some(checkout),
                });
            }
            RedirectPolicy::Follow if streamed => {
                return Ok(Sent {
                    response,
                    final_url: req.url,
                    redirects,
                    conn: Some(checkout),
                });
            }
            RedirectPolicy::Follow => {}
        }
        if redirects >= hops.max_redirects {
            return Err(HttpError::TooManyRedirects(hops.max_redirects));
        }
        // The redirect's body is not read: its connection is not reused.
        drop(response);
        drop(checkout);
        redirects += 1;
        let next = req
            .url
            .join(&location)
            .map_err(|_| HttpError::Protocol("a redirect's location is not a URL".into()))
            .and_then(|u| {
                check_url(u.as_str()).map_err(|_| {
                    HttpError::Protocol("a redirect leads to a URL that is not http(s)".into())
                })
            })?;
        // 303, and 301/302 after anything but GET/HEAD, turn into a GET without a body (what
        // browsers do); 307/308 repeat the request as it was.
        let as_get = status == StatusCode::SEE_OTHER
            || (matches!(status.as_u16(), 301 | 302)
                && req.method != Method::GET
                && req.method != Method::HEAD);
        if as_get {
            req.method = Method::GET;
            req.body = None;
        }
        // Credentials meant for one origin never follow a redirect to another.
        if next.origin() != req.url.origin() {
            req.headers.retain(|(name, _)| {
                !matches!(
                    name.as_str(),
                    "authorization" | "cookie" | "proxy-authorization"
                )
            });
        }
        req.url = next;
    }
}

fn request_of(req: &Outgoing, body: Body) -> Result<Request<Body>, HttpError> {
    let target = &req.url[url::Position::BeforePath..url::Position::AfterQuery];
    let authority = &req.url[url::Position::BeforeHost..url::Position::AfterPort];
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(if target.is_empty() { "/" } else { target })
        .header(http::header::HOST, authority);
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(body)
        .map_err(|_| HttpError::Invalid("the request could not be formed".into()))
}

fn send_error(e: &hyper::Error) -> HttpError {
    if e.is_parse() || e.is_parse_status() {
        HttpError::Protocol("the server's response is not valid HTTP/1.1".into())
    } else {
        HttpError::Connect(e.to_string())
    }
}

/// Waits for a response head, bounded by the first-byte limit.
async fn head(
    sender: &mut SendRequest<Body>,
    request: Request<Body>,
    first_byte: Option<Duration>,
) -> Result<Result<Response<Incoming>, hyper::Error>, HttpError> {
    match first_byte {
        Some(limit) => tokio::time::timeout(limit, sender.send_request(request))
            .await
            .map_err(|_| HttpError::Timeout),
        None => Ok(sender.send_request(request).await),
    }
}

/// One request and its response head, over an idle pooled connection to one of `addrs` when
/// there is one, else over a fresh connection.
async fn exchange(
    pool: &Pool,
    principal: &PrincipalId,
    req: &Outgoing,
    addrs: &[SocketAddr],
    hops: &Hops,
    upload: Option<Body>,
) -> Result<(Response<Incoming>, Checkout), HttpError> {
    let replayable = upload.is_none();
    let mut upload = upload;
    if replayable {
        while let Some((key, mut sender)) = pool.take(principal, &req.url, addrs) {
            if sender.ready().await.is_err() {
                continue;
            }
            let request = request_of(req, full_body(req.body.clone()))?;
            match head(&mut sender, request, hops.first_byte).await? {
                Ok(response) => return Ok((response, Checkout { key, sender })),
                // The server closed the idle connection as the request went out: try the
                // next one, or a fresh connection.
                Err(e) if e.is_canceled() || e.is_incomplete_message() || e.is_closed() => {}
                Err(e) => return Err(send_error(&e)),
            }
        }
    }
    let (io, addr) = connect(&req.url, addrs, hops.connect).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Connect(e.to_string()))?;
    // The connection lives while its sender is pooled or a response body is being read.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = upload.take().unwrap_or_else(|| full_body(req.body.clone()));
    let request = request_of(req, body)?;
    let response = head(&mut sender, request, hops.first_byte)
        .await?
        .map_err(|e| send_error(&e))?;
    Ok((
        response,
        Checkout {
            key: Pool::key(principal, &req.url, addr),
            sender,
        },
    ))
}

/// The next frame of `body`, waiting at most `between` for it.
pub(crate) async fn next_frame(
    body: &mut Incoming,
    between: Option<Duration>,
) -> Result<Option<hyper::body::Frame<Bytes>>, HttpError> {
    let frame = match between {
        Some(limit) => tokio::time::timeout(limit, body.frame())
            .await
            .map_err(|_| HttpError::Timeout)?,
        None => body.frame().await,
    };
    frame
        .transpose()
        .map_err(|e| HttpError::Connect(e.to_string()))
}

/// Reads a whole body, refusing it once it grows beyond `limit` bytes or when a frame takes
/// longer than `between` to arrive.
pub(crate) async fn read_body(
    body: &mut Incoming,
    limit: u64,
    between: Option<Duration>,
) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    while let Some(frame) = next_frame(body, between).await? {
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(HttpError::TooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}
