//! A loopback TCP proxy in front of a NATS server that a test can break on purpose: refuse
//! clients (the link is down for whoever uses it), swallow what clients write while their
//! connection looks healthy, and cut the connections it carries.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Carries bytes both ways.
    Open,
    /// Closes every connection, old and new.
    Refuse,
    /// Reads what clients write and throws it away.
    Swallow,
}

struct Shared {
    mode: Mutex<Mode>,
    conns: Mutex<Vec<TcpStream>>,
    needle: Mutex<Vec<u8>>,
    found: AtomicBool,
    stopped: AtomicBool,
}

/// The proxy; dropping it cuts every connection and stops accepting.
pub(crate) struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `upstream` on loopback.
    pub(crate) fn start(upstream: u16) -> Self {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Open),
            conns: Mutex::new(Vec::new()),
            needle: Mutex::new(Vec::new()),
            found: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if *lock(&s.mode) == Mode::Refuse {
                    continue;
                }
                let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                {
                    let mut conns = lock(&s.conns);
                    for stream in [&client, &server] {
                        if let Ok(c) = stream.try_clone() {
                            conns.push(c);
                        }
                    }
                }
                let up = Arc::clone(&s);
                std::thread::spawn(move || upstream_pump(&up, client, server));
                std::thread::spawn(move || downstream_pump(s2, c2));
            }
        });
        Self { port, shared }
    }

    /// `nats://127.0.0.1:PORT` of the proxy.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Carries bytes both ways again, for new connections and open ones.
    pub(crate) fn open(&self) {
        *lock(&self.shared.mode) = Mode::Open;
    }

    /// Closes every connection and every new one until [`open`](Self::open).
    pub(crate) fn refuse(&self) {
        *lock(&self.shared.mode) = Mode::Refuse;
        self.cut();
    }

    /// Throws away what clients write after this call, noting when `needle` went by.
    pub(crate) fn swallow(&self, needle: &[u8]) {
        *lock(&self.shared.needle) = needle.to_vec();
        self.shared.found.store(false, Ordering::SeqCst);
        *lock(&self.shared.mode) = Mode::Swallow;
    }

    /// Whether the needle given to [`swallow`](Self::swallow) was swallowed.
    pub(crate) fn swallowed_needle(&self) -> bool {
        self.shared.found.load(Ordering::SeqCst)
    }

    /// Closes every connection it carries at the call.
    pub(crate) fn cut(&self) {
        for c in lock(&self.shared.conns).drain(..) {
            let _closed = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accepting thread so it sees `stopped`.
        let _wake = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

/// Client to server, honouring the mode for every read.
fn upstream_pump(s: &Shared, mut client: TcpStream, mut server: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous read, so a needle split between two reads is still seen.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match *lock(&s.mode) {
            Mode::Open => {
                if server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Mode::Refuse => break,
            Mode::Swallow => {
                let needle = lock(&s.needle).clone();
                carry.extend_from_slice(&buf[..n]);
                if !needle.is_empty() && carry.windows(needle.len()).any(|w| w == needle) {
                    s.found.store(true, Ordering::SeqCst);
                }
                let keep = needle.len().saturating_sub(1).min(carry.len());
                carry.drain(..carry.len() - keep);
            }
        }
    }
    let _closed = client.shutdown(Shutdown::Both);
    let _closed = server.shutdown(Shutdown::Both);
}

/// Server to client, whatever the mode (a refused connection is closed by `cut`).
fn downstream_pump(mut server: TcpStream, mut client: TcpStream) {
    let _copied = std::io::copy(&mut server, &mut client);
    let _closed = client.shutdown(Shutdown::Both);
    let _closed = server.shutdown(Shutdown::Both);
}
