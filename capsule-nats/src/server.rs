//! A `nats-server` child process on a free loopback port, owned by whoever started it (a test
//! or a benchmark) and killed when dropped. Readiness is polled with a bound, never assumed
//! after a fixed wait; a missing binary is a clear error naming the package to install.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the `nats-server` binary to use instead of searching.
pub const SERVER_ENV: &str = "CAPSULE_NATS_SERVER";

/// How long a started server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No `nats-server` binary was found.
    #[error(
        "nats-server is not installed (looked in $CAPSULE_NATS_SERVER, PATH, /usr/sbin, /usr/bin); \
         install it with `apt-get install nats-server` (cargo xtask ci does so on Debian)"
    )]
    NotInstalled,
    /// Starting or probing the process failed.
    #[error("nats-server: {0}")]
    Io(#[from] std::io::Error),
    /// The process exited or never accepted connections.
    #[error("nats-server on port {port} did not become ready: {why}")]
    NotReady {
        /// The port it was given.
        port: u16,
        /// What was seen.
        why: String,
    },
}

/// The `nats-server` binary: [`SERVER_ENV`], else the first one on `PATH`, `/usr/sbin` or
/// `/usr/bin`.
pub fn server_binary() -> Result<PathBuf, ServerError> {
    if let Some(p) = std::env::var_os(SERVER_ENV).map(PathBuf::from) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ServerError::NotInstalled)
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or(ServerError::NotInstalled)
}

/// What the server requires of clients.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// A token every client must present.
    pub token: Option<String>,
}

/// A running `nats-server` child on 127.0.0.1.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    options: ServerOptions,
}

impl NatsServer {
    /// Starts a server without authentication on a free port.
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with `options` on a free port.
    pub fn start_with(options: ServerOptions) -> Result<Self, ServerError> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut s = Self {
            child: None,
            port,
            options,
        };
        s.spawn()?;
        Ok(s)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Already exited is fine: the wait below reaps it either way.
            let _killed = c.kill();
            let _status = c.wait();
        }
    }

    /// Kills the server and starts a new one on the same port.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let bin = server_binary()?;
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(t) = &self.options.token {
            cmd.args(["--auth", t]);
        }
        let child = cmd.spawn()?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls until the server greets a client with its INFO line, the process exits, or the
    /// bound passes.
    fn wait_ready(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_WITHIN;
        let port = self.port;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(ServerError::NotReady {
                    port,
                    why: format!("exited with {status} (port taken?)"),
                });
            }
            if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(ServerError::NotReady {
                    port,
                    why: format!("no INFO greeting within {}s", READY_WITHIN.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
