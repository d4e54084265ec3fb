//! The loopback-only HTTP endpoint that serves the counters to a scraper holding the bearer
//! token of `<state>/metrics.token`. It answers `GET /metrics` and nothing else; a request
//! head is bounded in size and time, and connections are bounded in number, so a client cannot
//! hold the host's memory or tasks. A request naming a `Host` other than a loopback address or
//! `localhost` is refused (`403`), so a web page whose name was rebound to loopback cannot make
//! the operator's browser read the capsule and principal names the counters carry. A request
//! without the token (`Authorization: Bearer …`, compared in constant time) is refused
//! (`401`), counted and audited, so another local user, or a principal's host process running
//! as a uid of its own, cannot enumerate the tenants and their activity through loopback.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::encode;
use super::token::{self, Token};
use crate::report::Snapshot;

/// Largest HTTP request head read.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most scrapes served at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a new connection waits for the slot of the one closed to make room for it.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// Refusals audited with a line each per [`AUDIT_WINDOW`]; the rest are only counted.
const AUDIT_LINES: u64 = 20;
/// The window [`AUDIT_LINES`] applies to.
const AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// How many refusals still get an audit line. Any local user can send refused scrapes as
/// fast as loopback carries them, so one line each would let them fill the operator's disk;
/// the counter still counts every one, and the next line says how many went unlogged.
#[derive(Default)]
struct AuditBudget {
    window: Option<Instant>,
    logged: u64,
    unlogged: u64,
}

impl AuditBudget {
    /// Whether a refusal at `now` gets its line; if so, how many before it got none.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.window {
            Some(start) => now.saturating_duration_since(start) >= AUDIT_WINDOW,
            None => true,
        };
        if fresh {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged < AUDIT_LINES {
            self.logged += 1;
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }
}

/// Who may read the counters: the holder of the bearer token. Refusals are counted for
/// [`Snapshot::metrics_refused`].
pub(crate) struct Gate {
    token: Token,
    refused: Arc<AtomicU64>,
    audit: std::sync::Mutex<AuditBudget>,
}

impl Gate {
    /// A gate admitting `token`, counting refusals in `refused`.
    pub(crate) fn new(token: Token, refused: Arc<AtomicU64>) -> Self {
        Self {
            token,
            refused,
            audit: std::sync::Mutex::default(),
        }
    }

    /// Counts a refusal for `why` and audits it if the budget allows.
    fn refuse(&self, why: Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let admitted = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(Instant::now());
        match admitted {
            Some(0) => tracing::warn!(
                target: "capsule::audit::metrics",
                reason = why.reason(),
                "metrics scrape refused"
            ),
            Some(unlogged) => tracing::warn!(
                target: "capsule::audit::metrics",
                reason = why.reason(),
                unlogged,
                "metrics scrape refused"
            ),
            None => {}
        }
    }

    /// Why `head` may not read the counters; `None` if it carries the token.
    fn refusal(&self, head: &str) -> Option<Refusal> {
        let given: Vec<&str> = headers(head)
            .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            .map(|(_, value)| value)
            .collect();
        match given.as_slice() {
            [] => Some(Refusal::Missing),
            [one] => match one.split_once([' ', '\t']) {
                Some((scheme, rest))
                    if scheme.eq_ignore_ascii_case("bearer") && self.token.admits(rest.trim()) =>
                {
                    None
                }
                _ => Some(Refusal::Wrong),
            },
            _ => Some(Refusal::Repeated),
        }
    }
}

/// Why a scrape was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// Another scheme, or a bearer token that is not the host's.
    Wrong,
    /// More than one `Authorization` header.
    Repeated,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing bearer token",
            Self::Wrong => "wrong bearer token",
            Self::Repeated => "more than one Authorization header",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750: a presented but unaccepted credential is
    /// `invalid_token`, a missing one gets the bare challenge).
    fn challenge(self) -> &'static str {
        match self {
            Self::Missing => "Bearer realm=\"capsule\"",
            Self::Wrong | Self::Repeated => "Bearer realm=\"capsule\", error=\"invalid_token\"",
        }
    }
}

/// The connections still sending their request head, oldest first, each with what closes it.
#[derive(Default)]
struct Waiting {
    next: u64,
    queue: VecDeque<(u64, CancellationToken)>,
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's place in [`Waiting`], given up when its head has arrived (or it is closed).
struct Place {
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
    closed: CancellationToken,
}

impl Place {
    fn take(waiting: &Arc<Mutex<Waiting>>) -> Self {
        let closed = CancellationToken::new();
        let mut w = lock(waiting);
        let id = w.next;
        w.next += 1;
        w.queue.push_back((id, closed.clone()));
        Self {
            waiting: Arc::clone(waiting),
            id,
            closed,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.waiting).queue.retain(|(id, _)| *id != self.id);
    }
}

/// A slot for a new connection when all are taken: the connection that has been sending its
/// head the longest is closed and its slot handed over. Clients that connect and dawdle (any
/// local user can) thus cannot keep every slot and turn the scraper away for the head timeout
/// over and over; a scrape whose head has arrived is never cut short. `None` if every slot
/// is answering a request.
async fn make_room(
    slots: &Arc<tokio::sync::Semaphore>,
    waiting: &Mutex<Waiting>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let (_, oldest) = lock(waiting).queue.pop_front()?;
    oldest.cancel();
    tokio::time::timeout(ROOM_WAIT, Arc::clone(slots).acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Serves `GET /metrics` on `listener` to holders of `gate`'s token until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
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
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match make_room(&slots, &waiting).await {
                Some(p) => p,
                // Every slot is answering a request: this one is simply closed.
                None => continue,
            },
        };
        // Taken here, not in the task, so the queue's order is the order of arrival.
        let place = Place::take(&waiting);
        let snapshot = Arc::clone(&snapshot);
        let gate = Arc::clone(&gate);
        tokio::spawn(async move {
            let _permit = permit;
            let head = tokio::select! {
                () = place.closed.cancelled() => return,
                head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)) => head,
            };
            drop(place);
            let response = match head {
                Ok(Some(head)) => respond(&head, &*snapshot, &gate),
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
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD_BYTES {
            return None;
        }
        // Only the new bytes, and the three before them (an end may straddle two reads), are
        // searched: a head sent a byte at a time costs linear work, not quadratic.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        let fresh = &head[from..];
        if fresh.windows(4).any(|w| w == b"\r\n\r\n") || fresh.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    String::from_utf8(head).ok()
}

/// The header fields of `head` as (name, value), both trimmed.
fn headers(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
}

/// Whether every `Host` header of `head` names loopback (`localhost` or a loopback address,
/// with or without a port). A request without one is no browser's, so it passes.
fn loopback_host(head: &str) -> bool {
    let hosts: Vec<&str> = headers(head)
        .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value)
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

fn respond(head: &str, snapshot: &dyn Fn() -> Snapshot, gate: &Gate) -> String {
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    if !loopback_host(head) {
        return http(
            403,
            "text/plain",
            "forbidden: the metrics are served only to requests naming a loopback host\n",
        );
    }
    if let Some(why) = gate.refusal(head) {
        gate.refuse(why);
        return http_with(
            401,
            "text/plain",
            &format!("www-authenticate: {}\r\n", why.challenge()),
            &format!(
                "unauthorized: {}; send `Authorization: Bearer <token>` with the token in the state directory's {}\n",
                why.reason(),
                token::TOKEN_FILE
            ),
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
    http_with(status, content_type, "", body)
}

/// A whole response; `extra` is more header lines, each ending in CRLF.
fn http_with(status: u16, content_type: &str, extra: &str, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
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
    use crate::metrics::tests::snapshot;

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

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn gate() -> Gate {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(token::TOKEN_FILE), TOKEN).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(
            dir.path().join(token::TOKEN_FILE),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = token::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        Gate::new(t, Arc::new(AtomicU64::new(0)))
    }

    /// A request head for `GET /metrics` with `lines` as its header lines.
    fn get(lines: &[&str]) -> String {
        let mut head = "GET /metrics HTTP/1.1\r\n".to_string();
        for l in lines {
            head.push_str(l);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head
    }

    fn bearer() -> String {
        format!("Authorization: Bearer {TOKEN}")
    }

    #[test]
    fn the_endpoint_answers_only_get_metrics() {
        let (s, g, auth) = (|| snapshot(), gate(), bearer());
        let with = |request: &str| format!("{request}\r\n{auth}\r\n\r\n");
        assert!(respond(&with("GET /metrics HTTP/1.1"), &s, &g).starts_with("HTTP/1.1 200"));
        assert!(respond(&with("GET / HTTP/1.1"), &s, &g).starts_with("HTTP/1.1 404"));
        assert!(respond(&with("POST /metrics HTTP/1.1"), &s, &g).starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn only_the_bearer_of_the_token_reads_the_counters() {
        let (s, g) = (|| snapshot(), gate());
        let good = bearer();
        let admitted = [
            good.clone(),
            format!("authorization: bearer {TOKEN}"),
            format!("AUTHORIZATION:BEARER   {TOKEN}  "),
            format!("Authorization: Bearer\t{TOKEN}"),
        ];
        for line in &admitted {
            let answer = respond(&get(&["Host: 127.0.0.1:9184", line]), &s, &g);
            assert!(answer.starts_with("HTTP/1.1 200"), "{line}: {answer}");
            assert!(answer.contains("principal=\"alice\""), "{line}");
        }
        assert_eq!(g.refused.load(Ordering::Relaxed), 0);
        let wrong_token = format!("Authorization: Bearer {}0", &TOKEN[..63]);
        let basic = format!("Authorization: Basic {TOKEN}");
        let longer = format!("Authorization: Bearer {TOKEN}0");
        let refused: [(Vec<&str>, Refusal); 9] = [
            (vec![], Refusal::Missing),
            (vec!["Host: localhost"], Refusal::Missing),
            (vec![&wrong_token], Refusal::Wrong),
            (vec![&basic], Refusal::Wrong),
            (vec![&longer], Refusal::Wrong),
            (vec!["Authorization: Bearer"], Refusal::Wrong),
            (vec!["Authorization:"], Refusal::Wrong),
            (vec![&good, &good], Refusal::Repeated),
            (vec![&good, &wrong_token], Refusal::Repeated),
        ];
        for (n, (lines, why)) in refused.iter().enumerate() {
            let answer = respond(&get(lines), &s, &g);
            assert!(
                answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
                "{lines:?}: {answer}"
            );
            let challenge = format!("\r\nwww-authenticate: {}\r\n", why.challenge());
            assert!(answer.contains(&challenge), "{lines:?}: {answer}");
            assert!(answer.contains(why.reason()), "{lines:?}: {answer}");
            assert!(
                !answer.contains("capsule_") && !answer.contains("alice"),
                "{answer}"
            );
            assert_eq!(
                g.refused.load(Ordering::Relaxed),
                n as u64 + 1,
                "each refusal counts"
            );
        }
        assert!(Refusal::Missing.challenge().starts_with("Bearer "));
        assert!(!Refusal::Missing.challenge().contains("invalid_token"));
        // The token is checked before the path: nothing but a 401 without it.
        let elsewhere = respond("GET /other HTTP/1.1\r\n\r\n", &s, &g);
        assert!(elsewhere.starts_with("HTTP/1.1 401"), "{elsewhere}");
    }

    #[test]
    fn a_page_rebound_to_loopback_cannot_read_the_counters() {
        let (s, g, auth) = (|| snapshot(), gate(), bearer());
        for host in [
            "127.0.0.1:9184",
            "127.0.0.1",
            "127.9.8.7:1",
            "[::1]:9184",
            "[::1]",
            "localhost:9184",
            "LocalHost",
        ] {
            let head =
                format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n{auth}\r\n\r\n");
            assert!(respond(&head, &s, &g).starts_with("HTTP/1.1 200"), "{host}");
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
            // Even with the token: a browser tricked into sending it is refused all the same.
            let head = format!("GET /metrics HTTP/1.1\r\nhost:{host}\r\n{auth}\r\n\r\n");
            let answer = respond(&head, &s, &g);
            assert!(answer.starts_with("HTTP/1.1 403"), "{host}: {answer}");
            assert!(!answer.contains("alice"), "{host}: {answer}");
        }
        let twice = format!(
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n{auth}\r\n\r\n"
        );
        assert!(respond(&twice, &s, &g).starts_with("HTTP/1.1 403"));
    }

    #[tokio::test]
    async fn the_served_endpoint_refuses_a_scrape_without_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let g = Arc::new(gate());
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve(
            listener,
            Arc::new(snapshot),
            Arc::clone(&g),
            stop.clone(),
        ));
        let scrape = |head: String| async move {
            let mut conn = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            conn.write_all(head.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut answer = String::new();
            conn.read_to_string(&mut answer)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            answer
        };
        let none = scrape(get(&["Host: 127.0.0.1"])).await;
        assert!(none.starts_with("HTTP/1.1 401"), "{none}");
        assert!(!none.contains("alice"), "{none}");
        let ok = scrape(get(&["Host: 127.0.0.1", &bearer()])).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("capsule_memory_peak_bytes{capsule=\"notes\",principal=\"alice\"}"));
        assert_eq!(g.refused.load(Ordering::Relaxed), 1);
        stop.cancel();
        served.await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// What a test's tracing subscriber prints.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn a_flood_of_refused_scrapes_cannot_flood_the_log() {
        let (s, g) = (|| snapshot(), gate());
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt().with_writer(log.clone()).finish();
        // Any local user can send refused scrapes as fast as loopback carries them; each must
        // not cost the operator's disk a line.
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..1000 {
                let answer = respond(&get(&["Host: 127.0.0.1"]), &s, &g);
                assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
            }
        });
        assert_eq!(
            g.refused.load(Ordering::Relaxed),
            1000,
            "every refusal counts"
        );
        let text = String::from_utf8_lossy(
            &log.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned();
        let lines = text.matches("metrics scrape refused").count();
        assert!((1..=32).contains(&lines), "{lines} audit lines");
    }

    #[test]
    fn the_audit_budget_refills_and_says_what_went_unlogged() {
        let mut budget = AuditBudget::default();
        let start = Instant::now();
        for _ in 0..AUDIT_LINES {
            assert_eq!(budget.admit(start), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(budget.admit(start + AUDIT_WINDOW / 2), None);
        }
        assert_eq!(budget.admit(start + AUDIT_WINDOW), Some(100));
        assert_eq!(budget.admit(start + AUDIT_WINDOW), Some(0));
    }

    /// Serves `gate` on a fresh loopback port; its address and the stop token.
    async fn start(g: Arc<Gate>) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(snapshot), g, stop.clone()));
        (addr, stop)
    }

    /// What the endpoint at `addr` answers to `head`; empty if it closed the connection.
    async fn answer(addr: SocketAddr, head: &str) -> String {
        let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
            return String::new();
        };
        let _sent = conn.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _read = conn.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_lock_the_token_holder_out() {
        let (addr, stop) = start(Arc::new(gate())).await;
        // Any local user may open connections and send nothing (or half a head): they must not
        // take every slot for the head timeout, over and over, while the scraper is turned away.
        let mut idle = Vec::new();
        for n in 0..MAX_CONNECTIONS * 2 {
            let mut conn = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if n % 2 == 0 {
                let _sent = conn
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0")
                    .await;
            }
            idle.push(conn);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let ok = answer(addr, &get(&["Host: 127.0.0.1", &bearer()])).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "scrape turned away: {ok:?}");
        assert!(
            started.elapsed() < HEAD_TIMEOUT,
            "served at once, not after the idle ones"
        );
        stop.cancel();
    }
}
