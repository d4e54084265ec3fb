//! A downstream crate of `capsule-runtime`: it holds nothing; its test drives the runtime
//! through the public API alone, the way an embedder would.
