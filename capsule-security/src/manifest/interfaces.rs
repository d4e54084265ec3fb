//! `[imports]` and `[exports]`: interface names `namespace:name`, written flat or nested by
//! namespace, with semver requirements (imports) and versions (exports).

use toml::{Table, Value};

use super::reader::{ManifestError, Reader, join};

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
            r.note(r.invalid(
                key,
                "expected `namespace:name` (or a nested [section.namespace] table)",
            ));
        } else if let Some(inner) = r.keep(r.table(v, &key)) {
            for (n, inner) in inner {
                out.push((format!("{k}:{n}"), join(&key, n), inner));
            }
        }
    }
    out.retain(|(name, key, _)| r.keep(interface_name(r, name, key)).is_some());
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Parses `[imports]`, sorted by name.
pub(crate) fn parse_imports(r: &Reader<'_>, t: &Table) -> Result<Vec<Import>, ManifestError> {
    // A nested namespace table holds tables or strings; an import given as a table has a
    // `version` key.
    let is_leaf = |v: &Value| v.is_str() || v.as_table().is_some_and(|t| t.contains_key("version"));
    Ok(flatten(r, t, "imports", is_leaf)?
        .into_iter()
        .filter_map(|(name, key, v)| {
            r.keep((|| {
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
            })())
        })
        .collect())
}

/// Parses `[exports]`, sorted by name.
pub(crate) fn parse_exports(r: &Reader<'_>, t: &Table) -> Result<Vec<Export>, ManifestError> {
    let is_leaf = |v: &Value| v.is_str() || v.as_table().is_some_and(|t| t.contains_key("version"));
    Ok(flatten(r, t, "exports", is_leaf)?
        .into_iter()
        .filter_map(|(name, key, v)| {
            r.keep((|| {
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
            })())
        })
        .collect())
}
