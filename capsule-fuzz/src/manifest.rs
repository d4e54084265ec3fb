//! `Capsule.toml`: a generated manifest (every key right or wrong in one of the ways users get
//! it wrong) parses to exactly what the documented rules say, or is refused naming one of the
//! keys that are wrong; damaged and raw text never panics, and every refusal names the file
//! and either a line and column inside the text or a key path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use capsule_security::{
    CapsulePolicy, DEFAULT_HANDLER_PRIORITY, EnvKind, Grant, Manifest, ManifestError, requests,
    spans_namespaces,
};

use crate::profile::Val;
use crate::{mutate_text, pick, short_string, toml_str, topic};

const FILE: &str = "/caps/probe/Capsule.toml";

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

/// The `[[component]]` array as generated.
#[derive(Clone, Debug)]
pub enum Comp {
    /// No component at all.
    Missing,
    /// Two components.
    Two,
    /// One component with these keys.
    One {
        /// `id`.
        id: Option<Val>,
        /// `file`.
        file: Option<Val>,
        /// `hash`.
        hash: Option<String>,
        /// An unknown key.
        unknown: bool,
    },
}

/// A `[publish]`/`[subscribe]` entry value.
#[derive(Clone, Debug)]
pub enum Entry {
    /// `"pattern" = "wit-type"`.
    Wit(String),
    /// A value of the wrong type.
    Int,
    /// An inline table.
    Table {
        /// `wit`.
        wit: Option<Val>,
        /// `fanout`.
        fanout: Option<Val>,
        /// `handler`.
        handler: Option<Val>,
        /// `priority`.
        priority: Option<Val>,
        /// How many of the mutually exclusive pins (`version`, `tag`) are set.
        pins: u8,
    },
}

/// One `[env.KEY]` table.
#[derive(Clone, Debug)]
pub struct Env {
    /// `type`.
    pub kind: Option<Val>,
    /// `default`.
    pub default: Option<Val>,
    /// `enum_values`.
    pub enum_values: Option<Val>,
}

/// The `[capabilities]` table.
#[derive(Clone, Debug)]
pub struct Caps {
    /// `uplink`.
    pub uplink: Option<Val>,
    /// `fs_read`.
    pub fs_read: Option<Vec<&'static str>>,
    /// An unknown capability.
    pub unknown: bool,
}

/// A generated manifest.
#[derive(Clone, Debug)]
pub struct Model {
    /// `package.name`.
    pub name: Option<Val>,
    /// `package.version`.
    pub version: Option<Val>,
    /// `package.description`.
    pub description: Option<Val>,
    /// An unknown `[package]` key.
    pub package_unknown: bool,
    /// `[[component]]`.
    pub component: Comp,
    /// `[publish]` (distinct keys).
    pub publish: Vec<(String, Entry)>,
    /// `[subscribe]` (distinct keys).
    pub subscribe: Vec<(String, Entry)>,
    /// `[imports]` (distinct keys).
    pub imports: Vec<(String, Val)>,
    /// `[env]` (distinct keys).
    pub env: Vec<(String, Env)>,
    /// `[capabilities]`.
    pub caps: Option<Caps>,
    /// An unknown top-level key.
    pub top_unknown: bool,
    /// An inert `[[tool]]` table.
    pub inert_tool: bool,
}

const VALID_GRANTS: &[&str] = &["*", "cwd://out", "home://notes", "/usr/share/dict"];
const INVALID_GRANTS: &[&str] = &["/", "/tmp/x", "cwd://../x", "relative", ""];

/// Whether to make a deliberate mistake: never in a clean model, `num` in `den` otherwise.
fn bad(u: &mut Unstructured<'_>, noisy: bool, num: u32, den: u32) -> arbitrary::Result<bool> {
    if noisy { u.ratio(num, den) } else { Ok(false) }
}

fn text_val(
    u: &mut Unstructured<'_>,
    noisy: bool,
    good: &[&str],
    bad_values: &[&str],
) -> arbitrary::Result<Val> {
    if !bad(u, noisy, 1, 3)? {
        return Ok(Val::Str(pick(u, good)?.to_string()));
    }
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Val::Int(7),
        1 if !bad_values.is_empty() => Val::Str(pick(u, bad_values)?.to_string()),
        _ => Val::Str(short_string(u, 8)?),
    })
}

fn maybe<T>(
    u: &mut Unstructured<'_>,
    num: u32,
    den: u32,
    f: impl FnOnce(&mut Unstructured<'_>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Option<T>> {
    if u.ratio(num, den)? {
        f(u).map(Some)
    } else {
        Ok(None)
    }
}

fn entry(u: &mut Unstructured<'_>, noisy: bool, subscribe: bool) -> arbitrary::Result<Entry> {
    if bad(u, noisy, 1, 10)? {
        return Ok(Entry::Int);
    }
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Entry::Wit(pick(u, &["ping-record", "reply", ""])?.to_string()),
        _ => Entry::Table {
            wit: maybe(u, 1, 3, |u| text_val(u, noisy, &["ping-record"], &[]))?,
            fanout: maybe(u, 1, 4, |u| {
                Ok(if bad(u, noisy, 1, 5)? {
                    Val::Str("yes".into())
                } else {
                    Val::Bool(bool::arbitrary(u)?)
                })
            })?,
            handler: if subscribe || bad(u, noisy, 1, 10)? {
                maybe(u, 2, 3, |u| {
                    text_val(u, noisy, &["on_ping", "handle"], &[""])
                })?
            } else {
                None
            },
            priority: maybe(u, 1, 2, |u| {
                if !bad(u, noisy, 1, 3)? {
                    let top = if u.ratio(1, 8)? { u32::MAX } else { 1000 };
                    return Ok(Val::Int(i64::from(u.int_in_range(0..=top)?)));
                }
                Ok(match u.int_in_range(0u8..=2)? {
                    0 => Val::Int(-1),
                    1 => Val::Int(i64::from(u32::MAX) + 1),
                    _ => Val::Str("high".into()),
                })
            })?,
            pins: if u.ratio(1, 6)? {
                if bad(u, noisy, 1, 2)? { 2 } else { 1 }
            } else {
                0
            },
        },
    })
}

fn topics(
    u: &mut Unstructured<'_>,
    noisy: bool,
    subscribe: bool,
) -> arbitrary::Result<Vec<(String, Entry)>> {
    let n = u.int_in_range(0..=4)?;
    let mut out: Vec<(String, Entry)> = Vec::new();
    for _ in 0..n {
        let pattern = if bad(u, noisy, 1, 4)? {
            topic::dotted(u, true)?
        } else {
            pick(
                u,
                &[
                    "ping.*",
                    "pong.v1",
                    "a.*.c",
                    "astrid.v1.audit.*",
                    "*",
                    "x.y",
                    "a.b.c.d.e.f.g.*",
                ],
            )?
            .to_string()
        };
        let mut e = entry(u, noisy, subscribe)?;
        // A priority needs a handler, and only subscriptions take either.
        if let Entry::Table {
            handler, priority, ..
        } = &mut e
            && (handler.is_none() || !subscribe)
            && !bad(u, noisy, 1, 4)?
        {
            *priority = None;
        }
        if !out.iter().any(|(p, _)| *p == pattern) {
            out.push((pattern, e));
        }
    }
    Ok(out)
}

fn strings_val(u: &mut Unstructured<'_>, noisy: bool, items: &[&str]) -> arbitrary::Result<Val> {
    if bad(u, noisy, 1, 4)? {
        return Ok(if u.ratio(1, 2)? {
            Val::Mixed
        } else {
            Val::Str(pick(u, items)?.to_string())
        });
    }
    let n = u.int_in_range(0..=3)?;
    Ok(Val::Strs(
        (0..n)
            .map(|_| pick(u, items).map(str::to_string))
            .collect::<arbitrary::Result<_>>()?,
    ))
}

impl<'a> Arbitrary<'a> for Model {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // Half the models make no deliberate mistake, so the accepted side is explored too.
        let noisy = u.ratio(1, 2)?;
        let name = maybe(u, 31, 32, |u| {
            let long = "a".repeat(65);
            text_val(
                u,
                noisy,
                &["pong", "my-capsule-2"],
                &["", "Pong", "a b", "caf\u{e9}", &long],
            )
        })?;
        let version = maybe(u, 31, 32, |u| {
            text_val(
                u,
                noisy,
                &["0.1.0", "1.2.3-beta.1"],
                &["1", "x", "", "^1.0"],
            )
        })?;
        let description = maybe(u, 1, 4, |u| text_val(u, noisy, &["a capsule"], &[]))?;
        let package_unknown = bad(u, noisy, 1, 30)?;
        let component = match u.int_in_range(0u8..=39)? {
            0 => Comp::Missing,
            1 => Comp::Two,
            _ => Comp::One {
                id: maybe(u, 31, 32, |u| text_val(u, noisy, &["pong"], &[""]))?,
                file: maybe(u, 31, 32, |u| {
                    text_val(u, noisy, &["pong.wasm", "bin/x.wasm"], &[""])
                })?,
                hash: maybe(u, 1, 5, |u| {
                    if !bad(u, noisy, 1, 2)? {
                        return Ok(format!("sha256:{}", "ab".repeat(32)));
                    }
                    Ok(match u.int_in_range(0u8..=2)? {
                        0 => "sha256:zz".to_string(),
                        1 => format!("md5:{}", "0".repeat(32)),
                        _ => format!("sha256:{}", "g".repeat(64)),
                    })
                })?,
                unknown: bad(u, noisy, 1, 30)?,
            },
        };
        let publish = topics(u, noisy, false)?;
        let subscribe = topics(u, noisy, true)?;
        let mut imports: Vec<(String, Val)> = Vec::new();
        for _ in 0..u.int_in_range(0..=2)? {
            let name = if bad(u, noisy, 1, 4)? {
                pick(u, &["Demo:x", "nocolon"])?
            } else {
                pick(u, &["demo:ping", "demo:pong"])?
            };
            let v = text_val(u, noisy, &["^1.0", ">=0.2, <2"], &["not a req"])?;
            if !imports.iter().any(|(n, _)| *n == name) {
                imports.push((name.to_string(), v));
            }
        }
        let mut env: Vec<(String, Env)> = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            let key = pick(u, &["greeting", "API_KEY", "mode", "list"])?.to_string();
            let mut e = Env {
                kind: maybe(u, 31, 32, |u| {
                    text_val(u, noisy, &["text", "secret", "select", "array"], &["bogus"])
                })?,
                default: maybe(u, 1, 2, |u| {
                    Ok(match u.int_in_range(0u8..=4)? {
                        0 => Val::Int(3),
                        1 => Val::Bool(true),
                        2 => strings_val(u, noisy, &["a", "b\"q", "c\\"])?,
                        _ => Val::Str(pick(u, &["a", "b", "hello"])?.to_string()),
                    })
                })?,
                enum_values: maybe(u, 1, 2, |u| strings_val(u, noisy, &["a", "b", "hello"]))?,
            };
            // A clean model keeps the rules that tie the keys together: no secret default, a
            // select with choices that include its default.
            if !bad(u, noisy, 1, 3)? {
                match &e.kind {
                    Some(Val::Str(k)) if k == "secret" => e.default = None,
                    Some(Val::Str(k)) if k == "select" => {
                        e.enum_values =
                            Some(Val::Strs(vec!["a".into(), "b".into(), "hello".into()]));
                        if !matches!(&e.default, Some(Val::Str(_))) {
                            e.default = None;
                        }
                    }
                    _ => {}
                }
            }
            if !env.iter().any(|(k, _)| *k == key) {
                env.push((key, e));
            }
        }
        let caps = maybe(u, 1, 2, |u| {
            Ok(Caps {
                uplink: maybe(u, 1, 2, |u| {
                    Ok(if bad(u, noisy, 1, 6)? {
                        Val::Str("true".into())
                    } else {
                        Val::Bool(bool::arbitrary(u)?)
                    })
                })?,
                fs_read: maybe(u, 1, 2, |u| {
                    let n = u.int_in_range(0..=3)?;
                    (0..n)
                        .map(|_| {
                            if bad(u, noisy, 1, 4)? {
                                pick(u, INVALID_GRANTS)
                            } else {
                                pick(u, VALID_GRANTS)
                            }
                        })
                        .collect::<arbitrary::Result<_>>()
                })?,
                unknown: bad(u, noisy, 1, 20)?,
            })
        })?;
        Ok(Self {
            name,
            version,
            description,
            package_unknown,
            component,
            publish,
            subscribe,
            imports,
            env,
            caps,
            top_unknown: bad(u, noisy, 1, 30)?,
            inert_tool: u.ratio(1, 10)?,
        })
    }
}

fn kv(out: &mut String, key: &str, v: &Option<Val>) {
    if let Some(v) = v {
        out.push_str(&format!("{key} = {}\n", v.render()));
    }
}

fn render_entry(e: &Entry) -> String {
    match e {
        Entry::Wit(w) => toml_str(w),
        Entry::Int => "3".to_string(),
        Entry::Table {
            wit,
            fanout,
            handler,
            priority,
            pins,
        } => {
            let mut parts = Vec::new();
            for (k, v) in [
                ("wit", wit),
                ("fanout", fanout),
                ("handler", handler),
                ("priority", priority),
            ] {
                if let Some(v) = v {
                    parts.push(format!("{k} = {}", v.render()));
                }
            }
            for pin in ["version", "tag"].iter().take(usize::from(*pins)) {
                parts.push(format!("{pin} = \"1\""));
            }
            format!("{{ {} }}", parts.join(", "))
        }
    }
}

impl Model {
    /// The `Capsule.toml` text this model describes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.top_unknown {
            out.push_str("colour = 1\n");
        }
        out.push_str("[package]\n");
        kv(&mut out, "name", &self.name);
        kv(&mut out, "version", &self.version);
        kv(&mut out, "description", &self.description);
        if self.package_unknown {
            out.push_str("colour = 1\n");
        }
        match &self.component {
            Comp::Missing => {}
            Comp::Two => out.push_str("[[component]]\nid = \"a\"\nfile = \"a.wasm\"\n[[component]]\nid = \"b\"\nfile = \"b.wasm\"\n"),
            Comp::One { id, file, hash, unknown } => {
                out.push_str("[[component]]\n");
                kv(&mut out, "id", id);
                kv(&mut out, "file", file);
                if let Some(h) = hash {
                    out.push_str(&format!("hash = {}\n", toml_str(h)));
                }
                if *unknown {
                    out.push_str("colour = 1\n");
                }
            }
        }
        if let Some(c) = &self.caps {
            out.push_str("[capabilities]\n");
            kv(&mut out, "uplink", &c.uplink);
            if let Some(list) = &c.fs_read {
                let items: Vec<String> = list.iter().map(|s| toml_str(s)).collect();
                out.push_str(&format!("fs_read = [{}]\n", items.join(", ")));
            }
            if c.unknown {
                out.push_str("teleport = true\n");
            }
        }
        for (section, entries) in [("publish", &self.publish), ("subscribe", &self.subscribe)] {
            if !entries.is_empty() {
                out.push_str(&format!("[{section}]\n"));
                for (p, e) in entries {
                    out.push_str(&format!("{} = {}\n", toml_str(p), render_entry(e)));
                }
            }
        }
        if !self.imports.is_empty() {
            out.push_str("[imports]\n");
            for (n, v) in &self.imports {
                out.push_str(&format!("{} = {}\n", toml_str(n), v.render()));
            }
        }
        for (k, e) in &self.env {
            out.push_str(&format!("[env.{k}]\n"));
            kv(&mut out, "type", &e.kind);
            kv(&mut out, "default", &e.default);
            kv(&mut out, "enum_values", &e.enum_values);
        }
        if self.inert_tool {
            out.push_str("[[tool]]\nname = \"x\"\n");
        }
        out
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
    fn of(m: &Manifest) -> Self {
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
type Expected = Result<Summary, Vec<String>>;

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

/// A manifest text: generated from a model, a model's text with one edit, or raw text.
#[derive(Debug)]
pub enum Input {
    /// Well-formed TOML whose meaning the model predicts.
    Model(Box<Model>),
    /// A model's text with one random edit.
    Damaged(String),
    /// Arbitrary text.
    Raw(String),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=9)? {
            0..=5 => Self::Model(Box::new(Model::arbitrary(u)?)),
            6..=8 => {
                let text = Model::arbitrary(u)?.render();
                Self::Damaged(mutate_text(u, &text)?)
            }
            _ => Self::Raw(String::arbitrary(u)?),
        })
    }
}

/// Checks the shape of any parse outcome: errors locate the problem; a manifest's policy
/// allows what its ACLs name.
fn check_shape(text: &str, r: &Result<Manifest, ManifestError>) -> Result<(), String> {
    match r {
        Ok(m) => {
            let mut all = Grant::new(m);
            all.allow(requests(m));
            let policy = CapsulePolicy::granted(m, &all, &HashMap::new());
            let ungranted = CapsulePolicy::granted(m, &Grant::new(m), &HashMap::new());
            for p in &m.publish {
                let concrete = p.pattern.as_str().replace('*', "z");
                if let Ok(t) = capsule_bus::Topic::parse(&concrete)
                    && !policy.may_publish(&t).is_allowed()
                {
                    return Err(format!(
                        "publish ACL {} refuses its own instance {t}",
                        p.pattern
                    ));
                }
            }
            for s in &m.subscribe {
                if !policy.may_subscribe(&s.pattern).is_allowed() {
                    return Err(format!(
                        "subscribe ACL refuses its own pattern {}",
                        s.pattern
                    ));
                }
                // Without a grant, an entry spanning every namespace (and not a handler,
                // whose load fails instead) leaves the ACL; the model: allowed exactly when a
                // kept entry covers the pattern.
                let kept = |o: &&capsule_security::SubscribeEntry| {
                    o.handler.is_some() || !spans_namespaces(&o.pattern)
                };
                let model = m
                    .subscribe
                    .iter()
                    .filter(kept)
                    .any(|o| o.pattern.covers(&s.pattern));
                if ungranted.may_subscribe(&s.pattern).is_allowed() != model {
                    return Err(format!(
                        "ungranted subscribe ACL gets {} wrong (model: {model})",
                        s.pattern
                    ));
                }
            }
            let handlers = m.subscribe.iter().filter(|s| s.handler.is_some()).count();
            if m.handlers().count() != handlers {
                return Err("handlers() disagrees with the subscribe entries".into());
            }
            Ok(())
        }
        Err(e) => {
            if !e.to_string().contains(FILE) {
                return Err(format!("error {e} does not name the file"));
            }
            match e {
                ManifestError::Syntax {
                    line,
                    column,
                    message,
                    ..
                } => {
                    let lines = text.split('\n').count();
                    let width = text
                        .split('\n')
                        .nth(line.saturating_sub(1))
                        .map_or(0, str::len);
                    if *line == 0
                        || *line > lines
                        || *column == 0
                        || *column > width + 1
                        || message.is_empty()
                    {
                        return Err(format!(
                            "syntax error at {line}:{column} is outside the text"
                        ));
                    }
                    Ok(())
                }
                ManifestError::Invalid { key, reason, .. }
                    if key.is_empty() || reason.is_empty() =>
                {
                    Err(format!("error without a key or reason: {e}"))
                }
                ManifestError::Invalid { .. } => Ok(()),
                ManifestError::Io { .. } | ManifestError::NotAManifest { .. } => {
                    Err(format!("parsing text gave a file error: {e}"))
                }
            }
        }
    }
}

/// Parses the input's text and checks the outcome.
pub fn check(input: &Input) -> Result<(), String> {
    let text = match input {
        Input::Model(m) => m.render(),
        Input::Damaged(t) | Input::Raw(t) => t.clone(),
    };
    let got = Manifest::parse(&text, Path::new(FILE));
    check_shape(&text, &got)?;
    let Input::Model(m) = input else {
        return Ok(());
    };
    match (&got, m.expected()) {
        (Ok(g), Ok(want)) => {
            let have = Summary::of(g);
            if have != want {
                return Err(format!(
                    "{text}\nparsed to {have:#?}\nthe rules say {want:#?}"
                ));
            }
        }
        (Err(ManifestError::Invalid { key, .. }), Err(bad)) => {
            if !bad.iter().any(|b| key.starts_with(b.as_str())) {
                return Err(format!(
                    "{text}\nrefused naming `{key}`, but the wrong keys are {bad:?}"
                ));
            }
        }
        (got, want) => {
            return Err(format!(
                "{text}\nparsed to {:?}, the rules say {:?}",
                got.as_ref().map(Summary::of),
                want
            ));
        }
    }
    Ok(())
}
