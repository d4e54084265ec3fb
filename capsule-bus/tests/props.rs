//! Property tests: the matcher against a naive reference model, the index against a linear
//! scan, pattern coverage against brute-force enumeration, and loss accounting under random
//! publish/drain interleavings.

use std::collections::{BTreeSet, HashMap};

use capsule_bus::{
    Attribution, Bus, BusConfig, JsonPayload, Outgoing, PatternIndex, PrincipalId, Scope, Topic,
    TopicPattern,
};
use proptest::prelude::*;
use uuid::Uuid;

/// Reference semantics, written from the grammar rather than from the implementation.
fn reference_match(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern, topic) {
        ([], []) => true,
        ([], _) => false,
        (["*"], rest) => !rest.is_empty(),
        ([p, prest @ ..], [t, trest @ ..]) => {
            (*p == "*" || p == t) && reference_match(prest, trest)
        }
        (_, []) => false,
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        "[A-Za-z0-9_-]{1,4}",
    ]
}

fn topic_segments(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(segment(), 1..=max)
}

fn pattern_segments(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![3 => segment(), 1 => Just("*".to_string())],
        1..=max,
    )
}

fn parse_topic(segs: &[String]) -> Topic {
    Topic::parse(&segs.join(".")).unwrap_or_else(|e| panic!("{segs:?}: {e}"))
}

fn parse_pattern(segs: &[String]) -> TopicPattern {
    TopicPattern::parse(&segs.join(".")).unwrap_or_else(|e| panic!("{segs:?}: {e}"))
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every topic of 1..=`max_len` segments over `alphabet`.
fn all_topics(alphabet: &[&str], max_len: usize) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![];
    let mut frontier: Vec<Vec<String>> = vec![vec![]];
    for _ in 0..max_len {
        let mut next = vec![];
        for t in &frontier {
            for a in alphabet {
                let mut n = t.clone();
                n.push((*a).to_string());
                next.push(n);
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn matcher_agrees_with_reference(p in pattern_segments(8), t in topic_segments(8)) {
        let pattern = parse_pattern(&p);
        let topic = parse_topic(&t);
        prop_assert_eq!(pattern.matches(&topic), reference_match(&strs(&p), &strs(&t)));
    }

    #[test]
    fn exact_patterns_match_only_equal_topics(t in topic_segments(8), u in topic_segments(8)) {
        let pattern = parse_pattern(&t);
        prop_assert_eq!(pattern.matches(&parse_topic(&u)), t == u);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn index_returns_what_a_linear_scan_returns(
        patterns in prop::collection::vec(pattern_segments(5), 0..60),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        topics in prop::collection::vec(topic_segments(6), 1..20),
    ) {
        let parsed: Vec<TopicPattern> = patterns.iter().map(|p| parse_pattern(p)).collect();
        let mut index = PatternIndex::new();
        let mut live: HashMap<u64, TopicPattern> = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            index.insert(p, i as u64, i as u64);
            live.insert(i as u64, p.clone());
        }
        if !parsed.is_empty() {
            for r in &removals {
                let i = r.index(parsed.len()) as u64;
                let removed = index.remove(&parsed[i as usize], i);
                prop_assert_eq!(removed.is_some(), live.remove(&i).is_some());
            }
        }
        prop_assert_eq!(index.len(), live.len());
        for t in &topics {
            let topic = parse_topic(t);
            let mut found = BTreeSet::new();
            index.for_each_match(&topic, |id| { found.insert(*id); });
            let expected: BTreeSet<u64> = live
                .iter()
                .filter(|(_, p)| p.matches(&topic))
                .map(|(id, _)| *id)
                .collect();
            prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn covers_is_sound_on_generated_topics(
        outer in pattern_segments(6),
        inner in pattern_segments(6),
        fill in prop::collection::vec(segment(), 8),
        extra in 0usize..3,
    ) {
        let (o, i) = (parse_pattern(&outer), parse_pattern(&inner));
        // A topic the inner pattern matches: fill its wildcards, extend a trailing one.
        let mut t: Vec<String> = inner
            .iter()
            .zip(&fill)
            .map(|(s, f)| if s == "*" { f.clone() } else { s.clone() })
            .collect();
        if i.has_trailing_wildcard() {
            t.extend(fill.iter().take(extra).cloned());
            t.truncate(8);
        }
        let topic = parse_topic(&t);
        prop_assert!(i.matches(&topic));
        if o.covers(&i) {
            prop_assert!(o.matches(&topic), "{} covers {} but misses {}", o, i, topic);
        }
    }

    #[test]
    fn covers_is_exact_on_a_small_alphabet(
        outer in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 1..=3),
        inner in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 1..=3),
    ) {
        let o = TopicPattern::parse(&outer.join(".")).unwrap_or_else(|e| panic!("{e}"));
        let i = TopicPattern::parse(&inner.join(".")).unwrap_or_else(|e| panic!("{e}"));
        // "z" stands for every segment neither pattern names; length 4 is one past the
        // longest pattern, enough to witness trailing wildcards.
        let brute = all_topics(&["a", "b", "z"], 4).iter().all(|t| {
            let topic = parse_topic(t);
            !i.matches(&topic) || o.matches(&topic)
        });
        prop_assert_eq!(o.covers(&i), brute, "outer {} inner {}", o, i);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Publish { who: usize, size: usize },
    Drain { budget: usize, max: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..4, 2usize..60).prop_map(|(who, size)| Op::Publish { who, size }),
        1 => (0usize..200, 1usize..10).prop_map(|(budget, max)| Op::Drain { budget, max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn accounting_holds_under_random_interleavings(
        ops in prop::collection::vec(op(), 1..400),
        fanout in 1usize..4,
    ) {
        let config = BusConfig {
            route_max_bytes: 300,
            queue_max_messages: 5,
            max_fanout: fanout,
            drr_quantum: 16,
        };
        let bus = Bus::with_config(config).unwrap_or_else(|e| panic!("{e}"));
        let mut rxs: Vec<_> = (0..3)
            .map(|_| bus.subscribe(TopicPattern::parse("t.*").unwrap_or_else(|e| panic!("{e}")), Scope::All))
            .collect();
        let who: Vec<Attribution> = ["p0", "p1", "p2"]
            .iter()
            .map(|p| Attribution::Verified(PrincipalId::parse(p).unwrap_or_else(|e| panic!("{e}"))))
            .chain([Attribution::System])
            .collect();
        let topic = Topic::parse("t.x").unwrap_or_else(|e| panic!("{e}"));
        let mut delivered = vec![0u64; rxs.len()];
        let mut dropped = vec![0u64; rxs.len()];
        let mut last_seq: Vec<HashMap<Option<PrincipalId>, u64>> = vec![HashMap::new(); rxs.len()];
        for op in &ops {
            match op {
                Op::Publish { who: w, size } => {
                    let payload = format!("\"{}\"", "x".repeat(size - 2));
                    bus.publish(Outgoing {
                        topic: topic.clone(),
                        payload: JsonPayload::parse(payload).unwrap_or_else(|e| panic!("{e}")),
                        source: Uuid::nil(),
                        attribution: who[*w].clone(),
                        hops: 0,
                    });
                }
                Op::Drain { budget, max } => {
                    for (i, rx) in rxs.iter_mut().enumerate() {
                        let d = rx.try_drain_limited(*budget, *max);
                        delivered[i] += d.messages.len() as u64;
                        dropped[i] += d.dropped;
                        prop_assert_eq!(d.lagged, rx.stats().queued);
                        for m in &d.messages {
                            let key = m.principal().cloned();
                            let prev = last_seq[i].insert(key, m.seq()).unwrap_or(0);
                            prop_assert!(m.seq() > prev, "per-publisher order broken");
                        }
                    }
                }
            }
            for rx in &rxs {
                let s = rx.stats();
                prop_assert_eq!(s.admitted, s.delivered + s.dropped + s.queued);
                prop_assert!(s.queued_bytes <= 300);
            }
        }
        for (i, rx) in rxs.iter_mut().enumerate() {
            let d = rx.try_drain(usize::MAX);
            delivered[i] += d.messages.len() as u64;
            dropped[i] += d.dropped;
            let s = rx.stats();
            prop_assert_eq!(s.queued, 0);
            prop_assert_eq!(delivered[i], s.delivered);
            prop_assert_eq!(dropped[i], s.dropped);
            prop_assert_eq!(s.admitted, delivered[i] + dropped[i]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// One-principal drains: every batch carries one attribution, per-publisher order holds,
    /// nothing is lost, and interleaving them with ordinary drains keeps the accounting exact.
    #[test]
    fn one_principal_drains_never_mix_and_lose_nothing(
        ops in prop::collection::vec(op(), 1..300),
        claimed in prop::collection::vec(any::<bool>(), 4),
    ) {
        let config = BusConfig {
            route_max_bytes: 300,
            queue_max_messages: 5,
            max_fanout: 4,
            drr_quantum: 16,
        };
        let bus = Bus::with_config(config).unwrap_or_else(|e| panic!("{e}"));
        let mut rx = bus.subscribe(
            TopicPattern::parse("t.*").unwrap_or_else(|e| panic!("{e}")),
            Scope::All,
        );
        let who: Vec<Attribution> = ["p0", "p1", "p2"]
            .iter()
            .zip(&claimed)
            .map(|(p, c)| {
                let p = PrincipalId::parse(p).unwrap_or_else(|e| panic!("{e}"));
                if *c { Attribution::Claimed(p) } else { Attribution::Verified(p) }
            })
            .chain([Attribution::System])
            .collect();
        let topic = Topic::parse("t.x").unwrap_or_else(|e| panic!("{e}"));
        let mut last_seq: HashMap<Option<PrincipalId>, u64> = HashMap::new();
        let mut delivered = 0u64;
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Publish { who: w, size } => {
                    let payload = format!("\"{}\"", "x".repeat(size - 2));
                    bus.publish(Outgoing {
                        topic: topic.clone(),
                        payload: JsonPayload::parse(payload).unwrap_or_else(|e| panic!("{e}")),
                        source: Uuid::nil(),
                        attribution: who[*w].clone(),
                        hops: 0,
                    });
                }
                Op::Drain { budget, max } => {
                    let d = if i % 3 == 0 {
                        rx.try_drain_limited(*budget, *max)
                    } else {
                        rx.try_drain_one_principal(*budget)
                    };
                    if i % 3 != 0 && let Some(first) = d.messages.first() {
                        let a = first.attribution();
                        prop_assert!(d.messages.iter().all(|m| m.attribution() == a));
                    }
                    delivered += d.messages.len() as u64;
                    prop_assert_eq!(d.lagged, rx.stats().queued);
                    for m in &d.messages {
                        let prev = last_seq.insert(m.principal().cloned(), m.seq()).unwrap_or(0);
                        prop_assert!(m.seq() > prev, "per-publisher order broken");
                    }
                }
            }
            let s = rx.stats();
            prop_assert_eq!(s.admitted, s.delivered + s.dropped + s.queued);
        }
        // Draining to empty, one principal at a time, always terminates and takes the rest.
        for _ in 0..1000 {
            let d = rx.try_drain_one_principal(usize::MAX);
            if d.messages.is_empty() {
                break;
            }
            delivered += d.messages.len() as u64;
        }
        let s = rx.stats();
        prop_assert_eq!(s.queued, 0);
        prop_assert_eq!(delivered, s.delivered);
    }
}

/// Text shaped like a JSON string payload: quotes (or not) around bytes drawn mostly from
/// the characters that decide validity (quote, backslash, escapes, controls, non-ASCII).
fn stringish() -> impl Strategy<Value = String> {
    let inner = prop::collection::vec(
        prop_oneof![
            Just("a".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("\\n".to_string()),
            Just("\\u00e9".to_string()),
            Just("\\u12".to_string()),
            Just("\u{1}".to_string()),
            Just("\u{1f}".to_string()),
            Just(" ".to_string()),
            Just("é".to_string()),
            Just("\u{7f}".to_string()),
            "[a-z]{1,40}",
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat());
    (
        prop_oneof![Just(""), Just("\""), Just(" \"")],
        inner,
        prop_oneof![Just(""), Just("\""), Just("\" ")],
    )
        .prop_map(|(open, inner, close)| format!("{open}{inner}{close}"))
}

proptest! {
    /// A payload is accepted exactly when `serde_json` accepts it, whatever path checks it.
    #[test]
    fn payload_validity_is_exactly_serde_json(text in stringish()) {
        let serde = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        prop_assert_eq!(JsonPayload::parse(text.clone()).is_ok(), serde, "{:?}", text);
    }
}
