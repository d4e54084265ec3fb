//! Every fuzz target's generator and oracle, run as a bounded property test: proptest's random
//! bytes are decoded by the same `arbitrary` generators the fuzz targets use, so `cargo test`
//! exercises each target on every run (and shrinks a failure to a short byte string).

use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn verdict(r: Result<(), String>) -> Result<(), TestCaseError> {
    r.map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn topic(b in bytes(1024)) {
        verdict(capsule_fuzz::run(&b, capsule_fuzz::topic::check))?;
    }

    #[test]
    fn manifest(b in bytes(1024)) {
        verdict(capsule_fuzz::run(&b, capsule_fuzz::manifest::check))?;
    }

    #[test]
    fn profile(b in bytes(512)) {
        verdict(capsule_fuzz::run(&b, capsule_fuzz::profile::check))?;
    }

    #[test]
    fn policy(b in bytes(1024)) {
        verdict(capsule_fuzz::run(&b, capsule_fuzz::policy::check))?;
    }
}

proptest! {
    // These two build real directory trees per case.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn path(b in bytes(256)) {
        verdict(capsule_fuzz::run(&b, capsule_fuzz::path::check))?;
    }

    #[test]
    fn overlay(b in bytes(1024)) {
        verdict(capsule_fuzz::run(&b, capsule_fuzz::overlay::check))?;
    }
}

/// Deterministic pseudo-random byte strings (xorshift), so the balance check is repeatable.
fn samples(n: usize, max_len: u64) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = next() % max_len;
            (0..len).map(|_| next().to_le_bytes()[0]).collect()
        })
        .collect()
}

/// The generators reach both sides of every oracle: accepted and refused manifests and
/// profiles, valid and invalid paths, overlay operations that succeed and that fail. A
/// generator drifting to one side would leave the other untested while every check passes.
#[test]
fn generators_reach_both_sides() {
    use arbitrary::{Arbitrary, Unstructured};
    let share = |hits: usize, total: usize| hits as f64 / total.max(1) as f64;

    let (mut ok, mut total) = (0, 0);
    for b in samples(1000, 1024) {
        if let Ok(m) = capsule_fuzz::manifest::Model::arbitrary_take_rest(Unstructured::new(&b)) {
            total += 1;
            ok += usize::from(m.expected().is_ok());
        }
    }
    let s = share(ok, total);
    assert!(
        (0.2..0.8).contains(&s),
        "manifests accepted: {ok} of {total}"
    );

    let (mut ok, mut total) = (0, 0);
    for b in samples(1000, 256) {
        if let Ok(m) = capsule_fuzz::profile::Model::arbitrary_take_rest(Unstructured::new(&b)) {
            total += 1;
            ok += usize::from(m.expected().is_some());
        }
    }
    let s = share(ok, total);
    assert!(
        (0.2..0.8).contains(&s),
        "profiles accepted: {ok} of {total}"
    );

    let (mut ok, mut total) = (0, 0);
    for b in samples(1000, 256) {
        if let Ok(i) = capsule_fuzz::path::Input::arbitrary_take_rest(Unstructured::new(&b)) {
            total += 1;
            ok += usize::from(capsule_vfs::GuestPath::parse(&i.path).is_ok());
        }
    }
    let s = share(ok, total);
    assert!(
        (0.2..0.95).contains(&s),
        "guest paths accepted: {ok} of {total}"
    );

    let (mut ok, mut total) = (0, 0);
    for b in samples(300, 1024) {
        if let Ok(i) = capsule_fuzz::overlay::Input::arbitrary_take_rest(Unstructured::new(&b)) {
            let (a, t) = i.accepted_ops();
            ok += a;
            total += t;
        }
    }
    let s = share(ok, total);
    assert!(
        (0.2..0.9).contains(&s),
        "overlay operations accepted: {ok} of {total}"
    );
}
