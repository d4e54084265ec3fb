//! The outbound HTTP engine behind `astrid:http`: every hop (the first request and each
//! redirect) is checked against the capsule's `net` grant, its name resolved once by the
//! host and every answer passed through the airlock, and the connection made only to those
//! checked addresses (never by name), so nothing can re-resolve between check and connect.
//! TLS is rustls with the bundled Mozilla roots; the server name is the URL's host.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use capsule_security::{Airlock, AirlockError, CapsulePolicy, Decision, Resolver};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
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
fn host_of(url: &Url) -> String {
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
        if let Decision::Denied(reason) = self.policy.may_http(&host) {
            return Err(refused(HttpError::Denied(reason)));
        }
        let port = url.port_or_known_default().unwrap_or(80);
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

/// Connects to the first of `addrs` that answers, speaking TLS for `https`.
async fn connect(url: &Url, addrs: &[SocketAddr]) -> Result<Box<dyn Io>, HttpError> {
    let mut last = HttpError::Connect("no address to connect to".into());
    let mut tcp = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = HttpError::Connect(e.kind().to_string()),
            Err(_) => last = HttpError::Timeout,
        }
    }
    let Some(tcp) = tcp else { return Err(last) };
    let _ = tcp.set_nodelay(true);
    if url.scheme() != "https" {
        return Ok(Box::new(tcp));
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
    Ok(Box::new(tls))
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Sends `req` through `gate`, following up to `max_redirects` redirects (each re-checked),
/// and answers the final response with its body still to be read. `on_refused` is told about
/// every refused hop (for the audit log).
pub(crate) async fn send(
    gate: &Gate,
    mut req: Outgoing,
    max_redirects: u32,
    on_refused: &(dyn Fn(&Refused, &HttpError) + Sync),
) -> Result<Response<Incoming>, HttpError> {
    let mut redirects = 0;
    loop {
        let addrs = match gate.admit(&req.url, redirects > 0).await {
            Ok(a) => a,
            Err((e, refused)) => {
                on_refused(&refused, &e);
                return Err(e);
            }
        };
        let response = exchange(&req, &addrs).await?;
        let status = response.status();
        if !is_redirect(status) {
            return Ok(response);
        }
        let Some(location) = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(response);
        };
        if redirects >= max_redirects {
            return Err(HttpError::Protocol(format!(
                "more than {max_redirects} redirects"
            )));
        }
        drop(response);
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

/// One request and its response head over a fresh connection to `addrs`.
async fn exchange(req: &Outgoing, addrs: &[SocketAddr]) -> Result<Response<Incoming>, HttpError> {
    let io = connect(&req.url, addrs).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Connect(e.to_string()))?;
    // The connection lives as long as its response body is being read.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let target = &req.url[url::Position::BeforePath..url::Position::AfterQuery];
    let authority = &req.url[url::Position::BeforeHost..url::Position::AfterPort];
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(if target.is_empty() { "/" } else { target })
        .header(http::header::HOST, authority);
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(req.body.clone().unwrap_or_default()))
        .map_err(|_| HttpError::Invalid("the request could not be formed".into()))?;
    sender.send_request(request).await.map_err(|e| {
        if e.is_parse() || e.is_parse_status() {
            HttpError::Protocol("the server's response is not valid HTTP/1.1".into())
        } else {
            HttpError::Connect(e.to_string())
        }
    })
}

/// Reads a whole body, refusing it once it grows beyond `limit` bytes.
pub(crate) async fn read_body(body: &mut Incoming, limit: u64) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::Connect(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(HttpError::TooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}
