//! `capsule run`: starts the runtime, the control socket and (on request) the loopback metrics
//! endpoint, loads the capsule directories in dependency order while showing progress, prints
//! one line per capsule, and serves until SIGINT or SIGTERM. Stopping unloads every capsule
//! in reverse load order (importers before their providers), lets tails flush, removes the
//! control files and exits 0. Any failure to start is reported as one sentence with its cause;
//! a capsule that cannot load stops the host with exit code 3 after unloading what started.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_runtime::bus::{PrincipalId, Scope, TopicPattern};
use capsule_runtime::security::Manifest;
use capsule_runtime::{Capsule, EVENT_TOPIC_PREFIX, Runtime, RuntimeConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::control::Server;
use crate::{Failure, chain, terminal};

/// How often `run` reports which capsules are still loading.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// `capsule run`.
#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Capsule directories (each holding a Capsule.toml)
    #[arg(required = true, value_name = "CAPSULE_DIR")]
    dirs: Vec<PathBuf>,
    /// The principal the capsules are loaded for [default: default]
    #[arg(long, value_name = "PRINCIPAL")]
    owner: Option<String>,
    /// Also serve the counters for a Prometheus scraper on this loopback address, e.g.
    /// 127.0.0.1:9184 (GET /metrics, with the bearer token of `<state>/metrics.token`)
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::loopback)]
    metrics: Option<SocketAddr>,
    /// Keep compiled components here instead of the state directory's cache (shareable
    /// between state directories; never grantable to a capsule)
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Run each principal's host processes as a user id of its own from this range, e.g.
    /// 200000-200999 (a root host only; recorded in the state directory)
    #[arg(long, value_name = "FIRST-LAST", value_parser = uid_range)]
    process_uids: Option<std::ops::RangeInclusive<u32>>,
    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,
}

/// Parses `FIRST-LAST` (inclusive, FIRST ≤ LAST, neither 0).
fn uid_range(s: &str) -> Result<std::ops::RangeInclusive<u32>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{v:?} is not a user id: {e}"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a == 0 || a > b {
        return Err(format!(
            "{s:?}: the range must start above 0 and not end before it starts"
        ));
    }
    Ok(a..=b)
}

/// SIGINT and SIGTERM watchers, installed once for the whole run.
///
/// Once tokio has installed its handler the default action (exit) is gone, and a signal that
/// arrives while no watcher exists is dropped; so the watchers live from before loading until the
/// host stops, and a signal sent at any point is seen.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, Failure> {
        let fail = |e: std::io::Error| Failure::Runtime(format!("cannot watch for signals: {e}"));
        Ok(Self {
            int: signal(SignalKind::interrupt()).map_err(fail)?,
            term: signal(SignalKind::terminate()).map_err(fail)?,
        })
    }

    /// Waits for SIGINT or SIGTERM; the name of the one that came.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// One line for a loaded capsule: name, version, handlers, run loop, ready time.
fn describe(c: &Capsule, ready: Option<Duration>) -> String {
    let handlers: Vec<String> = c
        .manifest()
        .handlers()
        .map(|(pattern, h)| format!("{pattern}→{}", h.action))
        .collect();
    let handlers = if handlers.is_empty() {
        "no handlers".to_string()
    } else {
        format!("handlers {}", handlers.join(", "))
    };
    let run_loop = if c.report().exports.run {
        "run loop"
    } else {
        "no run loop"
    };
    let ready = ready.map_or_else(String::new, |d| {
        format!(", ready in {:.1}s", d.as_secs_f64())
    });
    terminal::shown(&format!(
        "  {} {}: {handlers}; {run_loop}{ready}",
        c.name(),
        c.manifest().package.version
    ))
}

pub(crate) async fn run(args: RunArgs, mut config: RuntimeConfig) -> Result<(), Failure> {
    if let Some(owner) = &args.owner {
        config.owner =
            PrincipalId::parse(owner).map_err(|e| Failure::Usage(format!("--owner: {e}")))?;
    }
    if let Some(cache) = &args.cache {
        config.cache_dir = Some(cache.clone());
    }
    if let Some(uids) = &args.process_uids {
        config.process_uids = Some(uids.clone());
    }
    // Manifests are read first so a missing directory or a malformed manifest is reported
    // before anything starts.
    let manifests = args
        .dirs
        .iter()
        .map(|d| {
            Manifest::load(d)
                .map_err(|e| Failure::Load(format!("cannot load {}: {}", d.display(), chain(&e))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = args.cluster.config(&config.state_dir)?;
    // The token file is checked before anything starts, so a link or a token others can read
    // stops the host at once instead of guarding the counters.
    let metrics_token = match args.metrics {
        Some(_) => Some(
            crate::metrics::token::load_or_create(&config.state_dir)
                .map_err(|e| Failure::Runtime(format!("cannot serve metrics: {}", chain(&e))))?,
        ),
        None => None,
    };
    let mut signals = Signals::install()?;
    let started = Instant::now();
    let rt = Runtime::new(config)
        .map_err(|e| Failure::Runtime(format!("cannot start the host: {}", chain(&e))))?;
    let prompter = Arc::new(terminal::TerminalPrompter::default());
    rt.set_elicitor(prompter.clone());
    rt.set_approver(prompter);
    if let Some(mut inbound) = rt.take_inbound() {
        // Nothing consumes uplink traffic yet; log it so the channel never fills.
        tokio::spawn(async move {
            while let Some(m) = inbound.recv().await {
                tracing::info!(
                    capsule = %m.capsule,
                    uplink = %m.uplink.name,
                    platform = %m.uplink.platform,
                    user = %m.platform_user_id,
                    bytes = m.content.len(),
                    "inbound uplink message"
                );
            }
        });
    }
    let (server, listener) = Server::bind(rt.clone())
        .await
        .map_err(|e| Failure::Runtime(format!("cannot open the control socket: {e}")))?;
    rt.set_approval_handler(server.approvals());
    let serving = tokio::spawn(Arc::clone(&server).serve(listener));
    if let Some(c) = cluster {
        match crate::cluster::join(&rt, c.clone()).await {
            Ok(b) => {
                println!(
                    "joined cluster {} as {} through {}",
                    c.cluster, c.host, c.servers
                );
                server.set_bridge(b, c);
            }
            Err(e) => {
                server.stop().await;
                rt.shutdown().await;
                return Err(e);
            }
        }
    }
    let stop_metrics = CancellationToken::new();
    if let (Some(addr), Some(token)) = (args.metrics, metrics_token) {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                server.stop().await;
                rt.shutdown().await;
                return Err(Failure::Runtime(format!(
                    "cannot serve metrics on {addr}: {e}"
                )));
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        let s = Arc::clone(&server);
        let gate = crate::metrics::Gate::new(token, server.metrics_refused());
        tokio::spawn(crate::metrics::serve(
            listener,
            Arc::new(move || s.snapshot()),
            Arc::new(gate),
            stop_metrics.clone(),
        ));
        println!(
            "metrics on http://{bound}/metrics; bearer token in {}",
            crate::metrics::token::token_path(&rt.config().state_dir).display()
        );
    }

    let loaded = tokio::select! {
        loaded = load(&rt, &args.dirs, &manifests, started) => loaded,
        why = signals.next() => {
            println!("{why} while loading: stopping");
            Err(Failure::Runtime(String::new()))
        }
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            stop_metrics.cancel();
            stop(&rt, &server).await;
            serving.abort();
            return match e {
                // Interrupted while loading is an ordinary stop.
                Failure::Runtime(m) if m.is_empty() => Ok(()),
                other => Err(other),
            };
        }
    };
    println!(
        "serving {} capsule(s) from {}; control socket {}; press Ctrl-C to stop",
        loaded,
        rt.config().state_dir.display(),
        crate::control::socket_path(&rt.config().state_dir).display()
    );
    let why = signals.next().await;
    let stopping = Instant::now();
    println!("{why}: stopping");
    stop_metrics.cancel();
    let unloaded = stop(&rt, &server).await;
    serving.abort();
    println!(
        "stopped: {unloaded} capsule(s) unloaded in {} ms",
        stopping.elapsed().as_millis()
    );
    Ok(())
}

/// Loads `dirs` with progress on stderr and one line per capsule on stdout; the number loaded.
async fn load(
    rt: &Runtime,
    dirs: &[PathBuf],
    manifests: &[Manifest],
    started: Instant,
) -> Result<usize, Failure> {
    let names: Vec<String> = manifests
        .iter()
        .map(|m| m.package.name.to_string())
        .collect();
    eprintln!(
        "loading {} capsule(s): {} (a first load compiles each component; debug builds take seconds)",
        names.len(),
        names.join(", ")
    );
    // The host announces each load on the bus; following it gives per-capsule ready times.
    let events = TopicPattern::parse(&format!("{EVENT_TOPIC_PREFIX}.loaded"))
        .map(|p| rt.bus().subscribe(p, Scope::All));
    let mut events = events.ok();
    let mut loaded_at: HashMap<String, Duration> = HashMap::new();
    let loading = rt.load_all(dirs);
    tokio::pin!(loading);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut loading => break r,
            _ = tick.tick() => {
                if let Some(ev) = events.as_mut() {
                    note_loaded(ev, &mut loaded_at, started);
                }
                let waiting: Vec<&str> = names
                    .iter()
                    .filter(|n| !loaded_at.contains_key(*n))
                    .map(String::as_str)
                    .collect();
                eprintln!(
                    "  … {:.0}s: loaded {}/{}; still loading {}",
                    started.elapsed().as_secs_f64(),
                    loaded_at.len(),
                    names.len(),
                    waiting.join(", ")
                );
            }
        }
    };
    if let Some(ev) = events.as_mut() {
        note_loaded(ev, &mut loaded_at, started);
    }
    let capsules = result.map_err(|e| {
        let hint = match &e {
            capsule_runtime::LoadError::Refused { .. } => {
                "\n  grant what a capsule requests with `capsule grant CAPSULE_DIR --all` (see `capsule inspect`), or answer the prompt on a terminal"
            }
            _ => "",
        };
        Failure::Load(format!("cannot load the capsules: {}{hint}", chain(&e)))
    })?;
    println!("loaded {} capsule(s):", capsules.len());
    for c in &capsules {
        println!("{}", describe(c, loaded_at.get(c.name()).copied()));
    }
    Ok(capsules.len())
}

fn note_loaded(
    events: &mut capsule_runtime::bus::Receiver,
    loaded_at: &mut HashMap<String, Duration>,
    started: Instant,
) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    loop {
        let drain = events.try_drain(64 * 1024);
        if drain.messages.is_empty() {
            return;
        }
        for m in drain.messages {
            let body: serde_json::Value =
                serde_json::from_str(m.payload.as_str()).unwrap_or_default();
            if let Some(name) = body.get("capsule").and_then(|n| n.as_str()) {
                // Back-dated by how long ago the event was published.
                let age = Duration::from_millis(now_ms.saturating_sub(m.timestamp_ms));
                let at = started.elapsed().saturating_sub(age);
                loaded_at.entry(name.to_string()).or_insert(at);
            }
        }
    }
}

/// Unloads every capsule, last loaded first, then stops the control server; the number of
/// capsules unloaded.
async fn stop(rt: &Runtime, server: &Server) -> usize {
    let capsules = rt.capsules();
    for c in capsules.iter().rev() {
        let name = c.name().to_string();
        rt.unload(&name).await;
        println!("unloaded {name}");
    }
    server.stop_bridge().await;
    server.stop().await;
    // Anything loaded through the socket while stopping goes too.
    rt.shutdown().await;
    capsules.len()
}

#[cfg(test)]
mod tests {
    use super::uid_range;

    #[test]
    fn a_uid_range_is_first_dash_last_above_zero() {
        assert_eq!(uid_range("200000-200999"), Ok(200_000..=200_999));
        assert_eq!(uid_range("7-7"), Ok(7..=7));
        for bad in ["0-10", "10-9", "10", "a-b", "-5", "1-4294967296", ""] {
            assert!(uid_range(bad).is_err(), "{bad}");
        }
    }
}
