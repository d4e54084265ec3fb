//! `capsule-fuzz`: input generators and oracles for the domain crates, shared by the cargo-fuzz
//! targets under `fuzz/` and the bounded property tests under `tests/`.
//!
//! Contract: each module defines an input type built with [`arbitrary`] from raw bytes, so a
//! fuzzer's byte string and a property test's random bytes drive the same generator, and a
//! `check` function that runs the code under test on that input and compares what it does with
//! a reference model written from the documented grammar or semantics, never from the
//! implementation. `check` answers `Err(description)` when an invariant breaks; a panic inside
//! the code under test propagates and is a finding as well.
//!
//! - [`topic`]: topic and pattern parsing, the matcher, `covers` and the pattern index.
//! - [`manifest`]: `Capsule.toml` parsing, from generated manifests and from raw text.
//! - [`profile`]: principal profile parsing.
//! - [`policy`]: `CapsulePolicy` gates (publish/subscribe ACLs, filesystem grants).
//! - [`path`]: guest path parsing and resolution inside a real mount with hostile symlinks.
//! - [`overlay`]: random operation sequences on the overlay workspace against an in-memory
//!   model.

use std::fmt::Debug;

use arbitrary::{Arbitrary, Unstructured};

pub mod manifest;
pub mod overlay;
pub mod path;
pub mod policy;
pub mod profile;
pub mod topic;

/// Every target, by the name `cargo xtask fuzz` and the fuzz crate use.
pub const TARGETS: &[&str] = &["manifest", "overlay", "path", "policy", "profile", "topic"];

/// Decodes an input from raw bytes, as a fuzz target does; `None` when the bytes do not form
/// one.
pub fn decode<'a, T: Arbitrary<'a>>(bytes: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

/// Decodes an input from `bytes` and checks it; a description of the input is added to a
/// failure. Bytes that do not decode pass.
pub fn run<'a, T: Arbitrary<'a> + Debug>(
    bytes: &'a [u8],
    check: fn(&T) -> Result<(), String>,
) -> Result<(), String> {
    match decode::<T>(bytes) {
        Some(input) => check(&input).map_err(|e| format!("{e}\ninput: {input:#?}")),
        None => Ok(()),
    }
}

/// A fresh scratch directory, in memory (`/dev/shm`) where the machine has it: the file
/// system targets create and remove a tree per input, and a disk file system makes that the
/// bottleneck.
pub(crate) fn scratch_dir() -> Result<tempfile::TempDir, String> {
    let mut b = tempfile::Builder::new();
    b.prefix("capsule-fuzz-");
    let shm = std::path::Path::new("/dev/shm");
    let made = if shm.is_dir() {
        b.tempdir_in(shm)
    } else {
        b.tempdir()
    };
    made.or_else(|_| b.tempdir())
        .map_err(|e| format!("scratch directory: {e}"))
}

/// Picks one of `items` (the first when the bytes ran out).
pub(crate) fn pick<'s, T: ?Sized>(
    u: &mut Unstructured<'_>,
    items: &[&'s T],
) -> arbitrary::Result<&'s T> {
    Ok(*u.choose(items)?)
}

/// A short string of arbitrary characters, biased towards ASCII.
pub(crate) fn short_string(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<String> {
    let len = u.int_in_range(0..=max)?;
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        let c = if u.ratio(7, 8)? {
            char::from(u.int_in_range(0x20u8..=0x7e)?)
        } else {
            char::arbitrary(u)?
        };
        s.push(c);
    }
    Ok(s)
}

/// `s` as a TOML basic string (quoted, with escapes), usable as a value or a key.
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text with one random edit: a byte range deleted, random text inserted, or both.
pub(crate) fn mutate_text(u: &mut Unstructured<'_>, text: &str) -> arbitrary::Result<String> {
    let mut bytes = text.as_bytes().to_vec();
    let at = u.int_in_range(0..=bytes.len())?;
    let del = u.int_in_range(0..=(bytes.len() - at).min(16))?;
    bytes.drain(at..at + del);
    if u.ratio(1, 2)? {
        let ins = short_string(u, 8)?;
        bytes.splice(at..at, ins.bytes());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
