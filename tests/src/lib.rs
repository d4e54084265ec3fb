//! Integration tests of the capsule runtime. The crate has no library code of its own: the
//! tests live in `tests/` and drive the public APIs of the workspace crates.
