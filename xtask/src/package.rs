//! The packaging step of `cargo xtask ci`: every published crate (the library crates and the
//! `capsule` program) packages as it would be published, intra-workspace dependencies resolved
//! through cargo's local overlay of the crates being packaged together; each carries its
//! registry metadata, a library's front page holds a runnable example, and each package holds
//! every file its crate tracks (so an `include` list cannot silently drop the vendored WIT or a
//! doc example's fixture). Every other workspace member must say `publish = false`, so a new
//! crate cannot skip this step unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{cargo, run};

/// The crates published to a registry, dependencies before dependants: the library crates
/// and the `capsule` program.
pub(crate) const PUBLISHED: &[&str] = &[
    "capsule-ids",
    "capsule-bus",
    "capsule-nats",
    "capsule-vfs",
    "capsule-security",
    "capsule-store",
    "capsule-wit",
    "capsule-runtime",
    "capsule-cli",
];

/// The crates whose packages `cargo xtask ci` also builds from the packaged sources. A
/// verifying build of `capsule-wit`, `capsule-runtime` and `capsule-cli` compiles wasmtime
/// again (their packages resolve features without the workspace's dev-dependencies), which
/// took about nine minutes of compiling on the 2-core development machine; CI checks their
/// file lists instead, and `cargo xtask package --verify-all` builds them all.
const VERIFIED_IN_CI: &[&str] = &[
    "capsule-ids",
    "capsule-bus",
    "capsule-vfs",
    "capsule-security",
    "capsule-store",
];

/// One workspace member, as `cargo metadata` describes it.
struct Member {
    name: String,
    /// False for `publish = false`.
    publishable: bool,
    dir: PathBuf,
    /// The registry metadata fields that are missing or empty.
    lacks: Vec<&'static str>,
}

/// Registry metadata every published crate carries.
const METADATA: &[&str] = &["description", "license", "repository", "readme", "keywords"];

/// The workspace members, from `cargo metadata`.
fn members() -> Result<Vec<Member>, String> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .output()
        .map_err(|e| format!("cargo metadata: could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let packages = meta["packages"]
        .as_array()
        .ok_or("cargo metadata: no `packages` list")?;
    let mut found = Vec::with_capacity(packages.len());
    for p in packages {
        let name = p["name"]
            .as_str()
            .ok_or("cargo metadata: a package without a name")?;
        let manifest = p["manifest_path"]
            .as_str()
            .ok_or_else(|| format!("cargo metadata: {name} has no manifest path"))?;
        let dir = Path::new(manifest)
            .parent()
            .ok_or_else(|| format!("{manifest} has no directory"))?;
        let lacks = METADATA
            .iter()
            .copied()
            .filter(|field| match &p[*field] {
                serde_json::Value::String(s) => s.trim().is_empty(),
                serde_json::Value::Array(a) => a.is_empty(),
                _ => true,
            })
            .collect();
        found.push(Member {
            name: name.to_string(),
            // `publish = false` is an empty list of registries; absent means any registry.
            publishable: !p["publish"].as_array().is_some_and(Vec::is_empty),
            dir: dir.to_path_buf(),
            lacks,
        });
    }
    Ok(found)
}

/// The files `git` tracks below `dir`, relative to it.
fn tracked(dir: &Path) -> Result<BTreeSet<String>, String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["ls-files", "--", "."])
        .output()
        .map_err(|e| format!("git ls-files: could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git ls-files in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The files `cargo package` would put into `krate`'s package.
fn packaged(krate: &str) -> Result<BTreeSet<String>, String> {
    let out = cargo()
        .args([
            "package",
            "--list",
            "--allow-dirty",
            "--locked",
            "--package",
            krate,
        ])
        .output()
        .map_err(|e| format!("cargo package --list: could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo package --list -p {krate} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Fails unless the crate's `src/lib.rs` (in `dir`; a crate without one has no library and no
/// front page) opens with `//!` docs holding a code
/// block that runs as a doc test (a plain or `rust` fence: not `ignore`, `no_run`,
/// `compile_fail` or `text`).
fn front_page_example(dir: &Path) -> Result<(), String> {
    let lib = dir.join("src").join("lib.rs");
    if !lib.exists() {
        return Ok(());
    }
    let text =
        std::fs::read_to_string(&lib).map_err(|e| format!("cannot read {}: {e}", lib.display()))?;
    let mut open = false;
    for line in text.lines().take_while(|l| l.starts_with("//!")) {
        let Some(fence) = line.trim_start_matches("//!").trim().strip_prefix("```") else {
            continue;
        };
        if !open && matches!(fence, "" | "rust") {
            return Ok(());
        }
        open = !open;
    }
    Err(format!(
        "{} has no runnable example in its front-page docs",
        lib.display()
    ))
}

/// Packages every published crate and checks what went into each package; `verify_all`
/// builds every package from its packaged sources, else only [`VERIFIED_IN_CI`].
pub(crate) fn package(verify_all: bool) -> Result<(), String> {
    eprintln!("xtask: == library crates: front-page example, metadata, packaged files");
    let members = members()?;
    if let Some(m) = members
        .iter()
        .find(|m| m.publishable && !PUBLISHED.contains(&m.name.as_str()))
    {
        return Err(format!(
            "{} may be published but is not packaged by `cargo xtask ci`: add it to \
             PUBLISHED in xtask/src/package.rs or set `publish = false`",
            m.name
        ));
    }
    for krate in PUBLISHED {
        let Some(member) = members.iter().find(|m| m.name == *krate) else {
            return Err(format!("{krate} is not a workspace member"));
        };
        if !member.publishable {
            return Err(format!(
                "{krate} is a library crate but says `publish = false`"
            ));
        }
        if !member.lacks.is_empty() {
            return Err(format!(
                "{krate} lacks registry metadata: {}",
                member.lacks.join(", ")
            ));
        }
        front_page_example(&member.dir)?;
        let have = packaged(krate)?;
        let missing: Vec<String> = tracked(&member.dir)?
            .into_iter()
            .filter(|f| !have.contains(f))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the package of {krate} lacks tracked files {missing:?}: check `include` in \
                 its Cargo.toml"
            ));
        }
    }

    // One invocation packages them all, so each package's lock file resolves its siblings
    // through cargo's local overlay of the crates being packaged.
    let mut pack = cargo();
    pack.args(["package", "--locked", "--allow-dirty", "--quiet"]);
    if !verify_all {
        pack.arg("--no-verify");
    }
    for krate in PUBLISHED {
        pack.args(["--package", krate]);
    }
    run("cargo package", pack)?;
    if verify_all {
        return Ok(());
    }
    let mut verify = cargo();
    verify.args(["package", "--locked", "--allow-dirty", "--quiet"]);
    for krate in VERIFIED_IN_CI {
        verify.args(["--package", krate]);
    }
    verify.env("CARGO_TARGET_DIR", verify_target_dir()?);
    run("cargo package (built from the packaged sources)", verify)
}

/// The target directory the verifying build uses, with every packaged crate's build record
/// removed. The packages resolve each other as registry crates of an unchanged version, which
/// cargo takes as immutable: in a target directory that kept an earlier run's build of a
/// sibling, the old build would be reused and the package checked against stale code. The
/// directory is separate from the workspace's so forgetting those records never rebuilds the
/// workspace itself.
fn verify_target_dir() -> Result<PathBuf, String> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .output()
        .map_err(|e| format!("cargo metadata: could not start: {e}"))?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let target = meta["target_directory"]
        .as_str()
        .ok_or("cargo metadata: no `target_directory`")?;
    let dir = Path::new(target).join("package-verify");
    for profile in ["debug", "release"] {
        let records = dir.join(profile).join(".fingerprint");
        let Ok(entries) = std::fs::read_dir(&records) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = PUBLISHED.iter().any(|k| {
                name.strip_prefix(k)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.bytes().all(|b| b.is_ascii_hexdigit()))
            });
            if ours {
                std::fs::remove_dir_all(entry.path()).map_err(|e| {
                    format!(
                        "cannot forget the old build {}: {e}",
                        entry.path().display()
                    )
                })?;
            }
        }
    }
    Ok(dir)
}
