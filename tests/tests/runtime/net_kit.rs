//! `astrid:http@1.0.0`, `@1.1.0` and `astrid:net@1.0.0` from one real guest (`netkit`)
//! against servers on loopback that the tests start: a keep-alive HTTP/1.1 server (chunked
//! uploads, trailers, redirects), a TCP echo server that reports every connection closed by
//! its client, and Unix/TCP clients of the capsule's own listeners. Loopback is opened by the
//! operator's policy where a test needs it, and closed where a test checks the airlock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capsule_runtime::security::StaticResolver;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::common::*;
use crate::loopback::{Echo, Listening, OPEN_LOOPBACK, ip, policy_host};

/// Bounds every wait for a server-side event, so a regression fails instead of hanging.
const GUARD: Duration = Duration::from_secs(60);

/// A keep-alive HTTP/1.1 server counting the connections it accepted.
struct Web {
    connections: Arc<AtomicUsize>,
    listening: Listening,
}

impl Web {
    async fn start() -> Self {
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let listening = Listening::start(move |sock| {
            count.fetch_add(1, Ordering::SeqCst);
            serve(sock)
        })
        .await;
        Self {
            connections,
            listening,
        }
    }

    fn url(&self, path: &str) -> String {
        self.listening.url(path)
    }
}

/// Answers requests on one connection until the client closes it.
async fn serve(sock: TcpStream) {
    let mut r = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
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
            if h == "transfer-encoding: chunked" {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).await.unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut part = vec![0; n + 2];
                if r.read_exact(&mut part).await.is_err() {
                    return;
                }
                body.extend_from_slice(&part[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            body.resize(length, 0);
            if r.read_exact(&mut body).await.is_err() {
                return;
            }
        }
        let plain = |status: &str, extra: &str, text: &str| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n{text}",
                text.len()
            )
        };
        let reply = match path.as_str() {
            "/hello" => plain("200 OK", "", "hello"),
            "/redirect" => plain("302 Found", "Location: /hello\r\n", ""),
            "/big" => plain("200 OK", "", &"x".repeat(1000)),
            "/upload" => plain(
                "200 OK",
                "",
                &format!("got:{}", String::from_utf8_lossy(&body)),
            ),
            "/trailers" => {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                            3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n"
                    .to_string()
            }
            _ => plain("404 Not Found", "", ""),
        };
        if r.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn resolver() -> StaticResolver {
    StaticResolver::new()
        .with("loop.test", &[ip("127.0.0.1")])
        .with("intranet.test", &[ip("10.0.0.7")])
        .with("mapped.test", &[ip("::ffff:127.0.0.1")])
}

fn kit_host(policy: &str) -> Host {
    policy_host(policy, resolver())
}

async fn kit(h: &Host, name: &str, caps: &str) -> capsule_runtime::Capsule {
    h.approve_all();
    h.load(name, "netkit.wasm", &format!("[capabilities]\n{caps}"))
        .await
}

async fn run(c: &capsule_runtime::Capsule, action: &str, args: Value) -> Value {
    call(c, action, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_guest_uses_http_1_0_http_1_1_and_net_side_by_side() {
    let web = Web::start().await;
    let echo = Echo::start().await;
    let h = kit_host(OPEN_LOOPBACK);
    let c = kit(
        &h,
        "netkit",
        &format!(
            "net = [\"127.0.0.1\"]\nnet_connect = [\"127.0.0.1:{}\", \"loop.test:{}\"]\n",
            echo.port, echo.port
        ),
    )
    .await;
    // The same guest calls 1.0 and 1.1, in both orders, each getting its own version's
    // answer; then net.
    let r = run(&c, "get10", json!({"url": web.url("/hello")})).await;
    assert_eq!(ok(&r)["status"], 200);
    assert_eq!(ok(&r)["body"], "hello");
    let r = run(&c, "get11", json!({"url": web.url("/hello")})).await;
    assert_eq!(ok(&r)["body"], "hello");
    assert_eq!(ok(&r)["wire-bytes"], 5);
    assert_eq!(ok(&r)["final-url"], web.url("/hello"));
    let r = run(&c, "get10", json!({"url": web.url("/trailers")})).await;
    assert_eq!(ok(&r)["body"], "abc");
    let r = run(
        &c,
        "tcp-echo",
        json!({"host": "127.0.0.1", "port": echo.port, "msg": "ping", "rounds": 3}),
    )
    .await;
    assert_eq!(ok(&r)["echo"], "ping");
    assert_eq!(ok(&r)["peer"], format!("127.0.0.1:{}", echo.port));
    // By name, resolved by the host through the airlock.
    let r = run(
        &c,
        "tcp-echo",
        json!({"host": "loop.test", "port": echo.port, "msg": "named"}),
    )
    .await;
    assert_eq!(ok(&r)["echo"], "named");
    let r = run(&c, "lookup", json!({"host": "loop.test"})).await;
    assert_eq!(ok(&r), &json!(["127.0.0.1"]));
    // UDP is not served, even to this capsule with loopback open and network grants.
    let r = run(&c, "udp", json!({})).await;
    assert_eq!(err(&r), "capability-denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_request_options_are_honoured() {
    let web = Web::start().await;
    let h = kit_host(OPEN_LOOPBACK);
    let c = kit(&h, "netkit", "net = [\"127.0.0.1\"]\n").await;
    let get = |path: &str, options: Value| json!({"url": web.url(path), "options": options});
    let r = run(&c, "get11", get("/redirect", json!({"redirect": "error"}))).await;
    assert_eq!(err(&r), "redirect-blocked");
    let r = run(&c, "get11", get("/redirect", json!({"redirect": "manual"}))).await;
    assert_eq!(ok(&r)["status"], 302);
    assert_eq!(ok(&r)["redirects"], 0);
    let r = run(&c, "get11", get("/redirect", json!({"redirect": "follow"}))).await;
    assert_eq!(ok(&r)["body"], "hello");
    assert_eq!(ok(&r)["redirects"], 1);
    assert_eq!(ok(&r)["final-url"], web.url("/hello"));
    let r = run(&c, "get11", get("/redirect", json!({"max-redirects": 0}))).await;
    assert_eq!(err(&r), "too-many-redirects");
    let r = run(&c, "get11", get("/big", json!({"max-bytes": 999}))).await;
    assert_eq!(err(&r), "body-too-large");
    let r = run(&c, "get11", get("/big", json!({"max-bytes": 1000}))).await;
    assert_eq!(ok(&r)["wire-bytes"], 1000);
    let r = run(&c, "get11", get("/hello", json!({"https-only": true}))).await;
    assert_eq!(err(&r), "scheme-denied");
    let r = run(&c, "get11", get("/hello", json!({"total-ms": 0}))).await;
    assert_eq!(err(&r), "invalid-request");
    let good = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    let r = run(&c, "get11", get("/hello", json!({"integrity": good}))).await;
    assert_eq!(ok(&r)["body"], "hello");
    let r = run(&c, "get11", get("/big", json!({"integrity": good}))).await;
    assert_eq!(err(&r), "integrity-mismatch");
    // Streams: trailers once the body has ended.
    let r = run(&c, "stream11", get("/trailers", json!({}))).await;
    assert_eq!(ok(&r)["body"], "abc");
    assert_eq!(ok(&r)["trailers"], json!(["x-sum=7"]));
    // Uploads: the body streamed in parts.
    let r = run(
        &c,
        "upload11",
        json!({"url": web.url("/upload"), "options": {}, "parts": ["ab", "cd", "ef"]}),
    )
    .await;
    assert_eq!(ok(&r)["body"], "got:abcdef");
    // An upload to a host outside the grant fails at once.
    let r = run(
        &c,
        "upload11",
        json!({"url": "http://elsewhere.example/upload", "options": {}, "parts": []}),
    )
    .await;
    assert_eq!(err(&r), "capability-denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused_per_principal_and_never_shared() {
    let web = Web::start().await;
    let h = kit_host(OPEN_LOOPBACK);
    let c = kit(&h, "netkit", "net = [\"127.0.0.1\"]\n").await;
    let many = json!({"url": web.url("/hello"), "count": 5});
    assert_eq!(
        ok(&call_as(&c, "get-many", many.clone(), Some("alice")).await),
        5
    );
    assert_eq!(web.connections.load(Ordering::SeqCst), 1);
    // Bob's requests never ride on Alice's idle connection.
    assert_eq!(
        ok(&call_as(&c, "get-many", many.clone(), Some("bob")).await),
        5
    );
    assert_eq!(web.connections.load(Ordering::SeqCst), 2);
    assert_eq!(ok(&call_as(&c, "get-many", many, Some("alice")).await), 5);
    assert_eq!(web.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_refuses_ungranted_and_airlocked_destinations() {
    let echo = Echo::start().await;
    // Loopback is not opened here: the airlock refuses it in every form.
    let h = kit_host("");
    let p = echo.port;
    let c = kit(
        &h,
        "netkit",
        &format!(
            "net = [\"intranet.test\"]\n\
             net_connect = [\"127.0.0.1:{p}\", \"[::ffff:127.0.0.1]:{p}\", \"[::ffff:7f00:1]:{p}\", \
             \"intranet.test:{p}\", \"mapped.test:{p}\", \"loop.test:{p}\", \"0.0.0.0:{p}\", \
             \"[::]:{p}\"]\nnet_bind = [\"*:*\"]\n"
        ),
    )
    .await;
    for host in [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "[::ffff:7f00:1]",
        "intranet.test",
        "mapped.test",
        "loop.test",
        "0.0.0.0",
        "::",
    ] {
        let r = run(&c, "connect", json!({"host": host, "port": p})).await;
        assert_eq!(err(&r), "airlock-rejected", "{host}");
    }
    let r = run(&c, "connect", json!({"host": "127.0.0.1", "port": p + 1})).await;
    assert_eq!(err(&r), "capability-denied");
    let r = run(&c, "connect", json!({"host": "example.com", "port": p})).await;
    assert_eq!(err(&r), "capability-denied");
    let r = run(&c, "lookup", json!({"host": "intranet.test"})).await;
    assert_eq!(err(&r), "airlock-rejected");
    let r = run(&c, "udp", json!({})).await;
    assert_eq!(err(&r), "capability-denied");
    // HTTP 1.1 to a name pointing at a private address: refused by the same airlock.
    let r = run(
        &c,
        "get11",
        json!({"url": "http://intranet.test/", "options": {}}),
    )
    .await;
    assert_eq!(err(&r), "airlock-rejected");
    // Listeners bind loopback only, whatever the grant says.
    for host in [
        "0.0.0.0",
        "::",
        "10.0.0.7",
        "::ffff:127.0.0.1",
        "example.com",
    ] {
        let r = run(&c, "bind-tcp", json!({"host": host, "port": 0})).await;
        assert_eq!(err(&r), "capability-denied", "{host}");
    }
    // Nothing reached the echo server.
    assert!(echo.closed.is_empty());
}

/// Waits (bounded) for the echo server to see one connection end.
async fn closes(rx: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("a socket stayed open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_capped_per_principal_and_unload_closes_them() {
    let mut echo = Echo::start().await;
    let h = kit_host(OPEN_LOOPBACK);
    h.profile("alice", "[quotas]\nmax_sockets = 2\n");
    let c = kit(
        &h,
        "netkit",
        &format!("net_connect = [\"127.0.0.1:{}\"]\n", echo.port),
    )
    .await;
    let hold = json!({"host": "127.0.0.1", "port": echo.port, "msg": "x"});
    assert_eq!(
        ok(&call_as(&c, "hold", hold.clone(), Some("alice")).await),
        1
    );
    assert_eq!(
        ok(&call_as(&c, "hold", hold.clone(), Some("alice")).await),
        2
    );
    let r = call_as(&c, "hold", hold.clone(), Some("alice")).await;
    assert_eq!(err(&r), "quota");
    // Releasing frees Alice's slots; the server sees both of her connections end.
    assert_eq!(
        ok(&call_as(&c, "release", json!({}), Some("alice")).await),
        2
    );
    closes(&mut echo.closed).await;
    closes(&mut echo.closed).await;
    assert_eq!(
        ok(&call_as(&c, "hold", hold.clone(), Some("alice")).await),
        1
    );
    assert_eq!(
        ok(&call_as(&c, "hold", hold.clone(), Some("alice")).await),
        2
    );
    // Another principal has its own count, and never Alice's sockets: its call gets a fresh
    // instance, and the Store holding Alice's sockets is discarded, closing them.
    assert_eq!(ok(&call_as(&c, "hold", hold.clone(), Some("bob")).await), 1);
    closes(&mut echo.closed).await;
    closes(&mut echo.closed).await;
    // Unloading closes what is still held: the peer sees end of stream.
    c.unload().await;
    closes(&mut echo.closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_talks_to_the_capsules_unix_and_tcp_listeners() {
    let h = kit_host("");
    let c = kit(&h, "netkit", "net_bind = [\"unix:\", \"127.0.0.1:*\"]\n").await;
    assert_eq!(ok(&run(&c, "bind-unix", json!({})).await), true);
    let path = h.state().join("run").join("netkit").join("net.sock");
    let mut client = tokio::net::UnixStream::connect(&path)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    client
        .write_all(b"ping\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = run(&c, "serve-one", json!({"on": "unix"})).await;
    assert_eq!(ok(&r)["peeked"], "ping");
    assert_eq!(ok(&r)["line"], "ping\n");
    assert_eq!(ok(&r)["nodelay"], "not-tcp");
    let mut answer = [0u8; 5];
    tokio::time::timeout(GUARD, client.read_exact(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&answer, b"PING\n");
    // One Unix listener per capsule.
    assert_eq!(
        err(&run(&c, "bind-unix", json!({})).await),
        "address-in-use"
    );
    // A loopback TCP listener, found by its local address.
    let r = run(&c, "bind-tcp", json!({"host": "127.0.0.1", "port": 0})).await;
    let addr: SocketAddr = ok(&r)
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tcp.write_all(b"tcp!\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = run(&c, "serve-one", json!({"on": "tcp"})).await;
    assert_eq!(ok(&r)["line"], "tcp!\n");
    assert!(ok(&r)["nodelay"].is_null(), "{r}");
    let mut answer = [0u8; 5];
    tokio::time::timeout(GUARD, tcp.read_exact(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&answer, b"TCP!\n");
    // Unloading removes the socket file.
    c.unload().await;
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_at_the_unix_socket_path_is_refused_and_left_alone() {
    let h = kit_host("");
    let dir = h.state().join("run").join("netkit");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let victim = h.state().join("victim.txt");
    std::fs::write(&victim, "keep").unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&victim, dir.join("net.sock")).unwrap_or_else(|e| panic!("{e}"));
    let c = kit(&h, "netkit", "net_bind = [\"unix:\"]\n").await;
    let r = run(&c, "bind-unix", json!({})).await;
    assert_eq!(err(&r), "address-not-available");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap_or_else(|e| panic!("{e}")),
        "keep"
    );
    // Without the grant there is no listener at all.
    let d = kit(&h, "netkit-nogrant", "net = [\"example.com\"]\n").await;
    assert_eq!(
        err(&run(&d, "bind-unix", json!({})).await),
        "capability-denied"
    );
}
