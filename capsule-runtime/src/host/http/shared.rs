//! What both `astrid:http` versions' host traits share word for word, kept in one place so the
//! two versions cannot drift: the `http-stream` methods, as a macro each version expands.

/// The `http-stream` methods both WIT versions share, written once: expanded inside each
/// version's `HostHttpStream` impl, where `HttpStream`, `KeyValuePair`, `ErrorCode`,
/// `Pollable`, `InputStream`, `kv` and `code` name that version's items.
macro_rules! shared_stream_methods {
    () => {
        async fn status(&mut self, self_: Resource<HttpStream>) -> wasmtime::Result<u16> {
            Ok(self.stream(self_.rep())?.status)
        }

        async fn headers(
            &mut self,
            self_: Resource<HttpStream>,
        ) -> wasmtime::Result<Vec<KeyValuePair>> {
            Ok(kv(self.stream(self_.rep())?.headers.clone()))
        }

        /// The next chunk; an empty chunk means the body has ended.
        async fn read_chunk(
            &mut self,
            self_: Resource<HttpStream>,
        ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
            Ok(self.next_chunk(self_.rep()).await?.map_err(|e| code(&e)))
        }

        async fn close(
            &mut self,
            self_: Resource<HttpStream>,
        ) -> wasmtime::Result<Result<(), ErrorCode>> {
            Ok(self.close_stream(self_.rep())?.map_err(|e| code(&e)))
        }

        async fn subscribe_readable(
            &mut self,
            self_: Resource<HttpStream>,
        ) -> wasmtime::Result<Resource<Pollable>> {
            self.readable_pollable(self_.rep())
        }

        async fn body_stream(
            &mut self,
            self_: Resource<HttpStream>,
        ) -> wasmtime::Result<Resource<InputStream>> {
            self.stream_body(self_.rep())
        }

        async fn drop(&mut self, rep: Resource<HttpStream>) -> wasmtime::Result<()> {
            self.drop_stream(rep.rep())
        }
    };
}
