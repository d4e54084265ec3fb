//! Fuzz target: guest path parsing and resolution inside a real mount full of hostile symlinks.
//! The generator and the oracle live in `capsule_fuzz::path`, shared with the property tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capsule_fuzz::run(data, capsule_fuzz::path::check) {
        panic!("{e}");
    }
});
