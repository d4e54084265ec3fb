//! `astrid:http/host@1.0.0` and `@1.1.0`: outbound HTTP(S) for capsules granted `net` hosts.
//! One engine serves both; `v1_0` and `v1_1` only translate their WIT types and error codes
//! (1.1 adds request options, response metadata, trailers and streamed uploads). Every hop
//! (the request and each redirect, at most `MAX_REDIRECTS`) is checked against the grant and
//! the host's airlock, connected only to the addresses the airlock checked, and a refusal is
//! audited on `capsule::audit::net` with the host and the reason. Per (capsule, principal in
//! scope), at most the profile's `max_http_streams` requests are in flight or streams not
//! yet closed or dropped (more is `quota`, audited too), a response body is bounded by `max_http_response_bytes` (beyond it:
//! `body-too-large`) and a request by `max_timeout_secs`. Streams are read through a bounded
//! pipe; unloading the capsule stops every transfer at once. `HttpError` maps to the WIT
//! code by one exhaustive match.

#[macro_use]
mod shared;
pub(crate) mod client;
mod integrity;
mod upload;
mod v1_0;
mod v1_1;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use capsule_security::{PrincipalId, StaticResolver, SystemResolver};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;

use crate::error::LoadError;
use crate::host::audit::field;
use crate::host::pipe::{End, Pipe, Read};
use crate::host::{Assembly, Capability, InstanceCx, View};

use client::{Gate, Hops, Outgoing, Pool, RedirectPolicy, Refused};
use integrity::integrity_ok;

/// Tracing target of refused outbound requests.
pub const NET_AUDIT_TARGET: &str = "capsule::audit::net";
/// Bytes a streamed response may hold in the host before its reader catches up.
pub const STREAM_BUFFER_BYTES: usize = 256 * 1024;
/// Most bytes one `read-chunk` returns.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The capsule's grant does not cover the host.
    #[error("not granted: {0}")]
    Denied(String),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The name could not be resolved.
    #[error("name lookup: {0}")]
    Dns(String),
    /// The airlock refused the address.
    #[error("airlock: {0}")]
    Airlock(String),
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A time limit expired.
    #[error("timed out")]
    Timeout,
    /// Connecting failed or the connection broke.
    #[error("connection: {0}")]
    Connect(String),
    /// The response body grew beyond the limit.
    #[error("the response body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The stream was closed.
    #[error("the stream is closed")]
    Closed,
    /// The principal has its most requests in flight.
    #[error("too many requests in flight")]
    Quota,
    /// The server broke HTTP.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A redirect arrived and the request's policy refuses them.
    #[error("the response is a redirect and redirects are refused")]
    RedirectBlocked,
    /// More redirects than the limit.
    #[error("more than {0} redirects")]
    TooManyRedirects(u32),
    /// A hop is not `https` and the request demands it.
    #[error("a hop is not https and the request is https-only")]
    SchemeDenied,
    /// The body does not match the request's integrity metadata.
    #[error("the body does not match its integrity metadata")]
    IntegrityMismatch,
    /// Anything else.
    #[error("{0}")]
    Unknown(String),
}

fn code_name(e: &HttpError) -> &'static str {
    match e {
        HttpError::Denied(_) => "capability-denied",
        HttpError::Airlock(_) => "airlock-rejected",
        HttpError::Dns(_) => "dns-error",
        HttpError::SchemeDenied => "scheme-denied",
        HttpError::Quota => "quota",
        _ => "other",
    }
}

/// What every capsule's outbound connections share: the operator's airlock (from the host
/// policy) and the resolver names go through.
#[derive(Debug)]
pub(crate) struct NetServices {
    pub(crate) airlock: capsule_security::Airlock,
    pub(crate) resolver: Arc<dyn capsule_security::Resolver>,
}

impl NetServices {
    /// The airlock of `policy` and the configured resolver (the system's by default).
    pub(crate) fn new(
        policy: &capsule_security::HostPolicy,
        config: &crate::config::RuntimeConfig,
    ) -> Self {
        Self {
            airlock: policy.airlock().clone(),
            resolver: config
                .resolver
                .clone()
                .unwrap_or_else(|| Arc::new(SystemResolver)),
        }
    }
}

/// The `astrid:http` capability.
pub(crate) struct HttpHost;

/// Capsule-wide part of `astrid:http`: where requests may go and what is in flight.
#[derive(Debug)]
pub(crate) struct HttpShared {
    gate: Gate,
    capsule: String,
    /// Requests and streams in flight, per principal (an entry is dropped when idle).
    inflight: Mutex<HashMap<PrincipalId, Arc<Semaphore>>>,
    /// Idle keep-alive connections, per principal.
    pool: Pool,
}

/// Principals whose in-flight counters are kept before idle ones are dropped.
const INFLIGHT_PRUNE_AT: usize = 1024;

impl HttpShared {
    /// A slot for one more request of `principal`, or `Quota` when it has `max` in flight.
    fn permit(&self, principal: &PrincipalId, max: u32) -> Result<OwnedSemaphorePermit, HttpError> {
        let mut map = self.inflight.lock();
        if map.len() >= INFLIGHT_PRUNE_AT {
            // Only counters nobody holds a permit of are dropped.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let sem = Arc::clone(
            map.entry(principal.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(max as usize))),
        );
        drop(map);
        sem.try_acquire_owned().map_err(|_| HttpError::Quota)
    }
}

/// The view `astrid:http` is implemented on.
type HttpView<'a> = View<'a, Arc<HttpShared>>;

runs_on_view!(HttpHost);

impl Capability for HttpHost {
    const INTERFACES: &'static [&'static str] =
        &["astrid:http/host@1.0.0", "astrid:http/host@1.1.0"];
    type Shared = Arc<HttpShared>;
    type Ctx = Arc<HttpShared>;

    fn link(
        linker: &mut wasmtime::component::Linker<crate::host::HostState>,
    ) -> wasmtime::Result<()> {
        capsule_wit::astrid::http1_0_0::host::add_to_linker::<crate::host::HostState, Self>(
            linker,
            crate::host::view::<Self>,
        )?;
        capsule_wit::astrid::http1_1_0::host::add_to_linker::<crate::host::HostState, Self>(
            linker,
            crate::host::view::<Self>,
        )
    }

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        // A capsule with no `net` grant never resolves anything: a table with no names keeps
        // even a stray lookup off the network.
        let resolver: Arc<dyn capsule_security::Resolver> =
            if cx.policy.capabilities().net.is_empty() {
                Arc::new(StaticResolver::new())
            } else {
                Arc::clone(&cx.services.net.resolver)
            };
        let airlock = cx.services.net.airlock.clone();
        Ok(Arc::new(HttpShared {
            gate: Gate {
                policy: Arc::clone(cx.policy),
                airlock,
                resolver,
            },
            capsule: cx.identity.name.clone(),
            inflight: Mutex::new(HashMap::new()),
            pool: Pool::default(),
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }

    fn unloaded(shared: &Self::Shared) {
        shared.pool.clear();
    }
}

/// A header as every version carries it.
pub(crate) type Pair = (String, String);

fn pairs(headers: &http::HeaderMap) -> Vec<Pair> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// What a request asked for beyond the request itself (1.1's `request-options`); every
/// limit is capped by the principal's profile.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    pub(crate) connect: Option<Duration>,
    pub(crate) first_byte: Option<Duration>,
    pub(crate) between_bytes: Option<Duration>,
    pub(crate) total: Option<Duration>,
    pub(crate) redirect: Option<RedirectPolicy>,
    pub(crate) max_redirects: Option<u32>,
    pub(crate) max_response_bytes: Option<u64>,
    pub(crate) https_only: bool,
    pub(crate) integrity: Option<String>,
}

impl Options {
    fn hops(&self) -> Hops {
        let mut hops = Hops::default();
        if let Some(p) = self.redirect {
            hops.redirect = p;
        }
        hops.max_redirects = self
            .max_redirects
            .map_or(client::MAX_REDIRECTS, |m| m.min(client::MAX_REDIRECTS));
        hops.https_only = self.https_only;
        hops.connect = self
            .connect
            .map_or(client::CONNECT_TIMEOUT, |c| c.min(client::CONNECT_TIMEOUT));
        hops.first_byte = self.first_byte;
        hops
    }
}

/// How a response got to the guest (1.1's `response-meta`).
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub(crate) final_url: String,
    pub(crate) redirects: u32,
    pub(crate) elapsed: Duration,
    /// Body bytes received, as sent by the server.
    pub(crate) wire_bytes: u64,
}

/// A whole response.
#[derive(Debug)]
pub(crate) struct Buffered {
    pub(crate) status: u16,
    pub(crate) headers: Vec<Pair>,
    pub(crate) body: Vec<u8>,
    pub(crate) meta: Meta,
}

/// What a request may use, from the profile of the principal in scope and its options.
struct Budget {
    principal: PrincipalId,
    /// The in-flight slot, released when the budget and every stream entry holding it are
    /// dropped.
    slot: Arc<OwnedSemaphorePermit>,
    limit: u64,
    deadline: Duration,
    between: Option<Duration>,
}

/// A response whose body is still being delivered, or waits in the host to be read. It holds
/// its request's in-flight slot until it is closed or dropped, so the bodies a principal can
/// leave buffered in the host are bounded by `max_http_streams`.
pub(crate) struct StreamEntry {
    /// The in-flight slot; `None` once the stream is closed.
    slot: Option<Arc<OwnedSemaphorePermit>>,
    status: u16,
    headers: Vec<Pair>,
    pipe: Arc<Pipe>,
    failure: Arc<Mutex<Option<HttpError>>>,
    /// The trailers, once the body has ended with some.
    trailers: Arc<Mutex<Option<Vec<Pair>>>>,
    closed: bool,
}

impl Drop for StreamEntry {
    /// However the entry goes (the guest drops it, or its Store is discarded), the transfer
    /// stops and its in-flight slot is freed.
    fn drop(&mut self) {
        self.pipe.close_reader();
    }
}

impl HttpView<'_> {
    /// What a request to `url` may use; a refused slot is audited with the URL's host.
    fn budget(&self, url: &url::Url, options: &Options) -> Result<Budget, HttpError> {
        let principal = self.core.scoped.principal().clone();
        let profile = self
            .core
            .scoped
            .profile()
            .as_ref()
            .map_err(|_| HttpError::Denied("the principal's profile is refused".into()))?;
        let permit = self
            .ctx
            .permit(&principal, profile.quotas.max_http_streams)
            .inspect_err(|e| {
                let refused = Refused {
                    host: client::host_of(url),
                    redirect: false,
                };
                shared_audit(self.ctx, &principal, &refused, e);
            })?;
        let most = Duration::from_secs(profile.quotas.max_timeout_secs);
        let limit = profile.quotas.max_http_response_bytes;
        Ok(Budget {
            principal,
            slot: Arc::new(permit),
            limit: options.max_response_bytes.map_or(limit, |m| m.min(limit)),
            deadline: options.total.map_or(most, |t| t.min(most)),
            between: options.between_bytes,
        })
    }

    /// Runs `work` against the request's deadline (`timeout`), the capsule's cancellation and
    /// the call's deadline (the outer `Err`: a trap).
    async fn bounded<T>(
        &mut self,
        deadline: Duration,
        work: impl Future<Output = Result<T, HttpError>>,
    ) -> wasmtime::Result<Result<T, HttpError>> {
        let raced = self
            .core
            .limits
            .race(tokio::time::timeout(deadline, work))
            .await?;
        Ok(match raced {
            None => Err(HttpError::Unknown("the capsule is unloading".into())),
            Some(r) => r.unwrap_or(Err(HttpError::Timeout)),
        })
    }

    fn auditor(
        &self,
        principal: &PrincipalId,
    ) -> impl Fn(&Refused, &HttpError) + Sync + Send + 'static {
        let shared = Arc::clone(self.ctx);
        let principal = principal.clone();
        move |r: &Refused, e: &HttpError| shared_audit(&shared, &principal, r, e)
    }

    /// A buffered request.
    pub(crate) async fn request(
        &mut self,
        outgoing: Outgoing,
        options: &Options,
    ) -> wasmtime::Result<Result<Buffered, HttpError>> {
        let budget = match self.budget(&outgoing.url, options) {
            Ok(budget) => budget,
            Err(e) => return Ok(Err(e)),
        };
        let shared = Arc::clone(self.ctx);
        let principal = budget.principal.clone();
        let audit = self.auditor(&principal);
        let (limit, between) = (budget.limit, budget.between);
        let hops = options.hops();
        let started = Instant::now();
        let result = self
            .bounded(budget.deadline, async {
                let mut sent = client::send(
                    &shared.gate,
                    &shared.pool,
                    &principal,
                    outgoing,
                    &hops,
                    None,
                    &audit,
                )
                .await?;
                let body = client::read_body(sent.response.body_mut(), limit, between).await?;
                if let Some(conn) = sent.conn.take() {
                    shared.pool.put(conn);
                }
                if let Some(meta) = &options.integrity
                    && !integrity_ok(meta, &body)?
                {
                    return Err(HttpError::IntegrityMismatch);
                }
                Ok(Buffered {
                    status: sent.response.status().as_u16(),
                    headers: pairs(sent.response.headers()),
                    meta: Meta {
                        final_url: sent.final_url.to_string(),
                        redirects: sent.redirects,
                        elapsed: started.elapsed(),
                        wire_bytes: body.len() as u64,
                    },
                    body,
                })
            })
            .await;
        drop(budget);
        result
    }

    /// A streamed response.
    pub(crate) async fn stream_start(
        &mut self,
        outgoing: Outgoing,
        options: &Options,
    ) -> wasmtime::Result<Result<StreamEntry, HttpError>> {
        let budget = match self.budget(&outgoing.url, options) {
            Ok(budget) => budget,
            Err(e) => return Ok(Err(e)),
        };
        let shared = Arc::clone(self.ctx);
        let principal = budget.principal.clone();
        let audit = self.auditor(&principal);
        let hops = options.hops();
        let sent = self
            .bounded(
                budget.deadline,
                client::send(
                    &shared.gate,
                    &shared.pool,
                    &principal,
                    outgoing,
                    &hops,
                    None,
                    &audit,
                ),
            )
            .await?;
        Ok(sent.map(|sent| self.stream_of(sent, budget, options.integrity.clone())))
    }

    fn stream_of(
        &self,
        sent: client::Sent,
        budget: Budget,
        integrity: Option<String>,
    ) -> StreamEntry {
        let status = sent.response.status().as_u16();
        let headers = pairs(sent.response.headers());
        let pipe = Pipe::new(STREAM_BUFFER_BYTES);
        let failure = Arc::new(Mutex::new(None));
        let trailers = Arc::new(Mutex::new(None));
        let slot = Some(Arc::clone(&budget.slot));
        tokio::spawn(pump(
            sent,
            Arc::clone(self.ctx),
            Sink {
                pipe: Arc::clone(&pipe),
                failure: Arc::clone(&failure),
                trailers: Arc::clone(&trailers),
            },
            budget,
            integrity,
            self.core.limits.shared.cancel.clone(),
        ));
        StreamEntry {
            slot,
            status,
            headers,
            pipe,
            failure,
            trailers,
            closed: false,
        }
    }

    pub(crate) fn stream(&mut self, rep: u32) -> wasmtime::Result<&mut StreamEntry> {
        Ok(self
            .core
            .table
            .get_mut(&Resource::<StreamEntry>::new_borrow(rep))?)
    }

    /// The next chunk; empty once the body has ended.
    pub(crate) async fn next_chunk(
        &mut self,
        rep: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, HttpError>> {
        let entry = self.stream(rep)?;
        if entry.closed {
            return Ok(Err(HttpError::Closed));
        }
        let (pipe, failure) = (Arc::clone(&entry.pipe), Arc::clone(&entry.failure));
        if self.core.limits.race(pipe.readable()).await?.is_none() {
            return Ok(Err(HttpError::Closed));
        }
        Ok(match pipe.try_read(MAX_CHUNK_BYTES) {
            Read::Data(b) => Ok(b.to_vec()),
            Read::Empty | Read::End(End::Done) => Ok(Vec::new()),
            Read::End(End::Failed(text)) => {
                Err(failure.lock().take().unwrap_or(HttpError::Connect(text)))
            }
        })
    }

    pub(crate) fn close_stream(&mut self, rep: u32) -> wasmtime::Result<Result<(), HttpError>> {
        let entry = self.stream(rep)?;
        if std::mem::replace(&mut entry.closed, true) {
            return Ok(Err(HttpError::Closed));
        }
        entry.pipe.close_reader();
        entry.slot = None;
        Ok(Ok(()))
    }

    /// The trailers: `None` until the body has ended, or when it ended without any.
    pub(crate) fn trailers(&mut self, rep: u32) -> wasmtime::Result<Option<Vec<Pair>>> {
        Ok(self.stream(rep)?.trailers.lock().clone())
    }

    pub(crate) fn readable_pollable(
        &mut self,
        rep: u32,
    ) -> wasmtime::Result<Resource<capsule_wit::astrid::io::poll::Pollable>> {
        let pipe = Arc::clone(&self.stream(rep)?.pipe);
        crate::host::poll::signal_pollable(
            self.core.table,
            Arc::new(crate::host::pipe::Readable(pipe)),
        )
    }

    pub(crate) fn stream_body(
        &mut self,
        rep: u32,
    ) -> wasmtime::Result<Resource<capsule_wit::astrid::io::streams::InputStream>> {
        let pipe = Arc::clone(&self.stream(rep)?.pipe);
        crate::host::streams::new_input(self.core.table, pipe)
    }

    pub(crate) fn drop_stream(&mut self, rep: u32) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<StreamEntry>::new_own(rep))?;
        Ok(())
    }

    /// Puts a finished stream in the table and answers its handle's rep.
    pub(crate) fn push_stream(&mut self, entry: StreamEntry) -> wasmtime::Result<u32> {
        Ok(self.core.table.push(entry)?.rep())
    }
}

fn shared_audit(shared: &HttpShared, principal: &PrincipalId, refused: &Refused, e: &HttpError) {
    tracing::info!(
        target: NET_AUDIT_TARGET,
        capsule = %shared.capsule,
        principal = principal.as_str(),
        host = &*field(&refused.host),
        redirect = refused.redirect,
        code = code_name(e),
        reason = &*field(&e.to_string()),
        "outbound request refused"
    );
}

/// Where a streamed body goes.
struct Sink {
    pipe: Arc<Pipe>,
    failure: Arc<Mutex<Option<HttpError>>>,
    trailers: Arc<Mutex<Option<Vec<Pair>>>>,
}

/// Moves a response body into the sink until it ends, fails, outgrows the budget, its reader
/// leaves, the deadline passes or the capsule unloads; the budget's slot is held until then.
/// A body read to its end hands its connection back to the pool.
async fn pump(
    mut sent: client::Sent,
    shared: Arc<HttpShared>,
    sink: Sink,
    budget: Budget,
    integrity: Option<String>,
    cancel: CancellationToken,
) {
    let (limit, between) = (budget.limit, budget.between);
    let pipe = &sink.pipe;
    let work = async {
        let mut seen: u64 = 0;
        let mut hasher = integrity.as_ref().map(|_| Vec::new());
        let body = sent.response.body_mut();
        while let Some(frame) = client::next_frame(body, between).await? {
            let frame = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        *sink.trailers.lock() = Some(pairs(&t));
                    }
                    continue;
                }
            };
            seen += frame.len() as u64;
            if seen > limit {
                return Err(HttpError::TooLarge { limit });
            }
            if let Some(h) = &mut hasher {
                h.extend_from_slice(&frame);
            }
            if !pipe.push(Bytes::clone(&frame)).await {
                return Ok(false);
            }
        }
        if let (Some(meta), Some(body)) = (&integrity, &hasher)
            && !integrity_ok(meta, body)?
        {
            return Err(HttpError::IntegrityMismatch);
        }
        Ok(true)
    };
    let outcome = tokio::select! {
        biased;
        () = cancel.cancelled() => Err(HttpError::Closed),
        () = pipe.reader_left() => Ok(false),
        r = tokio::time::timeout(budget.deadline, work) => r.unwrap_or(Err(HttpError::Timeout)),
    };
    match outcome {
        Ok(complete) => {
            if complete && let Some(conn) = sent.conn.take() {
                shared.pool.put(conn);
            }
            pipe.finish(End::Done);
        }
        Err(e) => {
            let text = e.to_string();
            *sink.failure.lock() = Some(e);
            pipe.finish(End::Failed(text));
        }
    }
    drop(budget);
}
