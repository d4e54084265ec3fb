//! Keep-alive HTTP and TCP round trips on loopback, each from a guest (`netkit`: through the
//! grant, the airlock and the host's connection pool) next to the same exchange made directly
//! by the host's own client in the same run, so the difference is the guest's overhead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_runtime::{Runtime, RuntimeConfig};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{call, capsule_dir, emit};
use crate::{ApproveAll, measure};

/// Round trips one `tcp_echo_loopback` sample makes on one connection.
const ROUNDS: u64 = 200;
/// The message each round trip echoes.
const MSG: &[u8] = b"ping";

/// A loopback TCP echo server.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Runs both figures with a runtime of their own.
pub(crate) async fn net_benches(budget: Duration) {
    let web = crate::tiny_server(true).await;
    let echo = echo_server().await;
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        state.path().join("policy.toml"),
        "[net]\nopen_ranges = [\"127.0.0.0/8\"]\n",
    )
    .expect("policy");
    let rt = Runtime::new(RuntimeConfig::new(state.path())).expect("runtime");
    rt.set_approver(Arc::new(ApproveAll));
    let dir = capsule_dir(
        state.path(),
        "netkit",
        "netkit.wasm",
        &format!(
            "[capabilities]\nnet = [\"127.0.0.1\"]\nnet_connect = [\"127.0.0.1:{}\"]\n",
            echo.port()
        ),
    );
    let kit = rt.load(&dir).await.expect("load");

    // HTTP: 1.1 from the guest, its connection pooled between calls.
    let args = format!("{{\"url\":\"http://{web}/x\",\"options\":{{}}}}");
    let ns = measure(budget, 1, || {
        let (k, args) = (kit.clone(), args.clone());
        async move {
            let t = Instant::now();
            call(&k, "get11", &args).await;
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "http_get_loopback",
        "{\"path\":\"guest\",\"connection\":\"keep-alive\",\"interface\":\"astrid:http@1.1.0\"}",
        1e9 / ns,
        "requests/s",
    );
    let stream = tokio::net::TcpStream::connect(web).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let url = format!("http://{web}/x");
    let ns = measure(budget, 1, || {
        let (sender, url) = (Arc::clone(&sender), url.clone());
        async move {
            let t = Instant::now();
            let mut sender = sender.lock().await;
            sender.ready().await.expect("ready");
            let request = hyper::Request::get(url.as_str())
                .header("host", "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("send");
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes().as_ref(), b"ok");
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "http_get_loopback",
        "{\"path\":\"direct\",\"connection\":\"keep-alive\",\"client\":\"hyper http1\"}",
        1e9 / ns,
        "requests/s",
    );

    // TCP: one connection per sample, `ROUNDS` echoes on it.
    let args = format!(
        "{{\"host\":\"127.0.0.1\",\"port\":{},\"msg\":\"ping\",\"rounds\":{ROUNDS}}}",
        echo.port()
    );
    let ns = measure(budget, ROUNDS, || {
        let (k, args) = (kit.clone(), args.clone());
        async move {
            let t = Instant::now();
            call(&k, "tcp-echo", &args).await;
            t.elapsed()
        }
    })
    .await;
    emit(
        "runtime",
        "tcp_echo_loopback",
        "{\"path\":\"guest\",\"interface\":\"astrid:net@1.0.0\",\"bytes\":4}",
        1e9 / ns,
        "round-trips/s",
    );
    let ns = measure(budget, ROUNDS, || async move {
        let t = Instant::now();
        let mut s = tokio::net::TcpStream::connect(echo).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = [0u8; 64];
        for _ in 0..ROUNDS {
            s.write_all(MSG).await.expect("write");
            let mut got = 0;
            while got < MSG.len() {
                let n = s.read(&mut buf[got..]).await.expect("read");
                assert!(n > 0, "the echo server closed early");
                got += n;
            }
        }
        t.elapsed()
    })
    .await;
    emit(
        "runtime",
        "tcp_echo_loopback",
        "{\"path\":\"direct\",\"bytes\":4}",
        1e9 / ns,
        "round-trips/s",
    );
    kit.unload().await;
    rt.shutdown().await;
}
