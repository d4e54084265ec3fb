//! Fuzz target: random operation sequences on the overlay workspace against an in-memory model.
//! The generator and the oracle live in `capsule_fuzz::overlay`, shared with the property tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capsule_fuzz::run(data, capsule_fuzz::overlay::check) {
        panic!("{e}");
    }
});
