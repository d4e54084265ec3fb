//! `astrid:http/host@1.0.0`: outbound HTTP(S) for capsules granted `net` hosts. Every hop
//! (the request and each redirect, at most `MAX_REDIRECTS`) is checked against the grant and
//! the host's airlock, connected only to the addresses the airlock checked, and a refusal is
//! audited on `capsule::audit::net` with the host and the reason. Per (capsule, principal in
//! scope), at most the profile's `max_http_streams` requests and streams are in flight (more
//! is `quota`), a response body is bounded by `max_http_response_bytes` (beyond it:
//! `body-too-large`) and a request by `max_timeout_secs`. Streams are read through a bounded
//! pipe; unloading the capsule stops every transfer at once. `HttpError` maps to the WIT
//! code by one exhaustive match.

pub(crate) mod client;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_security::{PrincipalId, StaticResolver, SystemResolver};
use capsule_wit::astrid::http1_0_0::host::{
    ErrorCode, Host, HostHttpStream, HttpMethod, HttpRequestData, HttpResponseData, HttpStream,
    KeyValuePair,
};
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::io::streams::InputStream;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;

use crate::error::LoadError;
use crate::host::audit::field;
use crate::host::pipe::{self, End, Pipe, Read};
use crate::host::poll::signal_pollable;
use crate::host::{Assembly, Capability, InstanceCx, View};

use client::{Gate, Outgoing, Refused};

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
    /// The server broke HTTP (or a redirect loop ran past the limit).
    #[error("protocol: {0}")]
    Protocol(String),
    /// Anything else.
    #[error("{0}")]
    Unknown(String),
}

/// The WIT code a guest sees for `e`. Connection and TLS details stay in the host log.
fn code(e: &HttpError) -> ErrorCode {
    match e {
        HttpError::Denied(_) => ErrorCode::CapabilityDenied,
        HttpError::Invalid(_) => ErrorCode::InvalidRequest,
        HttpError::Dns(_) => ErrorCode::DnsError,
        HttpError::Airlock(_) => ErrorCode::AirlockRejected,
        HttpError::Tls(_) => ErrorCode::TlsError,
        HttpError::Timeout => ErrorCode::Timeout,
        HttpError::Connect(_) => ErrorCode::ConnectionError,
        HttpError::TooLarge { .. } => ErrorCode::BodyTooLarge,
        HttpError::Closed => ErrorCode::Closed,
        HttpError::Quota => ErrorCode::Quota,
        HttpError::Protocol(p) => ErrorCode::Protocol(p.clone()),
        HttpError::Unknown(u) => ErrorCode::Unknown(u.clone()),
    }
}

fn code_name(e: &HttpError) -> &'static str {
    match e {
        HttpError::Denied(_) => "capability-denied",
        HttpError::Airlock(_) => "airlock-rejected",
        HttpError::Dns(_) => "dns-error",
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
    const INTERFACES: &'static [&'static str] = &["astrid:http/host@1.0.0"];
    type Shared = Arc<HttpShared>;
    type Ctx = Arc<HttpShared>;

    link_bindings!(capsule_wit::astrid::http1_0_0::host);

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
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }
}

fn method_name(m: &HttpMethod) -> &str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Connect => "CONNECT",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Other(s) => s,
    }
}

fn pairs(headers: &http::HeaderMap) -> Vec<KeyValuePair> {
    headers
        .iter()
        .map(|(k, v)| KeyValuePair {
            key: k.as_str().to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect()
}

/// What a request may use, from the profile of the principal in scope.
struct Budget {
    principal: PrincipalId,
    /// The in-flight slot, released when the budget is dropped.
    _slot: OwnedSemaphorePermit,
    limit: u64,
    deadline: Duration,
}

/// A response whose body is still being delivered.
pub(crate) struct StreamEntry {
    status: u16,
    headers: Vec<KeyValuePair>,
    pipe: Arc<Pipe>,
    failure: Arc<Mutex<Option<HttpError>>>,
    closed: bool,
}

impl Drop for StreamEntry {
    /// However the entry goes (the guest drops it, or its Store is discarded), the transfer
    /// stops and its in-flight slot is freed.
    fn drop(&mut self) {
        self.pipe.close_reader();
    }
}

fn stream_entry(r: &Resource<HttpStream>) -> Resource<StreamEntry> {
    Resource::new_borrow(r.rep())
}

impl HttpView<'_> {
    fn budget(&self) -> Result<Budget, HttpError> {
        let principal = self.core.scoped.principal().clone();
        let profile = self
            .core
            .scoped
            .profile()
            .as_ref()
            .map_err(|_| HttpError::Denied("the principal's profile is refused".into()))?;
        let permit = self
            .ctx
            .permit(&principal, profile.quotas.max_http_streams)?;
        Ok(Budget {
            principal,
            _slot: permit,
            limit: profile.quotas.max_http_response_bytes,
            deadline: Duration::from_secs(profile.quotas.max_timeout_secs),
        })
    }

    /// Runs `work` against the deadline and the capsule's cancellation.
    async fn bounded<T>(
        &mut self,
        deadline: Duration,
        work: impl Future<Output = Result<T, HttpError>>,
    ) -> Result<T, HttpError> {
        let cancel = self.core.limits.shared.cancel.clone();
        let started = Instant::now();
        let out = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(HttpError::Unknown("the capsule is unloading".into())),
            r = tokio::time::timeout(deadline, work) => r.unwrap_or(Err(HttpError::Timeout)),
        };
        self.core.limits.cpu.add_wait(started.elapsed());
        out
    }

    fn outgoing(request: &HttpRequestData) -> Result<Outgoing, HttpError> {
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        Outgoing::parse(
            method_name(&request.method),
            &request.url,
            &headers,
            request.body.clone(),
        )
    }

    async fn request(&mut self, request: HttpRequestData) -> Result<HttpResponseData, HttpError> {
        let outgoing = Self::outgoing(&request)?;
        let budget = self.budget()?;
        let shared = Arc::clone(self.ctx);
        let principal = budget.principal.clone();
        let audit = |r: &Refused, e: &HttpError| shared_audit(&shared, &principal, r, e);
        let limit = budget.limit;
        let result = self
            .bounded(budget.deadline, async {
                let mut response =
                    client::send(&shared.gate, outgoing, client::MAX_REDIRECTS, &audit).await?;
                let body = client::read_body(response.body_mut(), limit).await?;
                Ok(HttpResponseData {
                    status: response.status().as_u16(),
                    headers: pairs(response.headers()),
                    body,
                })
            })
            .await;
        drop(budget);
        result
    }

    async fn stream_start(&mut self, request: HttpRequestData) -> Result<StreamEntry, HttpError> {
        let outgoing = Self::outgoing(&request)?;
        let budget = self.budget()?;
        let shared = Arc::clone(self.ctx);
        let principal = budget.principal.clone();
        let audit = |r: &Refused, e: &HttpError| shared_audit(&shared, &principal, r, e);
        let response = self
            .bounded(
                budget.deadline,
                client::send(&shared.gate, outgoing, client::MAX_REDIRECTS, &audit),
            )
            .await?;
        let status = response.status().as_u16();
        let headers = pairs(response.headers());
        let pipe = Pipe::new(STREAM_BUFFER_BYTES);
        let failure = Arc::new(Mutex::new(None));
        tokio::spawn(pump(
            response.into_body(),
            Arc::clone(&pipe),
            Arc::clone(&failure),
            budget,
            self.core.limits.shared.cancel.clone(),
        ));
        Ok(StreamEntry {
            status,
            headers,
            pipe,
            failure,
            closed: false,
        })
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

/// Moves a response body into `pipe` until it ends, fails, outgrows the budget, its reader
/// leaves, the deadline passes or the capsule unloads; the budget's slot is held until then.
async fn pump(
    mut body: hyper::body::Incoming,
    pipe: Arc<Pipe>,
    failure: Arc<Mutex<Option<HttpError>>>,
    budget: Budget,
    cancel: CancellationToken,
) {
    let limit = budget.limit;
    let work = async {
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| HttpError::Connect(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > limit {
                return Err(HttpError::TooLarge { limit });
            }
            if !pipe.push(data).await {
                return Ok(());
            }
        }
        Ok(())
    };
    let outcome = tokio::select! {
        biased;
        () = cancel.cancelled() => Err(HttpError::Closed),
        () = pipe.reader_left() => Ok(()),
        r = tokio::time::timeout(budget.deadline, work) => r.unwrap_or(Err(HttpError::Timeout)),
    };
    match outcome {
        Ok(()) => pipe.finish(End::Done),
        Err(e) => {
            let text = e.to_string();
            *failure.lock() = Some(e);
            pipe.finish(End::Failed(text));
        }
    }
    drop(budget);
}

impl Host for HttpView<'_> {
    async fn http_request(
        &mut self,
        request: HttpRequestData,
    ) -> wasmtime::Result<Result<HttpResponseData, ErrorCode>> {
        Ok(self.request(request).await.map_err(|e| {
            tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http request failed");
            code(&e)
        }))
    }

    async fn http_stream_start(
        &mut self,
        request: HttpRequestData,
    ) -> wasmtime::Result<Result<Resource<HttpStream>, ErrorCode>> {
        match self.stream_start(request).await {
            Ok(entry) => {
                let r = self.core.table.push(entry)?;
                Ok(Ok(Resource::new_own(r.rep())))
            }
            Err(e) => {
                tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http stream failed");
                Ok(Err(code(&e)))
            }
        }
    }
}

impl HostHttpStream for HttpView<'_> {
    async fn status(&mut self, self_: Resource<HttpStream>) -> wasmtime::Result<u16> {
        Ok(self.core.table.get(&stream_entry(&self_))?.status)
    }

    async fn headers(
        &mut self,
        self_: Resource<HttpStream>,
    ) -> wasmtime::Result<Vec<KeyValuePair>> {
        Ok(self.core.table.get(&stream_entry(&self_))?.headers.clone())
    }

    /// The next chunk; an empty chunk means the body has ended.
    async fn read_chunk(
        &mut self,
        self_: Resource<HttpStream>,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        let entry = self.core.table.get(&stream_entry(&self_))?;
        if entry.closed {
            return Ok(Err(ErrorCode::Closed));
        }
        let (pipe, failure) = (Arc::clone(&entry.pipe), Arc::clone(&entry.failure));
        let cancel = self.core.limits.shared.cancel.clone();
        let started = Instant::now();
        let ready = tokio::select! {
            biased;
            () = cancel.cancelled() => false,
            () = pipe.readable() => true,
        };
        self.core.limits.cpu.add_wait(started.elapsed());
        if !ready {
            return Ok(Err(ErrorCode::Closed));
        }
        Ok(match pipe.try_read(MAX_CHUNK_BYTES) {
            Read::Data(b) => Ok(b.to_vec()),
            Read::Empty | Read::End(End::Done) => Ok(Vec::new()),
            Read::End(End::Failed(_)) => Err(failure
                .lock()
                .as_ref()
                .map_or(ErrorCode::ConnectionError, code)),
        })
    }

    async fn close(
        &mut self,
        self_: Resource<HttpStream>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        let entry = self.core.table.get_mut(&stream_entry(&self_))?;
        if std::mem::replace(&mut entry.closed, true) {
            return Ok(Err(ErrorCode::Closed));
        }
        entry.pipe.close_reader();
        Ok(Ok(()))
    }

    async fn subscribe_readable(
        &mut self,
        self_: Resource<HttpStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        let pipe = Arc::clone(&self.core.table.get(&stream_entry(&self_))?.pipe);
        signal_pollable(self.core.table, Arc::new(pipe::Readable(pipe)))
    }

    async fn body_stream(
        &mut self,
        self_: Resource<HttpStream>,
    ) -> wasmtime::Result<Resource<InputStream>> {
        let pipe = Arc::clone(&self.core.table.get(&stream_entry(&self_))?.pipe);
        crate::host::streams::new_input(self.core.table, pipe)
    }

    async fn drop(&mut self, rep: Resource<HttpStream>) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<StreamEntry>::new_own(rep.rep()))?;
        Ok(())
    }
}
