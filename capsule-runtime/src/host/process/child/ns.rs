//! The namespaces a root host's child runs in, one set per child, gone with its tree: a mount
//! namespace with propagation private (nothing mounted there reaches the host, nothing the host
//! mounts later reaches it) in which every world-writable scratch place (`/tmp`, `/var/tmp`,
//! `/dev/shm`, `/run/lock`, and `/dev/mqueue` where mounted) is a fresh tmpfs of its own,
//! bounded in bytes and inodes, and the pids hierarchy is read-only; an IPC namespace (System V
//! objects and POSIX message queues of its own); and, unless its capsule is granted network,
//! a network namespace holding only its own loopback, so no abstract-namespace socket or
//! loopback port of another child or of the host is in reach. A home that lies under one of
//! those scratch places on the host reappears at its own path inside the fresh one, so the
//! child's working directory and absolute paths into its own home keep working. Everything
//! is prepared before the fork ([`Isolation::prepare`]); [`Isolation::enter`] runs between
//! fork and exec and makes only system calls on what was prepared.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::OnceLock;

use super::super::ProcessError;

/// Largest size of a child's private scratch tmpfs places together; a child's own
/// address-space limit bounds it further, so the RAM a child tree can park in scratch files is
/// never more than what it may map.
pub const MAX_SCRATCH_BYTES: u64 = 256 * 1024 * 1024;
/// Most files and directories each private scratch tmpfs holds.
pub const MAX_SCRATCH_INODES: u64 = 16_384;

/// The world-writable places every child gets a fresh tmpfs on: the host's own stay out of
/// sight, and no two children share one.
const SCRATCH: &[&CStr] = &[c"/tmp", c"/var/tmp", c"/dev/shm", c"/run/lock"];

/// Each scratch place's share of the child's scratch bound, in sixteenths, in the order of
/// [`SCRATCH`]: the places are bounded one by one (one tmpfs each), so their shares add up to
/// the whole.
const SCRATCH_SIXTEENTHS: [u64; 4] = [8, 3, 4, 1];

/// Where POSIX message queues are mounted, if anywhere: files there are queues of the IPC
/// namespace that mounted it, so a child gets the one of its own namespace instead.
const MQUEUE: &CStr = c"/dev/mqueue";

/// `open_tree` flag: a detached copy of the mount, not the mount itself.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount` flag: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
/// The interface-flags requests of `ioctl` on a socket.
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// `struct ifreq` as the interface-flags requests read and write it (name, flags, and room for
/// the rest of the union).
#[repr(C)]
struct IfFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// What one child's namespaces are made of, prepared before the fork.
#[derive(Debug)]
pub(crate) struct Isolation {
    /// Whether the child gets a network namespace of its own (its capsule has no network
    /// grant).
    own_net: bool,
    /// The tmpfs options of each scratch place, in the order of [`SCRATCH`].
    scratch: Vec<CString>,
    /// Directories to create inside a fresh scratch place, outermost first, so the home keeps
    /// its host path there; the last one is where the home is attached.
    skeleton: Vec<CString>,
    /// A detached copy of the home's mount, for the last [`Self::skeleton`] entry.
    home: Option<OwnedFd>,
    /// The working directory again, by its path inside the child's own view, where the one
    /// set before the new namespace lies under a covered scratch place: from there `..`
    /// would walk up into the host's own `/tmp` underneath the fresh one.
    workdir: Option<CString>,
    /// The pids hierarchy, remounted read-only: a child with user id 0 owns its files.
    cgroup_root: Option<&'static CStr>,
}

fn cstring(p: &Path) -> Result<CString, ProcessError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ProcessError::Invalid("the principal's directories are unavailable".into()))
}

fn unenforceable(what: &str, e: &std::io::Error) -> ProcessError {
    tracing::warn!(error = %e, "{what}");
    ProcessError::Unenforceable(format!(
        "{what}, so the child would share scratch space or network with other principals' \
         children"
    ))
}

impl Isolation {
    /// The namespaces of a child whose home is `home` (opened by the host) and whose working
    /// directory is open as `cwd`, bounded by the child's address-space limit `memory`. A
    /// working directory under a scratch place must lie in the home carried into the child's
    /// own (it always does: a child works in its home or its `/tmp/`, which lies there), or
    /// the spawn is refused.
    pub(crate) fn prepare(
        home: Option<(&Path, RawFd)>,
        cwd: Option<RawFd>,
        own_net: bool,
        memory: u64,
    ) -> Result<Self, ProcessError> {
        let total = memory.clamp(4 * 1024 * 1024, MAX_SCRATCH_BYTES);
        let scratch = SCRATCH_SIXTEENTHS
            .iter()
            .map(|share| {
                let size = total / 16 * share;
                CString::new(format!(
                    "size={size},nr_inodes={MAX_SCRATCH_INODES},mode=1777"
                ))
                .map_err(|_| ProcessError::Unsupported("tmpfs options"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut iso = Self {
            own_net,
            scratch,
            skeleton: Vec::new(),
            home: None,
            workdir: None,
            cgroup_root: None,
        };
        // Where the working directory is on the host, as the kernel names the open directory.
        let workdir = cwd
            .map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")))
            .transpose()
            .map_err(|e| unenforceable("the working directory could not be located", &e))?;
        let covered = |dir: &Path| {
            SCRATCH.iter().any(|place| {
                let place = Path::new(std::ffi::OsStr::from_bytes(place.to_bytes()));
                std::fs::canonicalize(place).is_ok_and(|real| dir.starts_with(real))
            })
        };
        let refuse_covered = |iso: Self| match &workdir {
            Some(w) if covered(w) => Err(ProcessError::Unenforceable(
                "the working directory lies in the host's scratch space outside the home, so \
                 the child would reach the host's scratch space through it"
                    .into(),
            )),
            _ => Ok(iso),
        };
        let Some((home, fd)) = home else {
            return refuse_covered(iso);
        };
        let Some((place, rel)) = under_scratch(home) else {
            return refuse_covered(iso);
        };
        let mut at = place.to_path_buf();
        for part in rel.components() {
            let Component::Normal(name) = part else {
                return refuse_covered(iso);
            };
            at.push(name);
            iso.skeleton.push(cstring(&at)?);
        }
        if let Some(w) = &workdir {
            let real = std::fs::canonicalize(home)
                .map_err(|e| unenforceable("the home could not be located", &e))?;
            match w.strip_prefix(&real) {
                Ok(inside) => iso.workdir = Some(cstring(&at.join(inside))?),
                Err(_) => return refuse_covered(iso),
            }
        }
        // SAFETY: open_tree on a descriptor the caller keeps open, with an empty path.
        let tree = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                fd,
                c"".as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as u32,
            )
        };
        if tree < 0 {
            let e = std::io::Error::last_os_error();
            return Err(unenforceable(
                "the home could not be carried into the child's scratch space",
                &e,
            ));
        }
        let tree = RawFd::try_from(tree)
            .map_err(|_| ProcessError::Unsupported("descriptor out of range"))?;
        // SAFETY: the kernel just returned this descriptor and nothing else owns it.
        iso.home = Some(unsafe { OwnedFd::from_raw_fd(tree) });
        Ok(iso)
    }

    /// The same, with the pids hierarchy at `root` read-only.
    pub(crate) fn with_cgroup_root(self, root: Option<&'static CStr>) -> Self {
        Self {
            cgroup_root: root,
            ..self
        }
    }

    /// Runs in the child between fork and exec, after `fchdir` (so the new mount namespace
    /// carries the working directory over, entered again by path where it lies under a
    /// covered scratch place) and before the capability drop: only system calls
    /// on prepared values, no allocation, no locks.
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
        if self.own_net {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: unshare with integer flags only.
        check(unsafe { libc::unshare(flags) })?;
        // SAFETY: mount with null or valid NUL-terminated strings only.
        check(unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        })?;
        if let Some(root) = self.cgroup_root {
            // SAFETY: as above.
            check(unsafe {
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                )
            })?;
        }
        for (place, options) in SCRATCH.iter().zip(&self.scratch) {
            // SAFETY: as above; the options string lives in `self`.
            let r = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    place.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                )
            };
            absent_is_fine(r)?;
        }
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                c"mqueue".as_ptr(),
                MQUEUE.as_ptr(),
                c"mqueue".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        absent_is_fine(r)?;
        for dir in &self.skeleton {
            // SAFETY: mkdir on a prepared NUL-terminated path.
            if unsafe { libc::mkdir(dir.as_ptr(), 0o711) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
        }
        if let (Some(tree), Some(at)) = (&self.home, self.skeleton.last()) {
            // SAFETY: move_mount of a detached tree the host opened, onto a prepared path.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    at.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(dir) = &self.workdir {
            // An absolute path, resolved in the new view only.
            // SAFETY: chdir on a prepared NUL-terminated path.
            check(unsafe { libc::chdir(dir.as_ptr()) })?;
        }
        if self.own_net {
            loopback_up()?;
        }
        Ok(())
    }
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A scratch place this host does not have shares nothing.
fn absent_is_fine(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => Ok(()),
        _ => Err(e),
    }
}

/// Brings the new network namespace's loopback up: it is the child's alone, so programs that
/// talk to themselves over `127.0.0.1` keep working.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket with integer arguments only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut req = IfFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _rest: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: the interface-flags ioctls read and write a `struct ifreq`, which `IfFlags`
    // lays out; the socket is closed on every path.
    let r = unsafe {
        let mut r = libc::ioctl(fd, SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, SIOCSIFFLAGS, &req);
        }
        r
    };
    let e = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(e);
    }
    Ok(())
}

/// The scratch place `home` lies under on the host, and its path below it.
fn under_scratch(home: &Path) -> Option<(&'static Path, std::path::PathBuf)> {
    let home = std::fs::canonicalize(home).ok()?;
    SCRATCH.iter().find_map(|place| {
        let place = Path::new(std::ffi::OsStr::from_bytes(place.to_bytes()));
        let real = std::fs::canonicalize(place).ok()?;
        let rel = home.strip_prefix(&real).ok()?;
        (!rel.as_os_str().is_empty()).then(|| (place, rel.to_path_buf()))
    })
}

/// Whether this root host can give its children namespaces of their own: probed once, by a
/// forked process that tries every step a child takes and exits.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return false;
        }
        let probe = match Isolation::prepare(None, None, true, MAX_SCRATCH_BYTES) {
            Ok(p) => p,
            Err(_) => return false,
        };
        // SAFETY: the forked process makes only system calls on prepared values and leaves
        // with `_exit`; the parent waits for exactly that process.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let tree = libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    c"/".as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
                );
                let code = if tree >= 0 && probe.enter().is_ok() {
                    0
                } else {
                    1
                };
                libc::_exit(code);
            }
            if pid < 0 {
                return false;
            }
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) < 0 {
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    return false;
                }
            }
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
    })
}
