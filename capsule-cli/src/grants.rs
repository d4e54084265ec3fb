//! `capsule grant`, `capsule revoke` and `capsule grants`: the operator's side of the trust
//! model. A grant names what a capsule may use beyond its own confinement; nothing is recorded
//! that the host policy forbids, and a revoked grant takes effect at the capsule's next load.

use capsule_runtime::RuntimeConfig;
use capsule_runtime::security::{
    CapsuleName, EndpointGrant, FsGrant, FsRoot, Grant, GrantStore, HostGrant, IdentityLevel,
    MANIFEST_FILE, Manifest, Request,
};

use crate::terminal::shown;
use crate::{Args, Failure};

/// Grant items that take a value.
pub(crate) const VALUE_ITEMS: &[&str] = &[
    "--fs",
    "--fs-write",
    "--handler",
    "--net",
    "--net-connect",
    "--net-bind",
    "--process",
    "--identity",
];

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

/// Runs `grant`, `revoke` or `grants`.
pub(crate) fn run(command: &str, args: &Args, config: &RuntimeConfig) -> Result<(), Failure> {
    let store = GrantStore::new(&config.state_dir);
    let fail = |e: &dyn std::fmt::Display| Failure::Error(e.to_string());
    if command == "grants" {
        if !args.dirs.is_empty() || !args.items.is_empty() || args.all {
            return Err(Failure::Usage("grants takes no arguments".into()));
        }
        let all = store.list().map_err(|e| fail(&e))?;
        if all.is_empty() {
            println!("no grants recorded in {}", config.state_dir.display());
        }
        for g in all {
            match g {
                Ok(g) => print_grant(&g),
                Err(e) => println!("unreadable: {e}"),
            }
        }
        return Ok(());
    }
    let [target] = args.dirs.as_slice() else {
        return Err(Failure::Usage(format!(
            "{command} takes exactly one CAPSULE (a directory or a name)"
        )));
    };
    let requested: Vec<Request> = args
        .items
        .iter()
        .map(|(flag, value)| item(flag, value.as_deref()))
        .collect::<Result<_, _>>()
        .map_err(Failure::Usage)?;
    let manifest = if target.join(MANIFEST_FILE).is_file() || target.is_file() {
        Some(Manifest::load(target).map_err(|e| fail(&e))?)
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
    let stored = store.load(&name).map_err(|e| fail(&e))?;
    if command == "revoke" {
        return revoke(&store, &name, stored, &requested, args.all);
    }
    let mut items = requested;
    if args.all {
        let Some(m) = &manifest else {
            return Err(Failure::Usage(
                "--all needs the capsule's directory, to read what its manifest requests".into(),
            ));
        };
        items.extend(capsule_runtime::security::requests(m));
    }
    if items.is_empty() {
        return Err(Failure::Usage(
            "name what to grant (--all, or items such as --fs DIR, --uplink)".into(),
        ));
    }
    let policy = config.host_policy().map_err(|e| fail(&e))?;
    let refused: Vec<String> = items
        .iter()
        .filter_map(|r| policy.check(r).err().map(|e| shown(&e.to_string())))
        .collect();
    if !refused.is_empty() {
        return Err(Failure::Error(format!(
            "nothing was granted:\n  {}",
            refused.join("\n  ")
        )));
    }
    let mut grant = match (stored, &manifest) {
        (Some(g), _) => g,
        (None, Some(m)) => Grant::new(m),
        (None, None) => {
            return Err(Failure::Error(format!(
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

fn revoke(
    store: &GrantStore,
    name: &CapsuleName,
    stored: Option<Grant>,
    items: &[Request],
    all: bool,
) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::Error(e.to_string());
    let Some(mut grant) = stored else {
        return Err(Failure::Error(format!("no grant is recorded for `{name}`")));
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
        return Err(Failure::Error(format!(
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
