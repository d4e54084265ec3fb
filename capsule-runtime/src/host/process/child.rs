//! One host process and everything the host keeps of it. A child is started with a cleared
//! environment, in a new process group, in its own pids cgroup where the host can create one,
//! with its resource limits set between fork and exec (only async-signal-safe calls there), and
//! without capabilities (and with the pids hierarchy read-only in a mount namespace of its own)
//! when the host is root. Three host threads serve it: one reader per
//! output stream (bounded buffers, drop-oldest or backpressure) and a watcher that enforces the
//! wall-clock and idle limits through a pidfd, kills what is left of the group when the leader
//! exits, and only then reaps the leader, so a process-group id is never signalled after its
//! number could have been reused.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capsule_bus::PrincipalId;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::ProcessError;

/// Largest read from a child's pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// How long the watcher waits for the output pipes to close after the tree was killed.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// How long the watcher waits for a pids cgroup to empty before leaving it behind.
const CGROUP_DRAIN: Duration = Duration::from_secs(5);

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
    pub(crate) persistent: bool,
    pub(crate) retention: Duration,
}

/// The output of one stream as the host keeps it: `buf` holds bytes `[base, base + len)` of
/// everything the child wrote; `read_at` is how far the guest has read.
#[derive(Debug)]
struct Ring {
    buf: VecDeque<u8>,
    base: u64,
    read_at: u64,
    cap: usize,
    dropped: u64,
    eof: bool,
    /// Set once the leader exited: a backpressured reader drains what is left.
    released: bool,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            base: 0,
            read_at: 0,
            cap,
            dropped: 0,
            eof: false,
            released: false,
        }
    }

    fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    fn unread(&self) -> usize {
        usize::try_from(self.end() - self.read_at).unwrap_or(usize::MAX)
    }

    /// Appends `data`, keeping at most `cap` bytes: read bytes go first, then the oldest
    /// unread ones (counted as dropped).
    fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        if self.buf.len() <= self.cap {
            return;
        }
        // The front holds the read bytes first, so they go before any unread one.
        let n = self.buf.len() - self.cap;
        self.buf.drain(..n);
        self.base += n as u64;
        if self.read_at < self.base {
            self.dropped += self.base - self.read_at;
            self.read_at = self.base;
        }
    }

    /// Everything unread, marking it read.
    fn take_unread(&mut self) -> Vec<u8> {
        let start = usize::try_from(self.read_at - self.base).unwrap_or(0);
        let out: Vec<u8> = self.buf.range(start..).copied().collect();
        self.read_at = self.end();
        out
    }

    /// Up to `max` bytes from absolute position `from` (`None`: the oldest kept), the next
    /// position, the bytes lost before it and whether the stream ended there.
    fn read_from(&mut self, from: Option<u64>, max: usize) -> Result<Chunk, ProcessError> {
        let from = from.unwrap_or(self.base);
        if from > self.end() {
            return Err(ProcessError::Invalid(
                "the cursor is beyond the output".into(),
            ));
        }
        let (start, lost) = if from < self.base {
            (self.base, self.base - from)
        } else {
            (from, 0)
        };
        let offset = usize::try_from(start - self.base).unwrap_or(0);
        let data: Vec<u8> = self.buf.range(offset..).take(max).copied().collect();
        let next = start + data.len() as u64;
        self.read_at = self.read_at.max(next);
        Ok(Chunk {
            data,
            next,
            lost,
            eof: self.eof && next == self.end(),
        })
    }
}

/// A piece of one stream.
pub(crate) struct Chunk {
    pub(crate) data: Vec<u8>,
    pub(crate) next: u64,
    pub(crate) lost: u64,
    pub(crate) eof: bool,
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

/// Where this host creates pids cgroups: the pids hierarchy's root, if the host may create
/// groups there (cgroup v1 `pids`, or a v2 root delegating `pids`).
fn pids_root() -> Option<&'static Path> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_delegates = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|s| s.split_whitespace().any(|c| c == "pids"));
        let candidates = [Some(v1), v2_delegates.then_some(v2)];
        candidates.into_iter().flatten().find_map(|root| {
            let probe = root.join(format!("capsule-probe-{}", std::process::id()));
            std::fs::create_dir(&probe).ok()?;
            let usable = probe.join("pids.max").exists();
            let _ = std::fs::remove_dir(&probe);
            usable.then(|| root.to_path_buf())
        })
    })
    .as_deref()
}

/// The pids hierarchy's mount point as a C string, for a root child to remount read-only in
/// its own mount namespace before exec.
fn pids_root_c() -> Option<&'static std::ffi::CStr> {
    static ROOT: OnceLock<Option<std::ffi::CString>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = pids_root()?;
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str())).ok()
    })
    .as_deref()
}

/// Whether the process-count limit is enforced by the kernel for a child of this host.
pub(crate) fn count_limit_enforceable() -> bool {
    // SAFETY: geteuid has no preconditions.
    pids_root().is_some() || unsafe { libc::geteuid() } != 0
}

fn cgroup_members(cg: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A fresh pids cgroup limited to `pids`, and its `cgroup.procs` opened for the child to
/// join itself with.
fn new_cgroup(pids: u64) -> Result<Option<(PathBuf, std::fs::File)>, ProcessError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some(root) = pids_root() else {
        return Ok(None);
    };
    let dir = root.join(format!(
        "capsule-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let setup = || -> std::io::Result<std::fs::File> {
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("pids.max"), pids.to_string())?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
    };
    match setup() {
        Ok(procs) => Ok(Some((dir, procs))),
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            tracing::warn!(error = %e, "cannot set up a pids cgroup for a process");
            Err(ProcessError::Unenforceable(
                "the process-count limit could not be set up".into(),
            ))
        }
    }
}

/// Processes the real user already runs, for a per-user `RLIMIT_NPROC` that leaves the child
/// `pids` more than that.
fn user_process_count() -> u64 {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::os::unix::fs::MetadataExt::uid(&match e.metadata() {
                Ok(m) => m,
                Err(_) => return false,
            }) == uid
        })
        .count() as u64
}

/// A limit value as the kernel takes it.
fn rlim(n: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(n).unwrap_or(libc::RLIM_INFINITY)
}

/// The values `pre_exec` applies, copied so the closure touches no shared memory.
#[derive(Clone, Copy)]
struct ChildSetup {
    cwd: RawFd,
    cgroup_procs: Option<RawFd>,
    cpu: libc::rlim_t,
    memory: libc::rlim_t,
    files: libc::rlim_t,
    nproc: Option<libc::rlim_t>,
    /// The pids hierarchy a root child must not be able to write.
    cgroup_root: Option<&'static std::ffi::CStr>,
}

fn set_limit(
    resource: libc::__rlimit_resource_t,
    soft: libc::rlim_t,
    hard: libc::rlim_t,
) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs in the child between fork and exec: only async-signal-safe system calls, no
/// allocation, no locks.
fn in_child(s: ChildSetup) -> std::io::Result<()> {
    if let Some(fd) = s.cgroup_procs {
        // Writing 0 moves the writing process itself.
        // SAFETY: the buffer is a valid static byte string.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    set_limit(libc::RLIMIT_CPU, s.cpu, s.cpu.saturating_add(1))?;
    set_limit(libc::RLIMIT_AS, s.memory, s.memory)?;
    set_limit(libc::RLIMIT_NOFILE, s.files, s.files)?;
    set_limit(libc::RLIMIT_CORE, 0, 0)?;
    if let Some(n) = s.nproc {
        set_limit(libc::RLIMIT_NPROC, n, n)?;
    }
    // SAFETY: fchdir on a directory descriptor the parent keeps open across the fork.
    if unsafe { libc::fchdir(s.cwd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if let Some(root) = s.cgroup_root {
            // A child with user id 0 owns the cgroup files even without capabilities: it
            // could raise its own `pids.max` or move itself out of the group the host kills
            // it through. Its own mount namespace sees the pids hierarchy read-only. The
            // working directory is set first so the new namespace carries it over.
            hide_cgroups(root)?;
        }
        // An empty bounding set leaves a root child without capabilities after exec, so it
        // cannot raise its hard limits or leave its group by privilege.
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        for cap in 0..64 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(e);
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Enters a new mount namespace (private to this child) in which `root` is read-only.
fn hide_cgroups(root: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: unshare and mount with integer flags and valid NUL-terminated strings only.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ProcessError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot start a process helper thread");
            ProcessError::Quota("the host cannot serve another process now".into())
        })
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: the pidfd_open system call takes a pid and flags and returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            libc::pid_t::try_from(pid).unwrap_or(0),
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    } = launch;
    if !count_limit_enforceable() {
        return Err(ProcessError::Unenforceable(
            "this host runs as root without a pids cgroup, so the process-count limit cannot be enforced".into(),
        ));
    }
    let cgroup = new_cgroup(limits.pids)?;
    let nproc = match cgroup {
        Some(_) => None,
        None => Some(rlim(user_process_count().saturating_add(limits.pids))),
    };
    let setup = ChildSetup {
        cwd: cwd.as_raw_fd(),
        cgroup_procs: cgroup.as_ref().map(|(_, f)| f.as_raw_fd()),
        cpu: rlim(limits.cpu_secs),
        memory: rlim(limits.memory_bytes),
        files: rlim(limits.open_files),
        nproc,
        cgroup_root: cgroup.as_ref().and_then(|_| pids_root_c()),
    };
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
        cmd.pre_exec(move || in_child(setup));
    }
    let spawned = cmd.spawn();
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

fn set_nonblocking(fd: &impl AsRawFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Writes the initial stdin bytes, then leaves stdin open (non-blocking) or closes it.
fn feed_stdin(proc: &Proc, mut pipe: ChildStdin, bytes: &[u8], keep_open: bool) {
    let ok = pipe.write_all(bytes).is_ok();
    let mut state = proc.stdin.lock();
    let close = matches!(*state, StdinState::Writing { close_after: true }) || !keep_open || !ok;
    *state = if close {
        StdinState::Closed
    } else {
        set_nonblocking(&pipe);
        StdinState::Open(std::fs::File::from(OwnedFd::from(pipe)))
    };
}

/// Copies one output stream into its ring until end of file.
fn read_stream(proc: &Proc, which: Which, mut pipe: std::fs::File, overflow: Overflow) {
    let stream = &proc.streams[which as usize];
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let room = {
            let mut ring = stream.ring.lock();
            if overflow == Overflow::Backpressure {
                while !ring.released && ring.unread() >= ring.cap {
                    if proc.oneshot_backpressure {
                        proc.overflowed.store(true, Ordering::Release);
                        proc.activity.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    stream.space.wait(&mut ring);
                }
            }
            if ring.released || overflow == Overflow::DropOldest {
                READ_CHUNK
            } else {
                (ring.cap - ring.unread()).clamp(1, READ_CHUNK)
            }
        };
        match pipe.read(&mut chunk[..room]) {
            Ok(0) => break,
            Ok(n) => {
                stream.ring.lock().push(&chunk[..n]);
                proc.bump();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    stream.ring.lock().eof = true;
    stream.space.notify_all();
    proc.bump();
}

fn poll_readable(fd: &OwnedFd, timeout: Option<Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents != 0
}

/// Enforces wall time and idleness, then on the leader's exit kills the rest of its tree,
/// reaps it and records how it ended.
fn watch_child(proc: &Proc, pidfd: &OwnedFd, limits: Limits, injected: Option<Injected>) {
    let mut killed = false;
    loop {
        let timeout = if killed {
            None
        } else {
            let now = Instant::now();
            let mut deadline = proc.started + limits.wall;
            if let Some(idle) = limits.idle {
                deadline = deadline.min(*proc.last_activity.lock() + idle);
            }
            if now >= deadline {
                proc.signal_tree(libc::SIGKILL);
                killed = true;
                continue;
            }
            Some(deadline - now)
        };
        if poll_readable(pidfd, timeout) {
            break;
        }
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ms = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1000 + u64::try_from(t.tv_usec).unwrap_or(0) / 1000
    };
    let exit;
    {
        let mut life = proc.life.lock();
        // The leader is a zombie now: its group id is still reserved, so the group can be
        // killed without hitting a process that reused the number.
        proc.signal_locked(libc::SIGKILL);
        let pid = libc::pid_t::try_from(proc.pid).unwrap_or(0);
        loop {
            // SAFETY: status and usage are valid for writing.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        exit = if libc::WIFEXITED(status) {
            Exit {
                code: Some(libc::WEXITSTATUS(status)),
                signal: None,
            }
        } else if libc::WIFSIGNALED(status) {
            Exit {
                code: None,
                signal: Some(libc::WTERMSIG(status)),
            }
        } else {
            Exit {
                code: None,
                signal: None,
            }
        };
        life.reaped = true;
        proc.life_cv.notify_all();
    }
    for s in &proc.streams {
        s.ring.lock().released = true;
        s.space.notify_all();
    }
    if let Some(inj) = injected {
        for n in &inj.names {
            let _ = inj.dir.remove_file(n);
        }
    }
    // The exit is published only once the output is all in (the tree is dead, so the pipes
    // close), so whoever sees the exit also sees everything the process wrote.
    let until = Instant::now() + OUTPUT_DRAIN;
    for s in &proc.streams {
        let mut ring = s.ring.lock();
        while !ring.eof && !s.space.wait_until(&mut ring, until).timed_out() {}
    }
    {
        let mut life = proc.life.lock();
        life.exit = Some(exit);
        life.cpu_ms = Some(ms(usage.ru_utime) + ms(usage.ru_stime));
        life.peak_bytes = Some(
            u64::try_from(usage.ru_maxrss)
                .unwrap_or(0)
                .saturating_mul(1024),
        );
        life.exited_at = Some(Instant::now());
    }
    proc.exit_tx.send_replace(Some(exit));
    proc.bump();
    if let Some(cg) = &proc.cgroup {
        drain_cgroup(cg);
    }
}

/// Kills whatever is left in a pids cgroup and removes it, waiting a bounded time for it to
/// empty.
fn drain_cgroup(cg: &Path) {
    let until = Instant::now() + CGROUP_DRAIN;
    loop {
        for pid in cgroup_members(cg) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::fs::remove_dir(cg).is_ok() {
            return;
        }
        if Instant::now() >= until {
            tracing::warn!(cgroup = %cg.display(), "a process cgroup did not empty; left behind");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_bytes_and_counts_the_rest() {
        let mut r = Ring::new(4);
        r.push(b"abcdef");
        assert_eq!(r.dropped, 2);
        assert_eq!(r.take_unread(), b"cdef");
        r.push(b"gh");
        assert_eq!(
            r.dropped, 2,
            "read bytes make room before unread ones are lost"
        );
        assert_eq!(r.take_unread(), b"gh");
    }

    #[test]
    fn cursors_report_what_was_lost_and_refuse_the_future() {
        let mut r = Ring::new(4);
        r.push(b"abcdef");
        let c = r.read_from(Some(0), 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.data.as_slice(), c.next, c.lost), (&b"cde"[..], 5, 2));
        let c = r
            .read_from(Some(c.next), 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.data.as_slice(), c.next, c.eof), (&b"f"[..], 6, false));
        assert!(r.read_from(Some(7), 1).is_err());
        r.eof = true;
        assert!(
            r.read_from(Some(6), 1)
                .unwrap_or_else(|e| panic!("{e}"))
                .eof
        );
    }
}
