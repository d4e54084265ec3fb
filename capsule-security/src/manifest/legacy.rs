//! Manifest layouts of earlier astrid releases, translated into the current layout in this one
//! place before any section is read, so the rest of the parser (and every gate built from it)
//! sees only the current layout. Each construct found yields one [`Deprecation`] naming every
//! place it occurs and what to write instead; a legacy construct that is itself malformed is a
//! keyed error like any other, and a translation never overrides what the current layout says.

use capsule_bus::TopicPattern;
use toml::{Table, Value};

use super::reader::{Reader, join};

/// A manifest construct of an earlier astrid release that this host still reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum LegacyConstruct {
    /// `[[interceptor]]` tables (`event`, `action`, `priority`): `[subscribe]` handler bindings.
    Interceptor,
    /// `capabilities.ipc_publish = [...]`: the `[publish]` ACL.
    IpcPublish,
    /// `capabilities.ipc_subscribe = [...]`: the `[subscribe]` ACL.
    IpcSubscribe,
    /// `[env]` entries with `type = "string"`: `type = "text"`.
    EnvString,
    /// `workspace://` in `fs_read`/`fs_write`: the workspace root (`*`, `cwd://…`).
    WorkspaceScheme,
    /// `[[topic]]` declarations: documentation only, not acted on.
    TopicDeclaration,
}

impl LegacyConstruct {
    /// What to write instead.
    pub fn replacement(self) -> &'static str {
        match self {
            Self::Interceptor => {
                "write each as a [subscribe] entry: \"<event>\" = { handler = \"<action>\", \
                 priority = <priority> }"
            }
            Self::IpcPublish => "list each pattern as a key of [publish]",
            Self::IpcSubscribe => "list each pattern as a key of [subscribe]",
            Self::EnvString => "write type = \"text\"",
            Self::WorkspaceScheme => "write `*` for the workspace root and `cwd://<dir>` below it",
            Self::TopicDeclaration => {
                "describe topics in [publish]/[subscribe] (wit = \"<type>\"); [[topic]] is not \
                 acted on"
            }
        }
    }

    /// A short name of the construct as it appears in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interceptor => "[[interceptor]]",
            Self::IpcPublish => "capabilities.ipc_publish",
            Self::IpcSubscribe => "capabilities.ipc_subscribe",
            Self::EnvString => "env type \"string\"",
            Self::WorkspaceScheme => "workspace://",
            Self::TopicDeclaration => "[[topic]]",
        }
    }
}

/// One deprecated construct found in a manifest, with every key where it occurs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deprecation {
    /// Which construct.
    pub construct: LegacyConstruct,
    /// The dotted key paths where it occurs, in the order found.
    pub keys: Vec<String>,
}

impl std::fmt::Display for Deprecation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "deprecated {} at {}: {}",
            self.construct.as_str(),
            self.keys
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            self.construct.replacement()
        )
    }
}

/// Collects occurrences, one [`Deprecation`] per construct.
#[derive(Default)]
struct Found(Vec<Deprecation>);

impl Found {
    fn add(&mut self, construct: LegacyConstruct, key: String) {
        match self.0.iter_mut().find(|d| d.construct == construct) {
            Some(d) => d.keys.push(key),
            None => self.0.push(Deprecation {
                construct,
                keys: vec![key],
            }),
        }
    }
}

/// Rewrites every legacy construct in `root` into the current layout. Problems with a legacy
/// construct are noted on `r` under the legacy key; the deprecations are returned sorted by
/// construct.
pub(crate) fn translate(r: &Reader<'_>, root: &mut Table) -> Vec<Deprecation> {
    let mut found = Found::default();
    if let Some(topics) = root.remove("topic") {
        match topics {
            Value::Array(items) => {
                for i in 0..items.len() {
                    found.add(LegacyConstruct::TopicDeclaration, format!("topic[{i}]"));
                }
            }
            _ => found.add(LegacyConstruct::TopicDeclaration, "topic".into()),
        }
    }
    translate_capabilities(r, root, "capabilities", &mut found);
    if let Some(Value::Array(components)) = root.get_mut("component") {
        let mut moved = Vec::new();
        for (i, c) in components.iter_mut().enumerate() {
            if let Some(t) = c.as_table_mut() {
                let path = format!("component[{i}]");
                moved.extend(take_ipc_lists(
                    r,
                    t,
                    &join(&path, "capabilities"),
                    &mut found,
                ));
                translate_workspace(t, &join(&path, "capabilities"), &mut found);
            }
        }
        for (construct, patterns) in moved {
            add_acl(r, root, construct, patterns);
        }
    }
    if let Some(interceptors) = root.remove("interceptor") {
        translate_interceptors(r, root, interceptors, &mut found);
    }
    if let Some(Value::Table(env)) = root.get_mut("env") {
        for (name, entry) in env.iter_mut() {
            if let Some(t) = entry.as_table_mut()
                && t.get("type").and_then(Value::as_str) == Some("string")
            {
                t.insert("type".into(), Value::String("text".into()));
                found.add(LegacyConstruct::EnvString, join(&join("env", name), "type"));
            }
        }
    }
    let mut out = found.0;
    out.sort_by_key(|d| d.construct);
    out
}

type AclPatterns = (LegacyConstruct, Vec<(String, String)>);

/// Takes `ipc_publish`/`ipc_subscribe` out of the capabilities table at `path` in `holder`.
fn take_ipc_lists(
    r: &Reader<'_>,
    holder: &mut Table,
    path: &str,
    found: &mut Found,
) -> Vec<AclPatterns> {
    let Some(Value::Table(caps)) = holder.get_mut("capabilities") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, construct) in [
        ("ipc_publish", LegacyConstruct::IpcPublish),
        ("ipc_subscribe", LegacyConstruct::IpcSubscribe),
    ] {
        let Some(v) = caps.remove(name) else {
            continue;
        };
        let key = join(path, name);
        found.add(construct, key.clone());
        if let Some(list) = r.keep(r.strings(&v, &key)) {
            let patterns = list
                .into_iter()
                .enumerate()
                .map(|(i, p)| (p, format!("{key}[{i}]")))
                .collect();
            out.push((construct, patterns));
        }
    }
    out
}

/// Adds legacy ACL patterns to `[publish]`/`[subscribe]` as plain entries; a pattern the
/// current layout already lists keeps its entry.
fn add_acl(
    r: &Reader<'_>,
    root: &mut Table,
    construct: LegacyConstruct,
    patterns: Vec<(String, String)>,
) {
    let section = if construct == LegacyConstruct::IpcPublish {
        "publish"
    } else {
        "subscribe"
    };
    let target = root
        .entry(section)
        .or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(target) = target else {
        // The section itself is malformed; the section reader reports it.
        return;
    };
    for (pattern, key) in patterns {
        if pattern.is_empty() {
            r.note(r.invalid(key, "a topic pattern must not be empty"));
            continue;
        }
        if !target.contains_key(&pattern) {
            r.alias(join(section, &pattern), key, &[]);
            target.insert(pattern, Value::Table(Table::new()));
        }
    }
}

fn translate_capabilities(r: &Reader<'_>, root: &mut Table, path: &str, found: &mut Found) {
    for (construct, patterns) in take_ipc_lists(r, root, path, found) {
        add_acl(r, root, construct, patterns);
    }
    translate_workspace(root, path, found);
}

/// `workspace://` → `*`, `workspace://sub` → `cwd://sub`, in the `fs_read`/`fs_write` lists
/// of the capabilities table held by `holder`.
fn translate_workspace(holder: &mut Table, path: &str, found: &mut Found) {
    let Some(Value::Table(caps)) = holder.get_mut("capabilities") else {
        return;
    };
    for list in ["fs_read", "fs_write"] {
        let Some(Value::Array(items)) = caps.get_mut(list) else {
            continue;
        };
        for (i, item) in items.iter_mut().enumerate() {
            let Some(rest) = item.as_str().and_then(|s| s.strip_prefix("workspace://")) else {
                continue;
            };
            let rest = rest.trim_matches('/');
            let current = if rest.is_empty() {
                "*".to_string()
            } else {
                format!("cwd://{rest}")
            };
            *item = Value::String(current);
            found.add(
                LegacyConstruct::WorkspaceScheme,
                format!("{}[{i}]", join(path, list)),
            );
        }
    }
}

/// `[[interceptor]]` → `[subscribe] "<event>" = { handler, priority }`.
fn translate_interceptors(r: &Reader<'_>, root: &mut Table, v: Value, found: &mut Found) {
    let Value::Array(items) = v else {
        r.note(r.invalid(
            "interceptor",
            format!(
                "expected [[interceptor]] (an array of tables), found {}",
                v.type_str()
            ),
        ));
        return;
    };
    let mut bindings: Vec<(String, String, Table)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("interceptor[{i}]");
        found.add(LegacyConstruct::Interceptor, key.clone());
        let binding = (|| {
            let t = r.table(item, &key)?;
            r.known_keys(t, &key, &["event", "action", "priority"])?;
            let event = t
                .get("event")
                .ok_or_else(|| r.invalid(join(&key, "event"), "missing"))?;
            let event = r.string(event, &join(&key, "event"))?;
            TopicPattern::parse(&event).map_err(|e| {
                r.invalid(join(&key, "event"), format!("invalid topic pattern: {e}"))
            })?;
            let action = t
                .get("action")
                .ok_or_else(|| r.invalid(join(&key, "action"), "missing"))?;
            let action = r.string(action, &join(&key, "action"))?;
            let mut entry = Table::new();
            entry.insert("handler".into(), Value::String(action));
            if let Some(p) = t.get("priority") {
                let pkey = join(&key, "priority");
                let n = p.as_integer().ok_or_else(|| {
                    r.invalid(
                        &pkey,
                        format!("expected an integer, found {}", p.type_str()),
                    )
                })?;
                u32::try_from(n)
                    .map_err(|_| r.invalid(&pkey, "must be between 0 and 4294967295"))?;
                entry.insert("priority".into(), p.clone());
            }
            Ok((event, key.clone(), entry))
        })();
        if let Some(b) = r.keep(binding) {
            bindings.push(b);
        }
    }
    let subscribe = root
        .entry("subscribe")
        .or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(subscribe) = subscribe else {
        return;
    };
    for (event, key, entry) in bindings {
        match subscribe.get_mut(&event) {
            None => {
                r.alias(join("subscribe", &event), key, &[("handler", "action")]);
                subscribe.insert(event, Value::Table(entry));
            }
            Some(Value::Table(existing)) if !existing.contains_key("handler") => {
                existing.extend(entry);
            }
            Some(Value::String(wit)) => {
                let mut entry = entry;
                entry.insert("wit".into(), Value::String(wit.clone()));
                subscribe.insert(event, Value::Table(entry));
            }
            Some(_) => r.note(r.invalid(
                join(&key, "event"),
                format!(
                    "{event:?} already has a handler; a pattern binds at most one handler per \
                     capsule"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod attacks;
#[cfg(test)]
mod tests;
