//! The host's counters in the Prometheus text format (version 0.0.4), encoded by
//! `prometheus-client` from a [`Snapshot`], and the loopback-only HTTP endpoint that serves
//! them to a scraper. The endpoint answers `GET /metrics` and nothing else; a request head is
//! bounded in size and time, and connections are bounded in number, so a client cannot hold
//! the host's memory or tasks. A request naming a `Host` other than a loopback address or
//! `localhost` is refused, so a web page whose name was rebound to loopback cannot make the
//! operator's browser read the capsule and principal names the counters carry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::report::Snapshot;

/// Largest HTTP request head read.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most scrapes served at once.
const MAX_CONNECTIONS: usize = 16;

type Labels = Vec<(String, String)>;

fn label(capsule: &str) -> Labels {
    vec![("capsule".to_string(), capsule.to_string())]
}

/// Encodes `s` in the Prometheus text format.
pub(crate) fn encode(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("capsule");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let info = gauge(
        &mut registry,
        "info",
        "A loaded capsule (always 1), labelled with its version and state",
    );
    let published = counter(
        &mut registry,
        "messages_published",
        "Messages a capsule published",
    );
    let received = counter(
        &mut registry,
        "messages_received",
        "Messages a capsule's subscriptions handed to it",
    );
    let dropped = counter(
        &mut registry,
        "messages_dropped",
        "Messages a capsule's subscriptions lost before it took them",
    );
    let denied = counter(
        &mut registry,
        "ipc_denied",
        "IPC requests of a capsule refused by its policy",
    );
    let handler_denials = counter(
        &mut registry,
        "handler_denials",
        "Messages a capsule's handlers stopped with deny or abort",
    );
    let traps = counter(
        &mut registry,
        "traps",
        "Handler calls and run loops of a capsule that trapped or were interrupted",
    );
    let calls = counter(
        &mut registry,
        "handler_calls",
        "Handler calls of a capsule by outcome (completed, failed, dropped)",
    );
    let resets = counter(
        &mut registry,
        "instance_resets",
        "Fresh instances made because the previous one served another principal",
    );
    let queued_messages = gauge(
        &mut registry,
        "queued_messages",
        "Messages waiting in a capsule's subscriptions",
    );
    let queued_calls = gauge(
        &mut registry,
        "queued_calls",
        "Handler calls waiting in a capsule's per-principal queues",
    );
    let subscriptions = gauge(
        &mut registry,
        "subscriptions",
        "Live subscriptions a capsule holds",
    );
    let memory_peak = gauge(
        &mut registry,
        "memory_peak_bytes",
        "Largest linear memory a principal made one of a capsule's instances reach",
    );
    let refused_grows = counter(
        &mut registry,
        "memory_refused_grows",
        "Memory growths refused because they exceeded the principal's quota",
    );
    for c in &s.capsules {
        let l = label(&c.name);
        let mut tagged = l.clone();
        tagged.push(("version".into(), c.version.clone()));
        tagged.push(("state".into(), c.state.clone()));
        info.get_or_create(&tagged).set(1);
        published.get_or_create(&l).inc_by(c.published);
        received.get_or_create(&l).inc_by(c.received);
        dropped.get_or_create(&l).inc_by(c.dropped);
        denied.get_or_create(&l).inc_by(c.denied);
        handler_denials.get_or_create(&l).inc_by(c.handler_denials);
        traps.get_or_create(&l).inc_by(c.traps);
        for (outcome, n) in [
            ("completed", c.calls_completed),
            ("failed", c.calls_failed),
            ("dropped", c.calls_dropped),
        ] {
            let mut with = l.clone();
            with.push(("outcome".into(), outcome.into()));
            calls.get_or_create(&with).inc_by(n);
        }
        resets.get_or_create(&l).inc_by(c.instance_resets);
        queued_messages
            .get_or_create(&l)
            .set(i64::try_from(c.queued_messages).unwrap_or(i64::MAX));
        queued_calls
            .get_or_create(&l)
            .set(i64::try_from(c.queued_calls).unwrap_or(i64::MAX));
        subscriptions
            .get_or_create(&l)
            .set(i64::try_from(c.subscriptions).unwrap_or(i64::MAX));
        for m in &c.memory {
            let mut with = l.clone();
            with.push(("principal".into(), m.principal.clone()));
            memory_peak
                .get_or_create(&with)
                .set(i64::try_from(m.peak_bytes).unwrap_or(i64::MAX));
            refused_grows.get_or_create(&with).inc_by(m.refused_grows);
        }
    }
    let host_counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    host_counter(
        &mut registry,
        "dispatch_chains",
        "Published messages that matched at least one handler",
        s.dispatch.chains,
    );
    host_counter(
        &mut registry,
        "dispatch_stopped",
        "Handler chains ended early by final, deny or abort",
        s.dispatch.stopped,
    );
    host_counter(
        &mut registry,
        "dispatch_failed_links",
        "Handler calls that failed while the chain went on",
        s.dispatch.failed_links,
    );
    host_counter(
        &mut registry,
        "dispatch_tap_dropped",
        "Messages the dispatcher lost because its tap was full",
        s.dispatch.tap_dropped,
    );
    host_counter(
        &mut registry,
        "control_refused",
        "Control socket requests refused for a wrong or missing session token",
        s.control_refused,
    );
    let loaded = Gauge::<i64>::default();
    loaded.set(i64::try_from(s.capsules.len()).unwrap_or(i64::MAX));
    registry.register("loaded", "Capsules loaded now", loaded);
    let uptime = Gauge::<i64>::default();
    uptime.set(i64::try_from(s.uptime_ms / 1000).unwrap_or(i64::MAX));
    registry.register("uptime_seconds", "Seconds since the host started", uptime);
    if let Some(b) = &s.bridge {
        crate::cluster::register(&mut registry, b);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _complete = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (mut stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // Too many scrapes at once: this one is simply closed.
            continue;
        };
        let snapshot = Arc::clone(&snapshot);
        tokio::spawn(async move {
            let _permit = permit;
            let response = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
                Ok(Some(head)) => respond(&head, &*snapshot),
                Ok(None) => http(400, "text/plain", "bad request\n"),
                Err(_) => return,
            };
            // The scraper may have gone; nothing to do about it.
            let _sent = stream.write_all(response.as_bytes()).await;
            let _closed = stream.shutdown().await;
        });
    }
}

/// Reads until the end of the request head; `None` if it is too large or the peer closed.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD_BYTES {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(head).ok()
}

/// Whether every `Host` header of `head` names loopback (`localhost` or a loopback address,
/// with or without a port). A request without one is no browser's, so it passes.
fn loopback_host(head: &str) -> bool {
    let hosts: Vec<&str> = head
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim())
        .collect();
    if hosts.len() > 1 {
        return false;
    }
    hosts.iter().all(|h| {
        let name = if let Some(rest) = h.strip_prefix('[') {
            match rest.split_once(']') {
                Some((inside, port)) if port.is_empty() || port.starts_with(':') => inside,
                _ => return false,
            }
        } else {
            match h.rsplit_once(':') {
                Some((name, _port)) if !name.contains(':') => name,
                Some(_) => return false,
                None => h,
            }
        };
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn respond(head: &str, snapshot: &dyn Fn() -> Snapshot) -> String {
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    if !loopback_host(head) {
        return http(
            403,
            "text/plain",
            "forbidden: the metrics are served only to requests naming a loopback host\n",
        );
    }
    match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => http(
            200,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            &encode(&snapshot()),
        ),
        ("GET", _) => http(
            404,
            "text/plain",
            "not found: the metrics are at /metrics\n",
        ),
        _ => http(405, "text/plain", "only GET is served\n"),
    }
}

fn http(status: u16, content_type: &str, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Parses `--metrics`: an IP address and port on the loopback interface, nothing else.
pub(crate) fn loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("`{s}` is not an IP address and port such as 127.0.0.1:9184 or [::1]:9184")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{} is not a loopback address; metrics are served on loopback only (127.0.0.0/8 or ::1), never to the network",
            addr.ip()
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CapsuleRow, DispatchRow, MemoryRow};

    fn snapshot() -> Snapshot {
        Snapshot {
            state_dir: "/s".into(),
            owner: "default".into(),
            uptime_ms: 3000,
            control_refused: 2,
            dispatch: DispatchRow::default(),
            capsules: vec![CapsuleRow {
                name: "notes".into(),
                version: "0.1.0".into(),
                owner: "default".into(),
                session: "x".into(),
                state: "serving".into(),
                run_loop: "none".into(),
                handlers: Vec::new(),
                published: 5,
                received: 1,
                dropped: 0,
                denied: 3,
                handler_denials: 0,
                traps: 0,
                queued_messages: 4,
                queued_calls: 0,
                subscriptions: 1,
                calls_completed: 7,
                calls_failed: 1,
                calls_dropped: 0,
                instance_resets: 2,
                memory: vec![MemoryRow {
                    principal: "alice".into(),
                    peak_bytes: 1_114_112,
                    refused_grows: 0,
                }],
            }],
            principals: Vec::new(),
            bridge: None,
        }
    }

    #[test]
    fn counters_and_gauges_are_in_prometheus_text() {
        let text = encode(&snapshot());
        for line in [
            "# TYPE capsule_messages_published_total counter",
            "capsule_messages_published_total{capsule=\"notes\"} 5",
            "capsule_ipc_denied_total{capsule=\"notes\"} 3",
            "capsule_handler_calls_total{capsule=\"notes\",outcome=\"completed\"} 7",
            "capsule_queued_messages{capsule=\"notes\"} 4",
            "capsule_memory_peak_bytes{capsule=\"notes\",principal=\"alice\"} 1114112",
            "capsule_control_refused_total 2",
            "capsule_loaded 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(
            !text.contains("# EOF"),
            "classic text format, not OpenMetrics"
        );
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(loopback("127.0.0.1:9184").is_ok());
        assert!(loopback("127.3.2.1:1").is_ok());
        assert!(loopback("[::1]:9184").is_ok());
        for bad in [
            "0.0.0.0:9184",
            "192.168.1.2:80",
            "[::]:9184",
            "localhost:9184",
            "9184",
        ] {
            assert!(loopback(bad).is_err(), "{bad}");
        }
        let e = loopback("0.0.0.0:1").err().unwrap_or_default();
        assert!(e.contains("not a loopback address"), "{e}");
    }

    #[test]
    fn the_endpoint_answers_only_get_metrics() {
        let s = || snapshot();
        assert!(respond("GET /metrics HTTP/1.1\r\n\r\n", &s).starts_with("HTTP/1.1 200"));
        assert!(respond("GET / HTTP/1.1\r\n\r\n", &s).starts_with("HTTP/1.1 404"));
        assert!(respond("POST /metrics HTTP/1.1\r\n\r\n", &s).starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn a_page_rebound_to_loopback_cannot_read_the_counters() {
        let s = || snapshot();
        for host in [
            "127.0.0.1:9184",
            "127.0.0.1",
            "127.9.8.7:1",
            "[::1]:9184",
            "[::1]",
            "localhost:9184",
            "LocalHost",
        ] {
            let head = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n");
            assert!(respond(&head, &s).starts_with("HTTP/1.1 200"), "{host}");
        }
        for host in [
            "evil.example:9184",
            "evil.example",
            "localhost.evil.example:9184",
            "127.0.0.1.nip.io:9184",
            "10.0.0.1:9184",
            "[::1]x",
            "::1",
            "",
        ] {
            let head = format!("GET /metrics HTTP/1.1\r\nhost:{host}\r\n\r\n");
            let answer = respond(&head, &s);
            assert!(answer.starts_with("HTTP/1.1 403"), "{host}: {answer}");
            assert!(!answer.contains("alice"), "{host}: {answer}");
        }
        let twice = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n";
        assert!(respond(twice, &s).starts_with("HTTP/1.1 403"));
    }
}
