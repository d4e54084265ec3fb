//! `capsule`: the operator's program. `capsule run` loads capsule directories in dependency
//! order (asking install/upgrade questions and capability approvals on the terminal), serves
//! them with a control socket beside the state, and unloads them in reverse order on SIGINT or
//! SIGTERM. The client commands (`publish`, `request`, `tail`, `ps`, `metrics`, `load`,
//! `unload`) talk to that socket; `inspect`, `grant`, `grants`, `revoke` and `secret` work on the
//! state directory directly. Every failure is one sentence plus its cause, never a backtrace,
//! and the exit code says which kind of failure it was (see [`Failure`]).

// A command-line tool reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

mod admit;
mod approvals;
mod client;
mod cluster;
mod control;
mod grants;
mod host;
mod metrics;
mod profiles;
mod report;
mod terminal;

use capsule_runtime::bus::PrincipalId;
use capsule_runtime::{Runtime, RuntimeConfig};

/// The allocator the program runs on (the default `mimalloc` feature): it keeps freed memory
/// for reuse where the C library's malloc hands it back to the kernel between bursts and
/// faults it in again; README, Benchmarks, has the figures for both.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (also `run` stopped by SIGINT or SIGTERM)
  1  runtime failure: the host failed while running, or a request to it failed
     (no host on this state directory, timeout, unknown capsule)
  2  usage error: bad arguments or flags
  3  load failure: a capsule could not be loaded (missing directory, malformed
     manifest, refused capabilities, invalid component)
  4  refused: the control socket rejected the session token";

/// Run, inspect and operate WebAssembly capsules.
#[derive(Parser, Debug)]
#[command(name = "capsule", version, after_help = EXIT_CODES, propagate_version = true)]
struct Cli {
    /// Host state directory [default: $CAPSULE_STATE_DIR, else ~/.local/state/capsule]
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Log filter in RUST_LOG syntax, e.g. `info`, `capsule_runtime=debug`, `trace` (host call
    /// spans) [default: $RUST_LOG, else `info` for run and `warn` for the other commands]
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load capsules in dependency order and serve them until SIGINT or SIGTERM
    Run(host::RunArgs),
    /// Compile and link a capsule without running it, and report what it declares and requests
    Inspect {
        /// The capsule directory (holding Capsule.toml)
        dir: PathBuf,
    },
    /// Grant a capsule capabilities its manifest requests
    Grant(grants::GrantArgs),
    /// Revoke granted capabilities (all of them without items)
    Revoke(grants::GrantArgs),
    /// List every stored grant
    Grants,
    /// Store or delete an encrypted secret for a capsule
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Publish one message into the running host
    Publish(client::PublishArgs),
    /// Publish one message and print the first reply on a topic pattern
    Request(client::RequestArgs),
    /// Follow the messages on a topic pattern until Ctrl-C
    Tail(client::TailArgs),
    /// Show the loaded capsules with their counters
    Ps(client::PsArgs),
    /// Print the host's counters in Prometheus text format
    Metrics,
    /// Load another capsule directory into the running host
    Load {
        /// The capsule directory (holding Capsule.toml)
        dir: PathBuf,
    },
    /// Unload a capsule from the running host
    Unload {
        /// The capsule's name
        name: String,
    },
    /// List the capsules' pending approval requests, or decide one
    Approve {
        /// The request's number (as listed); without it, list what is pending
        id: Option<u64>,
        /// once, session, always or deny
        decision: Option<String>,
    },
    /// Read, change, list or delete principal profiles (quotas, grants, enabled)
    #[command(subcommand)]
    Profile(profiles::ProfileCommand),
    /// Print a shell completion script
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum SecretCommand {
    /// Store a secret; the value is read from stdin (a trailing newline is dropped)
    Set(SecretArgs),
    /// Delete a secret
    Delete(SecretArgs),
}

#[derive(Args, Debug)]
struct SecretArgs {
    /// The capsule the secret belongs to
    #[arg(long, value_name = "NAME")]
    capsule: String,
    /// Store it for this principal [default: default]
    #[arg(long, value_name = "P", conflicts_with = "host")]
    principal: Option<String>,
    /// Store it host-wide (used when a principal has none)
    #[arg(long)]
    host: bool,
    /// The `[env]` key
    key: String,
}

/// Why a command failed; the variant decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// A capsule could not be loaded: exit 3.
    Load(String),
    /// The host or a request failed at run time: exit 1.
    Runtime(String),
    /// The control socket refused the session token: exit 4.
    Refused(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Runtime(_) => 1,
            Self::Usage(_) => 2,
            Self::Load(_) => 3,
            Self::Refused(_) => 4,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Usage(m) | Self::Load(m) | Self::Runtime(m) | Self::Refused(m) => m,
        }
    }
}

/// `error` and its sources, one per line after the first; a refused load lists one refused
/// capsule per line. Error text carries words from manifests, guests and files, so every
/// piece is [`terminal::shown`] escaped: only the line breaks added here remain.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    if let Some(capsule_runtime::LoadError::Refused { refusals }) = error.downcast_ref() {
        return refusals
            .iter()
            .map(|r| terminal::shown(&r.to_string()))
            .collect::<Vec<_>>()
            .join("\n  ");
    }
    let mut text = terminal::shown(&error.to_string());
    let mut source = error.source();
    while let Some(cause) = source {
        let line = terminal::shown(&cause.to_string());
        // Many errors already end with their cause's text; saying it twice helps nobody.
        if !text.contains(&line) {
            text.push_str("\n  caused by: ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

fn default_state() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSULE_STATE_DIR") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local").join("state").join("capsule")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print and exit 0; anything else is a usage error (exit 2).
        Err(e) => e.exit(),
    };
    let is_run = matches!(cli.command, Command::Run(_));
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty()))
        .unwrap_or_else(|| if is_run { "info" } else { "warn" }.to_string());
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("capsule: --log `{filter}` is not a valid filter: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(terminal::LogStderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("capsule: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(dispatch(cli));
    // Blocked stdin readers (prompts) must not keep the process alive after the answer.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("capsule: {}", terminal::printable(f.message()));
            if let Failure::Usage(_) = f {
                eprintln!("run `capsule --help` for usage");
            }
            ExitCode::from(f.code())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let state = cli.state.clone().unwrap_or_else(default_state);
    let config = RuntimeConfig::new(state.clone());
    match cli.command {
        Command::Run(args) => host::run(args, config).await,
        Command::Inspect { dir } => inspect(config, &dir).await,
        Command::Grant(args) => grants::grant(&args, &config),
        Command::Revoke(args) => grants::revoke(&args, &config),
        Command::Grants => grants::list(&config),
        Command::Secret(cmd) => secret(cmd, &config),
        Command::Publish(args) => client::publish(&state, args).await,
        Command::Request(args) => client::request(&state, args).await,
        Command::Tail(args) => client::tail(&state, args).await,
        Command::Ps(args) => client::ps(&state, args).await,
        Command::Metrics => client::metrics(&state).await,
        Command::Load { dir } => client::load(&state, &dir).await,
        Command::Unload { name } => client::unload(&state, &name).await,
        Command::Approve { id, decision } => client::approve(&state, id, decision.as_deref()).await,
        Command::Profile(cmd) => profiles::run(cmd, &config),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "capsule",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

async fn inspect(config: RuntimeConfig, dir: &std::path::Path) -> Result<(), Failure> {
    let rt = Runtime::new(config).map_err(|e| Failure::Runtime(chain(&e)))?;
    let i = rt
        .inspect(dir)
        .await
        .map_err(|e| Failure::Load(chain(&e)))?;
    let m = &i.manifest;
    println!("capsule   {} {}", m.package.name, m.package.version);
    println!(
        "component {} ({})",
        m.component.id,
        m.component.file.display()
    );
    let e = i.exports;
    let entry_points: Vec<&str> = [
        (e.run, "run"),
        (e.hook, "astrid-hook-trigger"),
        (e.install, "astrid-install"),
        (e.upgrade, "astrid-upgrade"),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect();
    println!("exports   {}", entry_points.join(", "));
    for stub in &i.stubs {
        println!("absent    {stub}");
    }
    println!("imports   {}", i.imports.join(", "));
    let publish: Vec<&str> = m.publish.iter().map(|p| p.pattern.as_str()).collect();
    let subscribe: Vec<&str> = m.subscribe.iter().map(|p| p.pattern.as_str()).collect();
    println!("publish   {}", publish.join(", "));
    println!("subscribe {}", subscribe.join(", "));
    for (pattern, h) in m.handlers() {
        println!(
            "handler   {} -> {} (priority {})",
            pattern, h.action, h.priority
        );
    }
    println!("caps      {}", m.capabilities.held_names().join(", "));
    let p = &i.permissions;
    for (label, items) in [
        ("granted", &p.unchanged),
        ("pending", &p.added),
        ("refused", &p.denied),
    ] {
        for r in items {
            println!("request   {} ({label})", terminal::shown(&r.to_string()));
        }
    }
    for f in &i.forbidden {
        println!("forbidden {}", terminal::shown(&f.to_string()));
    }
    let env: Vec<&str> = m.env.keys().map(String::as_str).collect();
    println!("env       {}", env.join(", "));
    for d in &m.deprecations {
        println!("deprecated {}", terminal::shown(&d.to_string()));
    }
    if let Some(migrated) = &m.migrated {
        println!("\n# {} in the current layout:", m.file.display());
        println!("{}", terminal::shown_lines(migrated.trim_end()));
    }
    Ok(())
}

fn secret(cmd: SecretCommand, config: &RuntimeConfig) -> Result<(), Failure> {
    use capsule_runtime::store::{SecretScope, SecretStore};
    let (set, args) = match cmd {
        SecretCommand::Set(a) => (true, a),
        SecretCommand::Delete(a) => (false, a),
    };
    let scope = if args.host {
        SecretScope::Host
    } else {
        SecretScope::Principal(
            PrincipalId::parse(args.principal.as_deref().unwrap_or("default"))
                .map_err(|e| Failure::Usage(format!("--principal: {e}")))?,
        )
    };
    let store = SecretStore::open(&config.state_dir, &config.host_key_file())
        .map_err(|e| Failure::Runtime(chain(&e)))?;
    let (capsule, key) = (&args.capsule, &args.key);
    if set {
        let mut value = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut value)
            .map_err(|e| Failure::Runtime(format!("reading the value from stdin: {e}")))?;
        // A trailing newline from `echo` is not part of the secret.
        if value.last() == Some(&b'\n') {
            value.pop();
        }
        store
            .set(&scope, capsule, key, &value)
            .map_err(|e| Failure::Runtime(chain(&e)))?;
        println!("stored `{key}` for capsule {capsule}");
    } else {
        let existed = store
            .delete(&scope, capsule, key)
            .map_err(|e| Failure::Runtime(chain(&e)))?;
        println!(
            "{} `{key}` for capsule {capsule}",
            if existed { "deleted" } else { "no secret" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_runtime::security::Request;
    use capsule_runtime::{LoadError, Refusal, RefusalReason};

    #[test]
    fn a_refused_load_is_reported_one_escaped_line_per_capsule() {
        let refusal = |capsule: &str, dir: &str| {
            Refusal::new(
                capsule,
                RefusalReason::NotApproved(vec![Request::FsRead(dir.into())]),
            )
        };
        let e = LoadError::Refused {
            refusals: vec![
                refusal("one", "/srv/\x1b[2J\x1b[Hcapsule: all loaded"),
                refusal("two", "/srv/x\ncapsule: `two` loaded\r"),
            ],
        };
        let text = terminal::printable(&chain(&e));
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("/srv/\\u{1b}[2J"), "{text}");
        assert_eq!(
            terminal::printable("stderr tail:\n\x1b]0;pwned\x07"),
            "stderr tail:\n\\u{1b}]0;pwned\\u{7}",
            "what reaches the terminal unescaped is escaped at the last step"
        );
        assert_eq!(
            terminal::printable(&terminal::shown("a\\u{1b}")),
            "a\\\\u{1b}",
            "escaped text passes unchanged"
        );
    }
}
