//! Fuzz target: topic and pattern parsing, the matcher, `covers` and the pattern index against reference models.
//! The generator and the oracle live in `capsule_fuzz::topic`, shared with the property tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capsule_fuzz::run(data, capsule_fuzz::topic::check) {
        panic!("{e}");
    }
});
