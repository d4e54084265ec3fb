//! The overlay workspace: the lower layer (the real workspace) is never written until `commit`;
//! writes land in an upper layer, deletions of lower entries are recorded as whiteouts, and a
//! directory recreated over a deleted one is opaque (the lower one's contents stay hidden).
//! `commit` applies all of it to the lower layer; `rollback` discards it.
//!
//! Every operation holds the overlay's lock for its whole duration, so concurrent guests see
//! each operation apply atomically with respect to the overlay's bookkeeping. Walks of the
//! merged tree (moves, removals, commit) use explicit stacks, never recursion, and stay within
//! the same bounds as a plain mount's.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::VfsError;
use crate::mount::{Mount, OpenMode, Stat, Tree, refuse_same_file, same_file};
use crate::walk::{self, Ctl, Usage, Visit};

#[derive(Debug, Default)]
struct State {
    /// Lower entries deleted in this session (and everything below them).
    whiteouts: BTreeSet<PathBuf>,
    /// Upper directories that replace a deleted lower directory wholesale.
    opaque: BTreeSet<PathBuf>,
}

impl State {
    /// Whether the lower layer's entry at `p` is hidden.
    fn hides_lower(&self, p: &Path) -> bool {
        p.ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| self.whiteouts.contains(a))
            || p.ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .any(|a| self.opaque.contains(a))
    }

    fn forget_below(&mut self, p: &Path) {
        self.whiteouts.retain(|w| !w.starts_with(p));
        self.opaque.retain(|o| !o.starts_with(p));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Upper,
    Lower,
}

/// A copy-on-write view of a workspace.
#[derive(Debug)]
pub struct Overlay {
    lower: Mount,
    upper: Mount,
    state: Mutex<State>,
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new(""))
}

impl Overlay {
    /// An overlay over `lower` whose changes are kept in `upper` (which should be empty).
    pub fn new(lower: Mount, upper: Mount) -> Self {
        Self {
            lower,
            upper,
            state: Mutex::new(State::default()),
        }
    }

    /// The real workspace directory.
    pub fn lower_root(&self) -> &Path {
        self.lower.root()
    }

    fn layer(&self, st: &State, p: &Path) -> Result<Option<Layer>, VfsError> {
        if self.upper.exists(p)? {
            return Ok(Some(Layer::Upper));
        }
        if !st.hides_lower(p) && self.lower.exists(p)? {
            return Ok(Some(Layer::Lower));
        }
        Ok(None)
    }

    fn tree(&self, layer: Layer) -> &Mount {
        match layer {
            Layer::Upper => &self.upper,
            Layer::Lower => &self.lower,
        }
    }

    fn visible(&self, st: &State, p: &Path) -> Result<(Layer, Stat), VfsError> {
        match self.layer(st, p)? {
            Some(l) => Ok((l, self.tree(l).stat(p, false)?)),
            None => Err(VfsError::NotFound(p.display().to_string())),
        }
    }

    /// Requires `dir` to be a directory in the merged view, and makes it exist in the upper layer.
    fn prepare_dir(&self, st: &State, dir: &Path) -> Result<(), VfsError> {
        if dir.as_os_str().is_empty() {
            return Ok(());
        }
        let (_, stat) = self.visible(st, dir)?;
        if !stat.is_dir() {
            return Err(VfsError::NotDirectory(dir.display().to_string()));
        }
        self.upper.create_dir(dir, true)
    }

    /// Copies the file at `from` in `layer` to `to` in the upper layer (holes stay holes).
    fn copy_file(
        &self,
        layer: Layer,
        from: &Path,
        to: &Path,
        ctl: &Ctl<'_>,
    ) -> Result<(), VfsError> {
        let src = self.tree(layer).open(from, OpenMode::Read, ctl)?;
        // Opened without truncating: if `to` is `from` under another name (a hard link),
        // truncating first would empty the source before it is read.
        let dst = self.upper.open(to, OpenMode::ReadWrite, ctl)?;
        let io = |e| VfsError::from_io(to, e);
        let dst_meta = cap_std::fs::Metadata::from_just_metadata(dst.metadata().map_err(io)?);
        refuse_same_file(&src, &dst_meta, from, to)?;
        dst.set_len(0).map_err(io)?;
        walk::copy_data(&src, &dst, ctl).map(drop)
    }

    /// Makes the lower file at `p` exist in the upper layer with the same content.
    fn copy_up(&self, st: &State, p: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        if self.upper.exists(p)? {
            return Ok(());
        }
        self.prepare_dir(st, parent(p))?;
        self.copy_file(Layer::Lower, p, p, ctl)
    }

    /// Visits every entry of the merged tree below the directory `root` (not `root` itself)
    /// with its path and stat, from an explicit stack, within the walk bounds; `visit` says
    /// whether to walk below a directory.
    fn merged_walk(
        &self,
        st: &State,
        root: &Path,
        ctl: &Ctl<'_>,
        visit: &mut dyn FnMut(&Path, &Stat) -> Result<bool, VfsError>,
    ) -> Result<(), VfsError> {
        let mut seen = 0u64;
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for name in self.merged_names(st, &dir)? {
                let child = dir.join(name);
                seen += 1;
                walk::bounded(&child, seen, ctl)?;
                let (_, stat) = self.visible(st, &child)?;
                if visit(&child, &stat)? && stat.is_dir() {
                    pending.push(child);
                }
            }
        }
        Ok(())
    }

    /// A new upper entry at `p` replaces whatever the lower layer had there.
    fn claim(st: &mut State, lower_had_dir: bool, p: &Path, is_dir: bool) {
        if st.whiteouts.remove(p) && is_dir && lower_had_dir {
            st.opaque.insert(p.to_path_buf());
        }
    }

    fn merged_names(&self, st: &State, p: &Path) -> Result<BTreeSet<String>, VfsError> {
        let mut names = BTreeSet::new();
        if self.upper.exists(p)? && self.upper.stat(p, false)?.is_dir() {
            names.extend(self.upper.read_dir(p, usize::MAX)?);
        }
        let lower_visible = !st.hides_lower(p) && !st.opaque.contains(p);
        if lower_visible && self.lower.exists(p)? && self.lower.stat(p, false)?.is_dir() {
            for name in self.lower.read_dir(p, usize::MAX)? {
                if !st.hides_lower(&p.join(&name)) {
                    names.insert(name);
                }
            }
        }
        Ok(names)
    }

    /// Copies the merged tree at `from` into the upper layer at `to`, parents first.
    fn materialize(
        &self,
        st: &State,
        from: &Path,
        to: &Path,
        ctl: &Ctl<'_>,
    ) -> Result<(), VfsError> {
        let (layer, stat) = self.visible(st, from)?;
        if !stat.is_dir() {
            return self.copy_file(layer, from, to, ctl);
        }
        self.upper.create_dir(to, true)?;
        self.merged_walk(st, from, ctl, &mut |child, stat| {
            let dst = to.join(child.strip_prefix(from).unwrap_or(child));
            if stat.is_dir() {
                self.upper.create_dir(&dst, true)?;
            } else {
                let (layer, _) = self.visible(st, child)?;
                self.copy_file(layer, child, &dst, ctl)?;
            }
            Ok(true)
        })
    }

    /// Removes `p` from the merged view: the upper copy goes, a lower one is whited out.
    fn delete(&self, st: &mut State, p: &Path, is_dir: bool) -> Result<(), VfsError> {
        if self.upper.exists(p)? {
            if is_dir {
                let mut gone = Usage::default();
                self.upper
                    .remove_dir_all(p, &Ctl::uncancellable(), &mut gone)?;
            } else {
                self.upper.remove_file(p)?;
            }
        }
        if is_dir {
            st.forget_below(p);
        }
        if !st.hides_lower(p) && self.lower.exists(p)? {
            st.whiteouts.insert(p.to_path_buf());
        }
        Ok(())
    }

    /// Applies every change to the real workspace and empties the upper layer.
    pub fn commit(&self) -> Result<(), VfsError> {
        let mut st = self.state.lock();
        let ctl = Ctl::uncancellable();
        let whiteouts: Vec<PathBuf> = st.whiteouts.iter().cloned().collect();
        for w in whiteouts {
            if self.lower.exists(&w)? {
                if self.lower.stat(&w, false)?.is_dir() {
                    self.lower.remove_dir_all(&w, &ctl, &mut Usage::default())?;
                } else {
                    self.lower.remove_file(&w)?;
                }
            }
        }
        let opaque: Vec<PathBuf> = st.opaque.iter().cloned().collect();
        for o in opaque {
            if self.lower.exists(&o)? && self.lower.stat(&o, false)?.is_dir() {
                self.lower.remove_dir_all(&o, &ctl, &mut Usage::default())?;
            }
        }
        self.copy_down(&ctl)?;
        self.clear_upper()?;
        *st = State::default();
        Ok(())
    }

    /// Copies the upper layer onto the lower one, parents first, from an explicit stack.
    fn copy_down(&self, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        let mut pending = vec![PathBuf::new()];
        while let Some(dir) = pending.pop() {
            for name in self.upper.read_dir(&dir, usize::MAX)? {
                let p = dir.join(&name);
                let stat = self.upper.stat(&p, false)?;
                let lower_kind = if self.lower.exists(&p)? {
                    Some(self.lower.stat(&p, false)?.is_dir())
                } else {
                    None
                };
                if stat.is_dir() {
                    if lower_kind == Some(false) {
                        self.lower.remove_file(&p)?;
                    }
                    self.lower.create_dir(&p, true)?;
                    pending.push(p);
                } else {
                    if lower_kind == Some(true) {
                        self.lower.remove_dir_all(&p, ctl, &mut Usage::default())?;
                    }
                    let src = self.upper.open(&p, OpenMode::Read, ctl)?;
                    let mut dst = self.lower.open(&p, OpenMode::Write, ctl)?;
                    walk::copy_data(&src, &dst, ctl)?;
                    dst.flush().map_err(|e| VfsError::from_io(&p, e))?;
                }
            }
        }
        Ok(())
    }

    fn clear_upper(&self) -> Result<(), VfsError> {
        for name in self.upper.read_dir(Path::new(""), usize::MAX)? {
            let p = PathBuf::from(name);
            if self.upper.stat(&p, false)?.is_dir() {
                self.upper
                    .remove_dir_all(&p, &Ctl::uncancellable(), &mut Usage::default())?;
            } else {
                self.upper.remove_file(&p)?;
            }
        }
        Ok(())
    }

    /// Discards every change.
    pub fn rollback(&self) -> Result<(), VfsError> {
        let mut st = self.state.lock();
        self.clear_upper()?;
        *st = State::default();
        Ok(())
    }

    /// Whether anything is waiting to be committed.
    pub fn has_changes(&self) -> Result<bool, VfsError> {
        let st = self.state.lock();
        Ok(!st.whiteouts.is_empty()
            || !st.opaque.is_empty()
            || !self.upper.read_dir(Path::new(""), usize::MAX)?.is_empty())
    }
}

impl Tree for Overlay {
    fn stat(&self, p: &Path, follow: bool) -> Result<Stat, VfsError> {
        let st = self.state.lock();
        let (layer, _) = self.visible(&st, p)?;
        self.tree(layer).stat(p, follow)
    }

    fn exists(&self, p: &Path) -> Result<bool, VfsError> {
        let st = self.state.lock();
        Ok(self.layer(&st, p)?.is_some())
    }

    fn read(&self, p: &Path, limit: u64) -> Result<Vec<u8>, VfsError> {
        let st = self.state.lock();
        let (layer, _) = self.visible(&st, p)?;
        self.tree(layer).read(p, limit)
    }

    fn write(&self, p: &Path, data: &[u8], append: bool, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        let mut st = self.state.lock();
        let lower_had_dir = match self.layer(&st, p)? {
            Some(layer) => {
                if self.tree(layer).stat(p, false)?.is_dir() {
                    return Err(VfsError::IsDirectory(p.display().to_string()));
                }
                if append && layer == Layer::Lower {
                    self.copy_up(&st, p, ctl)?;
                }
                false
            }
            None => false,
        };
        self.prepare_dir(&st, parent(p))?;
        self.upper.write(p, data, append, ctl)?;
        Self::claim(&mut st, lower_had_dir, p, false);
        Ok(())
    }

    fn create_dir(&self, p: &Path, all: bool) -> Result<(), VfsError> {
        let mut st = self.state.lock();
        let targets: Vec<PathBuf> = if all {
            let mut v: Vec<PathBuf> = p
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .collect();
            v.reverse();
            v
        } else {
            vec![p.to_path_buf()]
        };
        for (i, dir) in targets.iter().enumerate() {
            match self.layer(&st, dir)? {
                Some(layer) => {
                    let is_dir = self.tree(layer).stat(dir, false)?.is_dir();
                    let last = i + 1 == targets.len();
                    if !is_dir {
                        return Err(VfsError::NotDirectory(dir.display().to_string()));
                    }
                    if last && !all {
                        return Err(VfsError::AlreadyExists(dir.display().to_string()));
                    }
                }
                None => {
                    self.prepare_dir(&st, parent(dir))?;
                    let lower_had_dir =
                        self.lower.exists(dir)? && self.lower.stat(dir, false)?.is_dir();
                    self.upper.create_dir(dir, false)?;
                    Self::claim(&mut st, lower_had_dir, dir, true);
                }
            }
        }
        Ok(())
    }

    fn read_dir(&self, p: &Path, limit: usize) -> Result<Vec<String>, VfsError> {
        let st = self.state.lock();
        if !p.as_os_str().is_empty() && !self.visible(&st, p)?.1.is_dir() {
            return Err(VfsError::NotDirectory(p.display().to_string()));
        }
        let names = self.merged_names(&st, p)?;
        if names.len() > limit {
            return Err(VfsError::TooLarge {
                what: "directory listing",
                size: names.len() as u64,
                limit: limit as u64,
            });
        }
        Ok(names.into_iter().collect())
    }

    fn remove_file(&self, p: &Path) -> Result<(), VfsError> {
        let mut st = self.state.lock();
        let (_, stat) = self.visible(&st, p)?;
        if stat.is_dir() {
            return Err(VfsError::IsDirectory(p.display().to_string()));
        }
        self.delete(&mut st, p, false)
    }

    fn remove_dir_all(&self, p: &Path, ctl: &Ctl<'_>, done: &mut Usage) -> Result<(), VfsError> {
        if p.as_os_str().is_empty() {
            return Err(VfsError::Access("the mount root cannot be removed".into()));
        }
        let mut st = self.state.lock();
        let (_, stat) = self.visible(&st, p)?;
        if !stat.is_dir() {
            return Err(VfsError::NotDirectory(p.display().to_string()));
        }
        let mut gone = Usage {
            entries: 1,
            bytes: 0,
        };
        self.merged_walk(&st, p, ctl, &mut |_, stat| {
            gone.entries += 1;
            if stat.kind == crate::FileKind::File && stat.links <= 1 {
                gone.bytes += stat.size;
            }
            Ok(true)
        })?;
        self.delete(&mut st, p, true)?;
        done.entries += gone.entries;
        done.bytes += gone.bytes;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        if from.as_os_str().is_empty() || to.as_os_str().is_empty() {
            return Err(VfsError::Access("the mount root cannot be moved".into()));
        }
        if to.starts_with(from) {
            return Err(VfsError::InvalidPath(format!(
                "cannot move `{}` into itself",
                from.display()
            )));
        }
        let mut st = self.state.lock();
        let (_, stat) = self.visible(&st, from)?;
        if let Some(layer) = self.layer(&st, to)?
            && (self.tree(layer).stat(to, false)?.is_dir() || stat.is_dir())
        {
            return Err(VfsError::AlreadyExists(to.display().to_string()));
        }
        if stat.is_dir() {
            let room = walk::room_below(to);
            self.merged_walk(&st, from, ctl, &mut |child, _| {
                walk::fits(child.strip_prefix(from).unwrap_or(child), room)?;
                Ok(true)
            })?;
        }
        self.prepare_dir(&st, parent(to))?;
        let lower_had_dir = self.lower.exists(to)? && self.lower.stat(to, false)?.is_dir();
        self.materialize(&st, from, to, ctl)?;
        Self::claim(&mut st, lower_had_dir, to, stat.is_dir());
        self.delete(&mut st, from, stat.is_dir())
    }

    fn copy(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        let mut st = self.state.lock();
        let (layer, stat) = self.visible(&st, from)?;
        if stat.is_dir() {
            return Err(VfsError::IsDirectory(from.display().to_string()));
        }
        if let Some(l) = self.layer(&st, to)?
            && self.tree(l).stat(to, false)?.is_dir()
        {
            return Err(VfsError::IsDirectory(to.display().to_string()));
        }
        // A lower file copied onto its own name would land in a fresh upper file; refuse it
        // like every other copy onto itself.
        if from == to {
            return Err(same_file(from, to));
        }
        self.prepare_dir(&st, parent(to))?;
        if layer == Layer::Upper {
            self.upper.copy(from, to, ctl)?;
        } else {
            let src = self.lower.open(from, OpenMode::Read, ctl)?;
            let staging = Mount::staging_name(to);
            let dst = self.upper.open(&staging, OpenMode::Write, ctl)?;
            let copied =
                walk::copy_data(&src, &dst, ctl).and_then(|_| self.upper.rename(&staging, to, ctl));
            if copied.is_err() {
                // Best effort: the staging file is never part of the merged view.
                let _removed = self.upper.remove_file(&staging);
            }
            copied?;
        }
        Self::claim(&mut st, false, to, false);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path, ctl: &Ctl<'_>) -> Result<(), VfsError> {
        let mut st = self.state.lock();
        let (layer, stat) = self.visible(&st, from)?;
        if stat.is_dir() {
            return Err(VfsError::IsDirectory(from.display().to_string()));
        }
        if self.layer(&st, to)?.is_some() {
            return Err(VfsError::AlreadyExists(to.display().to_string()));
        }
        if layer == Layer::Lower {
            self.copy_up(&st, from, ctl)?;
        }
        self.prepare_dir(&st, parent(to))?;
        self.upper.hard_link(from, to, ctl)?;
        Self::claim(&mut st, false, to, false);
        Ok(())
    }

    fn canonicalize(&self, p: &Path) -> Result<PathBuf, VfsError> {
        let st = self.state.lock();
        let (layer, _) = self.visible(&st, p)?;
        self.tree(layer).canonicalize(p)
    }

    fn read_link(&self, p: &Path) -> Result<PathBuf, VfsError> {
        let st = self.state.lock();
        let (layer, _) = self.visible(&st, p)?;
        self.tree(layer).read_link(p)
    }

    fn open(&self, p: &Path, mode: OpenMode, ctl: &Ctl<'_>) -> Result<std::fs::File, VfsError> {
        let mut st = self.state.lock();
        let found = self.layer(&st, p)?;
        if mode == OpenMode::Read {
            let layer = found.ok_or_else(|| VfsError::NotFound(p.display().to_string()))?;
            return self.tree(layer).open(p, mode, ctl);
        }
        match found {
            Some(layer) => {
                if self.tree(layer).stat(p, false)?.is_dir() {
                    return Err(VfsError::IsDirectory(p.display().to_string()));
                }
                if layer == Layer::Lower && mode != OpenMode::Write {
                    self.copy_up(&st, p, ctl)?;
                }
                if layer == Layer::Lower && mode == OpenMode::Write {
                    self.prepare_dir(&st, parent(p))?;
                }
            }
            None => self.prepare_dir(&st, parent(p))?,
        }
        let file = self.upper.open(p, mode, ctl)?;
        Self::claim(&mut st, false, p, false);
        Ok(file)
    }

    fn usage(
        &self,
        p: &Path,
        ctl: &Ctl<'_>,
        decide: &dyn Fn(&Path) -> Visit,
    ) -> Result<Usage, VfsError> {
        let st = self.state.lock();
        let mut usage = Usage::default();
        self.merged_walk(&st, p, ctl, &mut |child, stat| {
            let visit = decide(child);
            if visit == Visit::Enter {
                usage.entries += 1;
                if stat.kind == crate::FileKind::File && stat.links <= 1 {
                    usage.bytes += stat.size;
                }
            }
            Ok(visit != Visit::Skip)
        })?;
        Ok(usage)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // Uncommitted changes are discarded with the overlay.
        if let Err(e) = self.clear_upper() {
            tracing::warn!(error = %e, "could not clear the overlay's upper layer");
        }
    }
}

/// Reads a whole file through any tree (used by tests and the host).
pub fn read_to_string(tree: &dyn Tree, p: &Path) -> Result<String, VfsError> {
    let bytes = tree.read(p, u64::MAX)?;
    let mut s = String::new();
    bytes
        .as_slice()
        .read_to_string(&mut s)
        .map_err(|e| VfsError::from_io(p, e))?;
    Ok(s)
}
