//! `capsule grant`, `capsule revoke` and `capsule grants`: the operator's side of the trust
//! model. A grant names what a capsule may use beyond its own confinement; nothing is recorded
//! that the host policy forbids, and a revoked grant takes effect at the capsule's next load.

use capsule_runtime::RuntimeConfig;
use capsule_runtime::security::{
    CapsuleName, EndpointGrant, FsGrant, FsRoot, Grant, GrantStore, HostGrant, IdentityLevel,
    MANIFEST_FILE, Manifest, Request,
};

use crate::terminal::shown;
use crate::{Failure, chain};

/// What `grant` and `revoke` act on, and the items they name.
#[derive(clap::Args, Debug)]
pub(crate) struct GrantArgs {
    /// A capsule directory, or the name of a capsule that already has a grant
    capsule: std::path::PathBuf,
    /// Everything the capsule's manifest requests (grant), or the whole record (revoke)
    #[arg(long)]
    all: bool,
    /// Read access to a host directory
    #[arg(long, value_name = "DIR")]
    fs: Vec<String>,
    /// Read and write access to a host directory
    #[arg(long, value_name = "DIR")]
    fs_write: Vec<String>,
    /// Act as an uplink (`publish-as` a claimed principal)
    #[arg(long)]
    uplink: bool,
    /// A handler on a pattern beyond the capsule's own topics (e.g. '*')
    #[arg(long, value_name = "PATTERN")]
    handler: Vec<String>,
    /// A `[subscribe]` entry spanning every namespace (e.g. '*.chat')
    #[arg(long, value_name = "PATTERN")]
    subscribe: Vec<String>,
    /// Outbound network to a host
    #[arg(long, value_name = "HOST")]
    net: Vec<String>,
    /// Connect to an endpoint
    #[arg(long, value_name = "HOST:PORT")]
    net_connect: Vec<String>,
    /// Bind an endpoint
    #[arg(long, value_name = "HOST:PORT")]
    net_bind: Vec<String>,
    /// Run a host process
    #[arg(long, value_name = "COMMAND")]
    process: Vec<String>,
    /// An identity level: resolve, link or admin
    #[arg(long, value_name = "LEVEL")]
    identity: Vec<String>,
    /// Persistent allowances
    #[arg(long)]
    persistent: bool,
}

impl GrantArgs {
    /// The items as (flag, value) pairs, in a stable order.
    fn items(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut items = Vec::new();
        for (flag, values) in [
            ("--fs", &self.fs),
            ("--fs-write", &self.fs_write),
            ("--handler", &self.handler),
            ("--subscribe", &self.subscribe),
            ("--net", &self.net),
            ("--net-connect", &self.net_connect),
            ("--net-bind", &self.net_bind),
            ("--process", &self.process),
            ("--identity", &self.identity),
        ] {
            for v in values {
                items.push((flag, Some(v.as_str())));
            }
        }
        if self.uplink {
            items.push(("--uplink", None));
        }
        if self.persistent {
            items.push(("--persistent", None));
        }
        items
    }
}

/// Parses one item flag into the request it names.
fn item(flag: &str, value: Option<&str>) -> Result<Request, String> {
    let v = value.unwrap_or_default();
    let dir = |v: &str| match FsGrant::parse(v)? {
        FsGrant {
            root: FsRoot::Absolute(p),
            ..
        } => Ok(p),
        _ => Err(format!(
            "`{v}` needs no grant (home://, cwd:// and the workspace are always the capsule's own); give an absolute host directory"
        )),
    };
    Ok(match flag {
        "--fs" => Request::FsRead(dir(v)?),
        "--fs-write" => Request::FsWrite(dir(v)?),
        "--uplink" => Request::Uplink,
        "--persistent" => Request::Persistent,
        "--handler" => Request::Handler(
            capsule_runtime::bus::TopicPattern::parse(v).map_err(|e| format!("`{v}`: {e}"))?,
        ),
        "--subscribe" => Request::Subscribe(
            capsule_runtime::bus::TopicPattern::parse(v).map_err(|e| format!("`{v}`: {e}"))?,
        ),
        "--net" => Request::Net(HostGrant::parse(v)?),
        "--net-connect" => Request::NetConnect(EndpointGrant::parse(v)?),
        "--net-bind" => Request::NetBind(EndpointGrant::parse(v)?),
        "--process" if !v.is_empty() && !v.contains('\0') => Request::Process(v.to_string()),
        "--identity" => Request::Identity(
            IdentityLevel::parse(v).ok_or(format!("`{v}` is not resolve, link or admin"))?,
        ),
        other => return Err(format!("`{other}` is not a grant item")),
    })
}

/// `capsule grants`: every stored grant.
pub(crate) fn list(config: &RuntimeConfig) -> Result<(), Failure> {
    let store = GrantStore::new(&config.state_dir);
    let all = store.list().map_err(|e| Failure::Runtime(chain(&e)))?;
    if all.is_empty() {
        println!("no grants recorded in {}", config.state_dir.display());
    }
    for g in all {
        match g {
            Ok(g) => print_grant(&g),
            Err(e) => println!("unreadable: {}", shown(&e.to_string())),
        }
    }
    Ok(())
}

/// The capsule a `grant`/`revoke` names: its manifest when given a directory, and its name.
fn target(args: &GrantArgs) -> Result<(Option<Manifest>, CapsuleName), Failure> {
    let target = &args.capsule;
    let manifest = if target.join(MANIFEST_FILE).is_file() || target.is_file() {
        Some(Manifest::load(target).map_err(|e| Failure::Load(chain(&e)))?)
    } else {
        None
    };
    let name = match &manifest {
        Some(m) => m.package.name.clone(),
        None => CapsuleName::parse(&target.to_string_lossy()).map_err(|e| {
            Failure::Usage(format!(
                "`{}` is neither a capsule directory nor a capsule name ({e})",
                target.display()
            ))
        })?,
    };
    Ok((manifest, name))
}

fn requested(args: &GrantArgs) -> Result<Vec<Request>, Failure> {
    args.items()
        .into_iter()
        .map(|(flag, value)| item(flag, value))
        .collect::<Result<_, _>>()
        .map_err(Failure::Usage)
}

/// `capsule revoke`.
pub(crate) fn revoke(args: &GrantArgs, config: &RuntimeConfig) -> Result<(), Failure> {
    let store = GrantStore::new(&config.state_dir);
    // Grants record the directories requests resolved to; a directory that no longer
    // resolves is matched as written.
    let requested: Vec<Request> = requested(args)?
        .into_iter()
        .map(|r| match &r {
            Request::FsRead(d) | Request::FsWrite(d) => {
                r.with_dir(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
            }
            _ => r,
        })
        .collect();
    let (_, name) = target(args)?;
    let stored = store.load(&name).map_err(|e| Failure::Runtime(chain(&e)))?;
    revoke_items(&store, &name, stored, &requested, args.all)
}

/// `capsule grant`.
pub(crate) fn grant(args: &GrantArgs, config: &RuntimeConfig) -> Result<(), Failure> {
    let store = GrantStore::new(&config.state_dir);
    let fail = |e: &(dyn std::error::Error + 'static)| Failure::Runtime(chain(e));
    let mut items = requested(args)?;
    let (manifest, name) = target(args)?;
    let stored = store.load(&name).map_err(|e| fail(&e))?;
    if args.all {
        let Some(m) = &manifest else {
            return Err(Failure::Usage(
                "--all needs the capsule's directory, to read what its manifest requests".into(),
            ));
        };
        items.extend(capsule_runtime::security::requests(m));
    }
    if items.is_empty() {
        if manifest.is_some() && args.all {
            println!("`{name}` requests nothing that needs a grant");
            return Ok(());
        }
        return Err(Failure::Usage(
            "name what to grant (--all, or items such as --fs DIR, --uplink)".into(),
        ));
    }
    let policy = config.host_policy().map_err(|e| fail(&e))?;
    // What is recorded is each directory as it resolves now: the directory that is mounted.
    let resolved = policy.resolve(&items);
    let refused: Vec<String> = resolved
        .forbidden
        .iter()
        .map(|e| shown(&e.to_string()))
        .collect();
    let items = resolved.requests;
    if !refused.is_empty() {
        return Err(Failure::Runtime(format!(
            "nothing was granted:\n  {}",
            refused.join("\n  ")
        )));
    }
    let mut grant = match (stored, &manifest) {
        (Some(g), _) => g,
        (None, Some(m)) => Grant::new(m),
        (None, None) => {
            return Err(Failure::Runtime(format!(
                "no grant is recorded for `{name}` yet: give its directory, so the manifest the grant is for is recorded"
            )));
        }
    };
    if let Some(m) = &manifest {
        grant.version = m.package.version.clone();
        grant.manifest = m.digest;
    }
    grant.allow(items);
    store.save(&grant).map_err(|e| fail(&e))?;
    print_grant(&grant);
    Ok(())
}

fn revoke_items(
    store: &GrantStore,
    name: &CapsuleName,
    stored: Option<Grant>,
    items: &[Request],
    all: bool,
) -> Result<(), Failure> {
    let fail = |e: &(dyn std::error::Error + 'static)| Failure::Runtime(chain(e));
    let Some(mut grant) = stored else {
        return Err(Failure::Runtime(format!(
            "no grant is recorded for `{name}`"
        )));
    };
    if all || items.is_empty() {
        store.remove(name).map_err(|e| fail(&e))?;
        println!("revoked every grant of `{name}`; it will be asked about at its next load");
        return Ok(());
    }
    let missing: Vec<String> = items
        .iter()
        .filter(|r| !grant.revoke(r))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(Failure::Runtime(format!(
            "`{name}` holds no grant covering: {}",
            shown(&missing.join(", "))
        )));
    }
    store.save(&grant).map_err(|e| fail(&e))?;
    print_grant(&grant);
    Ok(())
}

fn print_grant(g: &Grant) {
    println!("{} {} (manifest {})", g.capsule, g.version, g.manifest);
    for (label, items) in [("granted", &g.granted), ("refused", &g.denied)] {
        for r in items {
            println!("  {label:<8} {}", shown(&r.to_string()));
        }
    }
}
