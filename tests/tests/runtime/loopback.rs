//! The loopback servers and hosts the networking tests share: a listener on 127.0.0.1 that
//! hands every accepted connection to the test's own handler and stops when dropped, the
//! request-head reader those handlers use, a TCP echo server, and a host whose operator policy
//! and resolver the test chooses (so no test ever reaches past the machine).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use capsule_runtime::security::StaticResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::{Host, host_in};

/// The operator policy that opens loopback to outbound connections (a capsule never can).
pub(crate) const OPEN_LOOPBACK: &str = "[net]\nopen_ranges = [\"127.0.0.0/8\"]\n";

/// Largest request head the handlers read before giving up on a client.
const MAX_HEAD: usize = 64 * 1024;

/// An address literal the test wrote.
pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A host whose state directory holds `policy` as its `policy.toml` (empty: none), resolving
/// names only through `resolver`.
pub(crate) fn policy_host(policy: &str, resolver: StaticResolver) -> Host {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    if !policy.is_empty() {
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap_or_else(|e| panic!("{e}"));
    }
    let resolver = Arc::new(resolver);
    host_in(dir, move |c| c.resolver = Some(resolver))
}

/// A listener on 127.0.0.1 serving each connection with its own task; dropping it stops
/// accepting.
pub(crate) struct Listening {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listening {
    /// Binds an ephemeral loopback port and serves every connection with `serve`.
    pub(crate) async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock));
            }
        });
        Self { addr, task }
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }
}

/// A request head read off a connection, and the bytes already read past it.
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Header names lowercased, values trimmed, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// Body bytes that arrived with the head.
    pub(crate) rest: Vec<u8>,
}

impl Head {
    /// The first header named `name` (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head (at most `MAX_HEAD` bytes); `None` if the client closed, broke
/// the connection or sent too much first.
pub(crate) async fn read_head(sock: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 || buf.len() > MAX_HEAD {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head {
        method,
        path,
        headers,
        rest: buf[end..].to_vec(),
    })
}

/// A TCP echo server on loopback; tells `closed` each time a client's side reaches end of
/// stream.
pub(crate) struct Echo {
    pub(crate) port: u16,
    pub(crate) closed: mpsc::UnboundedReceiver<()>,
    _listening: Listening,
}

impl Echo {
    /// Starts it on an ephemeral port.
    pub(crate) async fn start() -> Self {
        let (tx, closed) = mpsc::unbounded_channel();
        let listening = Listening::start(move |mut sock: TcpStream| {
            let tx = tx.clone();
            async move {
                let mut buf = [0u8; 4096];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(());
            }
        })
        .await;
        Self {
            port: listening.port(),
            closed,
            _listening: listening,
        }
    }
}
