//! `Capsule.toml`: parsed once into typed values, or rejected with the file, the key path and
//! the reason. Tables the host knows but does not act on yet load with a warning naming them;
//! any other unknown key is an error naming it. One module per section; this one reads the
//! file and assembles the sections.

mod capabilities;
mod digest;
mod env;
mod interfaces;
mod legacy;
mod package;
mod position;
mod reader;
mod topics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capsule_bus::TopicPattern;
use toml::Table;

pub use capabilities::{Capabilities, IdentityLevel, KNOWN_CAPABILITIES};
pub use digest::{ComponentHash, ManifestDigest};
pub use env::{EnvEntry, EnvKind};
pub use interfaces::{Export, Import};
pub use legacy::{Deprecation, LegacyConstruct};
pub use package::{Component, Package};
pub use reader::{ManifestError, Problem};
pub use topics::{DEFAULT_HANDLER_PRIORITY, Handler, PublishEntry, SubscribeEntry};

use env::parse_env;
use interfaces::{parse_exports, parse_imports};
use package::{parse_component, parse_package};
use reader::{Reader, join, line_col};
use topics::{parse_publish, parse_subscribe};

/// Name of the manifest file inside a capsule directory.
pub const MANIFEST_FILE: &str = "Capsule.toml";

/// Top-level tables that existing capsules carry and this host accepts without acting on.
pub const INERT_TABLES: &[&str] = &[
    "tool",
    "command",
    "uplink",
    "mcp_server",
    "context_file",
    "skill",
];

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
    pub digest: ManifestDigest,
    /// Constructs of earlier astrid layouts that were translated (each was logged as a
    /// warning), sorted by construct.
    pub deprecations: Vec<Deprecation>,
    /// The manifest rewritten in the current layout, when it used deprecated constructs: what
    /// an author can paste to migrate.
    pub migrated: Option<String>,
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
        let mut root = root;
        let r = Reader::new(file);
        let deprecations = legacy::translate(&r, &mut root);
        for d in &deprecations {
            tracing::warn!(manifest = %file.display(), "{d}");
        }
        let migrated = if deprecations.is_empty() {
            None
        } else {
            toml::to_string(&root).ok()
        };
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
                other => r.note(r.invalid(
                    join("", other),
                    "unknown top-level key (expected package, component, imports, exports, \
                     publish, subscribe, capabilities, env, or an inert table: tool, command, \
                     uplink, mcp_server, context_file, skill)",
                )),
            }
        }
        // Every section is read even when an earlier one is wrong, so one run names every
        // problem; within a section, each entry is read on its own for the same reason.
        let package = r.keep(parse_package(&r, root.get("package")));
        let dir = file.parent().unwrap_or(Path::new("."));
        let capabilities = match root.get("capabilities") {
            Some(v) => r.keep(
                r.table(v, "capabilities")
                    .and_then(|t| Capabilities::parse(&r, t, "capabilities")),
            ),
            None => Some(Capabilities::default()),
        };
        let component = r.keep(parse_component(&r, root.get("component"), dir));
        let section = |name: &str| root.get(name).map(|v| r.table(v, name)).transpose();
        let imports = r.keep(section("imports").and_then(|t| match t {
            Some(t) => parse_imports(&r, t),
            None => Ok(Vec::new()),
        }));
        let exports = r.keep(section("exports").and_then(|t| match t {
            Some(t) => parse_exports(&r, t),
            None => Ok(Vec::new()),
        }));
        let publish = r.keep(section("publish").and_then(|t| match t {
            Some(t) => parse_publish(&r, t),
            None => Ok(Vec::new()),
        }));
        let subscribe = r.keep(section("subscribe").and_then(|t| match t {
            Some(t) => parse_subscribe(&r, t),
            None => Ok(Vec::new()),
        }));
        let env = r.keep(section("env").and_then(|t| match t {
            Some(t) => parse_env(&r, t),
            None => Ok(BTreeMap::new()),
        }));
        let (
            false,
            Some(package),
            Some(mut capabilities),
            Some((component, component_caps)),
            Some(imports),
            Some(exports),
            Some(publish),
            Some(subscribe),
            Some(env),
        ) = (
            r.failed(),
            package,
            capabilities,
            component,
            imports,
            exports,
            publish,
            subscribe,
            env,
        )
        else {
            return Err(r.finish(text));
        };
        if let Some(c) = component_caps {
            capabilities.merge(c);
        }
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
            digest: ManifestDigest::of(text),
            deprecations,
            migrated,
        })
    }

    /// The interceptor bindings: every `[subscribe]` entry with a handler.
    pub fn handlers(&self) -> impl Iterator<Item = (&TopicPattern, &Handler)> + '_ {
        self.subscribe
            .iter()
            .filter_map(|s| s.handler.as_ref().map(|h| (&s.pattern, h)))
    }
}

#[cfg(test)]
mod tests;
