//! 1.1's streamed uploads (`http-upload`): the exchange starts at once and reads the request
//! body from a bounded pipe the guest writes into; the grant is checked before anything is
//! sent, and the response is checked like any other, the request's integrity metadata
//! included. The body cannot be replayed, so a redirect is returned as the response.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use wasmtime::component::Resource;

use super::client::{self, Outgoing, Refused};
use super::{
    Budget, HttpError, HttpView, MAX_CHUNK_BYTES, Options, STREAM_BUFFER_BYTES, StreamEntry,
};
use crate::host::pipe::{End, Pipe, Read};

/// A request whose body the guest is still writing (1.1's `http-upload`).
pub(crate) struct UploadEntry {
    /// The request body the guest writes into.
    pub(super) sink: Arc<Pipe>,
    /// The exchange, running since `http-upload-start`; taken by `finish`.
    sent: Option<tokio::task::JoinHandle<Result<client::Sent, HttpError>>>,
    budget: Option<Budget>,
    /// The request's integrity metadata, checked against the response body.
    integrity: Option<String>,
    started: Instant,
}

impl Drop for UploadEntry {
    fn drop(&mut self) {
        self.sink.close_reader();
        if let Some(task) = self.sent.take() {
            task.abort();
        }
    }
}

/// The request body of an upload: what the guest queues in `pipe`, until it finishes.
struct SinkReader(Arc<Pipe>);

impl Drop for SinkReader {
    fn drop(&mut self) {
        self.0.close_reader();
    }
}

fn pipe_body(pipe: Arc<Pipe>) -> client::Body {
    let stream = futures::stream::unfold(Some(SinkReader(pipe)), |reader| async move {
        let reader = reader?;
        loop {
            reader.0.readable().await;
            match reader.0.try_read(MAX_CHUNK_BYTES) {
                Read::Data(b) => return Some((Ok(hyper::body::Frame::data(b)), Some(reader))),
                Read::Empty => {}
                Read::End(End::Done) => return None,
                Read::End(End::Failed(e)) => {
                    return Some((Err(client::BodyError::from(e)), None));
                }
            }
        }
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

impl HttpView<'_> {
    /// Starts a request whose body the guest streams; the exchange runs while it writes.
    pub(crate) fn upload_start(
        &mut self,
        outgoing: Outgoing,
        options: &Options,
    ) -> Result<UploadEntry, HttpError> {
        let budget = self.budget(&outgoing.url, options)?;
        let shared = Arc::clone(self.ctx);
        let principal = budget.principal.clone();
        let audit = self.auditor(&principal);
        // The grant is checked now, so a refused destination fails the start, not `finish`.
        let url = &outgoing.url;
        let host = client::host_of(url);
        let port = url.port_or_known_default().unwrap_or(80);
        let refused = Refused {
            host: host.clone(),
            redirect: false,
        };
        if options.https_only && url.scheme() != "https" {
            audit(&refused, &HttpError::SchemeDenied);
            return Err(HttpError::SchemeDenied);
        }
        if let capsule_security::Decision::Denied(reason) =
            shared.gate.policy.may_http_url(url.scheme(), &host, port)
        {
            let e = HttpError::Denied(reason);
            audit(&refused, &e);
            return Err(e);
        }
        let sink = Pipe::new(STREAM_BUFFER_BYTES);
        let body = pipe_body(Arc::clone(&sink));
        let hops = options.hops();
        let cancel = self.core.limits.shared.cancel.clone();
        let deadline = budget.deadline;
        let sent = tokio::spawn(async move {
            let work = client::send(
                &shared.gate,
                &shared.pool,
                &principal,
                outgoing,
                &hops,
                Some(body),
                &audit,
            );
            tokio::select! {
                biased;
                () = cancel.cancelled() => Err(HttpError::Closed),
                r = tokio::time::timeout(deadline, work) => r.unwrap_or(Err(HttpError::Timeout)),
            }
        });
        Ok(UploadEntry {
            sink,
            sent: Some(sent),
            budget: Some(budget),
            integrity: options.integrity.clone(),
            started: Instant::now(),
        })
    }

    pub(crate) fn upload(&mut self, rep: u32) -> wasmtime::Result<&mut UploadEntry> {
        Ok(self
            .core
            .table
            .get_mut(&Resource::<UploadEntry>::new_borrow(rep))?)
    }

    /// Ends an upload's body and waits for the response head; a second `finish` is
    /// `closed`.
    pub(crate) async fn upload_finish(
        &mut self,
        rep: u32,
    ) -> wasmtime::Result<Result<StreamEntry, HttpError>> {
        let entry = self.upload(rep)?;
        let (Some(task), Some(budget)) = (entry.sent.take(), entry.budget.take()) else {
            return Ok(Err(HttpError::Closed));
        };
        entry.sink.finish(End::Done);
        let integrity = entry.integrity.take();
        let left = budget.deadline.saturating_sub(entry.started.elapsed());
        let sent = self
            .bounded(left, async {
                task.await
                    .map_err(|_| HttpError::Unknown("the upload stopped".into()))?
            })
            .await?;
        Ok(sent.map(|sent| self.stream_of(sent, budget, integrity)))
    }
}
