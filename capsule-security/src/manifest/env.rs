//! `[env.KEY]`: the settings a capsule declares (text, secret, select, array), their
//! questions and defaults; a secret never carries a default in the manifest.

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::reader::{ManifestError, Reader, join};

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

/// Parses `[env]`, by key.
pub(crate) fn parse_env(
    r: &Reader<'_>,
    t: &Table,
) -> Result<BTreeMap<String, EnvEntry>, ManifestError> {
    let mut out = BTreeMap::new();
    for (name, v) in t {
        if let Some(entry) = r.keep(parse_entry(r, name, v)) {
            out.insert(name.clone(), entry);
        }
    }
    Ok(out)
}

/// One `[env.KEY]` entry.
fn parse_entry(r: &Reader<'_>, name: &str, v: &Value) -> Result<EnvEntry, ManifestError> {
    {
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
        Ok(EnvEntry {
            kind,
            request: r.opt_string(et, &key, "request")?,
            description: r.opt_string(et, &key, "description")?,
            default,
            enum_values,
            placeholder: r.opt_string(et, &key, "placeholder")?,
        })
    }
}
