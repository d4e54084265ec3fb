//! Outbound HTTP from a real guest (`netprobe`) against an HTTP/1.1 server on loopback that
//! the test starts itself: the operator's policy opens loopback or does not, a resolver the
//! test controls plays DNS (so hostile answers never leave the machine), and every refusal is
//! checked from inside the guest and in the audit log.

use std::net::SocketAddr;
use std::time::Duration;

use capsule_runtime::security::StaticResolver;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::common::*;
use crate::loopback::{Listening, OPEN_LOOPBACK, ip, policy_host, read_head};

/// A tiny HTTP/1.1 server on 127.0.0.1: one request per connection, then `Connection: close`.
struct Server {
    addr: SocketAddr,
    /// Told the path of every large body whose client went away before it was written.
    abandoned: mpsc::UnboundedReceiver<String>,
    listening: Listening,
}

impl Server {
    async fn start() -> Self {
        let (tx, abandoned) = mpsc::unbounded_channel();
        let listening = Listening::start(move |sock| answer(sock, tx.clone())).await;
        Self {
            addr: listening.addr,
            abandoned,
            listening,
        }
    }

    fn url(&self, path: &str) -> String {
        self.listening.url(path)
    }

    /// The same server under a name the test resolver maps to loopback.
    fn named(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }
}

async fn answer(mut sock: TcpStream, abandoned: mpsc::UnboundedSender<String>) {
    let Some(head) = read_head(&mut sock).await else {
        return;
    };
    let (method, path) = (head.method.clone(), head.path.clone());
    let length: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = head.rest.clone();
    let mut tmp = [0u8; 4096];
    while body.len() < length {
        let Ok(n) = sock.read(&mut tmp).await else {
            return;
        };
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let echo = head.header("x-token").unwrap_or("none");
    let simple = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Echo: {echo}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let reply = if path == "/hello" {
        simple("200 OK", "", "hello")
    } else if path == "/echo" {
        simple(
            "200 OK",
            "",
            &format!("{method} {}", String::from_utf8_lossy(&body)),
        )
    } else if let Some(rest) = path.strip_prefix("/redirect/") {
        simple("302 Found", &format!("Location: http://{rest}\r\n"), "")
    } else if path == "/loop" {
        simple("302 Found", "Location: /loop\r\n", "")
    } else if path == "/see-other" {
        simple("303 See Other", "Location: /echo\r\n", "")
    } else if path == "/chunked" {
        let _ = sock
            .write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                  3\r\naaa\r\n4\r\nbbbb\r\n1\r\nc\r\n0\r\n\r\n",
            )
            .await;
        return;
    } else if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
        if sock.write_all(head.as_bytes()).await.is_err() {
            let _ = abandoned.send(path);
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let part = left.min(chunk.len());
            if sock.write_all(&chunk[..part]).await.is_err() {
                let _ = abandoned.send(path);
                return;
            }
            left -= part;
        }
        return;
    } else {
        simple("404 Not Found", "", "")
    };
    let _ = sock.write_all(reply.as_bytes()).await;
}

/// The test's DNS: names under `.test` pointing at loopback and at every refused class.
fn resolver() -> StaticResolver {
    StaticResolver::new()
        .with("allowed.lab.test", &[ip("127.0.0.1")])
        .with("also.allowed.lab.test", &[ip("127.0.0.1")])
}

async fn load_probe(h: &Host, name: &str, net: &[&str]) -> capsule_runtime::Capsule {
    h.approve_all();
    let list: Vec<String> = net.iter().map(|s| format!("{s:?}")).collect();
    let extra = if net.is_empty() {
        String::new()
    } else {
        format!("[capabilities]\nnet = [{}]\n", list.join(", "))
    };
    h.load(name, "netprobe.wasm", &extra).await
}

async fn get(c: &capsule_runtime::Capsule, url: &str) -> Value {
    call(c, "get", json!({ "url": url })).await
}

fn net_audit(capsule: &str) -> Vec<AuditEvent> {
    audit_events(capsule)
        .into_iter()
        .filter(|e| e.get("target").map(String::as_str) == Some("capsule::audit::net"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_opened_by_the_operator_serves_a_guest_get_and_streams() {
    let server = Server::start().await;
    let h = policy_host(OPEN_LOOPBACK, resolver());
    let c = load_probe(&h, "net-open", &["127.0.0.1", "lab.test"]).await;
    let r = get(&c, &server.url("/hello")).await;
    assert_eq!(ok(&r)["status"], 200);
    assert_eq!(ok(&r)["body"], "hello");
    // By name, through the host's resolver, with a header the guest set.
    let r = call(
        &c,
        "get",
        json!({"url": server.named("allowed.lab.test", "/echo"), "method": "POST",
               "body": "payload", "headers": {"x-token": "t1"}}),
    )
    .await;
    assert_eq!(ok(&r)["body"], "POST payload");
    assert_eq!(ok(&r)["echo"], "t1");
    // A redirect between allowed hosts is followed; 303 turns the POST into a GET.
    let r = call(
        &c,
        "get",
        json!({"url": server.named("allowed.lab.test", "/see-other"), "method": "POST", "body": "x"}),
    )
    .await;
    assert_eq!(ok(&r)["body"], "GET ");
    let port = server.addr.port();
    let r = get(
        &c,
        &server.url(&format!("/redirect/also.allowed.lab.test:{port}/hello")),
    )
    .await;
    assert_eq!(ok(&r)["body"], "hello");
    // Streamed: chunk by chunk, and as an input stream.
    let r = call(&c, "chunks", json!({"url": server.url("/chunked")})).await;
    assert_eq!(ok(&r)["body"], "aaabbbbc");
    assert_eq!(ok(&r)["second-close"], "closed");
    let r = call(&c, "body-stream", json!({"url": server.url("/big/300000")})).await;
    assert_eq!(ok(&r)["len"], 300_000);
    let r = call(&c, "chunks", json!({"url": server.url("/big/200000")})).await;
    assert_eq!(ok(&r)["len"], 200_000);
    // A redirect loop ends at the bound.
    let r = get(&c, &server.url("/loop")).await;
    assert!(err(&r).starts_with("protocol:"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_airlock_class_and_form_is_refused_from_a_guest() {
    let server = Server::start().await;
    // Every class and IPv4-carrying form, under names the test resolver answers. Nothing is
    // ever connected to: the airlock refuses before a socket is opened.
    let classes: &[(&str, &str)] = &[
        ("loopback", "127.0.0.1"),
        ("loopback6", "::1"),
        ("private10", "10.1.2.3"),
        ("private172", "172.16.5.4"),
        ("private192", "192.168.1.1"),
        ("ula", "fd00::1"),
        ("sitelocal", "fec0::1"),
        ("linklocal", "169.254.169.254"),
        ("linklocal6", "fe80::1"),
        ("cgnat", "100.64.0.1"),
        ("multicast", "224.0.0.1"),
        ("multicast6", "ff02::1"),
        ("broadcast", "255.255.255.255"),
        ("doc", "192.0.2.1"),
        ("doc6", "2001:db8::1"),
        ("bench", "198.18.0.1"),
        ("bench6", "2001:2::1"),
        ("reserved", "240.0.0.1"),
        ("reserved6", "100::1"),
        ("unspecified", "0.0.0.0"),
        ("unspecified6", "::"),
        ("thisnet", "0.1.2.3"),
        ("mapped", "::ffff:127.0.0.1"),
        ("compatible", "::10.0.0.1"),
        ("sixtofour", "2002:a9fe:a9fe::1"),
        ("teredo", "2001:0:4136:e378:8000:63bf:80ff:fffe"),
        ("nat64", "64:ff9b::a00:1"),
    ];
    let mut dns = StaticResolver::new();
    for (name, addr) in classes {
        dns = dns.with(&format!("{name}.lab.test"), &[ip(addr)]);
    }
    let h = policy_host("", dns);
    let c = load_probe(&h, "net-closed", &["lab.test", "127.0.0.1", "10.1.2.3"]).await;
    for (name, addr) in classes {
        let url = server.named(&format!("{name}.lab.test"), "/hello");
        let r = get(&c, &url).await;
        assert_eq!(err(&r), "airlock-rejected", "{name} ({addr}): {r}");
    }
    // Literal addresses too, and streams as well as buffered requests.
    assert_eq!(
        err(&get(&c, &server.url("/hello")).await),
        "airlock-rejected"
    );
    let port = server.addr.port();
    assert_eq!(
        err(&get(&c, &format!("http://10.1.2.3:{port}/")).await),
        "airlock-rejected"
    );
    let r = call(&c, "chunks", json!({"url": server.url("/chunked")})).await;
    assert_eq!(err(&r), "airlock-rejected");
    let audit = net_audit("net-closed");
    assert!(
        audit.iter().any(
            |e| e.get("host").map(String::as_str) == Some("linklocal.lab.test")
                && e.get("code").map(String::as_str) == Some("airlock-rejected")
                && e.get("reason").is_some_and(|r| r.contains("link-local"))
        ),
        "{audit:?}"
    );
    assert!(audit.len() >= classes.len(), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_refused_address_or_host_is_refused_and_audited() {
    let server = Server::start().await;
    let dns = resolver()
        .with("metadata.lab.test", &[ip("169.254.169.254")])
        .with("intranet.lab.test", &[ip("10.0.0.7")]);
    let h = policy_host(OPEN_LOOPBACK, dns);
    let c = load_probe(&h, "net-redirect", &["lab.test", "10.0.0.7"]).await;
    let port = server.addr.port();
    let start = |to: &str| server.named("allowed.lab.test", &format!("/redirect/{to}"));
    let r = get(&c, &start("metadata.lab.test/latest/meta-data")).await;
    assert_eq!(err(&r), "airlock-rejected", "{r}");
    let r = get(&c, &start("intranet.lab.test/admin")).await;
    assert_eq!(err(&r), "airlock-rejected", "{r}");
    let r = get(&c, &start("10.0.0.7/admin")).await;
    assert_eq!(err(&r), "airlock-rejected", "{r}");
    // A host outside the grant is refused by the grant, even on an open address.
    let r = get(&c, &start(&format!("127.0.0.1:{port}/hello"))).await;
    assert_eq!(err(&r), "capability-denied", "{r}");
    let r = call(
        &c,
        "chunks",
        json!({"url": start("metadata.lab.test/latest/meta-data")}),
    )
    .await;
    assert_eq!(err(&r), "airlock-rejected", "{r}");
    let audit = net_audit("net-redirect");
    let redirects: Vec<&AuditEvent> = audit
        .iter()
        .filter(|e| e.get("redirect").map(String::as_str) == Some("true"))
        .collect();
    assert!(
        redirects
            .iter()
            .any(|e| e.get("host").map(String::as_str) == Some("metadata.lab.test")),
        "{audit:?}"
    );
    assert!(
        redirects
            .iter()
            .any(|e| e.get("host").map(String::as_str) == Some("127.0.0.1")
                && e.get("code").map(String::as_str) == Some("capability-denied")),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_pointing_into_refused_ranges_are_refused() {
    let server = Server::start().await;
    let dns = resolver()
        // A rebinding answer: one usable address beside an internal one.
        .with("rebind.lab.test", &[ip("127.0.0.1"), ip("10.0.0.1")])
        .with("internal.lab.test", &[ip("192.168.0.10")])
        .with("mapped.lab.test", &[ip("::ffff:169.254.169.254")]);
    let h = policy_host(OPEN_LOOPBACK, dns);
    let c = load_probe(&h, "net-dns", &["lab.test"]).await;
    for name in ["rebind.lab.test", "internal.lab.test", "mapped.lab.test"] {
        let r = get(&c, &server.named(name, "/hello")).await;
        assert_eq!(err(&r), "airlock-rejected", "{name}: {r}");
    }
    let r = get(&c, &server.named("missing.lab.test", "/hello")).await;
    assert_eq!(err(&r), "dns-error", "{r}");
    // The same server under an honest name works.
    let r = get(&c, &server.named("allowed.lab.test", "/hello")).await;
    assert_eq!(ok(&r)["body"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_grant_requests_are_capability_denied() {
    let server = Server::start().await;
    let h = policy_host(OPEN_LOOPBACK, resolver());
    let none = load_probe(&h, "net-none", &[]).await;
    assert_eq!(
        err(&get(&none, &server.url("/hello")).await),
        "capability-denied"
    );
    assert_eq!(
        err(&get(&none, &server.named("allowed.lab.test", "/hello")).await),
        "capability-denied"
    );
    let r = call(&none, "chunks", json!({"url": server.url("/chunked")})).await;
    assert_eq!(err(&r), "capability-denied");
    // A grant of one host covers it and its subdomains only.
    let one = load_probe(&h, "net-one", &["also.allowed.lab.test"]).await;
    assert_eq!(
        err(&get(&one, &server.named("allowed.lab.test", "/hello")).await),
        "capability-denied"
    );
    assert_eq!(
        ok(&get(&one, &server.named("also.allowed.lab.test", "/hello")).await)["body"],
        "hello"
    );
    assert!(
        net_audit("net-none")
            .iter()
            .any(|e| e.get("code").map(String::as_str) == Some("capability-denied")),
        "{:?}",
        net_audit("net-none")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_and_change_nothing() {
    let server = Server::start().await;
    let h = policy_host(OPEN_LOOPBACK, resolver());
    let c = load_probe(&h, "net-bad", &["127.0.0.1", "lab.test"]).await;
    let port = server.addr.port();
    for (args, why) in [
        (json!({"url": "ftp://allowed.lab.test/x"}), "scheme"),
        (json!({"url": "not a url"}), "syntax"),
        (
            json!({"url": format!("http://user:pw@allowed.lab.test:{port}/hello")}),
            "credentials",
        ),
        (
            json!({"url": server.url("/hello"), "headers": {"host": "internal.lab.test"}}),
            "host header",
        ),
        (
            json!({"url": server.url("/hello"), "headers": {"transfer-encoding": "chunked"}}),
            "framing",
        ),
        (
            json!({"url": server.url("/hello"), "headers": {"bad name": "x"}}),
            "header name",
        ),
        (
            json!({"url": server.url("/hello"), "headers": {"x-a": "line\r\nbreak"}}),
            "header value",
        ),
        (
            json!({"url": server.url("/hello"), "method": "BAD METHOD"}),
            "method",
        ),
        (
            json!({"url": format!("http://allowed.lab.test:{port}/{}", "a".repeat(9000))}),
            "long url",
        ),
    ] {
        let r = call(&c, "get", args).await;
        assert_eq!(err(&r), "invalid-request", "{why}: {r}");
    }
    assert_eq!(ok(&get(&c, &server.url("/hello")).await)["body"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_profile_limit_are_body_too_large() {
    let server = Server::start().await;
    let h = policy_host(OPEN_LOOPBACK, resolver());
    h.profile("alice", "[quotas]\nmax_http_response_bytes = 100000\n");
    h.approve_all();
    let c = h
        .load_as(
            "net-limit",
            "netprobe.wasm",
            "[capabilities]\nnet = [\"127.0.0.1\"]\n",
            "alice",
        )
        .await;
    let r = get(&c, &server.url("/big/100000")).await;
    assert_eq!(ok(&r)["len"], 100_000);
    let r = get(&c, &server.url("/big/100001")).await;
    assert_eq!(err(&r), "body-too-large", "{r}");
    let r = call(&c, "chunks", json!({"url": server.url("/big/500000")})).await;
    assert_eq!(err(&r), "body-too-large", "{r}");
    // Another principal has its own (default) limit.
    let r = call_as(
        &c,
        "get",
        json!({"url": server.url("/big/500000")}),
        Some("bob"),
    )
    .await;
    assert_eq!(ok(&r)["len"], 500_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_are_capped_per_principal_and_unload_closes_streams() {
    let mut server = Server::start().await;
    let h = policy_host(OPEN_LOOPBACK, resolver());
    h.profile("alice", "[quotas]\nmax_http_streams = 2\n");
    h.approve_all();
    let c = h
        .load_as(
            "net-cap",
            "netprobe.wasm",
            "[capabilities]\nnet = [\"127.0.0.1\"]\n",
            "alice",
        )
        .await;
    // Bodies far larger than the host buffers: the transfers stay open while held.
    let big = server.url("/big/50000000");
    assert_eq!(ok(&call(&c, "hold", json!({"url": big})).await), 200);
    assert_eq!(ok(&call(&c, "hold", json!({"url": big})).await), 200);
    assert_eq!(err(&get(&c, &server.url("/hello")).await), "quota");
    assert_eq!(err(&call(&c, "hold", json!({"url": big})).await), "quota");
    // Dropping the streams frees the slots and closes the transfers.
    assert_eq!(ok(&call(&c, "release", json!({})).await), 2);
    for _ in 0..2 {
        assert_eq!(abandoned(&mut server).await, "/big/50000000");
    }
    assert_eq!(ok(&get(&c, &server.url("/hello")).await)["body"], "hello");
    // Another principal is not held back by alice's streams. Its call is served by a fresh
    // instance, and the Store holding alice's streams is discarded: they close with it.
    assert_eq!(ok(&call(&c, "hold", json!({"url": big})).await), 200);
    assert_eq!(ok(&call(&c, "hold", json!({"url": big})).await), 200);
    let r = call_as(&c, "get", json!({"url": server.url("/hello")}), Some("bob")).await;
    assert_eq!(ok(&r)["body"], "hello");
    for _ in 0..2 {
        assert_eq!(abandoned(&mut server).await, "/big/50000000");
    }
    // A stream still open when the capsule unloads is closed with it.
    assert_eq!(ok(&call(&c, "hold", json!({"url": big})).await), 200);
    c.unload().await;
    assert_eq!(abandoned(&mut server).await, "/big/50000000");
}

/// The next large body whose client went away (bounded wait).
async fn abandoned(server: &mut Server) -> String {
    tokio::time::timeout(Duration::from_secs(30), server.abandoned.recv())
        .await
        .unwrap_or_else(|_| panic!("a transfer was left open"))
        .unwrap_or_else(|| panic!("the server stopped"))
}
