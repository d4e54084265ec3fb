//! Guest paths: parsing agrees with the documented grammar (scheme by prefix, lexical
//! normalisation, `..` above the root an escape, NUL and oversized paths invalid), and a
//! parsed path resolved inside a real mount full of hostile symlinks (pointing out, absolute,
//! looping, dangling) gives the gate the path a model of physical resolution gives, never
//! reads outside content, and no operation through the mount changes anything outside it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use capsule_vfs::{
    Ctl, GuestPath, MAX_GUEST_DEPTH, MAX_GUEST_PATH, Mount, Scheme, Tree, Usage, VfsError,
};

use crate::{pick, short_string};

/// A guest path string, built from spellings of schemes and of the fixture's entries.
#[derive(Debug)]
pub struct Input {
    /// The path as a guest would send it.
    pub path: String,
    /// Bytes written when the check writes through the path.
    pub data: Vec<u8>,
}

/// Entries of the fixture mount: files, directories and symlinks with their targets.
const FIXTURE: &[(&str, Node)] = &[
    ("f", Node::File("F")),
    ("d", Node::Dir),
    ("d/g", Node::File("G")),
    ("d/e", Node::Dir),
    ("in", Node::Link("d")),
    ("in2", Node::Link("d/e/..")),
    ("up", Node::Link("..")),
    ("out", Node::Link("../outside")),
    ("abs", Node::Link("/etc")),
    ("self", Node::Link("self")),
    ("dang", Node::Link("nothere")),
    ("dout", Node::Link("../outside/new")),
    ("fl", Node::Link("f")),
    ("d/back", Node::Link("../f")),
    ("d/deep", Node::Link("../../outside/secret.txt")),
    ("d/dd", Node::Link("../d/e/new")),
];

#[derive(Clone, Copy, Debug)]
enum Node {
    File(&'static str),
    Dir,
    Link(&'static str),
}

const SECRET: &str = "SECRET";

/// Deepest parsed path the check also resolves and attacks through the fixture mount.
const MAX_MOUNT_DEPTH: usize = 64;

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let path = match u.int_in_range(0u8..=39)? {
            0 => short_string(u, 16)?,
            1 => format!(
                "{}{}",
                "a/".repeat(u.int_in_range(2040..=2100)?),
                short_string(u, 4)?
            ),
            _ => {
                let prefix = pick(
                    u,
                    &[
                        "", "cwd://", "home://", "/tmp", "/tmp/", "/", "//", "ftp://", "home:/",
                        "./",
                    ],
                )?;
                let n = u.int_in_range(0..=5)?;
                let names = [
                    "f", "d", "g", "e", "in", "in2", "up", "out", "abs", "self", "dang", "dout",
                    "fl", "back", "deep", "dd", "..", ".", "", "x", "tmp", "\0", "a:b", "\u{e9}",
                ];
                let parts = (0..n)
                    .map(|_| pick(u, &names))
                    .collect::<arbitrary::Result<Vec<_>>>()?;
                let slash = if u.ratio(1, 6)? { "/" } else { "" };
                format!("{prefix}{}{slash}", parts.join("/"))
            }
        };
        let n = u.int_in_range(0..=8)?;
        let data = (0..n)
            .map(|_| u8::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Self { path, data })
    }
}

/// What parsing should give.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Ok(Scheme, Vec<String>),
    Invalid,
    Escape,
}

/// The grammar from the `capsule_vfs` path module's documentation.
fn reference_parse(s: &str) -> Parsed {
    if s.len() > MAX_GUEST_PATH || s.contains('\0') {
        return Parsed::Invalid;
    }
    let (scheme, rest) = if let Some(r) = s.strip_prefix("home://") {
        (Scheme::Home, r)
    } else if let Some(r) = s.strip_prefix("cwd://") {
        (Scheme::Workspace, r)
    } else if s == "/tmp" || s.starts_with("/tmp/") {
        (Scheme::Tmp, &s[4..])
    } else if s.contains("://") {
        return Parsed::Invalid;
    } else if s.starts_with('/') {
        (Scheme::Absolute, s)
    } else {
        (Scheme::Workspace, s)
    };
    let mut out: Vec<String> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Parsed::Escape;
                }
            }
            p => out.push(p.to_string()),
        }
    }
    if out.len() > MAX_GUEST_DEPTH {
        return Parsed::Invalid;
    }
    Parsed::Ok(scheme, out)
}

/// Why the model's physical resolution stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    NotFound,
    Refused,
}

fn node(path: &[String]) -> Option<Node> {
    let key = path.join("/");
    FIXTURE.iter().find(|(p, _)| *p == key).map(|(_, n)| *n)
}

/// Resolves `parts` the way the kernel walks a path, confined to the mount: symlinks are
/// followed (a final one too), `..` above the root, absolute targets and loops are refused,
/// a file used as a directory is refused, a missing entry is not found.
fn model_canonicalize(parts: &[String]) -> Result<Vec<String>, Stop> {
    let mut queue: VecDeque<String> = parts.iter().cloned().collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                at.pop().ok_or(Stop::Refused)?;
            }
            name => {
                if let Some(Node::File(_)) = node(&at) {
                    return Err(Stop::Refused);
                }
                let mut next = at.clone();
                next.push(name.to_string());
                match node(&next) {
                    None => return Err(Stop::NotFound),
                    Some(Node::File(_) | Node::Dir) => at = next,
                    Some(Node::Link(target)) => {
                        hops += 1;
                        if hops > 32 || target.starts_with('/') {
                            return Err(Stop::Refused);
                        }
                        for part in target.split('/').rev() {
                            queue.push_front(part.to_string());
                        }
                    }
                }
            }
        }
    }
    Ok(at)
}

/// The target of `path` when it is a symlink itself (its parent resolved, the last component
/// not followed).
fn model_link_at(path: &[String]) -> Option<&'static str> {
    let (last, parent) = path.split_last()?;
    let mut full = model_canonicalize(parent).ok()?;
    full.push(last.clone());
    match node(&full) {
        Some(Node::Link(target)) => Some(target),
        _ => None,
    }
}

/// What the gate should judge, per `Tree::resolve_for_gate`'s contract: the resolved path,
/// or the longest resolvable ancestor with the missing rest appended, where a dangling
/// symlink is followed to the target that creating through it would create.
fn model_gate(parts: &[String]) -> Result<Vec<String>, Stop> {
    let mut target = parts.to_vec();
    for _ in 0..40 {
        let mut existing = target.clone();
        let mut rest: Vec<String> = Vec::new();
        let followed = loop {
            match model_canonicalize(&existing) {
                Ok(mut c) => {
                    c.extend(rest.into_iter().rev());
                    return Ok(c);
                }
                Err(Stop::Refused) => return Err(Stop::Refused),
                Err(Stop::NotFound) => {
                    if let Some(link) = model_link_at(&existing) {
                        let mut next = existing[..existing.len() - 1].to_vec();
                        next.extend(link.split('/').map(str::to_string));
                        break next;
                    }
                    match existing.pop() {
                        Some(last) if last != ".." => rest.push(last),
                        _ => return Err(Stop::Refused),
                    }
                }
            }
        };
        target = followed;
        target.extend(rest.into_iter().rev());
    }
    Err(Stop::Refused)
}

fn build_fixture() -> Result<(tempfile::TempDir, PathBuf), String> {
    let tmp = crate::scratch_dir()?;
    let mount = tmp.path().join("mount");
    let outside = tmp.path().join("outside");
    let io = |e: std::io::Error| format!("fixture: {e}");
    std::fs::create_dir_all(&mount).map_err(io)?;
    std::fs::create_dir_all(&outside).map_err(io)?;
    std::fs::write(outside.join("secret.txt"), SECRET).map_err(io)?;
    for (p, n) in FIXTURE {
        let at = mount.join(p);
        match n {
            Node::File(text) => std::fs::write(&at, text).map_err(io)?,
            Node::Dir => std::fs::create_dir_all(&at).map_err(io)?,
            Node::Link(target) => std::os::unix::fs::symlink(target, &at).map_err(io)?,
        }
    }
    Ok((tmp, mount))
}

fn outside_listing(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(root.join("outside"))
        .map(|r| {
            r.flatten()
                .map(|e| {
                    let content = std::fs::read(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), content)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    let mut top: Vec<(String, Vec<u8>)> = std::fs::read_dir(root)
        .map(|r| {
            r.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), Vec::new()))
                .collect()
        })
        .unwrap_or_default();
    top.sort();
    out.extend(top);
    out
}

/// Parses the path, resolves it in a fresh fixture mount, and attacks through it.
pub fn check(input: &Input) -> Result<(), String> {
    let s = &input.path;
    let want = reference_parse(s);
    let got = GuestPath::parse(s);
    let gp = match (&got, &want) {
        (Ok(gp), Parsed::Ok(scheme, parts)) => {
            let rel: Vec<String> = gp
                .rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if gp.scheme != *scheme || rel != *parts || !gp.rel.is_relative() {
                return Err(format!("{s:?} parsed to {gp:?}, the grammar says {want:?}"));
            }
            gp.clone()
        }
        (Err(VfsError::InvalidPath(_)), Parsed::Invalid) => return Ok(()),
        (Err(VfsError::BoundaryEscape(_)), Parsed::Escape) => return Ok(()),
        _ => {
            return Err(format!(
                "{s:?} parsed to {got:?}, the grammar says {want:?}"
            ));
        }
    };
    let shown = gp.display();
    let again = GuestPath::parse(&shown);
    // `//tmp/x` is an absolute path whose first component is `tmp`; its display `/tmp/x`
    // names the scratch mount instead. Both refuse nothing they should not (no grant can name
    // a host directory under /tmp), so only the other round trips are required.
    // A path near the length limit may not fit once the scheme prefix is added.
    let tmp_lookalike = gp.scheme == Scheme::Absolute && gp.rel.starts_with("tmp");
    let fits = shown.len() <= MAX_GUEST_PATH;
    if fits && !tmp_lookalike && again.as_ref().ok() != Some(&gp) {
        return Err(format!(
            "{s:?} displays as {shown:?}, which parses to {again:?}"
        ));
    }

    // Very deep paths are here for the parser's length limit; walking them through a mount
    // would spend the run creating thousands of nested directories.
    if gp.rel.components().count() > MAX_MOUNT_DEPTH {
        return Ok(());
    }
    let (tmp, root) = build_fixture()?;
    let mount = Mount::open(&root).map_err(|e| format!("open mount: {e}"))?;
    let before = outside_listing(tmp.path());
    let parts: Vec<String> = gp
        .rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let want_gate = model_gate(&parts);
    let got_gate = mount.resolve_for_gate(&gp.rel);
    match (&got_gate, &want_gate) {
        (Ok(p), Ok(w)) if *p == w.iter().collect::<PathBuf>() => {}
        (Err(_), Err(Stop::Refused)) => {}
        _ => {
            return Err(format!(
                "{s:?}: the gate judges {got_gate:?}, physical resolution gives {want_gate:?}"
            ));
        }
    }
    if let Ok(bytes) = mount.read(&gp.rel, 1 << 16)
        && bytes.starts_with(SECRET.as_bytes())
    {
        return Err(format!("{s:?}: read content from outside the mount"));
    }
    let rel = &gp.rel;
    let ctl = Ctl::uncancellable();
    // Results do not matter here, only that nothing outside changes.
    let _ = mount.write(rel, &input.data, false, &ctl);
    let _ = mount.write(rel, &input.data, true, &ctl);
    let _ = mount.create_dir(&rel.join("made"), true);
    let _ = mount.copy(rel, Path::new("copied"), &ctl);
    if let Ok(()) = mount.copy(rel, rel, &ctl) {
        return Err(format!("{s:?}: copying a file onto itself was accepted"));
    }
    let _ = mount.hard_link(rel, Path::new("linked"), &ctl);
    let _ = mount.rename(rel, Path::new("moved"), &ctl);
    let _ = mount.rename(Path::new("moved"), rel, &ctl);
    let _ = mount.remove_file(rel);
    let _ = mount.remove_dir_all(rel, &ctl, &mut Usage::default());
    let after = outside_listing(tmp.path());
    if after != before {
        return Err(format!(
            "{s:?}: outside the mount changed: {before:?} -> {after:?}"
        ));
    }
    Ok(())
}
