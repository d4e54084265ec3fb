//! One host process and everything the host keeps of it. A child is started with a cleared
//! environment, in a new process group, in its own pids cgroup where the host can create one,
//! with its resource limits set between fork and exec (only async-signal-safe calls there), and
//! without capabilities and in namespaces of its own (`ns`: private scratch places, IPC, and
//! network unless its capsule is granted network) when the host is root, and as its
//! principal's own user id where one is assigned (`super::uids`). A root host that cannot
//! create those namespaces refuses to spawn rather than let children share them. Three host
//! threads serve it: one reader per
//! output stream (bounded buffers, drop-oldest or backpressure) and a watcher that enforces the
//! wall-clock and idle limits through a pidfd, kills what is left of the group when the leader
//! exits, and only then reaps the leader, so a process-group id is never signalled after its
//! number could have been reused. `ring` keeps the output, `sandbox` confines the child
//! before exec, `threads` serves it while it runs.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capsule_bus::PrincipalId;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::ProcessError;

mod ns;
mod ring;
mod sandbox;
mod threads;

pub use ns::{MAX_SCRATCH_BYTES, MAX_SCRATCH_INODES, available as namespaces_available};

pub(crate) use ring::Chunk;
use ring::Ring;
use sandbox::count_limit_enforceable;
use sandbox::{
    ChildSetup, cgroup_members, in_child, new_cgroup, pids_root_c, rlim, user_process_count,
};
use threads::{feed_stdin, pidfd_open, read_stream, set_nonblocking, spawn_thread, watch_child};

/// Resource limits of one child, already bounded by the principal's profile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) cpu_secs: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) open_files: u64,
    pub(crate) pids: u64,
    pub(crate) wall: Duration,
    pub(crate) idle: Option<Duration>,
    /// Bytes kept per output stream.
    pub(crate) output: usize,
}

/// What happens when an output buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// The oldest unread bytes are discarded and counted.
    DropOldest,
    /// The host stops reading, so the child blocks on its writes.
    Backpressure,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Exit {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

/// Everything needed to start one child.
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    /// The working directory, opened inside the principal's home or tmp.
    pub(crate) cwd: OwnedFd,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) keep_stdin_open: bool,
    pub(crate) limits: Limits,
    pub(crate) overflow: Overflow,
    /// A run to completion: nobody reads the output before the exit, so a full buffer under
    /// backpressure is an overflow, not a wait.
    pub(crate) oneshot: bool,
    /// Files injected into the working directory, removed once the process has exited.
    pub(crate) injected: Option<Injected>,
    /// The principal's own user and group id; `None` runs the child as the host's user.
    pub(crate) ids: Option<super::uids::Ids>,
    /// The principal's home on the host, kept reachable at its own path in the child's
    /// scratch space when it lies under one.
    pub(crate) home: Option<PathBuf>,
    /// Whether the child keeps the host's network (its capsule is granted network); without,
    /// a root host's child gets a network namespace of its own.
    pub(crate) host_network: bool,
}

/// Injected files and the directory they were written in.
pub(crate) struct Injected {
    pub(crate) dir: cap_std::fs::Dir,
    pub(crate) names: Vec<String>,
}

/// Who a child belongs to and how the guest names it.
pub(crate) struct Meta {
    pub(crate) id: String,
    pub(crate) principal: PrincipalId,
    pub(crate) label: String,
    pub(crate) command: String,
    /// The arguments it was started with, checked again against the grants on a reload.
    pub(crate) args: Vec<String>,
    pub(crate) persistent: bool,
    pub(crate) retention: Duration,
}

#[derive(Debug)]
struct Stream {
    ring: Mutex<Ring>,
    space: Condvar,
}

/// The child's stdin as the host holds it.
#[derive(Debug)]
enum StdinState {
    /// The initial bytes are still being written by a helper thread.
    Writing {
        close_after: bool,
    },
    /// Open for `write-stdin` (non-blocking).
    Open(std::fs::File),
    Closed,
}

/// The leader's life as the watcher records it.
#[derive(Debug, Default)]
struct Life {
    /// Set once the leader is reaped; its group id must not be signalled after that.
    reaped: bool,
    exit: Option<Exit>,
    cpu_ms: Option<u64>,
    peak_bytes: Option<u64>,
    exited_at: Option<Instant>,
}

/// One tracked child.
pub(crate) struct Proc {
    pub(crate) id: String,
    pub(crate) principal: PrincipalId,
    pub(crate) label: String,
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    pub(crate) persistent: bool,
    pub(crate) pid: u32,
    retention: Duration,
    started: Instant,
    oneshot_backpressure: bool,
    streams: [Stream; 2],
    stdin: Mutex<StdinState>,
    life: Mutex<Life>,
    life_cv: Condvar,
    exit_tx: watch::Sender<Option<Exit>>,
    activity: watch::Sender<u64>,
    last_activity: Mutex<Instant>,
    overflowed: AtomicBool,
    cgroup: Option<PathBuf>,
    /// Whether the child was started with the host's network because its capsule was
    /// granted network (a reload hands it only to a capsule granted network too).
    pub(crate) host_network: bool,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Stdout = 0,
    Stderr = 1,
}

/// A snapshot of a child.
pub(crate) struct Snapshot {
    pub(crate) running: bool,
    pub(crate) exit: Option<Exit>,
    pub(crate) age: Duration,
    pub(crate) idle: Duration,
    pub(crate) buffered: u64,
    pub(crate) dropped: u64,
    pub(crate) stdin_open: bool,
    pub(crate) cpu_ms: Option<u64>,
    pub(crate) peak_bytes: Option<u64>,
}

impl Proc {
    /// Whether the leader has been reaped.
    pub(crate) fn exited(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// Whether a one-shot run under backpressure filled its buffer.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Whether an exited persistent record has outlived its retention.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.life
            .lock()
            .exited_at
            .is_some_and(|at| now.duration_since(at) >= self.retention)
    }

    /// A receiver that changes on every output and on exit.
    pub(crate) fn activity(&self) -> watch::Receiver<u64> {
        self.activity.subscribe()
    }

    /// A receiver of the exit.
    pub(crate) fn exit_rx(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    /// Whether unread output is waiting (or nothing more will come).
    pub(crate) fn logs_ready(&self) -> bool {
        self.exited().is_some() || self.streams.iter().any(|s| s.ring.lock().unread() > 0)
    }

    fn bump(&self) {
        *self.last_activity.lock() = Instant::now();
        self.activity.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sends `sig` to the whole process group and every process of its cgroup, unless the
    /// leader is already reaped.
    pub(crate) fn signal_tree(&self, sig: i32) {
        let life = self.life.lock();
        if life.reaped {
            return;
        }
        self.signal_locked(sig);
    }

    fn signal_locked(&self, sig: i32) {
        if let Ok(pgid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe { libc::killpg(pgid, sig) };
        }
        if let Some(cg) = &self.cgroup {
            for pid in cgroup_members(cg) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// Asks the tree to terminate: `SIGTERM`, then `SIGCONT` so stopped members see it.
    pub(crate) fn terminate(&self) {
        self.signal_tree(libc::SIGTERM);
        self.signal_tree(libc::SIGCONT);
    }

    /// Blocks until the leader is reaped or `deadline` passes; whether it was reaped.
    pub(crate) fn wait_reaped_until(&self, deadline: Instant) -> bool {
        let mut life = self.life.lock();
        while !life.reaped {
            if self.life_cv.wait_until(&mut life, deadline).timed_out() {
                return life.reaped;
            }
        }
        true
    }

    /// Unread output of both streams, marking it read.
    pub(crate) fn take_output(&self) -> (Vec<u8>, Vec<u8>) {
        let take = |w: Which| {
            let s = &self.streams[w as usize];
            let out = s.ring.lock().take_unread();
            s.space.notify_all();
            out
        };
        (take(Which::Stdout), take(Which::Stderr))
    }

    /// Reads one stream from a cursor.
    pub(crate) fn read_since(
        &self,
        which: Which,
        from: Option<u64>,
        max: usize,
    ) -> Result<Chunk, ProcessError> {
        let s = &self.streams[which as usize];
        let chunk = s.ring.lock().read_from(from, max);
        s.space.notify_all();
        chunk
    }

    /// Writes to stdin without blocking; how many bytes the pipe took.
    pub(crate) fn write_stdin(&self, data: &[u8]) -> Result<u32, ProcessError> {
        let mut state = self.stdin.lock();
        match &mut *state {
            StdinState::Writing { close_after: false } => Ok(0),
            StdinState::Writing { close_after: true } | StdinState::Closed => {
                Err(ProcessError::Closed)
            }
            StdinState::Open(file) => match file.write(data) {
                Ok(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                Err(_) => {
                    *state = StdinState::Closed;
                    Err(ProcessError::Closed)
                }
            },
        }
    }

    /// Closes stdin; `closed` if it already was.
    pub(crate) fn close_stdin(&self) -> Result<(), ProcessError> {
        let mut state = self.stdin.lock();
        match &mut *state {
            StdinState::Writing { close_after } if !*close_after => {
                *close_after = true;
                Ok(())
            }
            StdinState::Open(_) => {
                *state = StdinState::Closed;
                Ok(())
            }
            StdinState::Writing { .. } | StdinState::Closed => Err(ProcessError::Closed),
        }
    }

    /// What the host knows of the child now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let life = self.life.lock();
        let (mut buffered, mut dropped) = (0u64, 0u64);
        for s in &self.streams {
            let r = s.ring.lock();
            buffered += r.unread() as u64;
            dropped += r.dropped;
        }
        let now = Instant::now();
        Snapshot {
            running: !life.reaped,
            exit: life.exit,
            age: now.duration_since(self.started),
            idle: now.duration_since(*self.last_activity.lock()),
            buffered,
            dropped,
            stdin_open: !matches!(
                *self.stdin.lock(),
                StdinState::Closed | StdinState::Writing { close_after: true }
            ),
            cpu_ms: life.cpu_ms,
            peak_bytes: life.peak_bytes,
        }
    }
}

/// Starts a child. Blocking: run it on the blocking pool.
pub(crate) fn start(launch: Launch, meta: Meta) -> Result<Arc<Proc>, ProcessError> {
    let Launch {
        program,
        args,
        env,
        cwd,
        stdin,
        keep_stdin_open,
        limits,
        overflow,
        oneshot,
        injected,
        ids,
        home,
        host_network,
    } = launch;
    if !count_limit_enforceable(ids.is_some()) {
        return Err(ProcessError::Unenforceable(
            "this host runs as root without a pids cgroup, so the process-count limit cannot be enforced".into(),
        ));
    }
    let isolation = isolation(
        home.as_deref(),
        cwd.as_raw_fd(),
        host_network,
        limits.memory_bytes,
    )?;
    let cgroup = new_cgroup(limits.pids)?;
    let nproc = match cgroup {
        Some(_) => None,
        None => {
            // SAFETY: getuid has no preconditions.
            let user = ids.map_or_else(|| unsafe { libc::getuid() }, |i| i.uid);
            Some(rlim(user_process_count(user).saturating_add(limits.pids)))
        }
    };
    let setup = ChildSetup {
        cwd: cwd.as_raw_fd(),
        cgroup_procs: cgroup.as_ref().map(|(_, f)| f.as_raw_fd()),
        cpu: rlim(limits.cpu_secs),
        memory: rlim(limits.memory_bytes),
        files: rlim(limits.open_files),
        nproc,
        ids: ids.map(|i| (i.uid, i.gid)),
    };
    let isolation =
        isolation.map(|i| i.with_cgroup_root(cgroup.as_ref().and_then(|_| pids_root_c())));
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(env)
        .stdin(if stdin.is_some() || keep_stdin_open {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: `in_child` makes only async-signal-safe system calls on copied values.
    unsafe {
        cmd.pre_exec(move || in_child(setup, isolation.as_ref()));
    }
    let spawned = cmd.spawn();
    // The detached copy of the home goes with the command, whether or not the child used it.
    drop(cmd);
    drop(cwd);
    let cleanup_cgroup = |cg: &Option<(PathBuf, std::fs::File)>| {
        if let Some((dir, _)) = cg {
            let _ = std::fs::remove_dir(dir);
        }
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            cleanup_cgroup(&cgroup);
            if let Some(inj) = &injected {
                for n in &inj.names {
                    let _ = inj.dir.remove_file(n);
                }
            }
            return Err(ProcessError::Start(e.kind()));
        }
    };
    let pid = child.id();
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd the host cannot watch the child: stop it now.
            tracing::warn!(error = %e, "pidfd_open failed");
            let _ = child.kill();
            let _ = child.wait();
            cleanup_cgroup(&cgroup);
            return Err(ProcessError::Start(e.kind()));
        }
    };
    let now = Instant::now();
    let (exit_tx, _) = watch::channel(None);
    let (activity, _) = watch::channel(0u64);
    let stdin_pipe = child.stdin.take();
    let stdin_state = match (&stdin, stdin_pipe.is_some()) {
        (_, false) => StdinState::Closed,
        (Some(_), true) => StdinState::Writing { close_after: false },
        (None, true) => StdinState::Closed,
    };
    let proc = Arc::new(Proc {
        id: meta.id,
        principal: meta.principal,
        label: meta.label,
        command: meta.command,
        args: meta.args,
        persistent: meta.persistent,
        pid,
        retention: meta.retention,
        started: now,
        oneshot_backpressure: oneshot && overflow == Overflow::Backpressure,
        streams: [
            Stream {
                ring: Mutex::new(Ring::new(limits.output)),
                space: Condvar::new(),
            },
            Stream {
                ring: Mutex::new(Ring::new(limits.output)),
                space: Condvar::new(),
            },
        ],
        stdin: Mutex::new(stdin_state),
        life: Mutex::new(Life::default()),
        life_cv: Condvar::new(),
        exit_tx,
        activity,
        last_activity: Mutex::new(now),
        overflowed: AtomicBool::new(false),
        cgroup: cgroup.as_ref().map(|(d, _)| d.clone()),
        host_network,
    });
    drop(cgroup);

    // From here on the child runs: every helper that fails to start is answered by killing it.
    let fail = |proc: &Arc<Proc>, e: ProcessError| {
        proc.signal_tree(libc::SIGKILL);
        e
    };
    if let Some(pipe) = stdin_pipe {
        match stdin {
            Some(bytes) => {
                let p = Arc::clone(&proc);
                spawn_thread("capsule-proc-in", move || {
                    feed_stdin(&p, pipe, &bytes, keep_stdin_open)
                })
                .map_err(|e| fail(&proc, e))?;
            }
            None => {
                set_nonblocking(&pipe);
                *proc.stdin.lock() = StdinState::Open(std::fs::File::from(OwnedFd::from(pipe)));
            }
        }
    }
    for (which, pipe) in [
        (Which::Stdout, child.stdout.take().map(OwnedFd::from)),
        (Which::Stderr, child.stderr.take().map(OwnedFd::from)),
    ] {
        let Some(pipe) = pipe else { continue };
        let p = Arc::clone(&proc);
        spawn_thread("capsule-proc-out", move || {
            read_stream(&p, which, std::fs::File::from(pipe), overflow);
        })
        .map_err(|e| fail(&proc, e))?;
    }
    let p = Arc::clone(&proc);
    spawn_thread("capsule-proc-wait", move || {
        watch_child(&p, &pidfd, limits, injected);
    })
    .map_err(|e| fail(&proc, e))?;
    // The std handle is not used to wait: the watcher reaps the child itself.
    drop(child);
    Ok(proc)
}

/// The namespaces of a root host's child (`None` elsewhere: a host that is not root cannot
/// create them and runs every child as its own user, as documented); a root host that cannot
/// create them refuses.
fn isolation(
    home: Option<&std::path::Path>,
    cwd: std::os::fd::RawFd,
    host_network: bool,
    memory: u64,
) -> Result<Option<ns::Isolation>, ProcessError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if !ns::available() {
        return Err(ProcessError::Unenforceable(
            "this root host cannot give a process namespaces of its own, so its scratch \
             space and network would be shared with other principals' processes"
                .into(),
        ));
    }
    let dir = home
        .map(|h| {
            std::fs::File::open(h).map_err(|_| {
                ProcessError::Invalid("the principal's directories are unavailable".into())
            })
        })
        .transpose()?;
    let home = home.zip(dir.as_ref().map(AsRawFd::as_raw_fd));
    ns::Isolation::prepare(home, Some(cwd), !host_network, memory).map(Some)
}
