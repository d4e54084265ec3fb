//! `capsule-runtime`: the wasmtime host for capsules.
//!
//! This crate will own the engine, the loader, per-Store host state and one host-function
//! module per WIT interface, and the `capsule` binary. It is the only crate that knows both
//! wasmtime and the domain crates (`capsule-bus`, `capsule-vfs`, `capsule-security`). Its
//! contract: an untrusted capsule stays inside its grants, memory and CPU budgets, and unload
//! always wins over a blocked call.

pub use capsule_bus as bus;
