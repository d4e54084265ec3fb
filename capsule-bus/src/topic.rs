//! Topic and pattern grammar: every string is validated once, at parse time, and the one
//! matcher ([`TopicPattern::matches`]) decides delivery, ACLs and audit scoping alike.
//!
//! Grammar (shared by topics and patterns):
//! - 1 to [`MAX_SEGMENTS`] segments separated by `.`, at most [`MAX_TOPIC_BYTES`] bytes in all;
//! - each segment is non-empty and made of ASCII letters, digits, `_` or `-`;
//! - a pattern may also use `*` as a whole segment. A trailing `*` matches one or more further
//!   segments (any depth, never the bare prefix); a `*` anywhere else matches exactly one segment.

use std::fmt;
use std::sync::Arc;

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Most segments a topic or pattern may have.
pub const MAX_SEGMENTS: usize = 8;
/// The topic the host publishes audit entries on.
pub const AUDIT_TOPIC: &str = "astrid.v1.audit.entry";

/// Why a topic or pattern string was rejected. Each variant names the rule that broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string was empty.
    #[error("topic is empty")]
    Empty,
    /// The string is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {len} bytes long; the limit is {MAX_TOPIC_BYTES}")]
    TooLong {
        /// Length of the rejected string in bytes.
        len: usize,
    },
    /// The string has more than [`MAX_SEGMENTS`] segments.
    #[error("topic has {count} segments; the limit is {MAX_SEGMENTS}")]
    TooManySegments {
        /// Number of segments found.
        count: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("segment {index} is empty")]
    EmptySegment {
        /// Zero-based index of the empty segment.
        index: usize,
    },
    /// A byte outside `[A-Za-z0-9_-]` (or `*` where wildcards are not allowed).
    #[error(
        "segment {index} contains {found:?}; only ASCII letters, digits, '_' and '-' are allowed"
    )]
    InvalidChar {
        /// Zero-based index of the offending segment.
        index: usize,
        /// The offending character.
        found: char,
    },
    /// `*` mixed with other characters inside one segment, such as `a*`.
    #[error("segment {index} mixes '*' with other characters; '*' must be a whole segment")]
    PartialWildcard {
        /// Zero-based index of the offending segment.
        index: usize,
    },
    /// A concrete topic (one that is published to) contained a `*` segment.
    #[error("segment {index} is a wildcard; a published topic must be concrete")]
    WildcardInTopic {
        /// Zero-based index of the wildcard segment.
        index: usize,
    },
}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// [`CLASS`] of a byte allowed inside a segment.
const SEG: u8 = 1;
/// [`CLASS`] of the separator.
const DOT: u8 = 2;

/// The grammar's class of every byte: [`SEG`], [`DOT`], or 0 for a byte no topic may hold
/// (`*` included), so a topic is checked with one table load per byte.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0u8;
    loop {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            table[b as usize] = SEG;
        } else if b == b'.' {
            table[b as usize] = DOT;
        }
        if b == u8::MAX {
            break table;
        }
        b += 1;
    }
};

/// Whether `s` is a valid concrete topic, decided in one pass without allocating: exactly
/// the strings [`validate`] accepts without wildcards.
fn is_topic(s: &[u8]) -> bool {
    if s.is_empty() || s.len() > MAX_TOPIC_BYTES {
        return false;
    }
    let (mut dots, mut after_dot) = (0usize, true);
    for &b in s {
        match CLASS[usize::from(b)] {
            SEG => after_dot = false,
            // A dot first or right after a dot leaves a segment empty.
            DOT if !after_dot => {
                after_dot = true;
                dots += 1;
            }
            _ => return false,
        }
    }
    !after_dot && dots < MAX_SEGMENTS
}

/// Validates `s` under the shared grammar; returns the segment count.
fn validate(s: &str, wildcards: bool) -> Result<usize, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: s.len() });
    }
    let count = s.split('.').count();
    if count > MAX_SEGMENTS {
        return Err(TopicError::TooManySegments { count });
    }
    for (index, seg) in s.split('.').enumerate() {
        if seg.is_empty() {
            return Err(TopicError::EmptySegment { index });
        }
        if seg == "*" {
            if wildcards {
                continue;
            }
            return Err(TopicError::WildcardInTopic { index });
        }
        if let Some(pos) = seg.bytes().position(|b| !is_segment_byte(b)) {
            if seg.as_bytes()[pos] == b'*' {
                return Err(TopicError::PartialWildcard { index });
            }
            let found = seg[pos..].chars().next().unwrap_or('\u{fffd}');
            return Err(TopicError::InvalidChar { index, found });
        }
    }
    Ok(count)
}

/// What one pass over a valid topic or pattern learns.
struct Shape {
    /// Number of segments.
    count: usize,
    /// Number of `*` segments.
    stars: usize,
    /// Whether the last segment is `*`.
    trailing: bool,
    /// Byte offset one past the end of each segment (the first `count` are meaningful).
    ends: [u16; MAX_SEGMENTS],
}

/// The shape of `s` in one pass without allocating, or `None` when `s` breaks any rule of the
/// grammar: exactly the strings [`validate`] refuses, which then names the rule.
fn scan(s: &str, wildcards: bool) -> Option<Shape> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_TOPIC_BYTES {
        return None;
    }
    let mut shape = Shape {
        count: 0,
        stars: 0,
        trailing: false,
        ends: [0; MAX_SEGMENTS],
    };
    let (mut len, mut star) = (0usize, false);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'.' {
            shape.close(i, len, star)?;
            (len, star) = (0, false);
            continue;
        }
        if b == b'*' {
            if !wildcards || len != 0 {
                return None;
            }
            star = true;
        } else if star || !is_segment_byte(b) {
            return None;
        }
        len += 1;
    }
    shape.close(bytes.len(), len, star)?;
    shape.trailing = star;
    Some(shape)
}

impl Shape {
    /// Records the segment of `len` bytes ending at byte `end`; `None` if it is empty or one
    /// too many.
    fn close(&mut self, end: usize, len: usize, star: bool) -> Option<()> {
        if len == 0 || self.count == MAX_SEGMENTS {
            return None;
        }
        // `end` is at most MAX_TOPIC_BYTES, which fits.
        self.ends[self.count] = u16::try_from(end).ok()?;
        self.count += 1;
        self.stars += usize::from(star);
        Some(())
    }
}

/// A concrete, validated topic such as `chat.v1.message`.
///
/// Cloning is cheap (the text is reference-counted), so a parsed topic can be kept and reused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Parses and validates a topic. `*` is rejected: publishing to a pattern is invalid.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        if !is_topic(s.as_bytes()) {
            validate(s, false)?;
        }
        Ok(Self(Arc::from(s)))
    }

    /// The topic text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, in order.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One parsed segment of a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seg<'a> {
    Lit(&'a str),
    Star,
}

/// A validated topic pattern such as `chat.*` or `chat.*.message`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPattern {
    text: Arc<str>,
    /// Number of segments, including a trailing `*`.
    len: u8,
    /// Whether the last segment is `*` (matches one or more further segments).
    trailing: bool,
    /// Number of `*` segments in the pattern, trailing included.
    stars: u8,
    /// Byte offset one past the end of each segment (only the first `len` are meaningful).
    ends: [u16; MAX_SEGMENTS],
}

impl TopicPattern {
    /// Parses and validates a pattern.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        match scan(s, true) {
            Some(shape) => Ok(Self::from_shape(Arc::from(s), &shape)),
            None => {
                let count = validate(s, true)?;
                let stars = s.split('.').filter(|seg| *seg == "*").count();
                let trailing = s == "*" || s.ends_with(".*");
                Ok(Self::from_validated(Arc::from(s), count, stars, trailing))
            }
        }
    }

    fn from_shape(text: Arc<str>, shape: &Shape) -> Self {
        Self {
            // At most MAX_SEGMENTS: both fit.
            len: u8::try_from(shape.count).unwrap_or(u8::MAX),
            trailing: shape.trailing,
            stars: u8::try_from(shape.stars).unwrap_or(u8::MAX),
            ends: shape.ends,
            text,
        }
    }

    fn from_validated(text: Arc<str>, count: usize, stars: usize, trailing: bool) -> Self {
        let mut ends = [0u16; MAX_SEGMENTS];
        let mut pos = 0usize;
        for (slot, seg) in ends.iter_mut().zip(text.split('.')) {
            pos += seg.len();
            *slot = u16::try_from(pos).unwrap_or(u16::MAX);
            pos += 1;
        }
        Self {
            len: u8::try_from(count).unwrap_or(u8::MAX),
            trailing,
            stars: u8::try_from(stars).unwrap_or(u8::MAX),
            ends,
            text,
        }
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Number of segments, a trailing `*` included.
    pub fn segment_count(&self) -> usize {
        usize::from(self.len)
    }

    /// Number of `*` segments.
    pub fn wildcard_count(&self) -> usize {
        usize::from(self.stars)
    }

    /// Whether the pattern ends in `*` (and so matches any depth below its prefix).
    pub fn has_trailing_wildcard(&self) -> bool {
        self.trailing
    }

    /// Whether the pattern contains no wildcard at all.
    pub fn is_exact(&self) -> bool {
        self.stars == 0
    }

    pub(crate) fn segs(&self) -> impl Iterator<Item = Seg<'_>> + '_ {
        self.text
            .split('.')
            .map(|s| if s == "*" { Seg::Star } else { Seg::Lit(s) })
    }

    /// The segments before a trailing `*` (all of them if there is none).
    pub(crate) fn fixed_len(&self) -> usize {
        usize::from(self.len) - usize::from(self.trailing)
    }

    /// THE matcher: whether `topic` is delivered to a subscription on this pattern.
    ///
    /// Every decision in the project (publish and subscribe ACLs, delivery through the
    /// subscription index, interceptor dispatch, audit scoping) goes through this function or
    /// is property-tested against it.
    #[inline]
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// [`matches`](Self::matches) on already-validated topic text.
    ///
    /// Works on bytes with the pattern's precomputed segment ends: a literal segment is one
    /// slice comparison plus a separator check, a mid `*` skips one topic segment, a trailing
    /// `*` accepts whatever non-empty remainder is left.
    #[inline]
    pub(crate) fn matches_str(&self, topic: &str) -> bool {
        if self.stars == 0 {
            return *self.text == *topic;
        }
        let p = self.text.as_bytes();
        let t = topic.as_bytes();
        let mut start = 0usize; // start of the current pattern segment
        let mut j = 0usize; // start of the current topic segment
        for (index, &end) in self.ends[..usize::from(self.len)].iter().enumerate() {
            let end = usize::from(end);
            let last = index + 1 == usize::from(self.len);
            let seg = &p[start..end];
            if seg == b"*" {
                if last {
                    // Trailing: we only get here at the start of a (non-empty) topic segment.
                    return self.trailing;
                }
                match t[j..].iter().position(|&b| b == b'.') {
                    Some(k) => j += k + 1,
                    None => return false,
                }
            } else {
                let Some(rest) = t.get(j..) else { return false };
                if !rest.starts_with(seg) {
                    return false;
                }
                let after = j + seg.len();
                if last {
                    return after == t.len();
                }
                if t.get(after) != Some(&b'.') {
                    return false;
                }
                j = after + 1;
            }
            start = end + 1;
        }
        false
    }

    /// Whether every topic this pattern's `inner` matches is also matched by `self`.
    ///
    /// Used for ACLs: an ACL entry `a.*` allows subscribing to `a.b.*`, while `a.b` does not
    /// allow `a.*`. The answer is exact for the grammar (never "yes" when some topic matched
    /// by `inner` escapes `self`).
    pub fn covers(&self, inner: &TopicPattern) -> bool {
        // A trailing `*` at the last allowed depth can only match exactly one more segment,
        // so it behaves like a single-segment wildcard there.
        let inner_trailing = inner.trailing && inner.segment_count() < MAX_SEGMENTS;
        let outer_trailing = self.trailing && self.segment_count() < MAX_SEGMENTS;
        let (n, k) = (self.segment_count(), inner.segment_count());
        if outer_trailing {
            // Inner topics are at least `k` segments long; outer needs at least `n`.
            if k < n {
                return false;
            }
        } else if inner_trailing || k != n {
            return false;
        }
        let checked = if outer_trailing { n - 1 } else { n };
        self.segs()
            .zip(inner.segs())
            .take(checked)
            .all(|pair| match pair {
                (Seg::Star, _) => true,
                (Seg::Lit(o), Seg::Lit(i)) => o == i,
                (Seg::Lit(_), Seg::Star) => false,
            })
    }

    /// Whether a subscription on this pattern would receive audit entries
    /// ([`AUDIT_TOPIC`]); such subscriptions are scoped to their owner unless the owner holds
    /// the audit firehose grant.
    pub fn covers_audit_topic(&self) -> bool {
        self.matches_str(AUDIT_TOPIC)
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", &*self.text)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for TopicPattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<Topic> for TopicPattern {
    fn from(t: Topic) -> Self {
        let len = t.segments().count();
        Self::from_validated(t.0, len, 0, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn empty_is_rejected() {
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert_eq!(TopicPattern::parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn length_limit_is_inclusive() {
        let ok = format!("{}.{}", "a".repeat(128), "b".repeat(127));
        assert_eq!(ok.len(), 256);
        assert!(Topic::parse(&ok).is_ok());
        let long = format!("{ok}c");
        assert_eq!(Topic::parse(&long), Err(TopicError::TooLong { len: 257 }));
        assert_eq!(
            TopicPattern::parse(&long),
            Err(TopicError::TooLong { len: 257 })
        );
    }

    #[test]
    fn segment_limit_is_inclusive() {
        assert!(Topic::parse("a.b.c.d.e.f.g.h").is_ok());
        assert_eq!(
            Topic::parse("a.b.c.d.e.f.g.h.i"),
            Err(TopicError::TooManySegments { count: 9 })
        );
        assert_eq!(
            TopicPattern::parse("a.b.c.d.e.f.g.h.*"),
            Err(TopicError::TooManySegments { count: 9 })
        );
    }

    #[test]
    fn empty_segments_are_named() {
        assert_eq!(
            Topic::parse(".a"),
            Err(TopicError::EmptySegment { index: 0 })
        );
        assert_eq!(
            Topic::parse("a..b"),
            Err(TopicError::EmptySegment { index: 1 })
        );
        assert_eq!(
            Topic::parse("a."),
            Err(TopicError::EmptySegment { index: 1 })
        );
        assert_eq!(
            Topic::parse("."),
            Err(TopicError::EmptySegment { index: 0 })
        );
    }

    #[test]
    fn charset_is_letters_digits_underscore_dash() {
        assert!(Topic::parse("Chat_v1.user-42.MSG").is_ok());
        assert_eq!(
            Topic::parse("a.b c"),
            Err(TopicError::InvalidChar {
                index: 1,
                found: ' '
            })
        );
        assert_eq!(
            Topic::parse("a/b"),
            Err(TopicError::InvalidChar {
                index: 0,
                found: '/'
            })
        );
        assert_eq!(
            Topic::parse("caf\u{e9}"),
            Err(TopicError::InvalidChar {
                index: 0,
                found: '\u{e9}'
            })
        );
        assert_eq!(
            Topic::parse("a.\0"),
            Err(TopicError::InvalidChar {
                index: 1,
                found: '\0'
            })
        );
    }

    #[test]
    fn wildcards_only_in_patterns_and_only_whole() {
        assert_eq!(
            Topic::parse("a.*"),
            Err(TopicError::WildcardInTopic { index: 1 })
        );
        assert_eq!(
            TopicPattern::parse("a.b*"),
            Err(TopicError::PartialWildcard { index: 1 })
        );
        assert_eq!(
            TopicPattern::parse("*a"),
            Err(TopicError::PartialWildcard { index: 0 })
        );
        assert!(TopicPattern::parse("*").is_ok());
        assert!(TopicPattern::parse("a.*.c.*").is_ok());
    }

    #[test]
    fn exact_pattern_matches_only_itself() {
        assert!(p("a.b").matches(&t("a.b")));
        assert!(!p("a.b").matches(&t("a.b.c")));
        assert!(!p("a.b").matches(&t("a")));
        assert!(!p("a.b").matches(&t("a.c")));
        // Case matters.
        assert!(!p("a.b").matches(&t("A.b")));
    }

    #[test]
    fn trailing_wildcard_matches_any_depth_but_not_the_prefix() {
        let pat = p("a.*");
        assert!(pat.matches(&t("a.b")));
        assert!(pat.matches(&t("a.b.c.d")));
        assert!(!pat.matches(&t("a")));
        assert!(!pat.matches(&t("b.a")));
        assert!(p("*").matches(&t("x")));
        assert!(p("*").matches(&t("x.y.z")));
    }

    #[test]
    fn mid_wildcard_matches_exactly_one_segment() {
        let pat = p("a.*.c");
        assert!(pat.matches(&t("a.b.c")));
        assert!(!pat.matches(&t("a.c")));
        assert!(!pat.matches(&t("a.b.x.c")));
        assert!(!pat.matches(&t("a.b.c.d")));
        let both = p("a.*.c.*");
        assert!(both.matches(&t("a.b.c.d.e")));
        assert!(!both.matches(&t("a.b.c")));
    }

    #[test]
    fn covers_follows_subsets() {
        assert!(p("a.*").covers(&p("a.b.*")));
        assert!(p("a.*").covers(&p("a.b")));
        assert!(p("a.*").covers(&p("a.*")));
        assert!(p("a.*").covers(&p("a.*.c")));
        assert!(!p("a.*").covers(&p("a")));
        assert!(!p("a.b").covers(&p("a.*")));
        assert!(!p("a.*.c").covers(&p("a.*")));
        assert!(p("a.*.c").covers(&p("a.b.c")));
        assert!(!p("a.b.c").covers(&p("a.*.c")));
        assert!(p("*").covers(&p("x.y.*")));
        assert!(!p("a.b.*").covers(&p("a.*")));
    }

    #[test]
    fn audit_coverage_uses_the_matcher() {
        assert!(p("astrid.v1.audit.entry").covers_audit_topic());
        assert!(p("astrid.v1.audit.*").covers_audit_topic());
        assert!(p("astrid.v1.*").covers_audit_topic());
        assert!(p("astrid.*").covers_audit_topic());
        assert!(p("*").covers_audit_topic());
        assert!(p("astrid.*.audit.entry").covers_audit_topic());
        assert!(!p("astrid.v1.audit").covers_audit_topic());
        assert!(!p("astrid.v1.session.*").covers_audit_topic());
        assert!(!p("astrid.v1.audit.entry.*").covers_audit_topic());
    }

    #[test]
    fn topic_converts_into_exact_pattern() {
        let pat: TopicPattern = t("a.b.c").into();
        assert!(pat.is_exact());
        assert_eq!(pat.segment_count(), 3);
        assert!(pat.matches(&t("a.b.c")));
        assert_eq!(pat, p("a.b.c"));
    }

    #[test]
    fn the_byte_table_is_the_segment_charset() {
        for b in 0..=u8::MAX {
            assert_eq!(CLASS[usize::from(b)] == SEG, is_segment_byte(b), "{b:#x}");
            assert_eq!(CLASS[usize::from(b)] == DOT, b == b'.', "{b:#x}");
        }
    }

    proptest::proptest! {
        /// The table-driven topic check accepts exactly what the rule-by-rule validation
        /// accepts without wildcards.
        #[test]
        fn the_topic_check_agrees_with_the_rules(
            s in "[a-c0-9_.*\\-é ]{0,40}|([a-z*]{1,3}\\.){0,9}[a-z*]{1,3}|[a-z.]{250,260}",
        ) {
            proptest::prop_assert_eq!(is_topic(s.as_bytes()), validate(&s, false).is_ok(), "{:?}", s);
        }

        /// The one-pass scan accepts exactly what the rule-by-rule validation accepts, and
        /// learns the same shape.
        #[test]
        fn the_fast_scan_agrees_with_the_rules(
            s in "[a-c0-9_.*\\-é ]{0,40}|([a-z*]{1,3}\\.){0,9}[a-z*]{1,3}",
            wildcards: bool,
        ) {
            let fast = scan(&s, wildcards);
            let slow = validate(&s, wildcards);
            proptest::prop_assert_eq!(fast.is_some(), slow.is_ok(), "{:?}", s);
            if let (Some(shape), Ok(count)) = (fast, slow) {
                let stars = s.split('.').filter(|seg| *seg == "*").count();
                let trailing = s == "*" || s.ends_with(".*");
                let old = TopicPattern::from_validated(Arc::from(s.as_str()), count, stars, trailing);
                let new = TopicPattern::from_shape(Arc::from(s.as_str()), &shape);
                proptest::prop_assert_eq!(
                    (old.len, old.stars, old.trailing, old.ends),
                    (new.len, new.stars, new.trailing, new.ends)
                );
            }
        }
    }
}
