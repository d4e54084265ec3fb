//! Fuzz target: principal profile parsing: generated profiles against the documented rules, damaged and raw text.
//! The generator and the oracle live in `capsule_fuzz::profile`, shared with the property tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capsule_fuzz::run(data, capsule_fuzz::profile::check) {
        panic!("{e}");
    }
});
