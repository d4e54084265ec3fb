//! `astrid:http/host@1.1.0` over the shared engine: the 1.0 calls plus request options
//! (timeouts, redirect policy, redirect and size limits, https-only, integrity; each capped by
//! the principal's profile), response metadata, trailers and streamed uploads. The host never
//! asks for a compressed body and never decodes one, so `auto-decompress` and
//! `max-decompressed-bytes` have nothing to act on and a body arrives as the server sent it.

use std::time::Duration;

use capsule_wit::astrid::http1_1_0::host::{
    ErrorCode, Host, HostHttpStream, HostHttpUpload, HttpMethod, HttpRequestData, HttpResponseData,
    HttpStream, HttpUpload, KeyValuePair, RedirectPolicy, RequestOptions, ResponseMeta,
    TimeoutConfig,
};
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::io::streams::{InputStream, OutputStream};
use wasmtime::component::Resource;

use super::client::{self, Outgoing};
use super::upload::UploadEntry;
use super::{HttpError, HttpView, Options, Pair};

/// The 1.1 code a guest sees for `e`. Connection and TLS details stay in the host log.
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
        HttpError::RedirectBlocked => ErrorCode::RedirectBlocked,
        HttpError::TooManyRedirects(_) => ErrorCode::TooManyRedirects,
        HttpError::SchemeDenied => ErrorCode::SchemeDenied,
        HttpError::IntegrityMismatch => ErrorCode::IntegrityMismatch,
        HttpError::Unknown(u) => ErrorCode::Unknown(u.clone()),
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

fn outgoing(request: HttpRequestData) -> Result<Outgoing, HttpError> {
    let headers: Vec<Pair> = request
        .headers
        .into_iter()
        .map(|p| (p.key, p.value))
        .collect();
    Outgoing::parse(
        method_name(&request.method),
        &request.url,
        &headers,
        request.body,
    )
}

fn kv(pairs: Vec<Pair>) -> Vec<KeyValuePair> {
    pairs
        .into_iter()
        .map(|(key, value)| KeyValuePair { key, value })
        .collect()
}

/// The options of a call that states none.
fn no_options() -> RequestOptions {
    RequestOptions {
        timeouts: None,
        redirect: None,
        max_redirects: None,
        max_response_bytes: None,
        max_decompressed_bytes: None,
        auto_decompress: None,
        https_only: None,
        integrity: None,
    }
}

fn ms(v: Option<u64>) -> Option<Duration> {
    v.map(Duration::from_millis)
}

/// The engine's options for a 1.1 request; a zero limit is refused rather than read as
/// "fail at once" or "no limit".
fn options(o: RequestOptions) -> Result<Options, HttpError> {
    let t = o.timeouts.unwrap_or(TimeoutConfig {
        connect_ms: None,
        first_byte_ms: None,
        between_bytes_ms: None,
        total_ms: None,
    });
    let zero = [
        t.connect_ms,
        t.first_byte_ms,
        t.between_bytes_ms,
        t.total_ms,
    ]
    .into_iter()
    .any(|v| v == Some(0))
        || o.max_response_bytes == Some(0);
    if zero {
        return Err(HttpError::Invalid(
            "a timeout or size limit of 0 is not a limit; leave it out instead".into(),
        ));
    }
    // Metadata the check could not use is refused before anything is sent.
    if let Some(meta) = &o.integrity {
        super::integrity::integrity_ok(meta, &[])?;
    }
    Ok(Options {
        connect: ms(t.connect_ms),
        first_byte: ms(t.first_byte_ms),
        between_bytes: ms(t.between_bytes_ms),
        total: ms(t.total_ms),
        redirect: o.redirect.map(|r| match r {
            RedirectPolicy::Follow => client::RedirectPolicy::Follow,
            RedirectPolicy::Error => client::RedirectPolicy::Error,
            RedirectPolicy::Manual => client::RedirectPolicy::Manual,
        }),
        max_redirects: o.max_redirects,
        max_response_bytes: o.max_response_bytes,
        https_only: o.https_only.unwrap_or(false),
        integrity: o.integrity,
    })
}

impl HttpView<'_> {
    async fn request_v11(
        &mut self,
        request: HttpRequestData,
        opts: RequestOptions,
    ) -> wasmtime::Result<Result<HttpResponseData, HttpError>> {
        let (o, opts) = match (outgoing(request), options(opts)) {
            (Ok(o), Ok(opts)) => (o, opts),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let r = match self.request(o, &opts).await? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(HttpResponseData {
            status: r.status,
            headers: kv(r.headers),
            body: r.body,
            meta: ResponseMeta {
                final_url: r.meta.final_url,
                redirect_count: r.meta.redirects,
                elapsed_ms: u64::try_from(r.meta.elapsed.as_millis()).unwrap_or(u64::MAX),
                wire_bytes: r.meta.wire_bytes,
            },
        }))
    }

    async fn stream_v11(
        &mut self,
        request: HttpRequestData,
        opts: RequestOptions,
    ) -> wasmtime::Result<Result<Resource<HttpStream>, ErrorCode>> {
        let started = match (outgoing(request), options(opts)) {
            (Ok(o), Ok(opts)) => self.stream_start(o, &opts).await?,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match started {
            Ok(entry) => Ok(Ok(Resource::new_own(self.push_stream(entry)?))),
            Err(e) => {
                tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http stream failed");
                Ok(Err(code(&e)))
            }
        }
    }
}

impl Host for HttpView<'_> {
    async fn http_request(
        &mut self,
        request: HttpRequestData,
    ) -> wasmtime::Result<Result<HttpResponseData, ErrorCode>> {
        self.http_request_opts(request, no_options()).await
    }

    async fn http_request_opts(
        &mut self,
        request: HttpRequestData,
        options: RequestOptions,
    ) -> wasmtime::Result<Result<HttpResponseData, ErrorCode>> {
        Ok(self.request_v11(request, options).await?.map_err(|e| {
            tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http request failed");
            code(&e)
        }))
    }

    async fn http_stream_start(
        &mut self,
        request: HttpRequestData,
    ) -> wasmtime::Result<Result<Resource<HttpStream>, ErrorCode>> {
        self.stream_v11(request, no_options()).await
    }

    async fn http_stream_start_opts(
        &mut self,
        request: HttpRequestData,
        options: RequestOptions,
    ) -> wasmtime::Result<Result<Resource<HttpStream>, ErrorCode>> {
        self.stream_v11(request, options).await
    }

    async fn http_upload_start(
        &mut self,
        request: HttpRequestData,
        options: RequestOptions,
    ) -> wasmtime::Result<Result<Resource<HttpUpload>, ErrorCode>> {
        let started = match (outgoing(request), self::options(options)) {
            (Ok(o), Ok(opts)) => self.upload_start(o, &opts),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match started {
            Ok(entry) => Ok(Ok(Resource::new_own(self.core.table.push(entry)?.rep()))),
            Err(e) => {
                tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http upload failed");
                Ok(Err(code(&e)))
            }
        }
    }
}

impl HostHttpStream for HttpView<'_> {
    shared_stream_methods!();

    /// `none` until the body has ended, or when it ended without trailers.
    async fn trailers(
        &mut self,
        self_: Resource<HttpStream>,
    ) -> wasmtime::Result<Result<Option<Vec<KeyValuePair>>, ErrorCode>> {
        Ok(Ok(HttpView::trailers(self, self_.rep())?.map(kv)))
    }
}

impl HostHttpUpload for HttpView<'_> {
    async fn body_sink(
        &mut self,
        self_: Resource<HttpUpload>,
    ) -> wasmtime::Result<Resource<OutputStream>> {
        let sink = std::sync::Arc::clone(&self.upload(self_.rep())?.sink);
        crate::host::streams::new_output(self.core.table, sink)
    }

    async fn subscribe_writable(
        &mut self,
        self_: Resource<HttpUpload>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        let sink = std::sync::Arc::clone(&self.upload(self_.rep())?.sink);
        crate::host::poll::signal_pollable(
            self.core.table,
            std::sync::Arc::new(crate::host::pipe::Writable(sink)),
        )
    }

    async fn finish(
        &mut self,
        self_: Resource<HttpUpload>,
    ) -> wasmtime::Result<Result<Resource<HttpStream>, ErrorCode>> {
        let finished = self.upload_finish(self_.rep()).await?;
        match finished {
            Ok(stream) => Ok(Ok(Resource::new_own(self.push_stream(stream)?))),
            Err(e) => {
                tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http upload failed");
                Ok(Err(code(&e)))
            }
        }
    }

    async fn drop(&mut self, rep: Resource<HttpUpload>) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<UploadEntry>::new_own(rep.rep()))?;
        Ok(())
    }
}
