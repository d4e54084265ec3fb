//! `Capsule.toml`: parsed once into typed values, or rejected with the file, the key path and
//! the reason. Tables the host knows but does not act on yet load with a warning naming them;
//! any other unknown key is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capsule_bus::{TopicError, TopicPattern};
use capsule_ids::CapsuleName;
use toml::{Table, Value};

use crate::capabilities::Capabilities;

/// Name of the manifest file inside a capsule directory.
pub const MANIFEST_FILE: &str = "Capsule.toml";

/// Default interceptor priority (lower runs first).
pub const DEFAULT_HANDLER_PRIORITY: u32 = 100;

/// Top-level tables that existing capsules carry and this host accepts without acting on.
pub const INERT_TABLES: &[&str] = &[
    "tool",
    "command",
    "uplink",
    "mcp_server",
    "context_file",
    "skill",
];

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        /// The manifest path.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: line {line}, column {column}: {message}", file.display())]
    Syntax {
        /// The manifest path.
        file: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the TOML parser reported.
        message: String,
    },
    /// The manifest is not a regular file of at most [`MAX_MANIFEST_BYTES`] (a FIFO, a
    /// device, a directory, a huge file); it was refused without reading from it.
    #[error("{}: {reason}", file.display())]
    NotAManifest {
        /// The manifest path.
        file: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// A key is missing, unknown, of the wrong type or has an invalid value.
    #[error("{}: `{key}`: {reason}", file.display())]
    Invalid {
        /// The manifest path.
        file: PathBuf,
        /// Dotted path of the offending key, such as `package.name`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Largest `Capsule.toml` the host reads.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Reads a manifest that is a regular file of at most [`MAX_MANIFEST_BYTES`]: a FIFO would
/// block the load forever and a device (a link to `/dev/zero`) would never end, so both are
/// refused on their metadata before they are opened, and the open file is checked again.
fn read_manifest(file: &Path) -> Result<String, ManifestError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let io = |source| ManifestError::Io {
        file: file.to_path_buf(),
        source,
    };
    let checked = |meta: std::fs::Metadata| {
        let t = meta.file_type();
        let what = if t.is_file() {
            if meta.len() <= MAX_MANIFEST_BYTES {
                return Ok(());
            }
            format!("is {} bytes; the limit is {MAX_MANIFEST_BYTES}", meta.len())
        } else if t.is_dir() {
            "is a directory, not a regular file".into()
        } else if t.is_fifo() {
            "is a FIFO, not a regular file".into()
        } else if t.is_char_device() || t.is_block_device() {
            "is a device, not a regular file".into()
        } else {
            "is not a regular file".into()
        };
        Err(ManifestError::NotAManifest {
            file: file.to_path_buf(),
            reason: what,
        })
    };
    checked(std::fs::metadata(file).map_err(io)?)?;
    let opened = std::fs::File::open(file).map_err(io)?;
    checked(opened.metadata().map_err(io)?)?;
    let mut text = String::new();
    opened
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::NotAManifest {
            file: file.to_path_buf(),
            reason: format!("grew past the limit of {MAX_MANIFEST_BYTES} bytes while read"),
        });
    }
    Ok(text)
}

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

/// An expected digest of a component file (`hash = "sha256:<hex>"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentHash {
    /// SHA-256 of the file, as 32 bytes.
    Sha256([u8; 32]),
}

impl ComponentHash {
    /// Whether `bytes` have this digest.
    pub fn verify(&self, bytes: &[u8]) -> bool {
        use sha2::Digest;
        match self {
            Self::Sha256(want) => sha2::Sha256::digest(bytes).as_slice() == want,
        }
    }
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

/// One `[imports]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// `namespace:name`.
    pub name: String,
    /// Accepted provider versions.
    pub version: semver::VersionReq,
    /// Whether the capsule starts without a provider.
    pub optional: bool,
}

/// One `[exports]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// `namespace:name`.
    pub name: String,
    /// Provided version.
    pub version: semver::Version,
}

/// One `[publish]` entry; the key is the publish ACL pattern.
#[derive(Clone, Debug)]
pub struct PublishEntry {
    /// The topic pattern this capsule may publish to.
    pub pattern: TopicPattern,
    /// Payload type reference, informational.
    pub wit: Option<String>,
    /// Whether the last segment names a recipient, informational.
    pub fanout: bool,
}

/// One `[subscribe]` entry; the key is the subscribe ACL pattern.
#[derive(Clone, Debug)]
pub struct SubscribeEntry {
    /// The topic pattern this capsule may subscribe to.
    pub pattern: TopicPattern,
    /// Payload type reference, informational.
    pub wit: Option<String>,
    /// Whether the last segment names a recipient, informational.
    pub fanout: bool,
    /// The interceptor bound to this pattern, if any.
    pub handler: Option<Handler>,
}

/// An interceptor binding declared by `handler = "…"` in `[subscribe]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handler {
    /// The action name passed to `astrid-hook-trigger`.
    pub action: String,
    /// Dispatch priority; lower runs first.
    pub priority: u32,
}

/// The `type` of an `[env.KEY]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvKind {
    /// Free text.
    Text,
    /// A credential: never stored in the manifest or the config map.
    Secret,
    /// One of `enum_values`.
    Select,
    /// A list of strings.
    Array,
}

/// One `[env.KEY]` entry.
#[derive(Clone, Debug)]
pub struct EnvEntry {
    /// Value type.
    pub kind: EnvKind,
    /// Prompt shown when asking the operator.
    pub request: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Default, rendered as the text `get-config` returns (JSON for arrays).
    pub default: Option<String>,
    /// Choices for `select`.
    pub enum_values: Vec<String>,
    /// Placeholder hint.
    pub placeholder: Option<String>,
}

/// A parsed `Capsule.toml`.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Where it was read from.
    pub file: PathBuf,
    /// `[package]`.
    pub package: Package,
    /// The single `[[component]]`.
    pub component: Component,
    /// `[imports]`, sorted by name.
    pub imports: Vec<Import>,
    /// `[exports]`, sorted by name.
    pub exports: Vec<Export>,
    /// `[publish]`, sorted by pattern.
    pub publish: Vec<PublishEntry>,
    /// `[subscribe]`, sorted by pattern.
    pub subscribe: Vec<SubscribeEntry>,
    /// `[capabilities]` merged with the component's own.
    pub capabilities: Capabilities,
    /// `[env]`, by key.
    pub env: BTreeMap<String, EnvEntry>,
    /// Inert tables present in the file (each was logged as a warning).
    pub inert_tables: Vec<String>,
    /// SHA-256 of the manifest text, recorded with the operator's grant.
    pub digest: crate::grant::ManifestDigest,
}

/// Reads key values out of TOML tables, turning every problem into a [`ManifestError`] that
/// names the key.
pub(crate) struct Reader<'f> {
    file: &'f Path,
}

impl Reader<'_> {
    pub(crate) fn invalid(
        &self,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Errors on any key of `table` not in `known`.
    pub(crate) fn known_keys(
        &self,
        table: &Table,
        path: &str,
        known: &[&str],
    ) -> Result<(), ManifestError> {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                return Err(self.invalid(
                    join(path, key),
                    format!("unknown key (expected one of: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn table<'v>(&self, v: &'v Value, path: &str) -> Result<&'v Table, ManifestError> {
        v.as_table()
            .ok_or_else(|| self.invalid(path, format!("expected a table, found {}", v.type_str())))
    }

    pub(crate) fn string(&self, v: &Value, path: &str) -> Result<String, ManifestError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.invalid(path, format!("expected a string, found {}", v.type_str())))
    }

    pub(crate) fn bool(&self, v: &Value, path: &str) -> Result<bool, ManifestError> {
        v.as_bool().ok_or_else(|| {
            self.invalid(path, format!("expected a boolean, found {}", v.type_str()))
        })
    }

    pub(crate) fn strings(&self, v: &Value, path: &str) -> Result<Vec<String>, ManifestError> {
        let arr = v.as_array().ok_or_else(|| {
            self.invalid(
                path,
                format!("expected an array of strings, found {}", v.type_str()),
            )
        })?;
        arr.iter()
            .enumerate()
            .map(|(i, item)| self.string(item, &format!("{path}[{i}]")))
            .collect()
    }

    fn opt_string(
        &self,
        t: &Table,
        path: &str,
        key: &str,
    ) -> Result<Option<String>, ManifestError> {
        t.get(key)
            .map(|v| self.string(v, &join(path, key)))
            .transpose()
    }
}

fn join(path: &str, key: &str) -> String {
    let quoted = if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        quoted
    } else {
        format!("{path}.{quoted}")
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

fn topic_reason(e: &TopicError) -> String {
    format!("invalid topic pattern: {e}")
}

impl Manifest {
    /// Reads and parses `<dir>/Capsule.toml`, or a manifest file given directly (a path
    /// ending in `.toml`).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let file = if path.extension().is_some_and(|e| e == "toml") && !path.is_dir() {
            path.to_path_buf()
        } else {
            path.join(MANIFEST_FILE)
        };
        let text = read_manifest(&file)?;
        Self::parse(&text, &file)
    }

    /// Parses manifest text; `file` names it in errors and anchors relative component paths.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ManifestError> {
        let root: Table = text.parse::<Table>().map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ManifestError::Syntax {
                file: file.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let r = Reader { file };
        let mut inert_tables = Vec::new();
        for key in root.keys() {
            match key.as_str() {
                "package" | "component" | "imports" | "exports" | "publish" | "subscribe"
                | "capabilities" | "env" => {}
                k if INERT_TABLES.contains(&k) => {
                    tracing::warn!(
                        manifest = %file.display(),
                        table = k,
                        "manifest table is accepted but not acted on by this host"
                    );
                    inert_tables.push(k.to_string());
                }
                other => {
                    return Err(r.invalid(
                        join("", other),
                        "unknown top-level key (expected package, component, imports, exports, \
                         publish, subscribe, capabilities, env, or an inert table: tool, command, \
                         uplink, mcp_server, context_file, skill)",
                    ));
                }
            }
        }
        let package = parse_package(&r, root.get("package"))?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut capabilities = match root.get("capabilities") {
            Some(v) => Capabilities::parse(&r, r.table(v, "capabilities")?, "capabilities")?,
            None => Capabilities::default(),
        };
        let (component, component_caps) = parse_component(&r, root.get("component"), dir)?;
        if let Some(c) = component_caps {
            capabilities.merge(c);
        }
        let imports = match root.get("imports") {
            Some(v) => parse_imports(&r, r.table(v, "imports")?)?,
            None => Vec::new(),
        };
        let exports = match root.get("exports") {
            Some(v) => parse_exports(&r, r.table(v, "exports")?)?,
            None => Vec::new(),
        };
        let publish = match root.get("publish") {
            Some(v) => parse_topics(&r, r.table(v, "publish")?, "publish")?
                .into_iter()
                .map(|(pattern, e)| PublishEntry {
                    pattern,
                    wit: e.wit,
                    fanout: e.fanout,
                })
                .collect(),
            None => Vec::new(),
        };
        let subscribe = match root.get("subscribe") {
            Some(v) => parse_topics(&r, r.table(v, "subscribe")?, "subscribe")?
                .into_iter()
                .map(|(pattern, e)| SubscribeEntry {
                    pattern,
                    wit: e.wit,
                    fanout: e.fanout,
                    handler: e.handler,
                })
                .collect(),
            None => Vec::new(),
        };
        let env = match root.get("env") {
            Some(v) => parse_env(&r, r.table(v, "env")?)?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            file: file.to_path_buf(),
            package,
            component,
            imports,
            exports,
            publish,
            subscribe,
            capabilities,
            env,
            inert_tables,
            digest: crate::grant::ManifestDigest::of(text),
        })
    }

    /// The interceptor bindings: every `[subscribe]` entry with a handler.
    pub fn handlers(&self) -> impl Iterator<Item = (&TopicPattern, &Handler)> + '_ {
        self.subscribe
            .iter()
            .filter_map(|s| s.handler.as_ref().map(|h| (&s.pattern, h)))
    }
}

fn parse_package(r: &Reader<'_>, v: Option<&Value>) -> Result<Package, ManifestError> {
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

/// Parses `sha256:<64 hex digits>` into the digest bytes.
pub(crate) fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn parse_hash(r: &Reader<'_>, text: &str, key: &str) -> Result<ComponentHash, ManifestError> {
    parse_sha256(text)
        .map(ComponentHash::Sha256)
        .ok_or_else(|| r.invalid(key, "expected \"sha256:<64 hex digits>\""))
}

fn parse_component(
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

fn interface_name(r: &Reader<'_>, name: &str, key: &str) -> Result<(), ManifestError> {
    let ok_part = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    match name.split_once(':') {
        Some((ns, n)) if ok_part(ns) && ok_part(n) => Ok(()),
        _ => Err(r.invalid(
            key,
            "expected an interface name `namespace:name` of [a-z0-9-]",
        )),
    }
}

/// Flattens `"ns:name" = v` and `[section.ns] name = v` into (`ns:name`, key path, value).
fn flatten<'v>(
    r: &Reader<'_>,
    t: &'v Table,
    section: &str,
    leaf: impl Fn(&Value) -> bool,
) -> Result<Vec<(String, String, &'v Value)>, ManifestError> {
    let mut out = Vec::new();
    for (k, v) in t {
        let key = join(section, k);
        if k.contains(':') {
            out.push((k.clone(), key, v));
        } else if leaf(v) {
            return Err(r.invalid(
                key,
                "expected `namespace:name` (or a nested [section.namespace] table)",
            ));
        } else {
            for (n, inner) in r.table(v, &key)? {
                out.push((format!("{k}:{n}"), join(&key, n), inner));
            }
        }
    }
    for (name, key, _) in &out {
        interface_name(r, name, key)?;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn parse_imports(r: &Reader<'_>, t: &Table) -> Result<Vec<Import>, ManifestError> {
    // A nested namespace table holds tables or strings; an import given as a table has a
    // `version` key.
    let is_leaf = |v: &Value| v.is_str() || v.as_table().is_some_and(|t| t.contains_key("version"));
    flatten(r, t, "imports", is_leaf)?
        .into_iter()
        .map(|(name, key, v)| {
            let (text, optional) = match v {
                Value::String(s) => (s.clone(), false),
                Value::Table(it) => {
                    r.known_keys(it, &key, &["version", "optional"])?;
                    let version = it
                        .get("version")
                        .ok_or_else(|| r.invalid(join(&key, "version"), "missing"))?;
                    let optional = it
                        .get("optional")
                        .map(|o| r.bool(o, &join(&key, "optional")))
                        .transpose()?
                        .unwrap_or(false);
                    (r.string(version, &join(&key, "version"))?, optional)
                }
                other => {
                    return Err(r.invalid(
                        key,
                        format!("expected a version requirement, found {}", other.type_str()),
                    ));
                }
            };
            let version = semver::VersionReq::parse(&text)
                .map_err(|e| r.invalid(&key, format!("not a semver requirement ({e})")))?;
            Ok(Import {
                name,
                version,
                optional,
            })
        })
        .collect()
}

fn parse_exports(r: &Reader<'_>, t: &Table) -> Result<Vec<Export>, ManifestError> {
    let is_leaf = |v: &Value| v.is_str() || v.as_table().is_some_and(|t| t.contains_key("version"));
    flatten(r, t, "exports", is_leaf)?
        .into_iter()
        .map(|(name, key, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Table(it) => {
                    r.known_keys(it, &key, &["version"])?;
                    let version = it
                        .get("version")
                        .ok_or_else(|| r.invalid(join(&key, "version"), "missing"))?;
                    r.string(version, &join(&key, "version"))?
                }
                other => {
                    return Err(r.invalid(
                        key,
                        format!("expected a version, found {}", other.type_str()),
                    ));
                }
            };
            let version = semver::Version::parse(&text)
                .map_err(|e| r.invalid(&key, format!("not a semver version ({e})")))?;
            Ok(Export { name, version })
        })
        .collect()
}

struct TopicEntry {
    wit: Option<String>,
    fanout: bool,
    handler: Option<Handler>,
}

fn parse_topics(
    r: &Reader<'_>,
    t: &Table,
    section: &str,
) -> Result<Vec<(TopicPattern, TopicEntry)>, ManifestError> {
    let subscribe = section == "subscribe";
    let mut out = Vec::with_capacity(t.len());
    for (k, v) in t {
        let key = join(section, k);
        let pattern = TopicPattern::parse(k).map_err(|e| r.invalid(&key, topic_reason(&e)))?;
        let entry = match v {
            Value::String(s) => TopicEntry {
                wit: Some(s.clone()),
                fanout: false,
                handler: None,
            },
            Value::Table(et) => {
                let known: &[&str] = if subscribe {
                    &[
                        "wit", "version", "tag", "rev", "branch", "path", "fanout", "handler",
                        "priority",
                    ]
                } else {
                    &["wit", "version", "tag", "rev", "branch", "path", "fanout"]
                };
                r.known_keys(et, &key, known)?;
                let pins = ["version", "tag", "rev", "branch", "path"]
                    .iter()
                    .filter(|p| et.contains_key(**p))
                    .count();
                if pins > 1 {
                    return Err(r.invalid(
                        &key,
                        "at most one of version, tag, rev, branch, path may be set",
                    ));
                }
                for pin in ["version", "tag", "rev", "branch", "path"] {
                    r.opt_string(et, &key, pin)?;
                }
                let fanout = et
                    .get("fanout")
                    .map(|f| r.bool(f, &join(&key, "fanout")))
                    .transpose()?
                    .unwrap_or(false);
                let action = r.opt_string(et, &key, "handler")?;
                if action.as_deref() == Some("") {
                    return Err(r.invalid(join(&key, "handler"), "must not be empty"));
                }
                let priority = et
                    .get("priority")
                    .map(|p| {
                        let pkey = join(&key, "priority");
                        let n = p.as_integer().ok_or_else(|| {
                            r.invalid(
                                &pkey,
                                format!("expected an integer, found {}", p.type_str()),
                            )
                        })?;
                        u32::try_from(n)
                            .map_err(|_| r.invalid(&pkey, "must be between 0 and 4294967295"))
                    })
                    .transpose()?;
                let handler = match (action, priority) {
                    (Some(action), p) => Some(Handler {
                        action,
                        priority: p.unwrap_or(DEFAULT_HANDLER_PRIORITY),
                    }),
                    (None, Some(_)) => {
                        return Err(
                            r.invalid(join(&key, "priority"), "`priority` requires a `handler`")
                        );
                    }
                    (None, None) => None,
                };
                TopicEntry {
                    wit: r.opt_string(et, &key, "wit")?,
                    fanout,
                    handler,
                }
            }
            other => {
                return Err(r.invalid(
                    key,
                    format!("expected a string or a table, found {}", other.type_str()),
                ));
            }
        };
        out.push((pattern, entry));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn render_default(r: &Reader<'_>, v: &Value, key: &str) -> Result<String, ManifestError> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Array(items) => {
            let strings = r.strings(v, key)?;
            debug_assert_eq!(strings.len(), items.len());
            let quoted: Vec<String> = strings
                .iter()
                .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("[{}]", quoted.join(","))
        }
        other => {
            return Err(r.invalid(
                key,
                format!(
                    "a default must be a string, number, boolean or array, found {}",
                    other.type_str()
                ),
            ));
        }
    })
}

fn parse_env(r: &Reader<'_>, t: &Table) -> Result<BTreeMap<String, EnvEntry>, ManifestError> {
    let mut out = BTreeMap::new();
    for (name, v) in t {
        let key = join("env", name);
        let et = r.table(v, &key)?;
        r.known_keys(
            et,
            &key,
            &[
                "type",
                "request",
                "description",
                "default",
                "enum_values",
                "placeholder",
            ],
        )?;
        let kind = match et.get("type") {
            None => {
                return Err(r.invalid(
                    join(&key, "type"),
                    "missing (text, secret, select or array)",
                ));
            }
            Some(v) => match r.string(v, &join(&key, "type"))?.as_str() {
                "text" => EnvKind::Text,
                "secret" => EnvKind::Secret,
                "select" => EnvKind::Select,
                "array" => EnvKind::Array,
                other => {
                    return Err(r.invalid(
                        join(&key, "type"),
                        format!("unknown type {other:?} (expected text, secret, select or array)"),
                    ));
                }
            },
        };
        let default = et
            .get("default")
            .map(|d| render_default(r, d, &join(&key, "default")))
            .transpose()?;
        if kind == EnvKind::Secret && default.is_some() {
            return Err(r.invalid(
                join(&key, "default"),
                "a secret must not carry a default value in the manifest",
            ));
        }
        let enum_values = match et.get("enum_values") {
            Some(v) => r.strings(v, &join(&key, "enum_values"))?,
            None => Vec::new(),
        };
        if kind == EnvKind::Select {
            if enum_values.is_empty() {
                return Err(r.invalid(
                    join(&key, "enum_values"),
                    "a select needs at least one value",
                ));
            }
            if let Some(d) = &default
                && !enum_values.contains(d)
            {
                return Err(r.invalid(
                    join(&key, "default"),
                    format!("{d:?} is not one of enum_values"),
                ));
            }
        }
        out.insert(
            name.clone(),
            EnvEntry {
                kind,
                request: r.opt_string(et, &key, "request")?,
                description: r.opt_string(et, &key, "description")?,
                default,
                enum_values,
                placeholder: r.opt_string(et, &key, "placeholder")?,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[package]
name = "pong"
version = "0.1.0"

[[component]]
id = "pong"
file = "pong.wasm"
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/caps/pong/Capsule.toml"))
    }

    fn err(text: &str) -> (String, String) {
        match parse(text) {
            Err(ManifestError::Invalid { key, reason, .. }) => (key, reason),
            Err(e) => panic!("expected an invalid-key error, got {e}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn minimal_manifest_parses() {
        let m = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.package.name.as_str(), "pong");
        assert_eq!(m.package.version, semver::Version::new(0, 1, 0));
        assert_eq!(m.component.file, PathBuf::from("/caps/pong/pong.wasm"));
        assert!(m.publish.is_empty() && m.subscribe.is_empty());
        assert!(!m.capabilities.uplink);
    }

    #[test]
    fn full_manifest_parses() {
        let text = format!(
            "{MINIMAL}{}",
            r#"
[imports]
"astrid:session" = "^1.0"
[imports.astrid]
registry = { version = "^2", optional = true }
[exports]
"astrid:pong" = "1.2.3"

[publish]
"pong.reply" = "reply-record"
"pong.fan.*" = { wit = "r", fanout = true, version = "1.0" }

[subscribe]
"ping.*" = { wit = "ping", handler = "on_ping", priority = 10 }
"other.topic" = { wit = "x", handler = "on_other" }
"acl.only" = "opaque"

[capabilities]
uplink = true
fs_read = ["home://notes"]

[env.MODEL]
type = "select"
enum_values = ["a", "b"]
default = "b"
[env.API_KEY]
type = "secret"
[env.TAGS]
type = "array"
default = ["x", "y"]

[[tool]]
name = "t"
description_for_llm = "d"
"#
        );
        let m = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.imports.len(), 2);
        assert_eq!(m.imports[0].name, "astrid:registry");
        assert!(m.imports[0].optional);
        assert_eq!(m.exports[0].version, semver::Version::new(1, 2, 3));
        assert_eq!(m.publish.len(), 2);
        let handlers: Vec<_> = m
            .handlers()
            .map(|(p, h)| (p.as_str().to_string(), h.clone()))
            .collect();
        assert_eq!(handlers.len(), 2);
        assert!(handlers.contains(&(
            "ping.*".into(),
            Handler {
                action: "on_ping".into(),
                priority: 10
            }
        )));
        assert!(handlers.contains(&(
            "other.topic".into(),
            Handler {
                action: "on_other".into(),
                priority: DEFAULT_HANDLER_PRIORITY
            }
        )));
        assert!(m.capabilities.uplink);
        assert_eq!(m.env["MODEL"].default.as_deref(), Some("b"));
        assert_eq!(m.env["TAGS"].default.as_deref(), Some(r#"["x","y"]"#));
        assert_eq!(m.env["API_KEY"].kind, EnvKind::Secret);
        assert_eq!(m.inert_tables, vec!["tool".to_string()]);
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        match parse("[package]\nname = \n") {
            Err(ManifestError::Syntax { line, .. }) => assert_eq!(line, 2),
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                MINIMAL.replace("\"pong\"\nversion", "\"Pong\"\nversion"),
                "package.name",
                "[a-z0-9-]",
            ),
            (MINIMAL.replace("0.1.0", "one"), "package.version", "semver"),
            (
                MINIMAL.replace("[package]", "[package]\ncolour = 1"),
                "package.colour",
                "unknown key",
            ),
            (
                format!("{MINIMAL}\n[frobnicate]\nx = 1\n"),
                "frobnicate",
                "unknown top-level key",
            ),
            (
                format!("{MINIMAL}\n[publish]\n\"a..b\" = \"x\"\n"),
                "publish.\"a..b\"",
                "segment 1 is empty",
            ),
            (
                format!("{MINIMAL}\n[subscribe]\n\"a.b\" = {{ priority = 5 }}\n"),
                "subscribe.\"a.b\".priority",
                "requires a `handler`",
            ),
            (
                format!("{MINIMAL}\n[publish]\n\"a.b\" = {{ handler = \"h\" }}\n"),
                "publish.\"a.b\".handler",
                "unknown key",
            ),
            (
                format!("{MINIMAL}\n[capabilities]\nteleport = true\n"),
                "capabilities.teleport",
                "unknown capability",
            ),
            (
                format!("{MINIMAL}\n[capabilities]\nuplink = \"yes\"\n"),
                "capabilities.uplink",
                "expected a boolean",
            ),
            (
                format!("{MINIMAL}\n[capabilities]\nfs_read = [\"home://a\", \"home://../etc\"]\n"),
                "capabilities.fs_read[1]",
                "climbs out",
            ),
            (
                format!("{MINIMAL}\n[capabilities]\nnet = [\"https://x.com\"]\n"),
                "capabilities.net[0]",
                "not a host",
            ),
            (
                format!("{MINIMAL}\n[capabilities]\nnet_connect = [\"db\"]\n"),
                "capabilities.net_connect[0]",
                "host:port",
            ),
            (
                format!("{MINIMAL}\n[env.K]\ntype = \"blob\"\n"),
                "env.K.type",
                "unknown type",
            ),
            (
                format!("{MINIMAL}\n[env.K]\ntype = \"secret\"\ndefault = \"sk-123\"\n"),
                "env.K.default",
                "secret",
            ),
            (
                format!("{MINIMAL}\n[imports]\n\"astrid:x\" = \"not-a-req\"\n"),
                "imports.\"astrid:x\"",
                "semver",
            ),
            (
                MINIMAL.replace(
                    "file = \"pong.wasm\"",
                    "file = \"pong.wasm\"\nhash = \"md5:00\"",
                ),
                "component[0].hash",
                "sha256",
            ),
            (
                format!("{MINIMAL}\n[[component]]\nid = \"two\"\nfile = \"two.wasm\"\n"),
                "component",
                "exactly one",
            ),
            (
                MINIMAL.replace("\"pong.wasm\"", "\"../x.wasm\""),
                "component[0].file",
                "inside the capsule directory",
            ),
            (
                MINIMAL.replace("\"pong.wasm\"", "\"/dev/zero\""),
                "component[0].file",
                "no absolute path",
            ),
            (
                MINIMAL.replace("\"pong.wasm\"", "\"lib/../../x.wasm\""),
                "component[0].file",
                "no `..`",
            ),
        ];
        for (text, key, reason) in cases {
            let (k, r) = err(&text);
            assert_eq!(k, key, "for reason {r}");
            assert!(r.contains(reason), "{k}: {r:?} should mention {reason:?}");
        }
    }

    #[test]
    fn missing_sections_are_named() {
        assert_eq!(err("").0, "package");
        assert_eq!(
            err("[package]\nname = \"a\"\nversion = \"1.0.0\"\n").0,
            "component"
        );
        assert_eq!(err("[package]\nversion = \"1.0.0\"\n").0, "package.name");
    }

    #[test]
    fn component_hash_is_verified() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(b"wasm bytes");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let text = MINIMAL.replace(
            "file = \"pong.wasm\"",
            &format!("file = \"pong.wasm\"\nhash = \"sha256:{hex}\""),
        );
        let m = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let h = m.component.hash.unwrap_or_else(|| panic!("hash parsed"));
        assert!(h.verify(b"wasm bytes"));
        assert!(!h.verify(b"other bytes"));
    }
}
