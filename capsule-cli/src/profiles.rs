//! `capsule profile get|set|list|delete`: the operator's view of principal profiles, through
//! `capsule-security`'s `ProfileStore`, so what is written is validated and replaced
//! atomically, and a running host picks it up at its next check of the file.

use std::path::PathBuf;

use capsule_runtime::RuntimeConfig;
use capsule_runtime::security::{PrincipalId, PrincipalProfile, ProfileStore};
use clap::{Args, Subcommand};

use crate::Failure;
use crate::terminal::{shown, shown_lines};

/// `capsule profile …`.
#[derive(Subcommand, Debug)]
pub(crate) enum ProfileCommand {
    /// Print the profile in force for a principal (the defaults when none is stored)
    Get {
        /// The principal
        principal: String,
    },
    /// Change a principal's profile (starting from the stored one, or the defaults)
    Set(SetArgs),
    /// List the principals that have a stored profile
    List,
    /// Delete a principal's stored profile (it falls back to the defaults)
    Delete {
        /// The principal
        principal: String,
    },
}

/// `capsule profile set`.
#[derive(Args, Debug)]
pub(crate) struct SetArgs {
    /// The principal
    principal: String,
    /// Replace the whole profile with this TOML file (`-` for stdin) before the other changes
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Enable or disable the principal
    #[arg(long, value_name = "BOOL")]
    enabled: Option<bool>,
    /// Add a grant, such as audit:read_all (repeatable)
    #[arg(long = "grant", value_name = "GRANT")]
    grants: Vec<String>,
    /// Add a revoke (repeatable); a revoke wins over a grant
    #[arg(long = "revoke", value_name = "GRANT")]
    revokes: Vec<String>,
    /// Add a group (repeatable)
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// Set a quota, such as max_storage_bytes=1048576 (repeatable)
    #[arg(long = "quota", value_name = "KEY=VALUE")]
    quotas: Vec<String>,
}

fn principal(name: &str) -> Result<PrincipalId, Failure> {
    PrincipalId::parse(name).map_err(|e| Failure::Usage(format!("principal `{name}`: {e}")))
}

/// Runs one `capsule profile` command.
pub(crate) fn run(cmd: ProfileCommand, config: &RuntimeConfig) -> Result<(), Failure> {
    let store = ProfileStore::new(&config.state_dir);
    let failed = |e: capsule_runtime::security::ProfileError| Failure::Runtime(e.to_string());
    match cmd {
        ProfileCommand::Get { principal: name } => {
            let p = principal(&name)?;
            match store.stored(&p).map_err(failed)? {
                Some(profile) => println!("{}", shown_lines(profile.to_toml().trim_end())),
                None => {
                    println!("# no stored profile for {}: the defaults", shown(&name));
                    println!("{}", PrincipalProfile::default().to_toml().trim_end());
                }
            }
            Ok(())
        }
        ProfileCommand::List => {
            for p in store.list().map_err(failed)? {
                let line = match store.stored(&p) {
                    Ok(Some(profile)) => format!(
                        "{p}  {}  grants: {}",
                        if profile.enabled {
                            "enabled"
                        } else {
                            "disabled"
                        },
                        profile.grants.join(", ")
                    ),
                    Ok(None) => continue,
                    Err(e) => format!("{p}  malformed: {e}"),
                };
                println!("{}", shown(&line));
            }
            Ok(())
        }
        ProfileCommand::Delete { principal: name } => {
            let p = principal(&name)?;
            if store.delete(&p).map_err(failed)? {
                println!("deleted the profile of {p}");
            } else {
                println!("{p} had no stored profile");
            }
            Ok(())
        }
        ProfileCommand::Set(args) => set(&store, args),
    }
}

fn set(store: &ProfileStore, args: SetArgs) -> Result<(), Failure> {
    let p = principal(&args.principal)?;
    let mut profile = match &args.file {
        Some(file) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            }
            .map_err(|e| Failure::Usage(format!("--file {}: {e}", file.display())))?;
            PrincipalProfile::parse(&text, file).map_err(|e| Failure::Usage(e.to_string()))?
        }
        None => store.get(&p).map_err(|e| Failure::Runtime(e.to_string()))?,
    };
    if let Some(on) = args.enabled {
        profile.enabled = on;
    }
    for (list, items) in [
        (&mut profile.grants, args.grants),
        (&mut profile.revokes, args.revokes),
        (&mut profile.groups, args.groups),
    ] {
        for item in items {
            if !list.contains(&item) {
                list.push(item);
            }
        }
    }
    if !args.quotas.is_empty() {
        // Quotas go through the profile's own reader, so a flag means what the file means.
        let mut text = profile.to_toml();
        let mut extra = String::new();
        for q in &args.quotas {
            let (key, value) = q
                .split_once('=')
                .ok_or_else(|| Failure::Usage(format!("--quota `{q}`: expected KEY=VALUE")))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(Failure::Usage(format!(
                    "--quota `{q}`: unknown quota `{key}`"
                )));
            }
            let value: u64 = value
                .parse()
                .map_err(|_| Failure::Usage(format!("--quota `{q}`: not a whole number")))?;
            text = text
                .lines()
                .filter(|l| l.split_once(" = ").map(|(k, _)| k) != Some(key))
                .map(|l| format!("{l}\n"))
                .collect();
            extra.push_str(&format!("{key} = {value}\n"));
        }
        text.push_str(&extra);
        profile = PrincipalProfile::parse(&text, &store.path(&p))
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    store.set(&p, &profile).map_err(|e| match e {
        capsule_runtime::security::ProfileError::Malformed { .. } => Failure::Usage(e.to_string()),
        other => Failure::Runtime(other.to_string()),
    })?;
    println!("stored the profile of {p} in {}", store.path(&p).display());
    Ok(())
}
