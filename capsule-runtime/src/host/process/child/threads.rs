//! The host threads that serve a running child: the stdin feeder, one reader per output
//! stream (bounded: drop-oldest or backpressure), and the watcher that enforces wall and idle
//! time through a pidfd, kills what is left of the group when the leader exits, reaps the
//! leader only after that (so a group id is never signalled once its number could be reused)
//! and publishes the exit only once all output is in.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::ChildStdin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::ProcessError;
use super::sandbox::cgroup_members;
use super::{Exit, Injected, Limits, Overflow, Proc, StdinState, Which};

/// Largest read from a child's pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// How long the watcher waits for the output pipes to close after the tree was killed.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// How long the watcher waits for a pids cgroup to empty before leaving it behind.
const CGROUP_DRAIN: Duration = Duration::from_secs(5);

pub(super) fn spawn_thread(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), ProcessError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot start a process helper thread");
            ProcessError::Quota("the host cannot serve another process now".into())
        })
}

pub(super) fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
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

pub(super) fn set_nonblocking(fd: &impl AsRawFd) {
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
pub(super) fn feed_stdin(proc: &Proc, mut pipe: ChildStdin, bytes: &[u8], keep_open: bool) {
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
pub(super) fn read_stream(proc: &Proc, which: Which, mut pipe: std::fs::File, overflow: Overflow) {
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

pub(super) fn poll_readable(fd: &OwnedFd, timeout: Option<Duration>) -> bool {
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
pub(super) fn watch_child(
    proc: &Proc,
    pidfd: &OwnedFd,
    limits: Limits,
    injected: Option<Injected>,
) {
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
pub(super) fn drain_cgroup(cg: &Path) {
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
