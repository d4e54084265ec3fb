//! `capsule-wit`: the guest ABI of capsules and the wasmtime bindings a host needs for it.
//!
//! Contract: the ABI never drifts. `wit/deps/` holds the `astrid:*@1.0.0` packages with the
//! exact package, interface, function, type and field names and signatures that existing
//! capsules are compiled against, documented for this host; `abi/` holds the undocumented
//! reference copy, and a test fails if the two differ in anything but doc comments or if
//! either stops parsing. `wit/host.wit` adds this host's own worlds (`imports`: what the host
//! serves, and so what is generated here; `capsule`: what a guest built for this host sees).
//! The runtime's capability list must serve exactly the `imports` world; its tidy test checks.
//!
//! The generated host traits are re-exported under [`astrid`]. Resources are generated as
//! marker types: hosts keep their own state in the store's `ResourceTable` and address it by
//! the resource's `rep`. Every import is trappable (a host invariant failure becomes a trap,
//! a guest mistake a WIT error code); the calls that wait (`recv`, `sleep-ns`, `pollable.block`,
//! `poll`) or block on storage, people or the network (`log`, all of `astrid:kv`,
//! `astrid:fs`, `astrid:elicit`, `astrid:http`, `astrid:net`, `astrid:io/streams`,
//! `astrid:identity`, `astrid:approval`, and all of `astrid:process`, whose calls wait for
//! children) are async.
//!
//! Every import runs in a `TRACE`-level span named `wit-bindgen import` with the WIT
//! interface (`module`) and function (`function`) as fields, plus `TRACE` events for the
//! call and its return (list arguments and results are elided), except `get-config`, whose
//! span the host opens itself so a secret value never reaches a trace. Disabled, a span costs one
//! cached callsite check; the host's own spans around handler and run-loop calls carry the
//! capsule and principal.
//!
//! # Example
//!
//! A host serves one interface by implementing its generated trait and registering it with
//! the generated `add_to_linker`; a real component that imports the interface (`doc/ask.wat`
//! in this crate, written in the component text format) then calls it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capsule_wit::astrid::approval::host::{
//!     ApprovalDecision, ApprovalRequest, ApprovalResponse, ErrorCode, Host, add_to_linker,
//! };
//! use wasmtime::component::{Component, HasSelf, Linker};
//! use wasmtime::{Engine, Store};
//!
//! /// Approves reads and nothing else, and remembers what it was asked.
//! #[derive(Default)]
//! struct Approver {
//!     asked: Vec<(String, String)>,
//! }
//!
//! impl Host for Approver {
//!     async fn request_approval(
//!         &mut self,
//!         request: ApprovalRequest,
//!     ) -> wasmtime::Result<Result<ApprovalResponse, ErrorCode>> {
//!         let decision = if request.action == "read" {
//!             ApprovalDecision::Approved
//!         } else {
//!             ApprovalDecision::Denied
//!         };
//!         self.asked.push((request.action, request.target_resource));
//!         Ok(Ok(ApprovalResponse { decision }))
//!     }
//! }
//!
//! let engine = Engine::default();
//! let component = Component::new(&engine, wat::parse_str(include_str!("../doc/ask.wat"))?)?;
//! let mut store = Store::new(&engine, Approver::default());
//!
//! // A linker without the interface refuses the guest; with it, the guest runs.
//! let empty = Linker::<Approver>::new(&engine);
//! assert!(empty.instantiate_async(&mut store, &component).await.is_err());
//!
//! let mut linker = Linker::<Approver>::new(&engine);
//! add_to_linker::<Approver, HasSelf<Approver>>(&mut linker, |host| host)?;
//! let instance = linker.instantiate_async(&mut store, &component).await?;
//! let ask = instance.get_typed_func::<(), (u8,)>(&mut store, "ask")?;
//! let (decision,) = ask.call_async(&mut store, ()).await?;
//!
//! assert_eq!(decision, 1, "the guest read `approved`, the enum's case 1");
//! assert_eq!(store.data().asked, [("read".to_string(), "notes.txt".to_string())]);
//! # Ok(()) }
//! ```

// Generated code: its items carry the WIT doc comments; aliases and helpers the generator adds
// have none, and its style is not ours to lint.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "capsule:host/imports",
        imports: {
            "astrid:ipc/host.[method]subscription.recv": async | trappable | tracing,
            "astrid:sys/host.sleep-ns": async | trappable | tracing,
            "astrid:sys/host.log": async | trappable | tracing,
            // Traced by the host instead: the generated return event would log the value, and
            // a secret's value must never reach a log.
            "astrid:sys/host.get-config": async | trappable,
            "astrid:kv/host": async | trappable | tracing,
            "astrid:fs/host": async | trappable | tracing,
            "astrid:elicit/host": async | trappable | tracing,
            "astrid:http/host": async | trappable | tracing,
            "astrid:net/host": async | trappable | tracing,
            "astrid:io/streams": async | trappable | tracing,
            "astrid:identity/host": async | trappable | tracing,
            "astrid:approval/host": async | trappable | tracing,
            "astrid:process/host": async | trappable | tracing,
            "astrid:io/poll.[method]pollable.block": async | trappable | tracing,
            "astrid:io/poll.poll": async | trappable | tracing,
            default: trappable | tracing,
        },
    });
}

pub use generated::astrid;

/// Directory of the documented WIT packages, relative to this crate's manifest.
pub const WIT_DIR: &str = "wit";
