//! Attacks on `astrid:http@1.1.0` and `astrid:net@1.0.0` from a hostile guest (`net-hostile`):
//! integrity metadata an upload would ignore, finished streams hoarded past the in-flight
//! cap, write and read views piled on one socket, refusals that must be audited, a pooled
//! connection after its name moved, smuggled headers, redirect limits and policies, socket
//! options at their extremes and parents dropped before their children. The far ends are
//! servers on loopback the tests start; DNS is a resolver the test can re-point.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capsule_runtime::security::{ResolveError, Resolver};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

const OPEN_LOOPBACK: &str = "[net]\nopen_ranges = [\"127.0.0.0/8\"]\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// DNS the test re-points while the host runs.
#[derive(Debug, Default)]
struct Dns(Mutex<HashMap<String, Vec<IpAddr>>>);

impl Dns {
    fn point(&self, name: &str, to: &str) {
        self.0.lock().insert(name.to_string(), vec![ip(to)]);
    }
}

impl Resolver for Dns {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        self.0
            .lock()
            .get(host)
            .cloned()
            .ok_or_else(|| ResolveError::NotFound(host.to_string()))
    }
}

/// A host with `policy` as its `policy.toml`, resolving through the returned `Dns`.
fn hostile_host(policy: &str) -> (Host, Arc<Dns>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    if !policy.is_empty() {
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap_or_else(|e| panic!("{e}"));
    }
    let dns = Arc::new(Dns::default());
    dns.point("intranet.test", "10.0.0.7");
    let resolver: Arc<dyn Resolver> = dns.clone();
    (host_in(dir, move |c| c.resolver = Some(resolver)), dns)
}

async fn hostile(h: &Host, name: &str, caps: &str) -> capsule_runtime::Capsule {
    h.approve_all();
    h.load(name, "net-hostile.wasm", &format!("[capabilities]\n{caps}"))
        .await
}

fn net_audit(capsule: &str) -> Vec<AuditEvent> {
    audit_events(capsule)
        .into_iter()
        .filter(|e| e.get("target").map(String::as_str) == Some("capsule::audit::net"))
        .collect()
}

fn audited(capsule: &str, code: &str, host: &str) -> bool {
    net_audit(capsule).iter().any(|e| {
        e.get("code").map(String::as_str) == Some(code)
            && e.get("host").is_some_and(|h| h.contains(host))
    })
}

/// A keep-alive HTTP/1.1 server counting connections and requests.
struct Web {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Web {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Web {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock, Arc::clone(&r)));
            }
        });
        Self {
            addr,
            connections,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    fn named(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request body (by length or chunked); `None` when the client went away.
async fn body(r: &mut BufReader<TcpStream>, length: usize, chunked: bool) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if !chunked {
        body.resize(length, 0);
        r.read_exact(&mut body).await.ok()?;
        return Some(body);
    }
    loop {
        let mut size = String::new();
        if r.read_line(&mut size).await.ok()? == 0 {
            return None;
        }
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut part = vec![0; n + 2];
        r.read_exact(&mut part).await.ok()?;
        body.extend_from_slice(&part[..n]);
        if n == 0 {
            return Some(body);
        }
    }
}

/// Answers requests on one connection: `/hello`, `/loop` (redirects to itself), `/to-meta`
/// (redirects to the metadata address), `/upload` (echoes the body), `/redirect-upload`
/// (307 to `/upload`).
async fn serve(sock: TcpStream, requests: Arc<AtomicUsize>) {
    let mut r = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            chunked |= h == "transfer-encoding: chunked";
        }
        let Some(got) = body(&mut r, length, chunked).await else {
            return;
        };
        let answer = |status: &str, extra: &str, text: &str| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n{text}",
                text.len()
            )
        };
        let out = match path.as_str() {
            "/hello" => answer("200 OK", "", "hello"),
            "/loop" => answer("302 Found", "Location: /loop\r\n", ""),
            "/to-meta" => answer(
                "302 Found",
                "Location: http://169.254.169.254/latest\r\n",
                "",
            ),
            "/upload" => answer(
                "200 OK",
                "",
                &format!("got:{}", String::from_utf8_lossy(&got)),
            ),
            "/redirect-upload" => answer("307 Temporary Redirect", "Location: /upload\r\n", ""),
            _ => answer("404 Not Found", "", ""),
        };
        if r.get_mut().write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A TCP server on 127.0.0.1 that greets each client with `hello`, then echoes; or, as a
/// sink, accepts with a small receive buffer and never reads.
struct Peer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    async fn start(sink: bool) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        if sink {
            // Set before listening, so accepted connections keep a small window.
            socket
                .set_recv_buffer_size(4096)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        socket
            .bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = socket.listen(16).unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                if sink {
                    held.push(sock);
                    continue;
                }
                tokio::spawn(async move {
                    if sock.write_all(b"hello").await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = sock.read(&mut buf).await {
                        if sock.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_checked_against_its_integrity_metadata() {
    let web = Web::start().await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    let c = hostile(&h, "nh-integrity", "net = [\"127.0.0.1\"]\n").await;
    let upload = |integrity: &str| {
        json!({
            "url": web.url("/upload"),
            "method": "POST",
            "parts": ["a", "bc"],
            "options": {"integrity": integrity},
        })
    };
    // The digest of `got:abc`, what the server answers.
    let good = "sha256-UKoUnkpgMiBxWA0HY211VLwAQ+Hw7KbRYOc6fBJemuI=";
    let r = call(&c, "upload", upload(good)).await;
    assert_eq!(ok(&r)["body"], "got:abc", "{r}");
    let bad = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    let r = call(&c, "upload", upload(bad)).await;
    assert_eq!(err(&r), "integrity-mismatch", "{r}");
    // Metadata the check cannot use is refused before anything is sent, on every path.
    let sent = web.requests();
    for unusable in ["md5-abc", "sha256", "sha256-not*base64"] {
        let r = call(&c, "upload", upload(unusable)).await;
        assert_eq!(err(&r), "invalid-request", "{unusable}: {r}");
        let opts = json!({"url": web.url("/hello"), "options": {"integrity": unusable}});
        assert_eq!(
            err(&call(&c, "stream", opts.clone()).await),
            "invalid-request"
        );
        assert_eq!(err(&call(&c, "get", opts).await), "invalid-request");
    }
    assert_eq!(web.requests(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_streams_keep_their_in_flight_slot_until_dropped_or_closed() {
    let web = Web::start().await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    h.profile("alice", "[quotas]\nmax_http_streams = 2\n");
    let c = hostile(&h, "nh-hoard", "net = [\"127.0.0.1\"]\n").await;
    let hoard = |count: u64| json!({"url": web.url("/hello"), "count": count, "read": true});
    // Each body is read to its end and its transfer is over, but the buffered stream is
    // still held: a third would be a third body kept in the host.
    let r = call_as(&c, "hoard-streams", hoard(3), Some("alice")).await;
    assert_eq!(ok(&r), &json!({"started": 2, "refused": "quota"}), "{r}");
    assert!(
        audited("nh-hoard", "quota", "127.0.0.1"),
        "{:?}",
        net_audit("nh-hoard")
    );
    let r = call_as(&c, "hoard-streams", hoard(1), Some("alice")).await;
    assert_eq!(ok(&r)["refused"], "quota", "{r}");
    // Closing frees the slots (and the buffers); so does dropping.
    call_as(&c, "close-streams", json!({}), Some("alice")).await;
    let r = call_as(&c, "hoard-streams", hoard(2), Some("alice")).await;
    assert_eq!(ok(&r), &json!({"started": 2, "refused": null}), "{r}");
    assert_eq!(
        ok(&call_as(&c, "drop-streams", json!({}), Some("alice")).await),
        4
    );
    let r = call_as(&c, "hoard-streams", hoard(2), Some("alice")).await;
    assert_eq!(ok(&r), &json!({"started": 2, "refused": null}), "{r}");
    // Alice's hoard is hers alone.
    let r = call_as(&c, "hoard-streams", hoard(2), Some("bob")).await;
    assert_eq!(ok(&r)["started"], 2, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_views_piled_on_one_socket_hold_one_buffer() {
    let sink = Peer::start(true).await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    let c = hostile(
        &h,
        "nh-views",
        &format!("net_connect = [\"127.0.0.1:{}\"]\n", sink.port),
    )
    .await;
    // 512 views of 64 KiB each would be 32 MiB queued in the host for a peer that never
    // reads; one view at a time holds at most its own buffer beyond the kernel's.
    let r = call(
        &c,
        "write-views",
        json!({"host": "127.0.0.1", "port": sink.port, "count": 512, "write-timeout-ms": 500}),
    )
    .await;
    let queued = ok(&r)["queued"].as_u64().unwrap_or_else(|| panic!("{r}"));
    assert!(queued < 16 * 1024 * 1024, "{queued} bytes queued: {r}");
    assert!(ok(&r)["refused"].as_u64() > Some(0), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_has_one_read_view_at_a_time_and_the_next_follows_the_last() {
    let peer = Peer::start(false).await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    let c = hostile(
        &h,
        "nh-readviews",
        &format!("net_connect = [\"127.0.0.1:{}\"]\n", peer.port),
    )
    .await;
    // A second live view would wait on data its sibling took, past any deadline: bounded
    // here so that a regression fails instead of hanging.
    let views = call_as(
        &c,
        "two-read-views",
        json!({"host": "127.0.0.1", "port": peer.port, "read-timeout-ms": 500}),
        Some("alice"),
    );
    let r = tokio::time::timeout(std::time::Duration::from_secs(120), views)
        .await
        .unwrap_or_else(|_| panic!("a read view waited forever"));
    // The second view, asked for while the first lives, is a failed stream; the first
    // gets the greeting; once both are gone a new view reads the echo.
    assert_eq!(
        ok(&r),
        &json!({"second": null, "first": "hello", "third": "more"}),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_quota_and_lookup_refusals_are_audited() {
    let peer = Peer::start(false).await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    h.profile("alice", "[quotas]\nmax_sockets = 1\nmax_listeners = 1\n");
    let c = hostile(
        &h,
        "nh-audit",
        &format!(
            "net_connect = [\"127.0.0.1:{}\", \"intranet.test:*\", \"missing.test:*\"]\n\
             net_bind = [\"127.0.0.1:*\"]\n",
            peer.port
        ),
    )
    .await;
    let hold = json!({"host": "127.0.0.1", "port": peer.port});
    let alice = Some("alice");
    assert_eq!(ok(&call_as(&c, "hold", hold.clone(), alice).await), 1);
    assert_eq!(
        err(&call_as(&c, "hold", hold.clone(), alice).await),
        "quota"
    );
    let bind = json!({"host": "127.0.0.1", "port": 0});
    ok(&call_as(&c, "bind", bind.clone(), alice).await);
    assert_eq!(err(&call_as(&c, "bind", bind, alice).await), "quota");
    let r = call_as(&c, "lookup", json!({"host": "intranet.test"}), alice).await;
    assert_eq!(err(&r), "airlock-rejected");
    let r = call_as(&c, "lookup", json!({"host": "missing.test"}), alice).await;
    assert_eq!(err(&r), "name-unresolvable");
    for (code, host) in [
        ("quota", "127.0.0.1"),
        ("airlock-rejected", "intranet.test"),
        ("name-unresolvable", "missing.test"),
    ] {
        assert!(
            audited("nh-audit", code, host),
            "{code} {host}: {:?}",
            net_audit("nh-audit")
        );
    }
    let quotas = net_audit("nh-audit")
        .into_iter()
        .filter(|e| e.get("code").map(String::as_str) == Some("quota"))
        .count();
    assert_eq!(quotas, 2, "{:?}", net_audit("nh-audit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_is_never_reused_once_its_name_moves() {
    let web = Web::start().await;
    let (h, dns) = hostile_host(OPEN_LOOPBACK);
    dns.point("moving.test", "127.0.0.1");
    let c = hostile(&h, "nh-rebind", "net = [\"moving.test\"]\n").await;
    let get = json!({"url": web.named("moving.test", "/hello")});
    assert_eq!(ok(&call(&c, "get", get.clone()).await)["body"], "hello");
    assert_eq!(ok(&call(&c, "get", get.clone()).await)["body"], "hello");
    assert_eq!(web.connections.load(Ordering::SeqCst), 1);
    // The name now answers a private address: the idle connection to the old one is not
    // a way around the airlock.
    dns.point("moving.test", "10.0.0.7");
    assert_eq!(err(&call(&c, "get", get.clone()).await), "airlock-rejected");
    assert_eq!(web.requests(), 2);
    // Another loopback address, open but not the one the connection goes to: a fresh
    // connection is tried (nobody listens there), never the pooled one.
    dns.point("moving.test", "127.0.0.2");
    assert_eq!(err(&call(&c, "get", get.clone()).await), "connection-error");
    assert_eq!(web.requests(), 2);
    dns.point("moving.test", "127.0.0.1");
    assert_eq!(ok(&call(&c, "get", get).await)["body"], "hello");
    assert_eq!(web.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_headers_methods_and_credentials_are_invalid_and_never_sent() {
    let web = Web::start().await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    let c = hostile(&h, "nh-smuggle", "net = [\"127.0.0.1\"]\n").await;
    let url = web.url("/hello");
    for (name, value) in [
        ("x-a", "b\r\nHost: evil.example"),
        ("x-a", "b\nc"),
        ("x-a", "b\0c"),
        ("x\0y", "1"),
        ("x y", "1"),
        ("", "1"),
        ("Host", "evil.example"),
        ("HOST", "evil.example"),
        ("Transfer-Encoding", "chunked"),
        ("content-length", "0"),
        ("Connection", "upgrade"),
        ("Upgrade", "h2c"),
    ] {
        let r = call(&c, "get", json!({"url": url, "headers": [[name, value]]})).await;
        assert_eq!(err(&r), "invalid-request", "{name:?}: {value:?}: {r}");
    }
    for method in ["GET /x HTTP/1.1\r\nX:", "G ET", "", "GET\0"] {
        let r = call(&c, "get", json!({"url": url, "method": method})).await;
        assert_eq!(err(&r), "invalid-request", "{method:?}: {r}");
    }
    let port = web.addr.port();
    for url in [
        format!("http://granted@127.0.0.1:{port}/hello"),
        format!("http://a:b@127.0.0.1:{port}/hello"),
        format!("ftp://127.0.0.1:{port}/hello"),
    ] {
        let r = call(&c, "get", json!({ "url": url })).await;
        assert_eq!(err(&r), "invalid-request", "{url:?}: {r}");
    }
    assert_eq!(web.requests(), 0);
    // Line breaks in a URL are dropped by URL parsing: one plain request, never two.
    let r = call(
        &c,
        "get",
        json!({"url": web.url("/hel\r\nGET /x HTTP/1.1\r\nlo")}),
    )
    .await;
    assert!(r.get("err").is_some() || ok(&r)["status"] == 404, "{r}");
    assert!(web.requests() <= 1, "{}", web.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_keep_their_limit_policy_and_airlock_whatever_the_guest_asks() {
    let web = Web::start().await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    let c = hostile(
        &h,
        "nh-redirect",
        "net = [\"127.0.0.1\", \"169.254.169.254\"]\n",
    )
    .await;
    // A redirect loop with the largest limit a guest can name: still at most 5 followed.
    let r = call(
        &c,
        "get",
        json!({"url": web.url("/loop"), "options": {"max-redirects": u32::MAX}}),
    )
    .await;
    assert_eq!(err(&r), "too-many-redirects", "{r}");
    assert_eq!(web.requests(), 6);
    // `manual` answers the redirect itself and goes nowhere.
    let r = call(
        &c,
        "get",
        json!({"url": web.url("/to-meta"), "options": {"redirect": "manual"}}),
    )
    .await;
    assert_eq!(ok(&r)["status"], 302, "{r}");
    assert_eq!(ok(&r)["redirects"], 0, "{r}");
    // `follow` re-checks the hop: granted, but the airlock refuses it, and says so.
    let r = call(
        &c,
        "get",
        json!({"url": web.url("/to-meta"), "options": {"redirect": "follow"}}),
    )
    .await;
    assert_eq!(err(&r), "airlock-rejected", "{r}");
    assert!(net_audit("nh-redirect").iter().any(|e| {
        e.get("host").is_some_and(|h| h.contains("169.254.169.254"))
            && e.get("redirect").map(String::as_str) == Some("true")
    }));
    // An upload's body cannot be replayed: its redirect is the answer, whatever the policy.
    let r = call(
        &c,
        "upload",
        json!({
            "url": web.url("/redirect-upload"),
            "method": "POST",
            "parts": ["x"],
            "options": {"redirect": "follow"},
        }),
    )
    .await;
    assert_eq!(ok(&r)["status"], 307, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_options_at_their_extremes_get_typed_answers() {
    let peer = Peer::start(false).await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    let c = hostile(
        &h,
        "nh-extremes",
        &format!("net_connect = [\"127.0.0.1:{}\"]\n", peer.port),
    )
    .await;
    let target = json!({"host": "127.0.0.1", "port": peer.port});
    let r = call(&c, "extremes", target.clone()).await;
    let o = ok(&r);
    for zero in ["read-timeout-0", "write-timeout-0", "keepalive-0"] {
        assert_eq!(o[zero], "unknown", "{zero}: {r}");
    }
    assert_eq!(o["read-timeout-max"], "ok", "{r}");
    assert_eq!(o["read-timeout-is"], u64::MAX, "{r}");
    assert_eq!(o["write-timeout-max"], "ok", "{r}");
    for any in [
        "keepalive-max",
        "linger-max",
        "hop-limit-0",
        "hop-limit-max",
    ] {
        assert!(
            matches!(o[any].as_str(), Some("ok" | "unknown")),
            "{any}: {r}"
        );
    }
    // Reads are bounded by the host's chunk, whatever length is asked for: the greeting.
    assert_eq!(o["peek-max"], 5, "{r}");
    assert_eq!(o["read-max"], 5, "{r}");
    assert_eq!(o["write-empty"], "ok", "{r}");
    // The instance survived all of it.
    let r = call(&c, "extremes", target).await;
    assert_eq!(ok(&r)["read-max"], 5, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_outliving_their_parent_fail_cleanly() {
    let web = Web::start().await;
    let peer = Peer::start(false).await;
    let (h, _dns) = hostile_host(OPEN_LOOPBACK);
    let c = hostile(
        &h,
        "nh-orphans",
        &format!(
            "net = [\"127.0.0.1\"]\nnet_connect = [\"127.0.0.1:{}\"]\n",
            peer.port
        ),
    )
    .await;
    let r = call(
        &c,
        "orphans",
        json!({
            "url": web.url("/hello"),
            "upload-url": web.url("/upload"),
            "method": "POST",
            "echo-host": "127.0.0.1",
            "port": peer.port,
        }),
    )
    .await;
    // Each child fails with a stream error (how the far side ended decides which), never
    // data without end, a hang or a trap.
    for child in ["body-read", "sink-write", "socket-read", "socket-write"] {
        assert!(
            matches!(ok(&r)[child].as_str(), Some("closed" | "failed")),
            "{child}: {r}"
        );
    }
    // And the capsule still serves.
    let r = call(&c, "get", json!({"url": web.url("/hello")})).await;
    assert_eq!(ok(&r)["body"], "hello", "{r}");
}
