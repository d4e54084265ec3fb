//! `astrid:http/host@1.0.0` over the shared engine: translates its records and maps every
//! `HttpError` to a 1.0 code by one exhaustive match (the 1.1-only failures become the 1.0
//! code closest in meaning).

use capsule_wit::astrid::http1_0_0::host::{
    ErrorCode, Host, HostHttpStream, HttpMethod, HttpRequestData, HttpResponseData, HttpStream,
    KeyValuePair,
};
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::io::streams::InputStream;
use wasmtime::component::Resource;

use super::client::Outgoing;
use super::{HttpError, HttpView, Options, Pair};

/// The 1.0 code a guest sees for `e`. Connection and TLS details stay in the host log.
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
        HttpError::RedirectBlocked | HttpError::TooManyRedirects(_) => {
            ErrorCode::Protocol(e.to_string())
        }
        HttpError::SchemeDenied => ErrorCode::CapabilityDenied,
        HttpError::IntegrityMismatch => ErrorCode::Unknown(e.to_string()),
        HttpError::Unknown(u) => ErrorCode::Unknown(u.clone()),
    }
}

pub(super) fn method_name(m: &HttpMethod) -> &str {
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

impl Host for HttpView<'_> {
    async fn http_request(
        &mut self,
        request: HttpRequestData,
    ) -> wasmtime::Result<Result<HttpResponseData, ErrorCode>> {
        let result = match outgoing(request) {
            Ok(o) => self.request(o, &Options::default()).await?,
            Err(e) => Err(e),
        };
        Ok(result
            .map(|r| HttpResponseData {
                status: r.status,
                headers: kv(r.headers),
                body: r.body,
            })
            .map_err(|e| {
                tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http request failed");
                code(&e)
            }))
    }

    async fn http_stream_start(
        &mut self,
        request: HttpRequestData,
    ) -> wasmtime::Result<Result<Resource<HttpStream>, ErrorCode>> {
        let result = match outgoing(request) {
            Ok(o) => self.stream_start(o, &Options::default()).await?,
            Err(e) => Err(e),
        };
        match result {
            Ok(entry) => Ok(Ok(Resource::new_own(self.push_stream(entry)?))),
            Err(e) => {
                tracing::debug!(capsule = %self.ctx.capsule, error = %e, "http stream failed");
                Ok(Err(code(&e)))
            }
        }
    }
}

impl HostHttpStream for HttpView<'_> {
    shared_stream_methods!();
}
