//! The calls of both versions on the principal in scope: starting a child (grant, quota
//! and persistence checks, the start on the blocking pool, a start racing an unload killed),
//! waiting and stopping it against the capsule's cancellation, and finding a persistent child
//! by id only for the principal that started it (anything else is `no-such-process`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_bus::PrincipalId;
use wasmtime::component::Resource;

use super::child::{self, Chunk, Exit, Injected, Launch, Meta, Overflow, Proc, Which};
use super::spec::{inject, limits, open_cwd, resolve_program, validate};
use super::uids::{Ids, UidMap, hand_over, hand_over_made, secure_home};
use super::*;
use crate::host::audit::field;
use crate::host::poll::{PollSource, PollableEntry};

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
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

/// Makes the principal's home root the host's, shared with the principal's group (see
/// [`secure_home`]), gives its tmp root and the working directory (unless that is the home
/// root) to the principal's own user id (mode 0700), so its children work there and no other
/// principal's child can open them; the host, as root, still reaches them. Once per host
/// process and principal, what its capsules made there before (as the host's) is handed over
/// too ([`hand_over_made`]); what they make from then on is the principal's as it is made.
fn own_dirs(
    uids: &UidMap,
    principal: &PrincipalId,
    ids: Ids,
    home: Option<&Arc<capsule_vfs::Mount>>,
    tmp: Option<&Arc<capsule_vfs::Mount>>,
    cwd: &cap_std::fs::Dir,
) -> Result<(), ProcessError> {
    use cap_std::fs::MetadataExt;
    let unavailable =
        |_| ProcessError::Invalid("the principal's directories are unavailable".into());
    let open = |m: &capsule_vfs::Mount| {
        cap_std::fs::Dir::open_ambient_dir(m.root(), cap_std::ambient_authority())
            .map_err(unavailable)
    };
    let id = |d: &cap_std::fs::Dir| {
        d.dir_metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(unavailable)
    };
    let mut home_id = None;
    let mut home_dir = None;
    let mut tmp_dir = None;
    if let Some(home) = home {
        let root = open(home)?;
        secure_home(&root, ids)?;
        home.give_to(ids.uid, ids.gid);
        home_id = Some(id(&root)?);
        home_dir = Some(root);
    }
    if let Some(tmp) = tmp {
        let root = open(tmp)?;
        hand_over(&root, ids)?;
        tmp.give_to(ids.uid, ids.gid);
        tmp_dir = Some(root);
    }
    if uids.needs_hand_over(principal) {
        // The mounts give what they create to the principal from here on (above), so the
        // walk sees every entry the host made as its own before.
        let fd =
            |d: Option<cap_std::fs::Dir>| d.map(|d| std::os::fd::OwnedFd::from(d.into_std_file()));
        hand_over_made(fd(home_dir).as_ref(), fd(tmp_dir).as_ref(), ids);
        uids.handed_over(principal);
    }
    if home_id == Some(id(cwd)?) {
        return Ok(());
    }
    hand_over(cwd, ids)
}

impl ProcView<'_> {
    pub(crate) fn principal(&self) -> PrincipalId {
        self.core.scoped.principal().clone()
    }

    /// Starts a child for the principal in scope. The outer `Err` is the call's deadline
    /// passing while the start queued for the blocking pool: a trap.
    ///
    /// Only the queueing races the deadline. Nothing is counted or started before the place
    /// is taken, so a trap there leaves nothing behind; once taken, the start runs to its
    /// end, because a child half-made by a cut start would be nobody's to stop.
    async fn launch(
        &mut self,
        spec: SpawnSpec,
        kind: Kind,
    ) -> wasmtime::Result<Result<Arc<Proc>, ProcessError>> {
        let place = self.core.limits.blocking_place().await?;
        Ok(match place {
            Some(permit) => self.launch_with(permit, spec, kind).await,
            None => Err(ProcessError::Cancelled),
        })
    }

    /// [`Self::launch`] once the start has its place on the blocking pool.
    async fn launch_with(
        &mut self,
        permit: tokio::sync::OwnedSemaphorePermit,
        spec: SpawnSpec,
        kind: Kind,
    ) -> Result<Arc<Proc>, ProcessError> {
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
            args: spec.args.clone(),
            persistent: kind == Kind::Persistent,
            retention,
        };
        let uids = Arc::clone(&self.ctx.keeper.uids);
        let host_network = self.ctx.network;
        let work = move || -> Result<Arc<Proc>, ProcessError> {
            let program = resolve_program(&spec.cmd)?;
            let ids = uids.assign(&meta.principal)?;
            let (dir, host_dir) = open_cwd(spec.cwd.as_deref(), home.as_ref(), tmp.as_ref())?;
            if let Some(ids) = ids {
                own_dirs(
                    &uids,
                    &meta.principal,
                    ids,
                    home.as_ref(),
                    tmp.as_ref(),
                    &dir,
                )?;
            }
            let (names, vars) = inject(&dir, &host_dir, spec.injections, ids)?;
            let cwd = std::os::fd::OwnedFd::from(
                dir.try_clone()
                    .map_err(|_| ProcessError::Quota("no descriptor left".into()))?
                    .into_std_file(),
            );
            let mut env = spec.env;
            env.extend(vars);
            let home = home.as_ref().map(|h| h.root().to_path_buf());
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
                    ids,
                    home,
                    host_network,
                },
                meta,
            )
        };
        let started = self.core.limits.shared.blocking_with(permit, work).await;
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
                if matches!(
                    e,
                    ProcessError::Escape(_)
                        | ProcessError::Denied(_)
                        | ProcessError::Quota(_)
                        | ProcessError::Unenforceable(_)
                ) {
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

    /// Waits for `proc` to exit, up to `timeout`, racing the capsule's unload (`cancelled`)
    /// and the call's deadline (the outer `Err`: a trap).
    pub(crate) async fn wait_exit(
        &mut self,
        proc: &Arc<Proc>,
        timeout: Option<Duration>,
    ) -> wasmtime::Result<Result<Exit, ProcessError>> {
        if let Some(e) = proc.exited() {
            return Ok(Ok(e));
        }
        let io = Arc::clone(&self.core.limits.shared.io);
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
        Ok(self
            .core
            .limits
            .race(waited)
            .await?
            .unwrap_or(Err(ProcessError::Cancelled)))
    }

    /// Runs a request to completion.
    pub(crate) async fn run_to_end(
        &mut self,
        spec: SpawnSpec,
    ) -> wasmtime::Result<Result<(String, String, Exit), ProcessError>> {
        let proc = match self.launch(spec, Kind::OneShot).await? {
            Ok(proc) => proc,
            Err(e) => return Ok(Err(e)),
        };
        let mut activity = proc.activity();
        let mut overflowed = false;
        let outcome = self
            .core
            .limits
            .race(async {
                loop {
                    if let Some(e) = proc.exited() {
                        break Ok(e);
                    }
                    if proc.overflowed() && !overflowed {
                        overflowed = true;
                        proc.signal_tree(libc::SIGKILL);
                    }
                    if activity.changed().await.is_err() {
                        break Err(ProcessError::Cancelled);
                    }
                }
            })
            .await;
        self.ctx.table.lock().procs.remove(&proc.id);
        let exit = match outcome {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => {
                proc.signal_tree(libc::SIGKILL);
                return Ok(Err(e));
            }
            Ok(None) => {
                proc.signal_tree(libc::SIGKILL);
                return Ok(Err(ProcessError::Cancelled));
            }
            Err(overrun) => {
                proc.signal_tree(libc::SIGKILL);
                return Err(overrun.into());
            }
        };
        if overflowed {
            return Ok(Err(ProcessError::TooLarge(
                "the output filled its buffer under backpressure; the process was killed".into(),
            )));
        }
        let (out, err) = proc.take_output();
        Ok(Ok((lossy(out), lossy(err), exit)))
    }

    /// Starts a background child and returns its handle's rep.
    pub(crate) async fn start_background(
        &mut self,
        spec: SpawnSpec,
    ) -> Result<Result<u32, ProcessError>, wasmtime::Error> {
        let proc = match self.launch(spec, Kind::Background).await? {
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
    ) -> wasmtime::Result<Result<String, ProcessError>> {
        Ok(self
            .launch(spec, Kind::Persistent)
            .await?
            .map(|p| p.id.clone()))
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
    ) -> wasmtime::Result<Result<Exit, ProcessError>> {
        if let Some(e) = proc.exited() {
            return Ok(Ok(e));
        }
        let grace = grace
            .map_or(DEFAULT_STOP_GRACE, Duration::from_millis)
            .min(MAX_STOP_GRACE);
        proc.terminate();
        match self.wait_exit(proc, Some(grace)).await? {
            Err(ProcessError::WaitTimeout) => {
                proc.signal_tree(libc::SIGKILL);
                self.wait_exit(proc, None).await
            }
            other => Ok(other),
        }
    }

    /// Kills `proc`'s tree and answers with its unread output.
    pub(crate) async fn kill_proc(
        &mut self,
        proc: &Arc<Proc>,
    ) -> wasmtime::Result<Result<Killed, ProcessError>> {
        let running = proc.exited().is_none();
        proc.signal_tree(libc::SIGKILL);
        let exit = match self.wait_exit(proc, None).await? {
            Ok(exit) => exit,
            Err(e) => return Ok(Err(e)),
        };
        let (out, err) = proc.take_output();
        Ok(Ok(Killed {
            killed: running,
            exit: Some(exit),
            stdout: lossy(out),
            stderr: lossy(err),
        }))
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
