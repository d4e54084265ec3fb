//! Topics and patterns: parsing agrees with the documented grammar, the matcher with a
//! segment-list reference, `covers` with language inclusion decided on a small automaton,
//! and the pattern index with a linear scan, on generated strings that are mostly near the
//! grammar's edges (wildcards, empty and oversized segments, the length and depth limits).

use std::collections::{BTreeSet, HashSet, VecDeque};

use arbitrary::{Arbitrary, Unstructured};
use capsule_bus::TopicPattern;
use capsule_bus::{AUDIT_TOPIC, MAX_SEGMENTS, MAX_TOPIC_BYTES, PatternIndex, Topic, TopicError};

use crate::{pick, short_string};

/// Generated pattern and topic strings plus index removals.
#[derive(Debug)]
pub struct Input {
    /// Candidate patterns (most parse, some break one rule).
    pub patterns: Vec<String>,
    /// Candidate topics (many are instances of a pattern).
    pub topics: Vec<String>,
    /// Index entries to remove before lookups (indices into `patterns`, modulo its length).
    pub removals: Vec<u8>,
}

/// One segment: mostly valid and from a small alphabet so patterns and topics collide.
pub fn segment(u: &mut Unstructured<'_>, wildcards: bool) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0u8..=19)? {
        0..=8 => pick(u, &["a", "b", "c", "astrid", "v1", "audit", "entry"])?.to_string(),
        9..=11 if wildcards => "*".to_string(),
        9..=14 => {
            let len = u.int_in_range(1..=6)?;
            let alphabet = b"azAZ09_-xq";
            (0..len)
                .map(|_| u.choose(alphabet).map(|b| char::from(*b)))
                .collect::<arbitrary::Result<String>>()?
        }
        15 => "x".repeat(u.int_in_range(30..=140)?),
        16 => short_string(u, 4)?,
        _ => pick(u, &["", "a*", "*a", "**", " ", "\u{e9}", "a/b", "\0", "*"])?.to_string(),
    })
}

/// A pattern-like or topic-like string: segments joined by dots, sometimes raw text.
pub fn dotted(u: &mut Unstructured<'_>, wildcards: bool) -> arbitrary::Result<String> {
    if u.ratio(1, 12)? {
        return short_string(u, 24);
    }
    let n = if u.ratio(1, 8)? {
        u.int_in_range(1..=MAX_SEGMENTS + 2)?
    } else {
        u.int_in_range(1..=5)?
    };
    let segs = (0..n)
        .map(|_| segment(u, wildcards))
        .collect::<arbitrary::Result<Vec<_>>>()?;
    Ok(segs.join("."))
}

/// A topic that `pattern` matches under the reference semantics (when it is valid): every
/// `*` filled with a segment, a trailing one extended by one to three segments.
fn instance_of(u: &mut Unstructured<'_>, pattern: &str) -> arbitrary::Result<String> {
    let segs: Vec<&str> = pattern.split('.').collect();
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        if *s == "*" {
            let extra = if i + 1 == segs.len() {
                u.int_in_range(1..=3)?
            } else {
                1
            };
            for _ in 0..extra {
                out.push(pick(u, &["a", "b", "c", "zz"])?.to_string());
            }
        } else {
            out.push((*s).to_string());
        }
    }
    Ok(out.join("."))
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let np = u.int_in_range(0..=12)?;
        let patterns = (0..np)
            .map(|_| dotted(u, true))
            .collect::<arbitrary::Result<Vec<_>>>()?;
        let nt = u.int_in_range(1..=8)?;
        let mut topics = Vec::with_capacity(nt);
        for _ in 0..nt {
            let t = if !patterns.is_empty() && u.ratio(1, 2)? {
                let p = u.choose(&patterns)?;
                instance_of(u, p)?
            } else if u.ratio(1, 10)? {
                AUDIT_TOPIC.to_string()
            } else {
                dotted(u, false)?
            };
            topics.push(t);
        }
        let nr = u.int_in_range(0..=6)?;
        let removals = (0..nr)
            .map(|_| u8::arbitrary(u))
            .collect::<arbitrary::Result<Vec<_>>>()?;
        Ok(Self {
            patterns,
            topics,
            removals,
        })
    }
}

/// The grammar as the module docs of `capsule_bus::topic` state it, rule by rule.
pub fn reference_parse(s: &str, wildcards: bool) -> Result<Vec<&str>, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: s.len() });
    }
    let segs: Vec<&str> = s.split('.').collect();
    if segs.len() > MAX_SEGMENTS {
        return Err(TopicError::TooManySegments { count: segs.len() });
    }
    for (index, seg) in segs.iter().enumerate() {
        if seg.is_empty() {
            return Err(TopicError::EmptySegment { index });
        }
        if *seg == "*" {
            if wildcards {
                continue;
            }
            return Err(TopicError::WildcardInTopic { index });
        }
        for c in seg.chars() {
            if c == '*' {
                return Err(TopicError::PartialWildcard { index });
            }
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(TopicError::InvalidChar { index, found: c });
            }
        }
    }
    Ok(segs)
}

/// Reference matching: a `*` matches one segment, a trailing `*` one or more.
pub fn reference_match(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern, topic) {
        ([], []) => true,
        (["*"], rest) => !rest.is_empty(),
        ([p, prest @ ..], [t, trest @ ..]) => {
            (*p == "*" || p == t) && reference_match(prest, trest)
        }
        _ => false,
    }
}

/// The pattern as a nondeterministic automaton over segments: state `i` (bit `i` of the set)
/// means `i` pattern segments consumed; a trailing `*` loops once it has consumed one segment.
fn step(pattern: &[&str], states: u16, sym: &str) -> u16 {
    let n = pattern.len();
    let trailing = pattern.last() == Some(&"*");
    let mut next = 0u16;
    for (i, seg) in pattern.iter().enumerate() {
        if states & (1 << i) != 0 && (*seg == "*" || *seg == sym) {
            next |= 1 << (i + 1);
        }
    }
    if trailing && states & (1 << n) != 0 {
        next |= 1 << n;
    }
    next
}

/// Whether every topic (of at most [`MAX_SEGMENTS`] segments) that `inner` matches is matched
/// by `outer`, decided by exploring both automata in lockstep over an alphabet of the literals
/// they name plus one segment neither names.
pub fn reference_covers(outer: &[&str], inner: &[&str]) -> bool {
    const FRESH: &str = "~fresh~";
    let mut alphabet: Vec<&str> = outer
        .iter()
        .chain(inner)
        .copied()
        .filter(|s| *s != "*")
        .collect();
    alphabet.sort_unstable();
    alphabet.dedup();
    alphabet.push(FRESH);
    let (inner_done, outer_done) = (1u16 << inner.len(), 1u16 << outer.len());
    let mut seen: HashSet<(usize, u16, u16)> = HashSet::new();
    let mut queue = VecDeque::from([(0usize, 1u16, 1u16)]);
    while let Some((depth, i_states, o_states)) = queue.pop_front() {
        if depth == MAX_SEGMENTS {
            continue;
        }
        for sym in &alphabet {
            let ni = step(inner, i_states, sym);
            if ni == 0 {
                continue;
            }
            let no = step(outer, o_states, sym);
            if ni & inner_done != 0 && no & outer_done == 0 {
                return false;
            }
            if seen.insert((depth + 1, ni, no)) {
                queue.push_back((depth + 1, ni, no));
            }
        }
    }
    true
}

/// Runs every topic check on `input`.
pub fn check(input: &Input) -> Result<(), String> {
    let mut patterns: Vec<(TopicPattern, Vec<&str>)> = Vec::new();
    let mut topics: Vec<(Topic, Vec<&str>)> = Vec::new();
    for s in input.patterns.iter().chain(&input.topics) {
        let want_p = reference_parse(s, true);
        let got_p = TopicPattern::parse(s);
        match (&got_p, &want_p) {
            (Ok(p), Ok(segs)) => {
                check_pattern_accessors(p, s, segs)?;
                patterns.push((p.clone(), segs.clone()));
            }
            (Err(g), Err(w)) if g == w => {}
            _ => {
                return Err(format!(
                    "TopicPattern::parse({s:?}) = {got_p:?}, grammar says {want_p:?}"
                ));
            }
        }
        let want_t = reference_parse(s, false);
        let got_t = Topic::parse(s);
        match (&got_t, &want_t) {
            (Ok(t), Ok(segs)) => {
                if t.as_str() != s || t.segments().collect::<Vec<_>>() != *segs {
                    return Err(format!("Topic::parse({s:?}) kept {t:?}"));
                }
                topics.push((t.clone(), segs.clone()));
            }
            (Err(g), Err(w)) if g == w => {}
            _ => {
                return Err(format!(
                    "Topic::parse({s:?}) = {got_t:?}, grammar says {want_t:?}"
                ));
            }
        }
    }
    check_matching(&patterns, &topics)?;
    check_covers(&patterns)?;
    check_index(&patterns, &topics, &input.removals)
}

fn check_pattern_accessors(p: &TopicPattern, s: &str, segs: &[&str]) -> Result<(), String> {
    let stars = segs.iter().filter(|x| **x == "*").count();
    let trailing = segs.last() == Some(&"*");
    let audit: Vec<&str> = AUDIT_TOPIC.split('.').collect();
    let ok = p.as_str() == s
        && p.to_string() == s
        && p.segment_count() == segs.len()
        && p.wildcard_count() == stars
        && p.has_trailing_wildcard() == trailing
        && p.is_exact() == (stars == 0)
        && p.covers_audit_topic() == reference_match(segs, &audit);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "accessors of {p:?} disagree with its segments {segs:?}"
        ))
    }
}

fn check_matching(
    patterns: &[(TopicPattern, Vec<&str>)],
    topics: &[(Topic, Vec<&str>)],
) -> Result<(), String> {
    for (p, psegs) in patterns {
        for (t, tsegs) in topics {
            let want = reference_match(psegs, tsegs);
            if p.matches(t) != want {
                return Err(format!(
                    "{p:?}.matches({t:?}) = {}, reference {want}",
                    !want
                ));
            }
        }
    }
    for (t, _) in topics {
        let exact = TopicPattern::from(t.clone());
        if TopicPattern::parse(t.as_str()).as_ref() != Ok(&exact) {
            return Err(format!(
                "{t:?} converts to {exact:?}, not to its parsed pattern"
            ));
        }
        for (u, _) in topics {
            if exact.matches(u) != (t == u) {
                return Err(format!("exact pattern {exact:?} vs {u:?}"));
            }
        }
    }
    Ok(())
}

fn check_covers(patterns: &[(TopicPattern, Vec<&str>)]) -> Result<(), String> {
    for (o, osegs) in patterns {
        for (i, isegs) in patterns {
            let want = reference_covers(osegs, isegs);
            if o.covers(i) != want {
                return Err(format!("{o:?}.covers({i:?}) = {}, reference {want}", !want));
            }
        }
    }
    Ok(())
}

fn check_index(
    patterns: &[(TopicPattern, Vec<&str>)],
    topics: &[(Topic, Vec<&str>)],
    removals: &[u8],
) -> Result<(), String> {
    let mut index = PatternIndex::new();
    let mut live: BTreeSet<usize> = BTreeSet::new();
    for (id, (p, _)) in patterns.iter().enumerate() {
        index.insert(p, id as u64, id);
        live.insert(id);
    }
    if !patterns.is_empty() {
        for r in removals {
            let id = usize::from(*r) % patterns.len();
            let got = index.remove(&patterns[id].0, id as u64);
            let was_live = live.remove(&id);
            if got.is_some() != was_live || got.is_some_and(|v| v != id) {
                return Err(format!("removing entry {id} answered {got:?}"));
            }
        }
    }
    if index.len() != live.len() || index.is_empty() != live.is_empty() {
        return Err(format!(
            "index holds {} entries, {} live",
            index.len(),
            live.len()
        ));
    }
    for (t, tsegs) in topics {
        let mut found = BTreeSet::new();
        index.for_each_match(t, |id| {
            found.insert(*id);
        });
        let want: BTreeSet<usize> = live
            .iter()
            .copied()
            .filter(|id| reference_match(&patterns[*id].1, tsegs))
            .collect();
        if found != want {
            return Err(format!(
                "index finds {found:?} for {t:?}, a scan finds {want:?}"
            ));
        }
    }
    Ok(())
}
