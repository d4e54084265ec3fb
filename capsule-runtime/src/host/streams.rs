//! `astrid:io/streams@1.0.0` and `astrid:io/error@1.0.0`: byte streams over host [`Pipe`]s.
//! Other capabilities create the streams (an HTTP response body, an upload) and own the task
//! on the far side of the pipe; this module only moves bytes between a pipe and the guest.
//! Reads return what is there (at most `MAX_STREAM_CHUNK` bytes a call), writes never queue
//! more than the pipe holds, waiting calls race the capsule's cancellation and the call's deadline, and dropping a
//! stream closes its side of the pipe so the producer stops at once.

use std::sync::Arc;

use bytes::Bytes;
use capsule_wit::astrid::io::error::{Error, HostError};
use capsule_wit::astrid::io::poll::Pollable;
use capsule_wit::astrid::io::streams::{
    Host, HostInputStream, HostOutputStream, InputStream, OutputStream, StreamError,
};
use wasmtime::component::{HasData, Linker, Resource};

use crate::error::LoadError;
use crate::host::pipe::{self, End, Pipe, Read};
use crate::host::poll::signal_pollable;
use crate::host::{Assembly, Capability, HostState, InstanceCx, View, view};

/// Most bytes one read, skip or write-zeroes call moves.
pub const MAX_STREAM_CHUNK: usize = 64 * 1024;

/// The `astrid:io/streams` and `astrid:io/error` capability. Streams live in the Store's
/// resource table; there is nothing capsule-wide.
pub(crate) struct StreamsHost;

/// The view both interfaces are implemented on.
type StreamsView<'a> = View<'a, ()>;

impl HasData for StreamsHost {
    type Data<'a> = StreamsView<'a>;
}

impl Capability for StreamsHost {
    const INTERFACES: &'static [&'static str] =
        &["astrid:io/error@1.0.0", "astrid:io/streams@1.0.0"];
    type Shared = ();
    type Ctx = ();

    fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        capsule_wit::astrid::io::error::add_to_linker::<HostState, StreamsHost>(
            linker,
            view::<StreamsHost>,
        )?;
        capsule_wit::astrid::io::streams::add_to_linker::<HostState, StreamsHost>(
            linker,
            view::<StreamsHost>,
        )
    }

    fn assemble(_cx: &Assembly<'_>) -> Result<(), LoadError> {
        Ok(())
    }

    fn instance((): &(), _cx: &InstanceCx<'_>) {}
}

/// An input stream in the resource table: the read side of a pipe.
#[derive(Debug)]
pub(crate) struct InputEntry(pub(crate) Arc<Pipe>);

impl Drop for InputEntry {
    /// However the stream goes (dropped by the guest or with its Store), the producer stops.
    fn drop(&mut self) {
        self.0.close_reader();
    }
}

/// An output stream in the resource table: the write side of a pipe.
#[derive(Debug)]
pub(crate) struct OutputEntry(pub(crate) Arc<Pipe>);

/// A stream failure's description, for `to-debug-string`.
#[derive(Debug)]
pub(crate) struct ErrorEntry(String);

/// Puts the read side of `pipe` in `table` as a guest input stream.
pub(crate) fn new_input(
    table: &mut wasmtime::component::ResourceTable,
    pipe: Arc<Pipe>,
) -> wasmtime::Result<Resource<InputStream>> {
    Ok(Resource::new_own(table.push(InputEntry(pipe))?.rep()))
}

/// Puts the write side of `pipe` in `table` as a guest output stream.
pub(crate) fn new_output(
    table: &mut wasmtime::component::ResourceTable,
    pipe: Arc<Pipe>,
) -> wasmtime::Result<Resource<OutputStream>> {
    Ok(Resource::new_own(table.push(OutputEntry(pipe))?.rep()))
}

fn input(r: &Resource<InputStream>) -> Resource<InputEntry> {
    Resource::new_borrow(r.rep())
}

fn output(r: &Resource<OutputStream>) -> Resource<OutputEntry> {
    Resource::new_borrow(r.rep())
}

fn chunk(len: u64) -> usize {
    usize::try_from(len).map_or(MAX_STREAM_CHUNK, |l| l.min(MAX_STREAM_CHUNK))
}

impl StreamsView<'_> {
    fn failed(&mut self, why: String) -> wasmtime::Result<StreamError> {
        let entry = self.core.table.push(ErrorEntry(why))?;
        Ok(StreamError::LastOperationFailed(Resource::new_own(
            entry.rep(),
        )))
    }

    /// A read's answer for what the pipe had.
    fn answer(&mut self, read: Read) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        Ok(match read {
            Read::Data(b) => Ok(b.to_vec()),
            Read::Empty => Ok(Vec::new()),
            Read::End(End::Done) => Err(StreamError::Closed),
            Read::End(End::Failed(why)) => Err(self.failed(why)?),
        })
    }

    /// Waits until `wait` is done; `false` if the capsule unloaded first, a trap if the
    /// call's deadline passed.
    async fn wait(&mut self, wait: impl Future<Output = ()>) -> wasmtime::Result<bool> {
        Ok(self.core.limits.race(wait).await?.is_some())
    }

    async fn blocking_read_pipe(
        &mut self,
        pipe: Arc<Pipe>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        if !self.wait(pipe.readable()).await? {
            return Ok(Err(StreamError::Closed));
        }
        let read = pipe.try_read(chunk(len));
        self.answer(read)
    }

    /// Queues `bytes` waiting for room as needed; `Closed` when the reader has gone.
    async fn write_all(
        &mut self,
        pipe: Arc<Pipe>,
        mut bytes: Bytes,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        while !bytes.is_empty() {
            if !self.wait(pipe.writable()).await? {
                return Ok(Err(StreamError::Closed));
            }
            let Some(room) = pipe.room() else {
                return Ok(Err(StreamError::Closed));
            };
            let part = bytes.split_to(room.min(bytes.len()));
            if !pipe.try_push(part) {
                return Ok(Err(StreamError::Closed));
            }
        }
        Ok(Ok(()))
    }

    fn write_now(
        &mut self,
        pipe: &Pipe,
        bytes: Bytes,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        match pipe.room() {
            None => Ok(Err(StreamError::Closed)),
            Some(room) if bytes.len() > room => Ok(Err(self.failed(format!(
                "write of {} bytes exceeds the {room} bytes check-write permitted",
                bytes.len()
            ))?)),
            Some(_) => Ok(if pipe.try_push(bytes) {
                Ok(())
            } else {
                Err(StreamError::Closed)
            }),
        }
    }

    async fn splice_from(
        &mut self,
        to: Arc<Pipe>,
        src: &Resource<InputStream>,
        len: u64,
        wait: bool,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        let from = Arc::clone(&self.core.table.get(&input(src))?.0);
        if wait && !self.wait(from.readable()).await? {
            return Ok(Err(StreamError::Closed));
        }
        if wait && !self.wait(to.writable()).await? {
            return Ok(Err(StreamError::Closed));
        }
        let Some(room) = to.room() else {
            return Ok(Err(StreamError::Closed));
        };
        match from.try_read(chunk(len).min(room)) {
            Read::Data(b) => {
                let n = b.len() as u64;
                Ok(if to.try_push(b) {
                    Ok(n)
                } else {
                    Err(StreamError::Closed)
                })
            }
            Read::Empty => Ok(Ok(0)),
            Read::End(End::Done) => Ok(Err(StreamError::Closed)),
            Read::End(End::Failed(why)) => Ok(Err(self.failed(why)?)),
        }
    }
}

impl HostError for StreamsView<'_> {
    fn to_debug_string(&mut self, self_: Resource<Error>) -> wasmtime::Result<String> {
        Ok(self
            .core
            .table
            .get(&Resource::<ErrorEntry>::new_borrow(self_.rep()))?
            .0
            .clone())
    }

    fn drop(&mut self, rep: Resource<Error>) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<ErrorEntry>::new_own(rep.rep()))?;
        Ok(())
    }
}

impl capsule_wit::astrid::io::error::Host for StreamsView<'_> {}

impl HostInputStream for StreamsView<'_> {
    async fn read(
        &mut self,
        self_: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        let read = self.core.table.get(&input(&self_))?.0.try_read(chunk(len));
        self.answer(read)
    }

    async fn blocking_read(
        &mut self,
        self_: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        let pipe = Arc::clone(&self.core.table.get(&input(&self_))?.0);
        self.blocking_read_pipe(pipe, len).await
    }

    async fn skip(
        &mut self,
        self_: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(self.read(self_, len).await?.map(|b| b.len() as u64))
    }

    async fn blocking_skip(
        &mut self,
        self_: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(self
            .blocking_read(self_, len)
            .await?
            .map(|b| b.len() as u64))
    }

    async fn subscribe(
        &mut self,
        self_: Resource<InputStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        let pipe = Arc::clone(&self.core.table.get(&input(&self_))?.0);
        signal_pollable(self.core.table, Arc::new(pipe::Readable(pipe)))
    }

    async fn drop(&mut self, rep: Resource<InputStream>) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<InputEntry>::new_own(rep.rep()))?;
        Ok(())
    }
}

impl Drop for OutputEntry {
    /// The writer is done, however it went: what it queued is the whole body.
    fn drop(&mut self) {
        self.0.finish(End::Done);
    }
}

impl HostOutputStream for StreamsView<'_> {
    async fn check_write(
        &mut self,
        self_: Resource<OutputStream>,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        let room = self.core.table.get(&output(&self_))?.0.room();
        Ok(room.map(|r| r as u64).ok_or(StreamError::Closed))
    }

    async fn write(
        &mut self,
        self_: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let pipe = Arc::clone(&self.core.table.get(&output(&self_))?.0);
        self.write_now(&pipe, Bytes::from(contents))
    }

    async fn blocking_write_and_flush(
        &mut self,
        self_: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let pipe = Arc::clone(&self.core.table.get(&output(&self_))?.0);
        self.write_all(pipe, Bytes::from(contents)).await
    }

    async fn flush(
        &mut self,
        self_: Resource<OutputStream>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        // Queued bytes are the consumer's as soon as they are queued: there is nothing to
        // flush, only whether the stream still accepts bytes.
        self.check_write(self_).await.map(|r| r.map(|_| ()))
    }

    async fn blocking_flush(
        &mut self,
        self_: Resource<OutputStream>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        self.flush(self_).await
    }

    async fn subscribe(
        &mut self,
        self_: Resource<OutputStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        let pipe = Arc::clone(&self.core.table.get(&output(&self_))?.0);
        signal_pollable(self.core.table, Arc::new(pipe::Writable(pipe)))
    }

    async fn write_zeroes(
        &mut self,
        self_: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let pipe = Arc::clone(&self.core.table.get(&output(&self_))?.0);
        let Ok(len) = usize::try_from(len) else {
            return Ok(Err(self.failed("write-zeroes length too large".into())?));
        };
        if pipe.room().is_some_and(|room| len > room) {
            return Ok(Err(self.failed(format!(
                "write-zeroes of {len} bytes exceeds what check-write permitted"
            ))?));
        }
        self.write_now(&pipe, Bytes::from(vec![0; len]))
    }

    async fn blocking_write_zeroes_and_flush(
        &mut self,
        self_: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let pipe = Arc::clone(&self.core.table.get(&output(&self_))?.0);
        let mut left = len;
        while left > 0 {
            let n = chunk(left);
            if let Err(e) = self
                .write_all(Arc::clone(&pipe), Bytes::from(vec![0; n]))
                .await?
            {
                return Ok(Err(e));
            }
            left -= n as u64;
        }
        Ok(Ok(()))
    }

    async fn splice(
        &mut self,
        self_: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        let to = Arc::clone(&self.core.table.get(&output(&self_))?.0);
        self.splice_from(to, &src, len, false).await
    }

    async fn blocking_splice(
        &mut self,
        self_: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        let to = Arc::clone(&self.core.table.get(&output(&self_))?.0);
        self.splice_from(to, &src, len, true).await
    }

    async fn drop(&mut self, rep: Resource<OutputStream>) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<OutputEntry>::new_own(rep.rep()))?;
        Ok(())
    }
}

impl Host for StreamsView<'_> {}
