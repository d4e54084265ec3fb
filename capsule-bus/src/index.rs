//! A segment trie over [`TopicPattern`]s: finding the entries whose pattern matches a topic
//! costs time proportional to the topic's depth and the matches, not to the number of entries.
//!
//! The trie must answer exactly what [`TopicPattern::matches`] answers for every stored
//! pattern; the property tests check it against a linear scan.

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::topic::{MAX_SEGMENTS, Seg, Topic, TopicPattern};

type NodeId = u32;
const ROOT: NodeId = 0;

#[derive(Debug)]
struct Node<T> {
    children: FxHashMap<Box<str>, NodeId>,
    /// Child for a `*` that is not the last segment (matches exactly one segment).
    star: Option<NodeId>,
    /// Entries whose pattern ends exactly at this node.
    exact: Vec<(u64, T)>,
    /// Entries whose pattern is this node's path followed by a trailing `*`.
    trailing: Vec<(u64, T)>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Self {
            children: FxHashMap::default(),
            star: None,
            exact: Vec::new(),
            trailing: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.exact.is_empty()
            && self.trailing.is_empty()
    }
}

/// Entries keyed by pattern, looked up by concrete topic.
#[derive(Debug)]
pub struct PatternIndex<T> {
    nodes: Vec<Node<T>>,
    free: Vec<NodeId>,
    len: usize,
}

impl<T> Default for PatternIndex<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PatternIndex<T> {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::new()],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn alloc(&mut self) -> NodeId {
        if let Some(id) = self.free.pop() {
            self.nodes[id as usize] = Node::new();
            id
        } else {
            self.nodes.push(Node::new());
            NodeId::try_from(self.nodes.len() - 1).unwrap_or(NodeId::MAX)
        }
    }

    /// Stores `value` under `pattern` with caller-chosen identity `id` (used by
    /// [`remove`](Self::remove)).
    pub fn insert(&mut self, pattern: &TopicPattern, id: u64, value: T) {
        let fixed = pattern.fixed_len();
        let mut node = ROOT;
        for seg in pattern.segs().take(fixed) {
            node = match seg {
                Seg::Lit(s) => match self.nodes[node as usize].children.get(s) {
                    Some(&child) => child,
                    None => {
                        let child = self.alloc();
                        self.nodes[node as usize].children.insert(s.into(), child);
                        child
                    }
                },
                Seg::Star => match self.nodes[node as usize].star {
                    Some(child) => child,
                    None => {
                        let child = self.alloc();
                        self.nodes[node as usize].star = Some(child);
                        child
                    }
                },
            };
        }
        let slot = &mut self.nodes[node as usize];
        if pattern.has_trailing_wildcard() {
            slot.trailing.push((id, value));
        } else {
            slot.exact.push((id, value));
        }
        self.len += 1;
    }

    /// Removes the entry stored under `pattern` with identity `id`, pruning emptied nodes.
    pub fn remove(&mut self, pattern: &TopicPattern, id: u64) -> Option<T> {
        let fixed = pattern.fixed_len();
        let mut path: SmallVec<[(NodeId, Seg<'_>); MAX_SEGMENTS]> = SmallVec::new();
        let mut node = ROOT;
        for seg in pattern.segs().take(fixed) {
            let next = match seg {
                Seg::Lit(s) => self.nodes[node as usize].children.get(s).copied(),
                Seg::Star => self.nodes[node as usize].star,
            }?;
            path.push((node, seg));
            node = next;
        }
        let slot = &mut self.nodes[node as usize];
        let list = if pattern.has_trailing_wildcard() {
            &mut slot.trailing
        } else {
            &mut slot.exact
        };
        let pos = list.iter().position(|(i, _)| *i == id)?;
        let (_, value) = list.swap_remove(pos);
        self.len -= 1;
        // Prune empty nodes bottom-up.
        let mut child = node;
        while let Some((parent, seg)) = path.pop() {
            if !self.nodes[child as usize].is_empty() {
                break;
            }
            let p = &mut self.nodes[parent as usize];
            match seg {
                Seg::Lit(s) => {
                    p.children.remove(s);
                }
                Seg::Star => p.star = None,
            }
            self.free.push(child);
            child = parent;
        }
        Some(value)
    }

    /// Calls `f` on every entry whose pattern matches `topic`.
    pub fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(&T)) {
        // Segments are split off only as deep as the walk goes (most subscriptions end after
        // a segment or two), by hand: they are short, and a search per segment costs more
        // than it saves. The topic's depth is never counted: the walk is at the end of the
        // topic where no segment is left to split off.
        let mut segs: SmallVec<[&str; MAX_SEGMENTS]> = SmallVec::new();
        let mut rest = Some(topic.as_str());
        let mut segment = |d: usize| -> Option<&str> {
            while segs.len() <= d {
                let text = rest?;
                let (head, tail) = match text.split_once('.') {
                    Some((head, tail)) => (head, Some(tail)),
                    None => (text, None),
                };
                segs.push(head);
                rest = tail;
            }
            Some(segs[d])
        };
        let mut stack: SmallVec<[(NodeId, usize); 16]> = SmallVec::new();
        stack.push((ROOT, 0));
        while let Some((id, d)) = stack.pop() {
            let node = &self.nodes[id as usize];
            let Some(seg) = segment(d) else {
                node.exact.iter().for_each(|(_, v)| f(v));
                continue;
            };
            node.trailing.iter().for_each(|(_, v)| f(v));
            if let Some(star) = node.star {
                stack.push((star, d + 1));
            }
            if let Some(&child) = node.children.get(seg) {
                stack.push((child, d + 1));
            }
        }
    }

    /// Every stored entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        let live: Vec<bool> = {
            let mut v = vec![true; self.nodes.len()];
            for &f in &self.free {
                v[f as usize] = false;
            }
            v
        };
        self.nodes
            .iter()
            .zip(live)
            .filter(|(_, l)| *l)
            .flat_map(|(n, _)| n.exact.iter().chain(n.trailing.iter()).map(|(_, v)| v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn hits(idx: &PatternIndex<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut v = Vec::new();
        idx.for_each_match(&t(topic), |x| v.push(*x));
        v.sort_unstable();
        v
    }

    #[test]
    fn finds_exact_trailing_and_mid_matches() {
        let mut idx = PatternIndex::new();
        idx.insert(&p("a.b"), 1, "a.b");
        idx.insert(&p("a.*"), 2, "a.*");
        idx.insert(&p("a.*.c"), 3, "a.*.c");
        idx.insert(&p("*"), 4, "*");
        idx.insert(&p("x.y"), 5, "x.y");
        assert_eq!(hits(&idx, "a.b"), vec!["*", "a.*", "a.b"]);
        assert_eq!(hits(&idx, "a.b.c"), vec!["*", "a.*", "a.*.c"]);
        assert_eq!(hits(&idx, "a"), vec!["*"]);
        assert_eq!(hits(&idx, "x.y"), vec!["*", "x.y"]);
        assert_eq!(idx.len(), 5);
    }

    #[test]
    fn remove_prunes_and_keeps_siblings() {
        let mut idx = PatternIndex::new();
        idx.insert(&p("a.b.c"), 1, "one");
        idx.insert(&p("a.b.c"), 2, "two");
        idx.insert(&p("a.*.d"), 3, "three");
        assert_eq!(idx.remove(&p("a.b.c"), 1), Some("one"));
        assert_eq!(idx.remove(&p("a.b.c"), 1), None);
        assert_eq!(hits(&idx, "a.b.c"), vec!["two"]);
        assert_eq!(idx.remove(&p("a.b.c"), 2), Some("two"));
        assert_eq!(idx.remove(&p("a.*.d"), 3), Some("three"));
        assert!(idx.is_empty());
        // Only the root is live again; its slots were recycled.
        assert_eq!(idx.nodes.len() - idx.free.len(), 1);
        assert!(idx.nodes[0].is_empty());
        idx.insert(&p("q.r"), 9, "nine");
        assert_eq!(hits(&idx, "q.r"), vec!["nine"]);
        assert_eq!(idx.iter().count(), 1);
    }
}
