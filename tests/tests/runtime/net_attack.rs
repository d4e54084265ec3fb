//! Attacks on outbound HTTP from a real guest (`netprobe`): other spellings of refused hosts,
//! credentials and backslashes in URLs, hostile redirects (other spellings, other schemes,
//! scheme-relative), servers that never answer or trickle bytes, headers too large to hold,
//! and what a failing transfer tells the guest. A hostile HTTP server on loopback plays the
//! far end; a resolver the test controls plays DNS.

use std::net::SocketAddr;
use std::time::Duration;

use capsule_runtime::security::StaticResolver;
use capsule_runtime::{Interrupt, InvokeError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::common::*;
use crate::loopback::{Listening, policy_host, read_head};
pub(crate) use crate::loopback::{OPEN_LOOPBACK, ip};

/// What the hostile server reports: `accepted <path>` once a request head is read, `eof
/// <path>` once its client closed the connection.
type Reports = mpsc::UnboundedReceiver<String>;

/// An HTTP/1.1 server on 127.0.0.1 that misbehaves on request.
pub(crate) struct Hostile {
    addr: SocketAddr,
    reports: Reports,
    _listening: Listening,
}

impl Hostile {
    pub(crate) async fn start() -> Self {
        let (tx, reports) = mpsc::unbounded_channel();
        let listening = Listening::start(move |sock| serve(sock, tx.clone())).await;
        Self {
            addr: listening.addr,
            reports,
            _listening: listening,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next report starting with `prefix` (bounded wait; others are skipped).
    pub(crate) async fn report(&mut self, prefix: &str) -> String {
        let wait = async {
            loop {
                match self.reports.recv().await {
                    Some(r) if r.starts_with(prefix) => return r,
                    Some(_) => {}
                    None => panic!("the server stopped"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no `{prefix}` report"))
    }
}

fn hex_decode(s: &str) -> String {
    let bytes: Vec<u8> = (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Reads until the client closes (or breaks) the connection, then reports it.
async fn until_eof(sock: &mut TcpStream, path: &str, tx: &mpsc::UnboundedSender<String>) {
    let mut tmp = [0u8; 1024];
    while let Ok(n) = sock.read(&mut tmp).await {
        if n == 0 {
            break;
        }
    }
    let _ = tx.send(format!("eof {path}"));
}

async fn serve(mut sock: TcpStream, tx: mpsc::UnboundedSender<String>) {
    let Some(head) = read_head(&mut sock).await else {
        return;
    };
    let path = head.path;
    let _ = tx.send(format!("accepted {path}"));
    let auth = head
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization" || k == "cookie")
        .count();
    let simple = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Echo: {auth}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    if path == "/hello" {
        let _ = sock
            .write_all(simple("200 OK", "", "hello").as_bytes())
            .await;
    } else if let Some(to) = path.strip_prefix("/to/") {
        let reply = simple(
            "302 Found",
            &format!("Location: {}\r\n", hex_decode(to)),
            "",
        );
        let _ = sock.write_all(reply.as_bytes()).await;
    } else if path == "/never" {
        // Never answers: holds the connection until the client gives up.
        until_eof(&mut sock, &path, &tx).await;
    } else if path == "/trickle" {
        // A head promising a large body, then one byte at a time, forever.
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n";
        if sock.write_all(head.as_bytes()).await.is_ok() {
            while sock.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = tx.send(format!("eof {path}"));
    } else if path == "/fat-headers" {
        let mut reply = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..4000 {
            reply.push_str(&format!("X-Fat-{i}: {}\r\n", "y".repeat(1000)));
        }
        reply.push_str("Content-Length: 0\r\n\r\n");
        let _ = sock.write_all(reply.as_bytes()).await;
    } else if path == "/one-fat-header" {
        let reply = format!(
            "HTTP/1.1 200 OK\r\nX-Fat: {}\r\nContent-Length: 0\r\n\r\n",
            "z".repeat(4 << 20)
        );
        let _ = sock.write_all(reply.as_bytes()).await;
    } else if path == "/cut" {
        // Promises more than it sends, then closes the connection.
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
            .await;
    } else if path == "/upgrade" {
        let _ = sock
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\nraw bytes after the upgrade")
            .await;
        until_eof(&mut sock, &path, &tx).await;
    } else {
        let _ = sock
            .write_all(simple("404 Not Found", "", "").as_bytes())
            .await;
    }
}

pub(crate) fn hostile_host(policy: &str) -> Host {
    policy_host(
        policy,
        StaticResolver::new()
            .with("allowed.lab.test", &[ip("127.0.0.1")])
            .with("other.lab.test", &[ip("127.0.0.1")]),
    )
}

pub(crate) async fn probe(h: &Host, name: &str, net: &str) -> capsule_runtime::Capsule {
    h.approve_all();
    h.load(
        name,
        "netprobe.wasm",
        &format!("[capabilities]\nnet = [{net:?}]\n"),
    )
    .await
}

pub(crate) async fn get(c: &capsule_runtime::Capsule, url: &str) -> Value {
    call(c, "get", json!({ "url": url })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_spellings_of_a_loopback_host_never_pass_a_grant_for_a_name() {
    let server = Hostile::start().await;
    let h = hostile_host(OPEN_LOOPBACK);
    // Loopback is open to the airlock, so only the grant (`allowed.lab.test`) stands between
    // these URLs and the server.
    let c = probe(&h, "atk-spell", "allowed.lab.test").await;
    let p = server.port();
    assert_eq!(
        ok(&get(&c, &format!("http://allowed.lab.test:{p}/hello")).await)["body"],
        "hello"
    );
    assert_eq!(
        ok(&get(&c, &format!("http://ALLOWED.lab.test.:{p}/hello")).await)["body"],
        "hello"
    );
    for url in [
        format!("http://127.0.0.1:{p}/hello"),
        format!("http://2130706433:{p}/hello"),
        format!("http://0x7f.1:{p}/hello"),
        format!("http://0x7f000001:{p}/hello"),
        format!("http://127.1:{p}/hello"),
        format!("http://0177.0.0.1:{p}/hello"),
        format!("http://127.0.0.1.:{p}/hello"),
        format!("http://%31%32%37.0.0.1:{p}/hello"),
        format!("http://[::ffff:127.0.0.1]:{p}/hello"),
        format!("http://[::ffff:7f00:1]:{p}/hello"),
        format!("http://[::1]:{p}/hello"),
        format!("http://localhost:{p}/hello"),
        format!("http://other.lab.test:{p}/hello"),
        format!("http://allowed.lab.test.other.lab.test:{p}/hello"),
        format!("http://allowed.testx:{p}/hello"),
        format!("http://xallowed.lab.test:{p}/hello"),
    ] {
        let r = get(&c, &url).await;
        assert_eq!(err(&r), "capability-denied", "{url}: {r}");
    }
    for url in [
        format!("http://allowed.lab.test@127.0.0.1:{p}/hello"),
        format!("http://allowed.lab.test:{p}@127.0.0.1:{p}/hello"),
        format!("http://[fe80::1%25lo]:{p}/hello"),
        format!("http://[::ffff:127.0.0.1%25lo]:{p}/hello"),
        "file:///etc/passwd".to_string(),
        format!("gopher://allowed.lab.test:{p}/hello"),
        format!("//allowed.lab.test:{p}/hello"),
        "/hello".to_string(),
    ] {
        let r = get(&c, &url).await;
        assert_eq!(err(&r), "invalid-request", "{url}: {r}");
    }
    // A backslash ends the authority of an http URL: the host is the granted one, and what
    // follows is a path on it, never another host.
    let r = get(
        &c,
        &format!("http://allowed.lab.test:{p}\\@127.0.0.1/hello"),
    )
    .await;
    assert_eq!(ok(&r)["status"], 404, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_spellings_of_refused_addresses_are_refused_by_the_airlock() {
    let server = Hostile::start().await;
    // Nothing opened; the grant names the address itself, so only the airlock refuses.
    let h = hostile_host("");
    let c = probe(&h, "atk-airlock", "127.0.0.1").await;
    let p = server.port();
    for url in [
        format!("http://127.0.0.1:{p}/hello"),
        format!("http://2130706433:{p}/hello"),
        format!("http://0x7f.0.0.1:{p}/hello"),
        format!("http://127.1:{p}/hello"),
        format!("http://0177.0.0.01:{p}/hello"),
        format!("https://127.0.0.1:{p}/hello"),
    ] {
        let r = get(&c, &url).await;
        assert_eq!(err(&r), "airlock-rejected", "{url}: {r}");
        let r = call(&c, "chunks", json!({ "url": url })).await;
        assert_eq!(err(&r), "airlock-rejected", "{url}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_redirects_are_refused_and_credentials_do_not_follow_them() {
    let server = Hostile::start().await;
    let h = hostile_host(OPEN_LOOPBACK);
    let c = probe(&h, "atk-redirect", "allowed.lab.test").await;
    let p = server.port();
    let via = |to: &str| format!("http://allowed.lab.test:{p}/to/{}", hex_encode(to));
    // The harness works: a redirect to the granted host under another spelling is followed.
    let r = get(&c, &via(&format!("http://ALLOWED.LAB.TEST.:{p}/hello"))).await;
    assert_eq!(ok(&r)["body"], "hello", "{r}");
    for to in [
        format!("http://127.0.0.1:{p}/hello"),
        format!("http://2130706433:{p}/hello"),
        format!("http://0x7f.1:{p}/hello"),
        format!("//127.1:{p}/hello"),
        format!("http://[::ffff:127.0.0.1]:{p}/hello"),
        format!("http://localhost:{p}/hello"),
        format!("http://other.lab.test:{p}/hello"),
        format!("https://other.lab.test:{p}/hello"),
    ] {
        let r = get(&c, &via(&to)).await;
        assert_eq!(err(&r), "capability-denied", "{to}: {r}");
        let r = call(&c, "chunks", json!({ "url": via(&to) })).await;
        assert_eq!(err(&r), "capability-denied", "{to}: {r}");
    }
    for to in [
        format!("http://allowed.lab.test@127.0.0.1:{p}/hello"),
        "file:///etc/passwd".to_string(),
        "gopher://allowed.lab.test/".to_string(),
        "data:text/plain,hello".to_string(),
        "http://[::1".to_string(),
    ] {
        let r = get(&c, &via(&to)).await;
        assert!(err(&r).starts_with("protocol:"), "{to}: {r}");
    }
    // A chain of redirects that each stay allowed still ends at the bound.
    let mut chain = format!("http://allowed.lab.test:{p}/hello");
    // Six hops: one more than the bound (and short enough for the URL limit).
    for _ in 0..6 {
        chain = via(&chain);
    }
    let r = get(&c, &chain).await;
    assert!(err(&r).starts_with("protocol:"), "{r}");
    // Credentials the guest set reach the origin it named, never a redirect elsewhere.
    let secret = json!({"authorization": "Bearer s3cret", "cookie": "session=1"});
    let r = call(
        &c,
        "get",
        json!({"url": via(&format!("http://allowed.lab.test:{p}/hello")), "headers": secret}),
    )
    .await;
    assert_eq!(ok(&r)["body"], "hello", "{r}");
    assert_eq!(ok(&r)["echo"], "2", "{r}");
    let h2 = hostile_host(OPEN_LOOPBACK);
    let c2 = probe(&h2, "atk-redirect-2", "lab.test").await;
    let r = call(
        &c2,
        "get",
        json!({"url": via(&format!("http://other.lab.test:{p}/hello")), "headers": secret}),
    )
    .await;
    assert_eq!(ok(&r)["body"], "hello", "{r}");
    assert_eq!(ok(&r)["echo"], "0", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_or_trickles_hits_the_deadline_and_is_disconnected() {
    let mut server = Hostile::start().await;
    let h = hostile_host(OPEN_LOOPBACK);
    h.profile("alice", "[quotas]\nmax_timeout_secs = 2\n");
    h.approve_all();
    let c = h
        .load_as(
            "atk-slow",
            "netprobe.wasm",
            "[capabilities]\nnet = [\"allowed.lab.test\"]\n",
            "alice",
        )
        .await;
    let p = server.port();
    for path in ["/never", "/trickle"] {
        let url = format!("http://allowed.lab.test:{p}{path}");
        for action in ["get", "chunks"] {
            timeout_or_cut(&c, action, &url).await;
            assert_eq!(server.report("eof").await, format!("eof {path}"));
        }
    }
}

/// Runs `action` on `url`, whose server never finishes answering, under a profile whose
/// request deadline and call deadline are the same: the request races both (the call's
/// started a little earlier), so the guest reads `timeout` or the call is trapped at its
/// deadline; nothing else.
async fn timeout_or_cut(c: &capsule_runtime::Capsule, action: &str, url: &str) {
    let payload = json!({ "url": url }).to_string();
    match c.invoke(action, payload.as_bytes(), None).await {
        Ok(r) => {
            let r: Value = serde_json::from_str(r.data.as_deref().unwrap_or("null"))
                .unwrap_or_else(|e| panic!("{action} {url}: {e}"));
            assert_eq!(err(&r), "timeout", "{action} {url}: {r}");
        }
        Err(InvokeError::Interrupted(Interrupt::Deadline { .. })) => {}
        Err(e) => panic!("{action} {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_ends_a_request_the_server_never_answers() {
    let mut server = Hostile::start().await;
    let h = hostile_host(OPEN_LOOPBACK);
    // The default deadline (minutes) is far beyond the test's bounded waits: only the unload
    // can end the call in time.
    let c = probe(&h, "atk-unload", "allowed.lab.test").await;
    let url = format!("http://allowed.lab.test:{}/never", server.port());
    let pending = {
        let c = c.clone();
        tokio::spawn(async move {
            c.invoke("get", json!({ "url": url }).to_string().as_bytes(), None)
                .await
                .is_ok()
        })
    };
    assert_eq!(server.report("accepted").await, "accepted /never");
    tokio::time::timeout(Duration::from_secs(60), c.unload())
        .await
        .unwrap_or_else(|_| panic!("unload waited for the request"));
    tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .unwrap_or_else(|_| panic!("the guest call outlived its capsule"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server.report("eof").await, "eof /never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_upgrades_and_cut_bodies_fail_cleanly_and_say_nothing_of_the_host() {
    let mut server = Hostile::start().await;
    let h = hostile_host(OPEN_LOOPBACK);
    let c = probe(&h, "atk-fat", "allowed.lab.test").await;
    let p = server.port();
    for path in ["/fat-headers", "/one-fat-header"] {
        let r = get(&c, &format!("http://allowed.lab.test:{p}{path}")).await;
        assert!(err(&r).starts_with("protocol:"), "{path}: {r}");
    }
    // A 101 nobody asked for is not an open pipe to the server.
    let r = get(&c, &format!("http://allowed.lab.test:{p}/upgrade")).await;
    assert!(r.get("err").is_some() || ok(&r)["len"] == 0, "{r}");
    assert_eq!(server.report("eof").await, "eof /upgrade");
    // A body cut short fails; what the guest reads names no address, port or OS error.
    let url = format!("http://allowed.lab.test:{p}/cut");
    for action in ["get", "chunks", "body-stream"] {
        let r = call(&c, action, json!({ "url": url })).await;
        let e = err(&r);
        for leak in ["127.0.0.1", &p.to_string(), "os error"] {
            assert!(!e.contains(leak), "{action} leaks `{leak}`: {e}");
        }
    }
    assert_eq!(
        ok(&get(&c, &format!("http://allowed.lab.test:{p}/hello")).await)["body"],
        "hello"
    );
}
