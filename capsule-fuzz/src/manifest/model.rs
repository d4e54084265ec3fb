//! The generated manifest: a [`Model`] of every key `Capsule.toml` may carry, each value
//! right or wrong in one of the ways users get it wrong (half the models make no mistake).

use arbitrary::{Arbitrary, Unstructured};

use crate::profile::Val;
use crate::{pick, short_string, topic};

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
pub(super) const INVALID_GRANTS: &[&str] = &["/", "/tmp/x", "cwd://../x", "relative", ""];

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
