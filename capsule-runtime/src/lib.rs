//! `capsule-runtime`: the wasmtime host for capsules.
//!
//! Contract: an untrusted capsule stays inside its grants, its memory and CPU budgets and its
//! principal's scope; every guest mistake is a typed WIT error that changes nothing else; a
//! broken host invariant is a trap; and unloading a capsule always wins over a blocked call.
//!
//! # Example
//!
//! Load a capsule and talk to it as a principal. The capsule here is `doc/echo/` in this
//! crate: a manifest whose `[subscribe]` entry binds `echo.in` to its handler, and a real component
//! written in the component text format (`echo.wat`) whose handler publishes the payload it
//! gets back on `echo.out`. [`Runtime::request`] subscribes to the reply, publishes as
//! alice, and returns the first reply that belongs to her.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use capsule_runtime::{Runtime, RuntimeConfig, Sender};
//!
//! // A capsule is a directory: `Capsule.toml` and the component it names.
//! let tmp = tempfile::tempdir()?;
//! let echo = tmp.path().join("echo");
//! std::fs::create_dir(&echo)?;
//! std::fs::write(echo.join("Capsule.toml"), include_str!("../doc/echo/Capsule.toml"))?;
//! std::fs::write(echo.join("echo.wasm"), wat::parse_str(include_str!("../doc/echo/echo.wat"))?)?;
//!
//! let runtime = Runtime::new(RuntimeConfig::new(tmp.path().join("state")))?;
//! let capsule = runtime.load(&echo).await?;
//!
//! let alice = Sender::principal("alice")?;
//! let reply = runtime
//!     .request("echo.in", r#"{"text":"hi"}"#, alice, "echo.out", Duration::from_secs(60))
//!     .await?;
//! assert_eq!(reply.payload.as_str(), r#"{"text":"hi"}"#);
//! assert_eq!(reply.principal().map(|p| p.as_str()), Some("alice"));
//!
//! capsule.unload().await;
//! # Ok(()) }
//! ```
//!
//! This is the only crate that knows both wasmtime and the domain crates: the bus
//! ([`capsule_bus`]), policy and profiles ([`capsule_security`]) and confined files
//! ([`capsule_vfs`]).

mod approval;
mod bounded;
mod cache;
mod calls;
mod capsule;
mod config;
mod consent;
mod dispatch;
mod engine;
mod error;
mod homes;
mod host;
mod inspect;
mod instance;
mod lifecycle;
mod limits;
mod logsink;
mod outcome;
mod outcomes;
mod profile_cache;
mod registry;
mod runtime;
mod scope;
mod spare_maker;
mod spares;
mod state;
mod stats;
mod worker;

pub use approval::{Approval, ApprovalRequest, Approver, Refusal, RefusalReason};
pub use bounded::{PRINCIPAL_CACHE_CAPACITY, PRINCIPAL_IDLE_TTL};
pub use cache::CacheOutcome;
pub use capsule::{Capsule, LoadReport};
pub use capsule_security::GraphError;
pub use config::{
    ConfigError, EpochMode, MAX_POOL_RESERVATION, PoolingConfig, RuntimeConfig, default_owner,
};
pub use consent::{ActionDecision, ActionRequest, ApprovalHandler, DEFAULT_APPROVAL_TIMEOUT};
pub use dispatch::DispatchStats;
pub use error::{
    ComponentProblem, FileKind, HOST_ABI_VERSION, HostFailure, LifecycleFailure, LoadError,
    MAX_COMPONENT_BYTES,
};
pub use host::approval::APPROVAL_TARGET as AUDIT_APPROVAL_TARGET;
pub use host::audit::{
    DISPATCH_TARGET as AUDIT_DISPATCH_TARGET, FS_TARGET as AUDIT_FS_TARGET,
    IPC_TARGET as AUDIT_IPC_TARGET, MAX_AUDIT_FIELD_BYTES, SECRET_TARGET as AUDIT_SECRET_TARGET,
};
pub use host::fs::{MAX_OPEN_HANDLES, MAX_READ_BYTES, MAX_READDIR_ENTRIES};
pub use host::http::client::{CONNECT_TIMEOUT, MAX_REDIRECTS, MAX_REQUEST_HEADERS, MAX_URL_BYTES};
pub use host::http::{MAX_CHUNK_BYTES, NET_AUDIT_TARGET, STREAM_BUFFER_BYTES};
pub use host::identity::IDENTITY_TARGET as AUDIT_IDENTITY_TARGET;
pub use host::ipc::{
    CLAIM_WINDOW, MAX_DRAIN_BYTES, MAX_HOP_DEPTH, MAX_LOGGED_REFUSALS, MAX_PAYLOAD_BYTES,
    MAX_RECV_TIMEOUT_MS, MAX_SUBSCRIPTIONS,
};
pub use host::poll::MAX_POLL_LIST;
pub use host::streams::MAX_STREAM_CHUNK;
pub use host::sys::{MAX_CONFIG_KEY, MAX_RANDOM_BYTES, MAX_SLEEP, RESERVED_CONFIG_PREFIX};
pub use host::uplink::{InboundMessage, MAX_INBOUND_CONTENT, MAX_UPLINKS, Uplink, UplinkProfile};
pub use inspect::{AliasedStub, Exports};
pub use lifecycle::{
    ElicitAnswer, ElicitKind, ElicitPrompt, ElicitRefusal, Elicitor, LifecyclePhase,
};
pub use limits::{Interrupt, MAX_STORE_RESOURCES, MemoryStats, RUN_LOOP_BUSY_SHARE_PERCENT};
pub use logsink::MAX_LOG_FILE_BYTES;
pub use outcome::{HookResponse, InvokeError, RunExit};
pub use outcomes::{DISPATCH_OUTCOME_BUFFER, DispatchOutcome, DispatchOutcomes, LinkResult};
pub use runtime::{
    EVENT_TOPIC_PREFIX, Inspection, PublishError, Published, RequestError, Runtime, Sender,
    StatePaths,
};
pub use scope::{PrincipalRefusal, audit_rule};
pub use stats::{CallStats, CapsuleStats};

// What the public signatures use, so an embedder needs no direct dependency on the domain
// crates for everyday work.
pub use capsule_bus::{Attribution, Message, PrincipalId, Topic, TopicPattern};
pub use capsule_security::{Manifest, PrincipalProfile, ProfileStore, Quotas};

/// The documented bounds of `astrid:process` (see the host module's contract).
pub mod process {
    pub use crate::host::process::{
        DEFAULT_EXIT_RETENTION, DEFAULT_STOP_GRACE, MAX_ARG_BYTES, MAX_ARGS, MAX_ENV_BYTES,
        MAX_ENV_VARS, MAX_EXIT_RETENTION, MAX_INJECTION_BYTES, MAX_INJECTIONS, MAX_LABEL_BYTES,
        MAX_PERSISTENT_RECORDS, MAX_READ_BYTES, MAX_SCRATCH_BYTES, MAX_SCRATCH_INODES,
        MAX_STDIN_BYTES, MAX_STOP_GRACE, PROCESS_AUDIT_TARGET, SEARCH_PATH, UID_RECORD_FILE,
        UNLOAD_GRACE, namespaces_available,
    };
}

pub use capsule_bus as bus;
pub use capsule_security as security;
pub use capsule_store as store;
pub use capsule_vfs as vfs;
