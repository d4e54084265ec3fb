//! `astrid:process/host@1.0.0` and `@1.1.0`, served side by side: a capsule runs only the
//! programs, with only the argument lists, its operator granted (`host_process`, see
//! `capsule_security::ProcessGrant`), checked on every call; a shell runs only where the shell
//! itself is granted. Every child starts with a cleared environment plus the request's
//! variables, in the home or `/tmp` of the principal in scope (never elsewhere), in its own
//! process group and pids cgroup, under the limits of that principal's profile (the request may
//! only lower them), and belongs to that principal: another principal gets `no-such-process`
//! for it, exactly as for an id that never existed. A principal runs at most
//! `max_background_processes` children at once per capsule. Children are killed with their
//! whole tree when their handle is dropped (background), when released (persistent) and when
//! the capsule unloads (`SIGTERM`, then `SIGKILL` after [`UNLOAD_GRACE`]); unload returns only
//! once every leader is reaped. Version 1.1's file injection writes read-only (0400) files
//! only inside the child's working directory, never replacing anything.
//!
//! Limits, and what enforces each: CPU seconds (`RLIMIT_CPU`), address space (`RLIMIT_AS`),
//! open files (`RLIMIT_NOFILE`), process count (a pids cgroup where the host can create one;
//! otherwise `RLIMIT_NPROC`, which the kernel counts per user, so it is set to what the user
//! already runs plus the limit, and a root host without a pids cgroup refuses to spawn), wall
//! time and idle time (the host kills the tree), output (per stream, the overflow policy of the
//! request: `drop-oldest` discards and counts, `backpressure` stops reading; a run to
//! completion whose buffer fills under backpressure is killed and answered `too-large`). The
//! child is not confined to its working directory: it runs without capabilities when the host
//! is root, and as its principal's own user id where the operator configured a range
//! (`uids`), otherwise as the host's user, shared by every principal.

mod child;
mod keeper;
mod spec;
mod uids;
mod view;
mod wit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::PrincipalId;
use capsule_security::ProcessGrant;
use capsule_vfs::Mount;
use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker};

use crate::error::LoadError;
use crate::host::audit::field;
use crate::host::{Assembly, Capability, HostState, InstanceCx, View, view};

pub(crate) use child::Exit;
use child::Proc;
pub use child::{MAX_SCRATCH_BYTES, MAX_SCRATCH_INODES, namespaces_available};
pub(crate) use keeper::Keeper;
pub(crate) use spec::{Injection, RequestLimits, SpawnSpec};
pub use uids::UID_RECORD_FILE;
pub(crate) use uids::UidMap;
pub(crate) use view::{info, read_logs, read_since, signal, write_stdin};

/// How long an unloading capsule's children get between `SIGTERM` and `SIGKILL`.
pub const UNLOAD_GRACE: Duration = Duration::from_secs(1);
/// Most arguments of one request.
pub const MAX_ARGS: usize = 1024;
/// Most bytes of all arguments of one request.
pub const MAX_ARG_BYTES: usize = 256 * 1024;
/// Most environment variables of one request.
pub const MAX_ENV_VARS: usize = 256;
/// Most bytes of all environment variables of one request.
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Most bytes of initial stdin, and of one `write-stdin`.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;
/// Longest label.
pub const MAX_LABEL_BYTES: usize = 128;
/// Most injected files of one request (1.1).
pub const MAX_INJECTIONS: usize = 16;
/// Most bytes of all injected files of one request (1.1).
pub const MAX_INJECTION_BYTES: usize = 1024 * 1024;
/// Most bytes one `read-since` returns.
pub const MAX_READ_BYTES: u32 = 1024 * 1024;
/// Most persistent records (running or retained after exit) one principal keeps per capsule.
pub const MAX_PERSISTENT_RECORDS: usize = 64;
/// How long `stop` waits after `SIGTERM` when the guest names no grace period, and the most
/// it may name.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest grace period `stop` accepts.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(60);
/// How long an exited persistent process's record is kept when the request names no
/// retention, and the most it may name.
pub const DEFAULT_EXIT_RETENTION: Duration = Duration::from_secs(600);
/// Longest exit retention a request may name.
pub const MAX_EXIT_RETENTION: Duration = Duration::from_secs(3600);
/// Where bare program names are looked up, in order.
pub const SEARCH_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];
/// Tracing target of process audit events (every start and every refusal by policy).
pub const PROCESS_AUDIT_TARGET: &str = "capsule::audit::process";

/// Why a process call failed; guests see it as the WIT `error-code` of their version.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("not granted: {0}")]
    Denied(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("outside the sandbox: {0}")]
    Escape(String),
    #[error("limit reached: {0}")]
    Quota(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("closed")]
    Closed,
    #[error("cancelled")]
    Cancelled,
    #[error("still running")]
    WaitTimeout,
    #[error("no such process")]
    NoSuchProcess,
    #[error("too many persistent processes")]
    RegistryFull,
    #[error("the program could not be started ({0})")]
    Start(std::io::ErrorKind),
    #[error("{0}")]
    Unenforceable(String),
    #[error("principal refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

/// The `astrid:process` capability (both versions).
pub(crate) struct ProcessHost;

/// Capsule-wide part: the grants and every tracked child.
#[derive(Debug)]
pub(crate) struct ProcShared {
    capsule: String,
    grants: Vec<ProcessGrant>,
    persistent: bool,
    /// Whether the capsule is granted network (`net`, `net_connect` or `net_bind`): only then
    /// do its children share the host's network namespace.
    network: bool,
    owner_home: Option<Arc<Mount>>,
    owner_tmp: Option<Arc<Mount>>,
    table: Mutex<Table>,
    /// Where persistent children wait while the capsule is reloaded.
    keeper: Arc<Keeper>,
}

impl Drop for ProcShared {
    fn drop(&mut self) {
        // Only a capsule that never went live (a load failing after its children were handed
        // over) is dropped with children still in its table: they die with it.
        let t = self.table.get_mut();
        if !t.closed {
            for p in t.procs.values() {
                p.signal_tree(libc::SIGKILL);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    procs: HashMap<String, Arc<Proc>>,
    /// Starts in progress, per principal, so concurrent spawns cannot pass the count together.
    starting: HashMap<PrincipalId, usize>,
    closed: bool,
}

impl Table {
    fn purge(&mut self, now: Instant) {
        // Handles keep what they need of an exited background process; persistent records
        // stay for their retention.
        self.procs.retain(|_, p| match p.exited() {
            None => true,
            Some(_) => p.persistent && !p.expired(now),
        });
    }

    fn live(&self, principal: &PrincipalId) -> usize {
        self.procs
            .values()
            .filter(|p| &p.principal == principal && p.exited().is_none())
            .count()
            + self.starting.get(principal).copied().unwrap_or(0)
    }

    fn records(&self, principal: &PrincipalId) -> usize {
        self.procs
            .values()
            .filter(|p| &p.principal == principal && p.persistent)
            .count()
    }
}

/// The view both versions are implemented on.
pub(crate) type ProcView<'a> = View<'a, Arc<ProcShared>>;

impl HasData for ProcessHost {
    type Data<'a> = ProcView<'a>;
}

impl Capability for ProcessHost {
    const INTERFACES: &'static [&'static str] =
        &["astrid:process/host@1.0.0", "astrid:process/host@1.1.0"];
    type Shared = Arc<ProcShared>;
    type Ctx = Arc<ProcShared>;

    fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        capsule_wit::astrid::process1_0_0::host::add_to_linker::<HostState, ProcessHost>(
            linker,
            view::<ProcessHost>,
        )?;
        capsule_wit::astrid::process1_1_0::host::add_to_linker::<HostState, ProcessHost>(
            linker,
            view::<ProcessHost>,
        )
    }

    fn assemble(cx: &Assembly<'_>) -> Result<Self::Shared, LoadError> {
        let caps = cx.policy.capabilities();
        // The manifest parser already refused malformed entries.
        let grants: Vec<ProcessGrant> = caps
            .host_process
            .iter()
            .filter_map(|g| ProcessGrant::parse(g).ok())
            .collect();
        let keeper = Arc::clone(&cx.services.processes);
        let name = &cx.identity.name;
        let network =
            !caps.net.is_empty() || !caps.net_connect.is_empty() || !caps.net_bind.is_empty();
        // A reload hands over the previous instance's persistent children, each only if
        // this instance may still run it as a persistent process, with the network it has.
        let adopted = if caps.allow_persistent {
            keeper.adopt(name, |p| {
                (network || !p.host_network) && grants.iter().any(|g| g.allows(&p.command, &p.args))
            })
        } else {
            Vec::new()
        };
        let table = Table {
            procs: adopted.into_iter().map(|p| (p.id.clone(), p)).collect(),
            ..Table::default()
        };
        Ok(Arc::new(ProcShared {
            capsule: name.clone(),
            grants,
            persistent: caps.allow_persistent,
            network,
            owner_home: cx.owner_files.home.clone(),
            owner_tmp: cx.owner_files.tmp.clone(),
            table: Mutex::new(table),
            keeper,
        }))
    }

    fn instance(shared: &Self::Shared, _cx: &InstanceCx<'_>) -> Self::Ctx {
        Arc::clone(shared)
    }

    fn unloaded(shared: &Self::Shared) {
        let procs: Vec<Arc<Proc>> = {
            let mut t = shared.table.lock();
            t.closed = true;
            t.procs.drain().map(|(_, p)| p).collect()
        };
        let doomed = shared.keeper.park(&shared.capsule, procs);
        shutdown(&doomed);
    }
}

/// Terminates `procs` and their trees: `SIGTERM`, up to [`UNLOAD_GRACE`] for them to go,
/// `SIGKILL` for the rest, and waits (bounded) until every leader is reaped.
fn shutdown(procs: &[Arc<Proc>]) {
    if procs.is_empty() {
        return;
    }
    for p in procs {
        p.terminate();
    }
    let grace = Instant::now() + UNLOAD_GRACE;
    for p in procs {
        p.wait_reaped_until(grace);
    }
    for p in procs {
        p.signal_tree(libc::SIGKILL);
    }
    let bound = Instant::now() + Duration::from_secs(30);
    for p in procs {
        if !p.wait_reaped_until(bound) {
            tracing::error!(pid = p.pid, "a killed process was not reaped in time");
        }
    }
}

/// How a child is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    OneShot,
    Background,
    Persistent,
}

/// What `read-logs` answers.
pub(crate) struct Logs {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) running: bool,
    pub(crate) exit: Option<Exit>,
}

/// What `status` answers.
pub(crate) struct Info {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) command: String,
    pub(crate) pid: Option<u32>,
    pub(crate) running: bool,
    pub(crate) exit: Option<Exit>,
    pub(crate) age_ms: u64,
    pub(crate) idle_ms: u64,
    pub(crate) buffered: u64,
    pub(crate) dropped: u64,
    pub(crate) stdin_open: bool,
    pub(crate) cpu_ms: Option<u64>,
    pub(crate) peak_bytes: Option<u64>,
}

/// What `kill` answers.
pub(crate) struct Killed {
    pub(crate) killed: bool,
    pub(crate) exit: Option<Exit>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Signals a guest may send.
#[derive(Clone, Copy)]
pub(crate) enum Sig {
    Term,
    Hup,
    Usr1,
    Usr2,
    Int,
    Stop,
    Cont,
}

impl Sig {
    fn number(self) -> i32 {
        match self {
            Self::Term => libc::SIGTERM,
            Self::Hup => libc::SIGHUP,
            Self::Usr1 => libc::SIGUSR1,
            Self::Usr2 => libc::SIGUSR2,
            Self::Int => libc::SIGINT,
            Self::Stop => libc::SIGSTOP,
            Self::Cont => libc::SIGCONT,
        }
    }
}

/// A handle as kept in the resource table. A background child dies with its handle.
#[derive(Debug)]
pub(crate) struct HandleEntry {
    proc: Arc<Proc>,
    /// A background child's own handle (not an `attach`ed one).
    owned: bool,
}

impl Drop for HandleEntry {
    fn drop(&mut self) {
        // The record stays in the table until the child is reaped, so an unload still
        // waits for it.
        if self.owned {
            self.proc.signal_tree(libc::SIGKILL);
        }
    }
}

/// What a process pollable waits for.
#[derive(Clone, Debug)]
pub(crate) struct Readiness {
    proc: Arc<Proc>,
    logs: bool,
}

impl Readiness {
    /// Whether the pollable is ready now.
    pub(crate) fn is_ready(&self) -> bool {
        if self.logs {
            self.proc.logs_ready()
        } else {
            self.proc.exited().is_some()
        }
    }

    /// Resolves once the pollable is ready.
    pub(crate) async fn ready(self) {
        let mut rx = self.proc.activity();
        while !self.is_ready() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
