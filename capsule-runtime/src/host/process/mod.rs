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
//! child is not confined to its working directory: it runs as the host's user, without
//! capabilities when that user is root.

mod child;
mod wit;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::PrincipalId;
use capsule_security::{PrincipalProfile, ProcessGrant};
use capsule_vfs::{GuestPath, Mount, Scheme, Tree, VfsError};
use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker, Resource};

use crate::error::LoadError;
use crate::host::audit::field;
use crate::host::poll::{PollSource, PollableEntry};
use crate::host::{Assembly, Capability, HostState, InstanceCx, View, view};

pub(crate) use child::Exit;
use child::{Chunk, Injected, Launch, Limits, Meta, Overflow, Proc, Which};

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
    owner_home: Option<Arc<Mount>>,
    owner_tmp: Option<Arc<Mount>>,
    table: Mutex<Table>,
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
        let grants = caps
            .host_process
            .iter()
            .filter_map(|g| ProcessGrant::parse(g).ok())
            .collect();
        Ok(Arc::new(ProcShared {
            capsule: cx.identity.name.clone(),
            grants,
            persistent: caps.allow_persistent,
            owner_home: cx.owner_files.home.clone(),
            owner_tmp: cx.owner_files.tmp.clone(),
            table: Mutex::new(Table::default()),
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
        shutdown(&procs);
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

/// A request in version-neutral form.
pub(crate) struct SpawnSpec {
    pub(crate) cmd: String,
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<String>,
    pub(crate) limits: RequestLimits,
    pub(crate) label: Option<String>,
    pub(crate) keep_stdin_open: bool,
    pub(crate) overflow: Option<Overflow>,
    pub(crate) ring_bytes: Option<u32>,
    pub(crate) lifetime_ms: Option<u64>,
    pub(crate) idle_ms: Option<u64>,
    pub(crate) retention_ms: Option<u64>,
    pub(crate) injections: Vec<Injection>,
}

/// Limits a request asks for; each may only lower the profile's.
pub(crate) struct RequestLimits {
    pub(crate) memory: Option<u64>,
    pub(crate) cpu: Option<u64>,
    pub(crate) pids: Option<u32>,
    pub(crate) files: Option<u32>,
}

/// A file to create for the child (1.1).
pub(crate) enum Injection {
    /// Under a name the host picks; its path goes in this variable.
    Env(String, Vec<u8>),
    /// Under this name in the working directory.
    Fixed(String, Vec<u8>),
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

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn valid_env_key(k: &str) -> bool {
    !k.is_empty() && !k.contains('=') && !k.contains('\0')
}

/// Variables that make the dynamic loader, the C library or a shell run or load code the
/// request names, so a granted program would run something nobody granted. A list cannot
/// know every program's variables: a granted program must be one that stays within its
/// grant under any other environment.
const CODE_VARS: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
];

/// Whether `k` is a variable the host refuses to pass (see [`CODE_VARS`]).
fn code_var(k: &str) -> bool {
    k.starts_with("LD_") || k.starts_with("BASH_FUNC_") || CODE_VARS.contains(&k)
}

fn refuse_code_var(k: &str) -> Result<(), ProcessError> {
    if code_var(k) {
        return Err(ProcessError::Denied(format!(
            "the variable `{}` could make the program run code that is not granted",
            field(k)
        )));
    }
    Ok(())
}

/// Checks the request's sizes and names before anything is touched.
fn validate(spec: &SpawnSpec) -> Result<(), ProcessError> {
    if spec.args.len() > MAX_ARGS
        || spec.args.iter().map(String::len).sum::<usize>() > MAX_ARG_BYTES
    {
        return Err(ProcessError::TooLarge(format!(
            "at most {MAX_ARGS} arguments of {MAX_ARG_BYTES} bytes in all"
        )));
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return Err(ProcessError::Invalid("an argument contains NUL".into()));
    }
    if spec.env.len() > MAX_ENV_VARS
        || spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            > MAX_ENV_BYTES
    {
        return Err(ProcessError::TooLarge(format!(
            "at most {MAX_ENV_VARS} variables of {MAX_ENV_BYTES} bytes in all"
        )));
    }
    if spec
        .env
        .iter()
        .any(|(k, v)| !valid_env_key(k) || v.contains('\0'))
    {
        return Err(ProcessError::Invalid(
            "a variable name is empty or holds `=` or NUL, or a value holds NUL".into(),
        ));
    }
    if spec
        .stdin
        .as_ref()
        .is_some_and(|s| s.len() > MAX_STDIN_BYTES)
    {
        return Err(ProcessError::TooLarge(format!(
            "initial stdin is at most {MAX_STDIN_BYTES} bytes"
        )));
    }
    if spec
        .label
        .as_ref()
        .is_some_and(|l| l.len() > MAX_LABEL_BYTES)
    {
        return Err(ProcessError::TooLarge(format!(
            "a label is at most {MAX_LABEL_BYTES} bytes"
        )));
    }
    let injected: usize = spec
        .injections
        .iter()
        .map(|i| match i {
            Injection::Env(_, c) | Injection::Fixed(_, c) => c.len(),
        })
        .sum();
    if spec.injections.len() > MAX_INJECTIONS || injected > MAX_INJECTION_BYTES {
        return Err(ProcessError::TooLarge(format!(
            "at most {MAX_INJECTIONS} injected files of {MAX_INJECTION_BYTES} bytes in all"
        )));
    }
    for (k, _) in &spec.env {
        refuse_code_var(k)?;
    }
    for i in &spec.injections {
        if let Injection::Env(var, _) = i {
            refuse_code_var(var)?;
        }
        match i {
            Injection::Env(var, _) if !valid_env_key(var) => {
                return Err(ProcessError::Invalid(
                    "an injection's variable name is empty or holds `=` or NUL".into(),
                ));
            }
            Injection::Fixed(name, _) => injection_name(name)?,
            Injection::Env(..) => {}
        }
    }
    Ok(())
}

/// An injected file's fixed path must be one plain name inside the working directory.
fn injection_name(name: &str) -> Result<(), ProcessError> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None)
            if !name.contains('/') && !name.contains('\0') && name.len() <= 255 =>
        {
            Ok(())
        }
        _ if name.is_empty() || name.contains('\0') => Err(ProcessError::Invalid(
            "an injected file needs a name".into(),
        )),
        _ => Err(ProcessError::Escape(
            "an injected file goes directly inside the working directory".into(),
        )),
    }
}

/// The request's limits bounded by the profile's; a zero is a malformed request.
fn limits(spec: &SpawnSpec, profile: &PrincipalProfile) -> Result<Limits, ProcessError> {
    let q = &profile.quotas;
    let pick = |asked: Option<u64>, most: u64, what: &str| -> Result<u64, ProcessError> {
        match asked {
            Some(0) => Err(ProcessError::Invalid(format!("a {what} limit of 0"))),
            Some(n) => Ok(n.min(most)),
            None => Ok(most),
        }
    };
    let wall_most = q.max_process_wall_secs.saturating_mul(1000);
    let output = pick(
        spec.ring_bytes.map(u64::from),
        q.max_process_output_bytes,
        "output",
    )?;
    Ok(Limits {
        cpu_secs: pick(spec.limits.cpu, q.max_process_cpu_secs, "CPU")?,
        memory_bytes: pick(spec.limits.memory, q.max_process_memory_bytes, "memory")?,
        open_files: pick(
            spec.limits.files.map(u64::from),
            u64::from(q.max_process_open_files),
            "open-file",
        )?,
        pids: pick(
            spec.limits.pids.map(u64::from),
            u64::from(q.max_process_pids),
            "process-count",
        )?,
        wall: Duration::from_millis(pick(spec.lifetime_ms, wall_most, "lifetime")?),
        idle: spec
            .idle_ms
            .map(|ms| pick(Some(ms), wall_most, "idle"))
            .transpose()?
            .map(Duration::from_millis),
        output: usize::try_from(output).unwrap_or(usize::MAX),
    })
}

/// The program to execute: an absolute path as granted, or a bare name found in
/// [`SEARCH_PATH`].
fn resolve_program(cmd: &str) -> Result<PathBuf, ProcessError> {
    if cmd.starts_with('/') {
        return Ok(PathBuf::from(cmd));
    }
    SEARCH_PATH
        .iter()
        .map(|d| Path::new(d).join(cmd))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
        .ok_or(ProcessError::Start(std::io::ErrorKind::NotFound))
}

fn vfs_error(e: &VfsError) -> ProcessError {
    match e {
        VfsError::BoundaryEscape(_) => ProcessError::Escape("the path leaves its mount".into()),
        _ => ProcessError::Invalid("the working directory is not an existing directory".into()),
    }
}

/// Opens the working directory inside the principal's home or tmp, one component at a time
/// without following links, and returns it with its host path.
fn open_cwd(
    cwd: Option<&str>,
    home: Option<&Arc<Mount>>,
    tmp: Option<&Arc<Mount>>,
) -> Result<(cap_std::fs::Dir, PathBuf), ProcessError> {
    let guest = GuestPath::parse(cwd.unwrap_or("home://")).map_err(|e| vfs_error(&e))?;
    let mount = match guest.scheme {
        Scheme::Home => home,
        Scheme::Tmp => tmp,
        Scheme::Workspace | Scheme::Absolute => {
            return Err(ProcessError::Denied(
                "a process runs in the principal's home (`home://…`) or `/tmp/…`".into(),
            ));
        }
    }
    .ok_or_else(|| ProcessError::Invalid("the principal's directories are unavailable".into()))?;
    let host_only = |rel: &Path| guest.scheme == Scheme::Home && capsule_vfs::is_host_only(rel);
    if host_only(&guest.rel) {
        return Err(ProcessError::Escape(
            "the host's own parts of a home are out of reach".into(),
        ));
    }
    let canonical = mount.canonicalize(&guest.rel).map_err(|e| vfs_error(&e))?;
    if host_only(&canonical) {
        return Err(ProcessError::Escape(
            "the host's own parts of a home are out of reach".into(),
        ));
    }
    let mut dir = cap_std::fs::Dir::open_ambient_dir(mount.root(), cap_std::ambient_authority())
        .map_err(|_| ProcessError::Invalid("the principal's directories are unavailable".into()))?;
    for part in canonical.components() {
        let Component::Normal(name) = part else {
            return Err(ProcessError::Escape("the path leaves its mount".into()));
        };
        dir = cap_fs_ext::DirExt::open_dir_nofollow(&dir, name).map_err(|_| {
            ProcessError::Invalid("the working directory is not an existing directory".into())
        })?;
    }
    Ok((dir, mount.root().join(canonical)))
}

/// The names of injected files, and the variables pointing at those placed by the host.
type Written = (Vec<String>, Vec<(String, String)>);

/// Writes the injected files (0400, never over an existing entry) and returns their names and
/// the variables that point at them.
fn inject(
    dir: &cap_std::fs::Dir,
    host_dir: &Path,
    injections: Vec<Injection>,
) -> Result<Written, ProcessError> {
    use cap_std::fs::OpenOptionsExt;
    let mut names = Vec::new();
    let mut vars = Vec::new();
    let write = |name: &str, content: &[u8], names: &mut Vec<String>| {
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.write(true).create_new(true).mode(0o400);
        let mut f = dir.open_with(name, &opts).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ProcessError::Invalid("an injected file's name is taken".into())
            } else {
                ProcessError::Invalid("an injected file could not be written".into())
            }
        })?;
        names.push(name.to_string());
        std::io::Write::write_all(&mut f, content)
            .map_err(|_| ProcessError::Invalid("an injected file could not be written".into()))
    };
    let result = injections.into_iter().try_for_each(|i| match i {
        Injection::Fixed(name, content) => write(&name, &content, &mut names),
        Injection::Env(var, content) => {
            let name = format!(".astrid-inject-{}", uuid::Uuid::new_v4().simple());
            write(&name, &content, &mut names)?;
            vars.push((var, host_dir.join(&name).to_string_lossy().into_owned()));
            Ok(())
        }
    });
    match result {
        Ok(()) => Ok((names, vars)),
        Err(e) => {
            for n in &names {
                let _ = dir.remove_file(n);
            }
            Err(e)
        }
    }
}

fn audit_refused(capsule: &str, principal: &PrincipalId, cmd: &str, e: &ProcessError) {
    tracing::info!(
        target: PROCESS_AUDIT_TARGET,
        capsule,
        principal = principal.as_str(),
        command = &*field(cmd),
        reason = &*field(&e.to_string()),
        "process refused"
    );
}

impl ProcView<'_> {
    fn principal(&self) -> PrincipalId {
        self.core.scoped.principal().clone()
    }

    /// Starts a child for the principal in scope.
    async fn launch(&mut self, spec: SpawnSpec, kind: Kind) -> Result<Arc<Proc>, ProcessError> {
        let principal = self.principal();
        let capsule = self.ctx.capsule.clone();
        let cmd = spec.cmd.clone();
        let refused = |e: ProcessError| {
            audit_refused(&capsule, &principal, &cmd, &e);
            e
        };
        let profile = match self.core.scoped.profile() {
            Ok(p) => Arc::clone(p),
            Err(reason) => return Err(ProcessError::Refused(reason.to_string())),
        };
        if !self
            .ctx
            .grants
            .iter()
            .any(|g| g.allows(&spec.cmd, &spec.args))
        {
            return Err(refused(ProcessError::Denied(
                "this program with these arguments is not granted".into(),
            )));
        }
        if kind == Kind::Persistent && !self.ctx.persistent {
            return Err(refused(ProcessError::Denied(
                "persistent processes are not granted (`allow_persistent`)".into(),
            )));
        }
        validate(&spec).map_err(|e| match e {
            ProcessError::Denied(_) => refused(e),
            other => other,
        })?;
        let limits = limits(&spec, &profile)?;
        let overflow = spec.overflow.unwrap_or(Overflow::DropOldest);
        let retention = spec
            .retention_ms
            .map_or(DEFAULT_EXIT_RETENTION, Duration::from_millis)
            .min(MAX_EXIT_RETENTION);
        {
            let mut t = self.ctx.table.lock();
            if t.closed {
                return Err(ProcessError::Cancelled);
            }
            t.purge(Instant::now());
            let most =
                usize::try_from(profile.quotas.max_background_processes).unwrap_or(usize::MAX);
            if t.live(&principal) >= most {
                return Err(refused(ProcessError::Quota(format!(
                    "at most {most} processes at once"
                ))));
            }
            if kind == Kind::Persistent && t.records(&principal) >= MAX_PERSISTENT_RECORDS {
                return Err(ProcessError::RegistryFull);
            }
            *t.starting.entry(principal.clone()).or_default() += 1;
        }
        let home = self.core.scoped.home(self.ctx.owner_home.as_ref()).cloned();
        let tmp = self.core.scoped.tmp(self.ctx.owner_tmp.as_ref()).cloned();
        let meta = Meta {
            id: uuid::Uuid::new_v4().simple().to_string(),
            principal: principal.clone(),
            label: spec.label.clone().unwrap_or_default(),
            command: spec.cmd.clone(),
            persistent: kind == Kind::Persistent,
            retention,
        };
        let work = move || -> Result<Arc<Proc>, ProcessError> {
            let program = resolve_program(&spec.cmd)?;
            let (dir, host_dir) = open_cwd(spec.cwd.as_deref(), home.as_ref(), tmp.as_ref())?;
            let (names, vars) = inject(&dir, &host_dir, spec.injections)?;
            let cwd = std::os::fd::OwnedFd::from(
                dir.try_clone()
                    .map_err(|_| ProcessError::Quota("no descriptor left".into()))?
                    .into_std_file(),
            );
            let mut env = spec.env;
            env.extend(vars);
            child::start(
                Launch {
                    program,
                    args: spec.args,
                    env,
                    cwd,
                    stdin: spec.stdin,
                    keep_stdin_open: spec.keep_stdin_open,
                    limits,
                    overflow,
                    oneshot: kind == Kind::OneShot,
                    injected: (!names.is_empty()).then_some(Injected { dir, names }),
                },
                meta,
            )
        };
        let started = self.core.limits.shared.blocking(work).await;
        let mut t = self.ctx.table.lock();
        if let Some(n) = t.starting.get_mut(&principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.starting.remove(&principal);
            }
        }
        let proc = match started {
            None => return Err(ProcessError::Cancelled),
            Some(Err(panic)) => {
                tracing::error!(error = %panic, "process start failed");
                return Err(ProcessError::Unsupported(
                    "the host failed to start the process",
                ));
            }
            Some(Ok(r)) => r.inspect_err(|e| {
                if matches!(e, ProcessError::Escape(_) | ProcessError::Denied(_)) {
                    audit_refused(&capsule, &principal, &cmd, e);
                }
            })?,
        };
        if t.closed {
            drop(t);
            shutdown(std::slice::from_ref(&proc));
            return Err(ProcessError::Cancelled);
        }
        t.procs.insert(proc.id.clone(), Arc::clone(&proc));
        drop(t);
        tracing::info!(
            target: PROCESS_AUDIT_TARGET,
            capsule = %capsule,
            principal = principal.as_str(),
            command = &*field(&proc.command),
            pid = proc.pid,
            "process started"
        );
        Ok(proc)
    }

    /// Waits for `proc` to exit, up to `timeout`, racing the capsule's unload.
    async fn wait_exit(
        &mut self,
        proc: &Arc<Proc>,
        timeout: Option<Duration>,
    ) -> Result<Exit, ProcessError> {
        if let Some(e) = proc.exited() {
            return Ok(e);
        }
        let cancel = self.core.limits.shared.cancel.clone();
        let io = Arc::clone(&self.core.limits.shared.io);
        let started = Instant::now();
        let mut rx = proc.exit_rx();
        let waited = async {
            let Ok(_permit) = io.acquire().await else {
                return Err(ProcessError::Cancelled);
            };
            let exited = async { rx.wait_for(Option::is_some).await.ok().and_then(|e| *e) };
            match timeout {
                None => exited.await.ok_or(ProcessError::Cancelled),
                Some(t) => match tokio::time::timeout(t, exited).await {
                    Ok(e) => e.ok_or(ProcessError::Cancelled),
                    Err(_) => Err(ProcessError::WaitTimeout),
                },
            }
        };
        let r = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(ProcessError::Cancelled),
            r = waited => r,
        };
        self.core.limits.cpu.add_wait(started.elapsed());
        r
    }

    /// Runs a request to completion.
    pub(crate) async fn run_to_end(
        &mut self,
        spec: SpawnSpec,
    ) -> Result<(String, String, Exit), ProcessError> {
        let proc = self.launch(spec, Kind::OneShot).await?;
        let cancel = self.core.limits.shared.cancel.clone();
        let started = Instant::now();
        let mut activity = proc.activity();
        let mut overflowed = false;
        let outcome = loop {
            if let Some(e) = proc.exited() {
                break Ok(e);
            }
            if proc.overflowed() && !overflowed {
                overflowed = true;
                proc.signal_tree(libc::SIGKILL);
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Err(ProcessError::Cancelled),
                changed = activity.changed() => if changed.is_err() {
                    break Err(ProcessError::Cancelled);
                },
            }
        };
        self.core.limits.cpu.add_wait(started.elapsed());
        self.ctx.table.lock().procs.remove(&proc.id);
        let exit = match outcome {
            Ok(e) => e,
            Err(e) => {
                proc.signal_tree(libc::SIGKILL);
                return Err(e);
            }
        };
        if overflowed {
            return Err(ProcessError::TooLarge(
                "the output filled its buffer under backpressure; the process was killed".into(),
            ));
        }
        let (out, err) = proc.take_output();
        Ok((lossy(out), lossy(err), exit))
    }

    /// Starts a background child and returns its handle's rep.
    pub(crate) async fn start_background(
        &mut self,
        spec: SpawnSpec,
    ) -> Result<Result<u32, ProcessError>, wasmtime::Error> {
        let proc = match self.launch(spec, Kind::Background).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let entry = HandleEntry { proc, owned: true };
        Ok(Ok(self.core.table.push(entry)?.rep()))
    }

    /// Starts a persistent child and returns its id.
    pub(crate) async fn start_persistent(
        &mut self,
        spec: SpawnSpec,
    ) -> Result<String, ProcessError> {
        Ok(self.launch(spec, Kind::Persistent).await?.id.clone())
    }

    /// The persistent process `id` of the principal in scope; anything else is
    /// `no-such-process`, whoever it belongs to.
    pub(crate) fn find_id(&self, id: &str) -> Result<Arc<Proc>, ProcessError> {
        let principal = self.core.scoped.principal();
        let mut t = self.ctx.table.lock();
        t.purge(Instant::now());
        t.procs
            .get(id)
            .filter(|p| p.persistent && &p.principal == principal)
            .cloned()
            .ok_or(ProcessError::NoSuchProcess)
    }

    /// A handle for the persistent process `id`.
    pub(crate) fn attach_id(&mut self, id: &str) -> wasmtime::Result<Result<u32, ProcessError>> {
        let proc = match self.find_id(id) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self
            .core
            .table
            .push(HandleEntry { proc, owned: false })?
            .rep()))
    }

    /// The child behind handle `rep`, if the principal in scope owns it.
    pub(crate) fn handle_proc(
        &self,
        rep: u32,
    ) -> wasmtime::Result<Result<Arc<Proc>, ProcessError>> {
        let entry = self
            .core
            .table
            .get(&Resource::<HandleEntry>::new_borrow(rep))?;
        if &entry.proc.principal != self.core.scoped.principal() {
            return Ok(Err(ProcessError::NoSuchProcess));
        }
        Ok(Ok(Arc::clone(&entry.proc)))
    }

    /// The child behind handle `rep`, for a pollable: readiness tells nothing but timing.
    pub(crate) fn pollable_proc(&self, rep: u32) -> wasmtime::Result<Arc<Proc>> {
        let entry = self
            .core
            .table
            .get(&Resource::<HandleEntry>::new_borrow(rep))?;
        Ok(Arc::clone(&entry.proc))
    }

    /// Drops handle `rep` (a background child dies with it).
    pub(crate) fn drop_handle(&mut self, rep: u32) -> wasmtime::Result<()> {
        self.core
            .table
            .delete(Resource::<HandleEntry>::new_own(rep))?;
        Ok(())
    }

    /// A pollable over `proc`'s exit (`logs == false`) or output.
    pub(crate) fn new_pollable(&mut self, proc: Arc<Proc>, logs: bool) -> wasmtime::Result<u32> {
        Ok(self
            .core
            .table
            .push(PollableEntry::new(PollSource::Process(Readiness {
                proc,
                logs,
            })))?
            .rep())
    }

    /// Persistent processes of the principal in scope, optionally with one label.
    pub(crate) fn list_procs(&self, label: Option<&str>) -> Vec<Info> {
        let principal = self.core.scoped.principal();
        let mut t = self.ctx.table.lock();
        t.purge(Instant::now());
        let mut out: Vec<Info> = t
            .procs
            .values()
            .filter(|p| p.persistent && &p.principal == principal)
            .filter(|p| label.is_none_or(|l| p.label == l))
            .map(|p| info(p))
            .collect();
        out.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then(a.id.cmp(&b.id)));
        out
    }

    /// Forgets the persistent process `id`, killing its tree if it still runs.
    pub(crate) fn release_id(&self, id: &str) -> Result<(), ProcessError> {
        let proc = self.find_id(id)?;
        self.ctx.table.lock().procs.remove(&proc.id);
        proc.signal_tree(libc::SIGKILL);
        Ok(())
    }

    /// `SIGTERM`, up to `grace` for it to exit, then `SIGKILL`.
    pub(crate) async fn stop_proc(
        &mut self,
        proc: &Arc<Proc>,
        grace: Option<u64>,
    ) -> Result<Exit, ProcessError> {
        if let Some(e) = proc.exited() {
            return Ok(e);
        }
        let grace = grace
            .map_or(DEFAULT_STOP_GRACE, Duration::from_millis)
            .min(MAX_STOP_GRACE);
        proc.terminate();
        match self.wait_exit(proc, Some(grace)).await {
            Err(ProcessError::WaitTimeout) => {
                proc.signal_tree(libc::SIGKILL);
                self.wait_exit(proc, None).await
            }
            other => other,
        }
    }

    /// Kills `proc`'s tree and answers with its unread output.
    pub(crate) async fn kill_proc(&mut self, proc: &Arc<Proc>) -> Result<Killed, ProcessError> {
        let running = proc.exited().is_none();
        proc.signal_tree(libc::SIGKILL);
        let exit = self.wait_exit(proc, None).await?;
        let (out, err) = proc.take_output();
        Ok(Killed {
            killed: running,
            exit: Some(exit),
            stdout: lossy(out),
            stderr: lossy(err),
        })
    }
}

/// What `read-logs` answers for `proc`.
pub(crate) fn read_logs(proc: &Proc) -> Logs {
    let (out, err) = proc.take_output();
    let exit = proc.exited();
    Logs {
        stdout: lossy(out),
        stderr: lossy(err),
        running: exit.is_none(),
        exit,
    }
}

/// What `read-since` answers.
pub(crate) fn read_since(
    proc: &Proc,
    stderr: bool,
    token: Option<&str>,
    max: u32,
) -> Result<(Chunk, String), ProcessError> {
    let from = token
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| ProcessError::Invalid("not a cursor of this host".into()))
        })
        .transpose()?;
    let which = if stderr { Which::Stderr } else { Which::Stdout };
    let max = usize::try_from(max.min(MAX_READ_BYTES)).unwrap_or(0);
    let chunk = proc.read_since(which, from, max)?;
    let next = chunk.next.to_string();
    Ok((chunk, next))
}

/// Sends `sig` to `proc`'s tree.
pub(crate) fn signal(proc: &Proc, sig: Sig) {
    proc.signal_tree(sig.number());
}

/// Writes to `proc`'s stdin.
pub(crate) fn write_stdin(proc: &Proc, data: &[u8]) -> Result<u32, ProcessError> {
    if data.len() > MAX_STDIN_BYTES {
        return Err(ProcessError::TooLarge(format!(
            "one write is at most {MAX_STDIN_BYTES} bytes"
        )));
    }
    proc.write_stdin(data)
}

/// The status of `proc`.
pub(crate) fn info(proc: &Proc) -> Info {
    let s = proc.snapshot();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Info {
        id: proc.id.clone(),
        label: proc.label.clone(),
        command: proc.command.clone(),
        pid: s.running.then_some(proc.pid),
        running: s.running,
        exit: s.exit,
        age_ms: ms(s.age),
        idle_ms: ms(s.idle),
        buffered: s.buffered,
        dropped: s.dropped,
        stdin_open: s.stdin_open,
        cpu_ms: s.cpu_ms,
        peak_bytes: s.peak_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_and_shell_code_variables_are_refused_and_plain_ones_pass() {
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "BASH_FUNC_true%%",
            "BASH_ENV",
            "ENV",
            "PS4",
            "GCONV_PATH",
        ] {
            assert!(
                matches!(refuse_code_var(bad), Err(ProcessError::Denied(_))),
                "{bad}"
            );
        }
        for good in ["FOO", "LANG", "PATH", "HOME", "OLD_PRELOAD"] {
            assert!(refuse_code_var(good).is_ok(), "{good}");
        }
    }
}
