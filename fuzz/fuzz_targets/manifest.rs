//! Fuzz target: `Capsule.toml` parsing: generated manifests against the documented rules, damaged and raw text.
//! The generator and the oracle live in `capsule_fuzz::manifest`, shared with the property tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capsule_fuzz::run(data, capsule_fuzz::manifest::check) {
        panic!("{e}");
    }
});
