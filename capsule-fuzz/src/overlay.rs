//! The overlay workspace: random sequences of writes, unlinks, directory creation and
//! removal, renames, copies, commits and rollbacks on a small name space, over a random lower
//! tree, checked after every step against an in-memory model of the merged view. The real
//! workspace (the lower layer) must equal the last committed state at every moment, a failed
//! operation must change nothing, `has_changes` must never hide a pending change, and commit
//! and rollback (and dropping the overlay) leave the upper layer empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use capsule_vfs::{Ctl, Mount, Overlay, Tree, Usage};

use crate::pick;

/// A path in the small name space (empty = the workspace root).
pub type P = Vec<&'static str>;

/// One operation on the overlay.
#[derive(Clone, Debug)]
pub enum Op {
    /// `write` (or append).
    Write {
        /// Target.
        path: P,
        /// Content.
        data: Vec<u8>,
        /// Append instead of replacing.
        append: bool,
    },
    /// `remove_file`.
    Unlink(P),
    /// `remove_dir_all`.
    RemoveDirAll(P),
    /// `create_dir`.
    Mkdir {
        /// Target.
        path: P,
        /// Create missing parents too.
        all: bool,
    },
    /// `rename`.
    Rename {
        /// Source.
        from: P,
        /// Destination.
        to: P,
    },
    /// `copy`.
    Copy {
        /// Source.
        from: P,
        /// Destination.
        to: P,
    },
    /// Apply pending changes to the real workspace.
    Commit,
    /// Discard pending changes.
    Rollback,
}

/// A lower tree to start from and the operations to run.
#[derive(Debug)]
pub struct Input {
    /// Lower layer entries: a file with content, or a directory (`None`), parents created.
    pub lower: Vec<(P, Option<Vec<u8>>)>,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

fn path(u: &mut Unstructured<'_>) -> arbitrary::Result<P> {
    let n = if u.ratio(1, 16)? {
        0
    } else {
        u.int_in_range(1..=3)?
    };
    (0..n).map(|_| pick(u, &["a", "b", "c"])).collect()
}

fn data(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let n = u.int_in_range(0..=4)?;
    (0..n)
        .map(|_| pick(u, &[&b'x', &b'y', &b'z']).copied())
        .collect()
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=15)? {
            0..=3 => Self::Write {
                path: path(u)?,
                data: data(u)?,
                append: u.ratio(1, 3)?,
            },
            4..=5 => Self::Unlink(path(u)?),
            6 => Self::RemoveDirAll(path(u)?),
            7..=8 => Self::Mkdir {
                path: path(u)?,
                all: bool::arbitrary(u)?,
            },
            9..=11 => Self::Rename {
                from: path(u)?,
                to: path(u)?,
            },
            12 => Self::Copy {
                from: path(u)?,
                to: path(u)?,
            },
            13 => Self::Commit,
            _ => Self::Rollback,
        })
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let nl = u.int_in_range(0..=6)?;
        let lower = (0..nl)
            .map(|_| {
                let p = path(u)?;
                let d = if u.ratio(1, 3)? { None } else { Some(data(u)?) };
                Ok((p, d))
            })
            .collect::<arbitrary::Result<_>>()?;
        let no = u.int_in_range(1..=24)?;
        let ops = (0..no)
            .map(|_| Op::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Self { lower, ops })
    }
}

impl Input {
    /// How many of the operations the model accepts, out of how many (to keep the generator
    /// honest: a generator whose operations all fail tests nothing).
    pub fn accepted_ops(&self) -> (usize, usize) {
        let mut fs = Fs::new();
        let ok = self.ops.iter().filter(|op| apply(&mut fs, op)).count();
        (ok, self.ops.len())
    }
}

/// A node of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File(Vec<u8>),
    Dir,
}

/// A tree: every entry by its path components (the root is implicit).
type Fs = BTreeMap<Vec<String>, Node>;

fn key(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| (*s).to_string()).collect()
}

fn kind<'f>(fs: &'f Fs, p: &[String]) -> Option<&'f Node> {
    const ROOT: &Node = &Node::Dir;
    if p.is_empty() { Some(ROOT) } else { fs.get(p) }
}

fn is_dir(fs: &Fs, p: &[String]) -> bool {
    kind(fs, p) == Some(&Node::Dir)
}

fn parent(p: &[String]) -> &[String] {
    &p[..p.len().saturating_sub(1)]
}

fn subtree(fs: &Fs, p: &[String]) -> Vec<(Vec<String>, Node)> {
    fs.iter()
        .filter(|(k, _)| k.starts_with(p))
        .map(|(k, n)| (k.clone(), n.clone()))
        .collect()
}

fn remove_subtree(fs: &mut Fs, p: &[String]) {
    fs.retain(|k, _| !k.starts_with(p));
}

/// Applies `op` to the merged view as the overlay's documented semantics say; `false` means
/// the operation must fail (and `fs` is unchanged).
fn apply(fs: &mut Fs, op: &Op) -> bool {
    match op {
        Op::Write { path, data, append } => {
            let p = key(path);
            if p.is_empty() || is_dir(fs, &p) || !is_dir(fs, parent(&p)) {
                return false;
            }
            let content = match (fs.get(&p), append) {
                (Some(Node::File(old)), true) => [old.as_slice(), data].concat(),
                _ => data.clone(),
            };
            fs.insert(p, Node::File(content));
            true
        }
        Op::Unlink(path) => {
            let p = key(path);
            if !matches!(kind(fs, &p), Some(Node::File(_))) {
                return false;
            }
            fs.remove(&p);
            true
        }
        Op::RemoveDirAll(path) => {
            let p = key(path);
            if p.is_empty() || !is_dir(fs, &p) {
                return false;
            }
            remove_subtree(fs, &p);
            true
        }
        Op::Mkdir { path, all } => {
            let p = key(path);
            if *all {
                for n in 1..=p.len() {
                    match kind(fs, &p[..n]) {
                        Some(Node::Dir) => {}
                        Some(Node::File(_)) => return false,
                        None => {
                            fs.insert(p[..n].to_vec(), Node::Dir);
                        }
                    }
                }
                true
            } else {
                if kind(fs, &p).is_some() || !is_dir(fs, parent(&p)) {
                    return false;
                }
                fs.insert(p, Node::Dir);
                true
            }
        }
        Op::Rename { from, to } => {
            let (f, t) = (key(from), key(to));
            if t.starts_with(&f) {
                return false;
            }
            let Some(src) = kind(fs, &f).cloned() else {
                return false;
            };
            if let Some(dst) = kind(fs, &t)
                && (*dst == Node::Dir || src == Node::Dir)
            {
                return false;
            }
            if !is_dir(fs, parent(&t)) {
                return false;
            }
            let moved = subtree(fs, &f);
            remove_subtree(fs, &f);
            fs.remove(&t);
            for (k, n) in moved {
                let mut nk = t.clone();
                nk.extend(k[f.len()..].iter().cloned());
                fs.insert(nk, n);
            }
            true
        }
        Op::Copy { from, to } => {
            let (f, t) = (key(from), key(to));
            let Some(Node::File(content)) = kind(fs, &f).cloned() else {
                return false;
            };
            // A copy onto itself is refused (it would empty the file first).
            if f == t || is_dir(fs, &t) || !is_dir(fs, parent(&t)) {
                return false;
            }
            fs.insert(t, Node::File(content));
            true
        }
        Op::Commit | Op::Rollback => true,
    }
}

/// Reads a whole tree through the `Tree` interface.
fn snapshot(tree: &dyn Tree) -> Result<Fs, String> {
    fn walk(tree: &dyn Tree, dir: &[String], out: &mut Fs) -> Result<(), String> {
        let at: PathBuf = dir.iter().collect();
        let names = tree
            .read_dir(&at, 1000)
            .map_err(|e| format!("read_dir {at:?}: {e}"))?;
        for name in names {
            let mut p = dir.to_vec();
            p.push(name);
            let child: PathBuf = p.iter().collect();
            let stat = tree
                .stat(&child, false)
                .map_err(|e| format!("stat {child:?}: {e}"))?;
            if stat.is_dir() {
                out.insert(p.clone(), Node::Dir);
                walk(tree, &p, out)?;
            } else {
                let content = tree
                    .read(&child, 1 << 20)
                    .map_err(|e| format!("read {child:?}: {e}"))?;
                out.insert(p, Node::File(content));
            }
        }
        Ok(())
    }
    let mut out = Fs::new();
    walk(tree, &[], &mut out)?;
    Ok(out)
}

fn run_op(o: &Overlay, op: &Op) -> Result<(), capsule_vfs::VfsError> {
    let pb = |p: &P| -> PathBuf { p.iter().collect() };
    let ctl = Ctl::uncancellable();
    match op {
        Op::Write { path, data, append } => o.write(&pb(path), data, *append, &ctl),
        Op::Unlink(p) => o.remove_file(&pb(p)),
        Op::RemoveDirAll(p) => o.remove_dir_all(&pb(p), &ctl, &mut Usage::default()),
        Op::Mkdir { path, all } => o.create_dir(&pb(path), *all),
        Op::Rename { from, to } => o.rename(&pb(from), &pb(to), &ctl),
        Op::Copy { from, to } => o.copy(&pb(from), &pb(to), &ctl),
        Op::Commit => o.commit(),
        Op::Rollback => o.rollback(),
    }
}

fn upper_is_empty(upper: &Path) -> bool {
    std::fs::read_dir(upper).is_ok_and(|mut d| d.next().is_none())
}

/// Builds the lower tree, runs the operations through an overlay, and compares every step.
pub fn check(input: &Input) -> Result<(), String> {
    let tmp = crate::scratch_dir()?;
    let (lower_dir, upper_dir) = (tmp.path().join("lower"), tmp.path().join("upper"));
    let lower = Mount::create(&lower_dir).map_err(|e| format!("lower: {e}"))?;
    let mut base = Fs::new();
    for (p, content) in &input.lower {
        let op = match content {
            None => Op::Mkdir {
                path: p.clone(),
                all: true,
            },
            Some(d) => {
                if !p.is_empty() {
                    let parent_op = Op::Mkdir {
                        path: p[..p.len() - 1].to_vec(),
                        all: true,
                    };
                    if apply(&mut base, &parent_op) {
                        run_op_plain(&lower, &parent_op)?;
                    }
                }
                Op::Write {
                    path: p.clone(),
                    data: d.clone(),
                    append: false,
                }
            }
        };
        if apply(&mut base, &op) {
            run_op_plain(&lower, &op)?;
        }
    }
    let observer = Mount::open(&lower_dir).map_err(|e| format!("lower: {e}"))?;
    let upper = Mount::create(&upper_dir).map_err(|e| format!("upper: {e}"))?;
    let overlay = Overlay::new(lower, upper);
    let mut cur = base.clone();
    for (step, op) in input.ops.iter().enumerate() {
        let mut next = cur.clone();
        let want_ok = apply(&mut next, op);
        let got = run_op(&overlay, op);
        let at = || format!("step {step} ({op:?})");
        if got.is_ok() != want_ok {
            return Err(format!(
                "{}: overlay answered {got:?}, the model says ok = {want_ok}",
                at()
            ));
        }
        if want_ok {
            cur = next;
        }
        match op {
            Op::Commit => base = cur.clone(),
            Op::Rollback => cur = base.clone(),
            _ => {}
        }
        let merged = snapshot(&overlay).map_err(|e| format!("{}: merged view: {e}", at()))?;
        if merged != cur {
            return Err(format!(
                "{}: merged view {merged:?}, the model has {cur:?}",
                at()
            ));
        }
        let real = snapshot(&observer).map_err(|e| format!("{}: workspace: {e}", at()))?;
        if real != base {
            return Err(format!(
                "{}: the real workspace is {real:?}, last committed {base:?}",
                at()
            ));
        }
        let pending = overlay
            .has_changes()
            .map_err(|e| format!("{}: has_changes: {e}", at()))?;
        if cur != base && !pending {
            return Err(format!(
                "{}: changes are pending but has_changes() is false",
                at()
            ));
        }
        if matches!(op, Op::Commit | Op::Rollback) && (pending || !upper_is_empty(&upper_dir)) {
            return Err(format!("{}: the upper layer is not empty afterwards", at()));
        }
    }
    drop(overlay);
    let real = snapshot(&observer).map_err(|e| format!("after drop: {e}"))?;
    if real != base || !upper_is_empty(&upper_dir) {
        return Err(format!(
            "after drop: workspace {real:?} (want {base:?}), upper emptied: {}",
            upper_is_empty(&upper_dir)
        ));
    }
    Ok(())
}

fn run_op_plain(m: &Mount, op: &Op) -> Result<(), String> {
    let pb = |p: &P| -> PathBuf { p.iter().collect() };
    let r = match op {
        Op::Write { path, data, append } => {
            m.write(&pb(path), data, *append, &Ctl::uncancellable())
        }
        Op::Mkdir { path, all } => m.create_dir(&pb(path), *all),
        _ => Ok(()),
    };
    r.map_err(|e| format!("building the lower tree ({op:?}): {e}"))
}
