//! The integration-test binary: real components, built from `tests/capsules/` by the build
//! script, driven through the public `capsule-runtime` API.

mod approval;
mod approval_attacks;
mod common;
mod density;
mod dispatch;
mod dual_version;
mod embed;
mod grants;
mod graph;
mod hostile;
mod identity;
mod identity_attacks;
mod ipc;
mod kv_group;
mod legacy;
mod lifecycle;
mod limits;
mod loading;
mod loopback;
mod net;
mod net_attack;
mod net_attack2;
mod net_kit;
mod perf_attacks;
mod process;
mod process_attacks;
mod process_reload;
mod process_uids;
mod reload_attacks;
mod scope_cache;
mod scope_cache_attacks;
mod sdk;
mod spares;
mod storage;
mod sys;
