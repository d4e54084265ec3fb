//! Fuzz target: `CapsulePolicy` gates: publish/subscribe ACLs and filesystem grants against reference models.
//! The generator and the oracle live in `capsule_fuzz::policy`, shared with the property tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = capsule_fuzz::run(data, capsule_fuzz::policy::check) {
        panic!("{e}");
    }
});
