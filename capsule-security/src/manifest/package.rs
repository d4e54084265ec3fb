//! `[package]` and the single `[[component]]`: the capsule's name and version, and the
//! component file, which must stay inside the capsule directory.

use std::path::{Path, PathBuf};

use capsule_ids::CapsuleName;
use toml::Value;

use super::capabilities::Capabilities;
use super::digest::{ComponentHash, parse_sha256};
use super::reader::{ManifestError, Reader, join};

/// `[package]`.
#[derive(Clone, Debug)]
pub struct Package {
    /// The capsule's name and id.
    pub name: CapsuleName,
    /// Its version.
    pub version: semver::Version,
    /// One-line description.
    pub description: Option<String>,
    /// Authors.
    pub authors: Vec<String>,
    /// License expression.
    pub license: Option<String>,
    /// Source repository.
    pub repository: Option<String>,
    /// Host versions this capsule supports (`astrid-version`).
    pub host_version: Option<semver::VersionReq>,
}

/// `[[component]]`.
#[derive(Clone, Debug)]
pub struct Component {
    /// Component id within the capsule.
    pub id: String,
    /// The `.wasm` file, resolved against the manifest's directory.
    pub file: PathBuf,
    /// Declared type, informational.
    pub kind: Option<String>,
    /// Expected digest of the file, verified at load when present.
    pub hash: Option<ComponentHash>,
}

/// Parses `[package]`.
pub(crate) fn parse_package(r: &Reader<'_>, v: Option<&Value>) -> Result<Package, ManifestError> {
    let v = v.ok_or_else(|| r.invalid("package", "missing [package] table"))?;
    let t = r.table(v, "package")?;
    r.known_keys(
        t,
        "package",
        &[
            "name",
            "version",
            "description",
            "authors",
            "license",
            "license-file",
            "repository",
            "homepage",
            "documentation",
            "readme",
            "keywords",
            "categories",
            "astrid-version",
            "publish",
            "include",
            "exclude",
            "metadata",
        ],
    )?;
    let name = t
        .get("name")
        .ok_or_else(|| r.invalid("package.name", "missing"))?;
    let name = CapsuleName::parse(&r.string(name, "package.name")?)
        .map_err(|e| r.invalid("package.name", e.to_string()))?;
    let version = t
        .get("version")
        .ok_or_else(|| r.invalid("package.version", "missing"))?;
    let version_text = r.string(version, "package.version")?;
    let version = semver::Version::parse(&version_text)
        .map_err(|e| r.invalid("package.version", format!("not a semver version ({e})")))?;
    let authors = match t.get("authors") {
        Some(v) => r.strings(v, "package.authors")?,
        None => Vec::new(),
    };
    let host_version = r
        .opt_string(t, "package", "astrid-version")?
        .map(|s| {
            semver::VersionReq::parse(&s).map_err(|e| {
                r.invalid(
                    "package.astrid-version",
                    format!("not a semver requirement ({e})"),
                )
            })
        })
        .transpose()?;
    for key in ["license-file", "homepage", "documentation", "readme"] {
        r.opt_string(t, "package", key)?;
    }
    for key in ["keywords", "categories", "include", "exclude"] {
        if let Some(v) = t.get(key) {
            r.strings(v, &join("package", key))?;
        }
    }
    if let Some(v) = t.get("publish") {
        r.bool(v, "package.publish")?;
    }
    Ok(Package {
        name,
        version,
        description: r.opt_string(t, "package", "description")?,
        authors,
        license: r.opt_string(t, "package", "license")?,
        repository: r.opt_string(t, "package", "repository")?,
        host_version,
    })
}

fn parse_hash(r: &Reader<'_>, text: &str, key: &str) -> Result<ComponentHash, ManifestError> {
    parse_sha256(text)
        .map(ComponentHash::Sha256)
        .ok_or_else(|| r.invalid(key, "expected \"sha256:<64 hex digits>\""))
}

/// Parses the one `[[component]]` (file resolved against `dir`) and its own capabilities.
pub(crate) fn parse_component(
    r: &Reader<'_>,
    v: Option<&Value>,
    dir: &Path,
) -> Result<(Component, Option<Capabilities>), ManifestError> {
    let v = v.ok_or_else(|| r.invalid("component", "missing [[component]] entry"))?;
    let arr = v.as_array().ok_or_else(|| {
        r.invalid(
            "component",
            format!(
                "expected [[component]] (an array of tables), found {}",
                v.type_str()
            ),
        )
    })?;
    match arr.len() {
        0 => return Err(r.invalid("component", "missing [[component]] entry")),
        1 => {}
        n => {
            return Err(r.invalid(
                "component",
                format!("{n} components declared; this host loads exactly one per capsule"),
            ));
        }
    }
    let path = "component[0]";
    let t = r.table(&arr[0], path)?;
    r.known_keys(
        t,
        path,
        &[
            "id",
            "file",
            "entrypoint",
            "type",
            "hash",
            "link",
            "capabilities",
        ],
    )?;
    let id = match t.get("id") {
        Some(v) => r.string(v, &join(path, "id"))?,
        None => return Err(r.invalid(join(path, "id"), "missing")),
    };
    if id.is_empty() {
        return Err(r.invalid(join(path, "id"), "must not be empty"));
    }
    let file_value = t
        .get("file")
        .or_else(|| t.get("entrypoint"))
        .ok_or_else(|| r.invalid(join(path, "file"), "missing"))?;
    let rel = r.string(file_value, &join(path, "file"))?;
    if rel.is_empty() {
        return Err(r.invalid(join(path, "file"), "must not be empty"));
    }
    if rel.contains('\0')
        || Path::new(&rel).components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
    {
        return Err(r.invalid(
            join(path, "file"),
            format!(
                "{rel:?} must be a path inside the capsule directory (no `..`, no absolute path)"
            ),
        ));
    }
    let hash = t
        .get("hash")
        .map(|v| {
            let key = join(path, "hash");
            parse_hash(r, &r.string(v, &key)?, &key)
        })
        .transpose()?;
    if let Some(v) = t.get("link") {
        let links = r.strings(v, &join(path, "link"))?;
        if !links.is_empty() {
            return Err(r.invalid(
                join(path, "link"),
                "component linking is not supported by this host",
            ));
        }
    }
    let caps = t
        .get("capabilities")
        .map(|v| {
            let key = join(path, "capabilities");
            Capabilities::parse(r, r.table(v, &key)?, &key)
        })
        .transpose()?;
    Ok((
        Component {
            id,
            file: dir.join(rel),
            kind: r.opt_string(t, path, "type")?,
            hash,
        },
        caps,
    ))
}
