//! What confines a child before it runs: the pids cgroup it joins (or a per-user
//! `RLIMIT_NPROC` where the host cannot create one), its rlimits, its working directory and,
//! for a root host, namespaces of its own (`super::ns`: private scratch places, IPC, network
//! unless granted, a read-only pids hierarchy), an empty capability bounding, inheritable and
//! ambient set and, where the principal has a user id of its own, that user and group (no
//! supplementary groups), taken last, once nothing more needs privilege; no descriptor of the
//! host but stdio survives the exec, and `no_new_privs` is set. `in_child` runs between fork
//! and exec and makes only async-signal-safe calls.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::super::ProcessError;

/// Where this host creates pids cgroups: the pids hierarchy's root, if the host may create
/// groups there (cgroup v1 `pids`, or a v2 root delegating `pids`).
pub(super) fn pids_root() -> Option<&'static Path> {
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
/// its own mount namespace before exec (see `super::ns`).
pub(super) fn pids_root_c() -> Option<&'static std::ffi::CStr> {
    static ROOT: OnceLock<Option<std::ffi::CString>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = pids_root()?;
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str())).ok()
    })
    .as_deref()
}

/// Whether the process-count limit is enforced by the kernel for a child of this host: by a
/// pids cgroup, or by `RLIMIT_NPROC`, which binds only a child that is not root (a host that
/// is not root, or a child that takes a principal's own user id).
pub(crate) fn count_limit_enforceable(own_user: bool) -> bool {
    // SAFETY: geteuid has no preconditions.
    pids_root().is_some() || own_user || unsafe { libc::geteuid() } != 0
}

pub(super) fn cgroup_members(cg: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A fresh pids cgroup limited to `pids`, and its `cgroup.procs` opened for the child to
/// join itself with.
pub(super) fn new_cgroup(pids: u64) -> Result<Option<(PathBuf, std::fs::File)>, ProcessError> {
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

/// Processes the user `uid` already runs (the user the child will run as), for a per-user
/// `RLIMIT_NPROC` that leaves the child `pids` more than that.
pub(super) fn user_process_count(uid: libc::uid_t) -> u64 {
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
pub(super) fn rlim(n: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(n).unwrap_or(libc::RLIM_INFINITY)
}

/// The values `pre_exec` applies, copied so the closure touches no shared memory.
#[derive(Clone, Copy)]
pub(super) struct ChildSetup {
    pub(super) cwd: RawFd,
    pub(super) cgroup_procs: Option<RawFd>,
    pub(super) cpu: libc::rlim_t,
    pub(super) memory: libc::rlim_t,
    pub(super) files: libc::rlim_t,
    pub(super) nproc: Option<libc::rlim_t>,
    /// The principal's own user and group id, taken just before exec.
    pub(super) ids: Option<(libc::uid_t, libc::gid_t)>,
}

pub(super) fn set_limit(
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
/// `iso` is the child's namespaces, which every child of a root host gets.
pub(super) fn in_child(s: ChildSetup, iso: Option<&super::ns::Isolation>) -> std::io::Result<()> {
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
        if let Some(iso) = iso {
            // A child with user id 0 owns the cgroup files even without capabilities: it
            // could raise its own `pids.max` or move itself out of the group the host kills
            // it through, so its mount namespace sees the pids hierarchy read-only. The
            // working directory is set first so the new namespace carries it over.
            iso.enter()?;
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
        clear_inheritable()?;
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
    if let Some((uid, gid)) = s.ids {
        // Last, because the steps above need privilege: the groups first (changing them
        // needs the user id still 0), then the user, which clears every remaining
        // capability. All three ids of each kind are set, so none can be taken back.
        // SAFETY: set-id calls with integer arguments and a null, zero-length group list.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    close_inherited();
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Most descriptors checked one by one where `close_range` is unavailable.
const MAX_SCANNED_FDS: i32 = 65_536;

/// Marks every descriptor above stdio close-on-exec, so the child gets none of the host's:
/// whatever the host process inherited from whoever started it (an agent socket, a file of
/// the operator's) or opened without close-on-exec stays with the host. The descriptors the
/// steps before exec still use (the working directory, `cgroup.procs`) stay usable until then.
fn close_inherited() {
    // SAFETY: close_range with integer arguments only; it closes nothing, only marks.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        for fd in 3..MAX_SCANNED_FDS {
            // SAFETY: fcntl with integer arguments only; a closed descriptor answers EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// `struct __user_cap_header_struct` of the capability calls.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`, one per 32 capabilities.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The 64-bit capability interface version.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Empties the inheritable set: what the host's user was handed to pass on is not passed to a
/// root child's program, which an empty bounding set alone would still let through.
fn clear_inheritable() -> std::io::Result<()> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget and capset read and write one header and two data structs, laid out as
    // the kernel's.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for d in &mut data {
            d.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
