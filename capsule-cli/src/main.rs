//! `capsule`: the host binary. `capsule run` loads capsule directories in dependency order
//! (asking install/upgrade questions and capability approvals on the terminal) and serves them
//! until interrupted; `capsule inspect` reports what a capsule declares, imports, exports and
//! requests without running it; `capsule grant`, `grants` and `revoke` manage the operator's
//! grants. Bad flags get a usage message and exit code 2; a failed command exits 1.

// A command-line tool reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

mod grants;
mod terminal;

use capsule_runtime::bus::PrincipalId;
use capsule_runtime::{Runtime, RuntimeConfig};

const USAGE: &str = "\
usage:
  capsule run [--state DIR] [--owner PRINCIPAL] CAPSULE_DIR...
  capsule inspect [--state DIR] CAPSULE_DIR
  capsule grant [--state DIR] CAPSULE (--all | ITEM...)
  capsule revoke [--state DIR] CAPSULE [--all | ITEM...]
  capsule grants [--state DIR]
  capsule secret set [--state DIR] --capsule NAME [--principal P | --host] KEY   (value on stdin)
  capsule secret delete [--state DIR] --capsule NAME [--principal P | --host] KEY
  capsule --help | --version

options:
  --state DIR          host state directory (default: $CAPSULE_STATE_DIR,
                       else $HOME/.local/state/capsule)
  --owner PRINCIPAL    principal the capsules are loaded for (default: default)
  --capsule NAME       the capsule a secret belongs to
  --principal P        store the secret for principal P (default: the owner, `default`)
  --host               store the secret host-wide (used when a principal has none)

grant and revoke items (CAPSULE is a capsule directory, or a name that has a grant):
  --all                everything the capsule's manifest requests (grant), or the whole
                       record (revoke)
  --fs DIR             read a host directory        --fs-write DIR   read and write it
  --uplink             act as an uplink (publish-as)
  --handler PATTERN    a handler on a pattern beyond the capsule's own topics (e.g. '*')
  --net HOST           --net-connect HOST:PORT     --net-bind HOST:PORT
  --process COMMAND    --identity resolve|link|admin    --persistent

`run` starts the capsules in dependency order ([imports]/[exports]); capabilities a capsule
requests beyond its own confinement (host directories, uplink, broad handlers, network,
processes, identity) need the operator's grant: `run` asks on this terminal for what the stored
grants do not cover, and refuses the capsules it cannot ask about. Install or upgrade questions
are asked here too (secret answers are not echoed). Some directories are never grantable: the
state directory, the host key's directory, the compile cache, /proc, /sys, /dev and /.

The host key that encrypts secrets is $CAPSULE_HOST_KEY_FILE, else <state>/keys/host.key.

RUST_LOG selects log output (default: info).
";

pub(crate) struct Args {
    command: String,
    state: Option<PathBuf>,
    owner: Option<String>,
    capsule: Option<String>,
    principal: Option<String>,
    host: bool,
    all: bool,
    items: Vec<(String, Option<String>)>,
    dirs: Vec<PathBuf>,
}

fn parse(mut raw: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = raw.next().ok_or("missing command")?;
    let mut args = Args {
        command,
        state: None,
        owner: None,
        capsule: None,
        principal: None,
        host: false,
        all: false,
        items: Vec::new(),
        dirs: Vec::new(),
    };
    while let Some(a) = raw.next() {
        match a.as_str() {
            "--state" => args.state = Some(raw.next().ok_or("--state needs a directory")?.into()),
            "--owner" => args.owner = Some(raw.next().ok_or("--owner needs a principal")?),
            "--capsule" => args.capsule = Some(raw.next().ok_or("--capsule needs a name")?),
            "--principal" => {
                args.principal = Some(raw.next().ok_or("--principal needs a principal")?)
            }
            "--host" => args.host = true,
            "--all" => args.all = true,
            "--uplink" | "--persistent" => args.items.push((a, None)),
            flag if grants::VALUE_ITEMS.contains(&flag) => {
                let value = raw.next().ok_or(format!("{flag} needs a value"))?;
                args.items.push((a, Some(value)));
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option `{flag}`")),
            dir => args.dirs.push(dir.into()),
        }
    }
    Ok(args)
}

fn default_state() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSULE_STATE_DIR") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local").join("state").join("capsule")
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    match raw.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            eprint!("{USAGE}");
            return if raw.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Some("-V" | "--version") => {
            eprintln!("capsule {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let args = match parse(raw.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("capsule: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("capsule: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("capsule: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Error(e)) => {
            eprintln!("capsule: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) enum Failure {
    Usage(String),
    Error(String),
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut config = RuntimeConfig::new(args.state.clone().unwrap_or_else(default_state));
    if let Some(owner) = &args.owner {
        config.owner =
            PrincipalId::parse(owner).map_err(|e| Failure::Usage(format!("--owner: {e}")))?;
    }
    let command = args.command.clone();
    match command.as_str() {
        "run" => {
            if args.dirs.is_empty() {
                return Err(Failure::Usage(
                    "run needs at least one capsule directory".into(),
                ));
            }
            let rt = Runtime::new(config).map_err(|e| Failure::Error(e.to_string()))?;
            let prompter = std::sync::Arc::new(terminal::TerminalPrompter::default());
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
            let loaded = match rt.load_all(&args.dirs).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    rt.shutdown().await;
                    return Err(Failure::Error(e.to_string()));
                }
            };
            for c in &loaded {
                println!(
                    "loaded {} {} (session {}, owner {}, cache {:?})",
                    c.name(),
                    c.manifest().package.version,
                    c.session(),
                    c.owner(),
                    c.report().cache,
                );
            }
            println!(
                "serving {} capsule(s); press Ctrl-C to stop",
                args.dirs.len()
            );
            let stop = tokio::signal::ctrl_c().await;
            if let Err(e) = stop {
                eprintln!("capsule: cannot wait for Ctrl-C ({e}); stopping");
            }
            rt.shutdown().await;
            Ok(())
        }
        "inspect" => {
            let [dir] = args.dirs.as_slice() else {
                return Err(Failure::Usage(
                    "inspect takes exactly one capsule directory".into(),
                ));
            };
            let rt = Runtime::new(config).map_err(|e| Failure::Error(e.to_string()))?;
            let i = rt
                .inspect(dir)
                .await
                .map_err(|e| Failure::Error(e.to_string()))?;
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
            Ok(())
        }
        "secret" => secret(args, config),
        "grant" | "revoke" | "grants" => grants::run(&command, &args, &config),
        other => Err(Failure::Usage(format!("unknown command `{other}`"))),
    }
}

fn secret(args: Args, config: RuntimeConfig) -> Result<(), Failure> {
    use capsule_runtime::secrets::{SecretScope, SecretStore};
    let [action, key] = args.dirs.as_slice() else {
        return Err(Failure::Usage(
            "secret needs an action (set, delete) and a KEY".into(),
        ));
    };
    let (action, key) = (action.to_string_lossy(), key.to_string_lossy());
    let capsule = args
        .capsule
        .ok_or_else(|| Failure::Usage("secret needs --capsule NAME".into()))?;
    let scope = match (args.host, args.principal) {
        (true, Some(_)) => {
            return Err(Failure::Usage(
                "--host and --principal exclude each other".into(),
            ));
        }
        (true, None) => SecretScope::Host,
        (false, p) => SecretScope::Principal(
            PrincipalId::parse(p.as_deref().unwrap_or("default"))
                .map_err(|e| Failure::Usage(format!("--principal: {e}")))?,
        ),
    };
    let store = SecretStore::open(&config.state_dir, &config.host_key_file())
        .map_err(|e| Failure::Error(e.to_string()))?;
    match action.as_ref() {
        "set" => {
            let mut value = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut value)
                .map_err(|e| Failure::Error(format!("reading the value from stdin: {e}")))?;
            // A trailing newline from `echo` is not part of the secret.
            if value.last() == Some(&b'\n') {
                value.pop();
            }
            store
                .set(&scope, &capsule, &key, &value)
                .map_err(|e| Failure::Error(e.to_string()))?;
            println!("stored `{key}` for capsule {capsule}");
            Ok(())
        }
        "delete" => {
            let existed = store
                .delete(&scope, &capsule, &key)
                .map_err(|e| Failure::Error(e.to_string()))?;
            println!(
                "{} `{key}` for capsule {capsule}",
                if existed { "deleted" } else { "no secret" }
            );
            Ok(())
        }
        other => Err(Failure::Usage(format!("unknown secret action `{other}`"))),
    }
}
