//! `CapsulePolicy` gates: publish and subscribe decisions agree with the reference matcher and
//! the reference coverage relation (ACL patterns reach the eight-segment limit, where a
//! trailing `*` stops meaning "any depth"); filesystem decisions agree with a model of the
//! parsed grants, a write grant implies reading, a grant covers its whole subtree, and the
//! absolute roots that become mounts are each listed once, longest first.

use std::path::{Component, Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use capsule_bus::{MAX_SEGMENTS, Topic, TopicPattern};
use capsule_security::{Capabilities, CapsulePolicy, Decision, FsAccess, FsGrant, FsRoot};

use crate::pick;
use crate::topic::{reference_covers, reference_match};

/// ACLs, grants and the questions asked of the gates.
#[derive(Debug)]
pub struct Input {
    /// `[publish]` patterns.
    pub publish: Vec<Vec<&'static str>>,
    /// `[subscribe]` patterns.
    pub subscribe: Vec<Vec<&'static str>>,
    /// Topics published.
    pub topics: Vec<Vec<&'static str>>,
    /// Patterns subscribed to.
    pub requests: Vec<Vec<&'static str>>,
    /// `uplink`.
    pub uplink: bool,
    /// `fs_read` grant strings.
    pub fs_read: Vec<String>,
    /// `fs_write` grant strings.
    pub fs_write: Vec<String>,
    /// Filesystem questions: access, root, path below the root.
    pub fs_queries: Vec<(FsAccess, FsRoot, Vec<&'static str>)>,
}

fn segs(
    u: &mut Unstructured<'_>,
    alphabet: &[&'static str],
) -> arbitrary::Result<Vec<&'static str>> {
    let n = if u.ratio(1, 4)? {
        u.int_in_range(MAX_SEGMENTS - 1..=MAX_SEGMENTS)?
    } else {
        u.int_in_range(1..=4)?
    };
    (0..n).map(|_| pick(u, alphabet)).collect()
}

fn list<T>(
    u: &mut Unstructured<'_>,
    max: usize,
    mut f: impl FnMut(&mut Unstructured<'_>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

/// A grant string near the grammar: a root spelling followed by path parts.
fn grant(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let prefix = pick(
        u,
        &[
            "*", "cwd://", "home://", "/", "/usr/", "/srv/", "/tmp/", "", "ftp://",
        ],
    )?;
    let parts = list(u, 3, |u| {
        pick(u, &["a", "b", "..", ".", "", "share", "usr"])
    })?;
    Ok(format!("{prefix}{}", parts.join("/")))
}

fn root(u: &mut Unstructured<'_>) -> arbitrary::Result<FsRoot> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => FsRoot::Workspace,
        1 => FsRoot::Home,
        2 => FsRoot::Absolute("/usr".into()),
        3 => FsRoot::Absolute("/usr/share".into()),
        _ => FsRoot::Absolute("/srv".into()),
    })
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let pat = ["a", "b", "c", "*", "*"];
        let lit = ["a", "b", "c", "d"];
        Ok(Self {
            publish: list(u, 3, |u| segs(u, &pat))?,
            subscribe: list(u, 3, |u| segs(u, &pat))?,
            topics: list(u, 6, |u| segs(u, &lit))?,
            requests: list(u, 6, |u| segs(u, &pat))?,
            uplink: bool::arbitrary(u)?,
            fs_read: list(u, 3, grant)?,
            fs_write: list(u, 2, grant)?,
            fs_queries: list(u, 8, |u| {
                let access = if bool::arbitrary(u)? {
                    FsAccess::Read
                } else {
                    FsAccess::Write
                };
                let path = list(u, 3, |u| pick(u, &["a", "b", "share", "x"]))?;
                Ok((access, root(u)?, path))
            })?,
        })
    }
}

fn pattern(segs: &[&str]) -> Result<TopicPattern, String> {
    TopicPattern::parse(&segs.join(".")).map_err(|e| format!("generator made a bad pattern: {e}"))
}

fn denied_with_reason(d: &Decision) -> bool {
    matches!(d, Decision::Denied(r) if !r.is_empty())
}

fn agree(what: &str, d: &Decision, want: bool) -> Result<(), String> {
    if d.is_allowed() == want && (want || denied_with_reason(d)) {
        Ok(())
    } else {
        Err(format!(
            "{what}: gate says {d:?}, the model says allowed = {want}"
        ))
    }
}

/// The components of a path that is normal: relative, without `.`, `..` or a root.
fn normal_parts(p: &Path) -> Option<Vec<String>> {
    p.components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

fn check_grant(s: &str, g: &FsGrant) -> Result<(), String> {
    if normal_parts(&g.subtree).is_none() {
        return Err(format!(
            "grant {s:?} parsed to a non-normal subtree {:?}",
            g.subtree
        ));
    }
    if let FsRoot::Absolute(p) = &g.root {
        let rel = p
            .strip_prefix("/")
            .map_err(|_| format!("grant {s:?}: root {p:?} is relative"))?;
        let parts =
            normal_parts(rel).ok_or_else(|| format!("grant {s:?}: root {p:?} is not normal"))?;
        if parts.is_empty() || parts[0] == "tmp" {
            return Err(format!(
                "grant {s:?} names the root {p:?}, which is refused"
            ));
        }
    }
    Ok(())
}

fn covers(g: &FsGrant, root: &FsRoot, path: &[&str]) -> bool {
    let sub = normal_parts(&g.subtree).unwrap_or_default();
    g.root == *root && sub.len() <= path.len() && sub.iter().zip(path).all(|(a, b)| a == b)
}

/// Asks every gate its questions and compares with the models.
pub fn check(input: &Input) -> Result<(), String> {
    let publish = input
        .publish
        .iter()
        .map(|s| pattern(s))
        .collect::<Result<Vec<_>, _>>()?;
    let subscribe = input
        .subscribe
        .iter()
        .map(|s| pattern(s))
        .collect::<Result<Vec<_>, _>>()?;
    let caps = Capabilities {
        uplink: input.uplink,
        fs_read: input.fs_read.clone(),
        fs_write: input.fs_write.clone(),
        ..Capabilities::default()
    };
    let policy = CapsulePolicy::new(publish, subscribe, caps);
    for t in &input.topics {
        let topic =
            Topic::parse(&t.join(".")).map_err(|e| format!("generator made a bad topic: {e}"))?;
        let want = input.publish.iter().any(|p| reference_match(p, t));
        agree(
            &format!("publish {topic}"),
            &policy.may_publish(&topic),
            want,
        )?;
    }
    for r in &input.requests {
        let p = pattern(r)?;
        let want = input.subscribe.iter().any(|acl| reference_covers(acl, r));
        agree(&format!("subscribe {p}"), &policy.may_subscribe(&p), want)?;
    }
    agree("uplink", &policy.may_act_as_uplink(), input.uplink)?;

    let parse = |list: &[String]| -> Result<Vec<FsGrant>, String> {
        let mut out = Vec::new();
        for s in list {
            if let Ok(g) = FsGrant::parse(s) {
                check_grant(s, &g)?;
                out.push(g);
            }
        }
        Ok(out)
    };
    let read = parse(&input.fs_read)?;
    let write = parse(&input.fs_write)?;
    for (access, root, path) in &input.fs_queries {
        let rel: PathBuf = path.iter().collect();
        let want_write = write.iter().any(|g| covers(g, root, path));
        let want = match access {
            FsAccess::Write => want_write,
            FsAccess::Read => want_write || read.iter().any(|g| covers(g, root, path)),
        };
        let what = format!("{access:?} {root:?} {rel:?}");
        let d = policy.may_fs(*access, root, &rel);
        agree(&what, &d, want)?;
        if d.is_allowed() {
            if !policy.may_fs(FsAccess::Read, root, &rel).is_allowed() {
                return Err(format!("{what}: allowed, but reading it is not"));
            }
            if !policy
                .may_fs(*access, root, &rel.join("deeper"))
                .is_allowed()
            {
                return Err(format!("{what}: allowed, but not below it"));
            }
        }
    }
    let roots = policy.absolute_roots();
    let mut want: Vec<&Path> = read
        .iter()
        .chain(&write)
        .filter_map(|g| match &g.root {
            FsRoot::Absolute(p) => Some(p.as_path()),
            _ => None,
        })
        .collect();
    want.sort();
    want.dedup();
    let mut have = roots.clone();
    have.sort();
    if have != want {
        return Err(format!(
            "absolute roots {roots:?}, the grants name {want:?}"
        ));
    }
    if roots
        .windows(2)
        .any(|w| w[0].components().count() < w[1].components().count())
    {
        return Err(format!("absolute roots {roots:?} are not longest first"));
    }
    Ok(())
}
