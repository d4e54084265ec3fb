//! What the documented manifest rules make of a [`Model`], written rule by rule from the
//! manifest reference, never from the parser: the parsed [`Summary`], or the key paths one of
//! which the refusal must name.

use std::collections::BTreeMap;
use std::path::Path;

use capsule_security::{DEFAULT_HANDLER_PRIORITY, EnvKind, Manifest};

use super::model::{Comp, Entry, Env, INVALID_GRANTS, Model};
use crate::profile::Val;
use crate::topic;

/// Where every generated manifest pretends to live.
pub(super) const FILE: &str = "/caps/probe/Capsule.toml";

/// A key path the way manifest errors spell it: dotted, with keys outside
/// `[A-Za-z0-9_-]` quoted.
fn join(path: &str, key: &str) -> String {
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let k = if plain {
        key.to_string()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        k
    } else {
        format!("{path}.{k}")
    }
}

/// A topic entry as compared: wit type, fanout, handler (action, priority).
type TopicSummary = (Option<String>, bool, Option<(String, u32)>);

/// What a successful parse must contain, in the manifest's own sorted order.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    name: String,
    version: String,
    description: Option<String>,
    component: (String, String, bool),
    publish: Vec<(String, Option<String>, bool)>,
    subscribe: Vec<(String, TopicSummary)>,
    imports: Vec<String>,
    env: BTreeMap<String, (EnvKind, Option<String>, Vec<String>)>,
    uplink: bool,
    fs_read: Vec<String>,
    inert: Vec<String>,
}

impl Summary {
    /// What `m` holds, in the same terms as the rules' expectation.
    pub(super) fn of(m: &Manifest) -> Self {
        Self {
            name: m.package.name.as_str().to_string(),
            version: m.package.version.to_string(),
            description: m.package.description.clone(),
            component: (
                m.component.id.clone(),
                m.component.file.display().to_string(),
                m.component.hash.is_some(),
            ),
            publish: m
                .publish
                .iter()
                .map(|p| (p.pattern.to_string(), p.wit.clone(), p.fanout))
                .collect(),
            subscribe: m
                .subscribe
                .iter()
                .map(|s| {
                    let h = s.handler.as_ref().map(|h| (h.action.clone(), h.priority));
                    (s.pattern.to_string(), (s.wit.clone(), s.fanout, h))
                })
                .collect(),
            imports: m.imports.iter().map(|i| i.name.clone()).collect(),
            env: m
                .env
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        (e.kind, e.default.clone(), e.enum_values.clone()),
                    )
                })
                .collect(),
            uplink: m.capabilities.uplink,
            fs_read: m.capabilities.fs_read.clone(),
            inert: m.inert_tables.clone(),
        }
    }
}

/// The expected outcome: the parsed summary, or the key paths one of which must be named.
pub(super) type Expected = Result<Summary, Vec<String>>;

struct Judge {
    bad: Vec<String>,
}

impl Judge {
    fn string(
        &mut self,
        v: &Option<Val>,
        key: &str,
        required: bool,
        nonempty: bool,
    ) -> Option<String> {
        match v {
            None if required => self.bad.push(key.to_string()),
            None => {}
            Some(Val::Str(s)) if nonempty && s.is_empty() => self.bad.push(key.to_string()),
            Some(Val::Str(s)) => return Some(s.clone()),
            Some(_) => self.bad.push(key.to_string()),
        }
        None
    }

    fn strings(&mut self, v: &Val, key: &str) -> Option<Vec<String>> {
        match v {
            Val::Strs(list) => Some(list.clone()),
            _ => {
                self.bad.push(key.to_string());
                None
            }
        }
    }

    fn topic_entry(&mut self, section: &str, pattern: &str, e: &Entry) -> Option<TopicSummary> {
        let key = join(section, pattern);
        let before = self.bad.len();
        if topic::reference_parse(pattern, true).is_err() {
            self.bad.push(key.clone());
        }
        let out = match e {
            Entry::Wit(w) => Some((Some(w.clone()), false, None)),
            Entry::Int => {
                self.bad.push(key.clone());
                None
            }
            Entry::Table {
                wit,
                fanout,
                handler,
                priority,
                pins,
            } => {
                if section == "publish" && (handler.is_some() || priority.is_some()) {
                    self.bad.push(key.clone());
                }
                if *pins > 1 {
                    self.bad.push(key.clone());
                }
                let wit = self.string(wit, &join(&key, "wit"), false, false);
                let fanout = match fanout {
                    None => false,
                    Some(Val::Bool(b)) => *b,
                    Some(_) => {
                        self.bad.push(join(&key, "fanout"));
                        false
                    }
                };
                let action = self.string(handler, &join(&key, "handler"), false, true);
                let prio = match priority {
                    None => None,
                    Some(Val::Int(n)) if u32::try_from(*n).is_ok() => u32::try_from(*n).ok(),
                    Some(_) => {
                        self.bad.push(join(&key, "priority"));
                        None
                    }
                };
                if priority.is_some() && handler.is_none() {
                    self.bad.push(join(&key, "priority"));
                }
                let h = action.map(|a| (a, prio.unwrap_or(DEFAULT_HANDLER_PRIORITY)));
                Some((wit, fanout, h))
            }
        };
        if self.bad.len() > before { None } else { out }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Model {
    /// What the documented rules make of this model.
    pub fn expected(&self) -> Expected {
        let mut j = Judge { bad: Vec::new() };
        if self.top_unknown {
            j.bad.push("colour".into());
        }
        if self.package_unknown {
            j.bad.push("package.colour".into());
        }
        let name = j.string(&self.name, "package.name", true, false);
        if name.as_deref().is_some_and(|n| !valid_name(n)) {
            j.bad.push("package.name".into());
        }
        let version = j.string(&self.version, "package.version", true, false);
        let version = version.and_then(|v| match semver::Version::parse(&v) {
            Ok(parsed) => Some(parsed.to_string()),
            Err(_) => {
                j.bad.push("package.version".into());
                None
            }
        });
        let description = j.string(&self.description, "package.description", false, false);
        let component = match &self.component {
            Comp::Missing | Comp::Two => {
                j.bad.push("component".into());
                None
            }
            Comp::One {
                id,
                file,
                hash,
                unknown,
            } => {
                if *unknown {
                    j.bad.push("component[0].colour".into());
                }
                let id = j.string(id, "component[0].id", true, true);
                let file = j.string(file, "component[0].file", true, true);
                if let Some(h) = hash
                    && *h != format!("sha256:{}", "ab".repeat(32))
                {
                    j.bad.push("component[0].hash".into());
                }
                let dir = Path::new(FILE).parent().unwrap_or(Path::new("/"));
                id.zip(file)
                    .map(|(i, f)| (i, dir.join(f).display().to_string(), hash.is_some()))
            }
        };
        let mut publish = Vec::new();
        for (p, e) in &self.publish {
            if let Some((wit, fanout, _)) = j.topic_entry("publish", p, e) {
                publish.push((p.clone(), wit, fanout));
            }
        }
        publish.sort();
        let mut subscribe = Vec::new();
        for (p, e) in &self.subscribe {
            if let Some((wit, fanout, h)) = j.topic_entry("subscribe", p, e) {
                subscribe.push((p.clone(), (wit, fanout, h)));
            }
        }
        subscribe.sort();
        let mut imports = Vec::new();
        for (n, v) in &self.imports {
            let key = join("imports", n);
            let named = n
                .split_once(':')
                .is_some_and(|(a, b)| valid_name(a) && valid_name(b));
            let req_ok = matches!(v, Val::Str(s) if semver::VersionReq::parse(s).is_ok());
            if !named || !req_ok {
                j.bad.push(key);
            } else {
                imports.push(n.clone());
            }
        }
        imports.sort();
        let mut env = BTreeMap::new();
        for (k, e) in &self.env {
            if let Some(entry) = expected_env(&mut j, k, e) {
                env.insert(k.clone(), entry);
            }
        }
        let (mut uplink, mut fs_read) = (false, Vec::new());
        if let Some(c) = &self.caps {
            if c.unknown {
                j.bad.push("capabilities.teleport".into());
            }
            match &c.uplink {
                None => {}
                Some(Val::Bool(b)) => uplink = *b,
                Some(_) => j.bad.push("capabilities.uplink".into()),
            }
            if let Some(list) = &c.fs_read {
                if list.iter().any(|g| INVALID_GRANTS.contains(g)) {
                    j.bad.push("capabilities.fs_read".into());
                }
                fs_read = list.iter().map(|s| (*s).to_string()).collect();
            }
        }
        if !j.bad.is_empty() {
            return Err(j.bad);
        }
        let (Some(name), Some(version), Some(component)) = (name, version, component) else {
            return Err(vec![
                "<model: a required value vanished without an error>".into(),
            ]);
        };
        Ok(Summary {
            name,
            version,
            description,
            component,
            publish,
            subscribe,
            imports,
            env,
            uplink,
            fs_read,
            inert: if self.inert_tool {
                vec!["tool".into()]
            } else {
                vec![]
            },
        })
    }
}

fn render_default(v: &Val) -> Option<String> {
    Some(match v {
        Val::Str(s) => s.clone(),
        Val::Int(i) => i.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Strs(items) => {
            let q: Vec<String> = items
                .iter()
                .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("[{}]", q.join(","))
        }
        Val::Mixed => return None,
    })
}

fn expected_env(
    j: &mut Judge,
    name: &str,
    e: &Env,
) -> Option<(EnvKind, Option<String>, Vec<String>)> {
    let key = join("env", name);
    let before = j.bad.len();
    let kind = match j
        .string(&e.kind, &join(&key, "type"), true, false)
        .as_deref()
    {
        Some("text") => Some(EnvKind::Text),
        Some("secret") => Some(EnvKind::Secret),
        Some("select") => Some(EnvKind::Select),
        Some("array") => Some(EnvKind::Array),
        Some(_) => {
            j.bad.push(join(&key, "type"));
            None
        }
        None => None,
    };
    let default = match &e.default {
        None => None,
        Some(v) => {
            let r = render_default(v);
            if r.is_none() {
                j.bad.push(join(&key, "default"));
            }
            r
        }
    };
    if kind == Some(EnvKind::Secret) && e.default.is_some() {
        j.bad.push(join(&key, "default"));
    }
    let values = match &e.enum_values {
        None => Vec::new(),
        Some(v) => j.strings(v, &join(&key, "enum_values")).unwrap_or_default(),
    };
    if kind == Some(EnvKind::Select) {
        if values.is_empty() {
            j.bad.push(join(&key, "enum_values"));
        } else if let Some(d) = &default
            && !values.contains(d)
        {
            j.bad.push(join(&key, "default"));
        }
    }
    if j.bad.len() > before {
        return None;
    }
    kind.map(|k| (k, default, values))
}
