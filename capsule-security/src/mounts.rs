//! The kernel's mount table, read to judge a directory by *what it is* rather than by how it
//! is spelled: a bind mount can show the state directory (or `/proc`) under an innocent path,
//! and cap-std crosses mount points. A directory is identified by its file system (device)
//! and its path inside that file system; two spellings with the same identity are the same
//! directory.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// File systems that expose the kernel or devices rather than files; never grantable however
/// they are reached.
const KERNEL_FILE_SYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "securityfs",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "bpf",
    "configfs",
    "fusectl",
    "mqueue",
    "pstore",
    "efivarfs",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
];

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The file system's device, `major:minor`.
    pub(crate) device: String,
    /// The directory of that file system mounted here (not `/` for a bind mount).
    pub(crate) root: PathBuf,
    /// Where it is mounted.
    pub(crate) point: PathBuf,
    /// The file system type.
    pub(crate) fstype: String,
}

impl MountEntry {
    /// Whether this mount shows a kernel or device file system.
    pub(crate) fn is_kernel(&self) -> bool {
        KERNEL_FILE_SYSTEMS.contains(&self.fstype.as_str())
    }
}

/// A directory's identity: its file system and its path inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location<'a> {
    pub(crate) mount: &'a MountEntry,
    pub(crate) inner: PathBuf,
}

/// The mount table of this process's mount namespace.
#[derive(Clone, Debug, Default)]
pub(crate) struct MountTable {
    entries: Vec<MountEntry>,
}

/// Undoes the octal escapes mountinfo uses for space, tab, newline and backslash.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Where the kernel publishes this process's mount table.
const MOUNTINFO: &str = "/proc/self/mountinfo";

impl MountTable {
    /// Reads `/proc/self/mountinfo`.
    #[cfg(test)]
    pub(crate) fn read() -> std::io::Result<Self> {
        std::fs::read_to_string(MOUNTINFO).map(|t| Self::parse(&t))
    }

    /// Parses mountinfo text; malformed lines are skipped.
    pub(crate) fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let dash = fields.iter().position(|f| *f == "-")?;
                if dash < 6 {
                    return None;
                }
                Some(MountEntry {
                    device: fields.get(2)?.to_string(),
                    root: unescape(fields.get(3)?),
                    point: unescape(fields.get(4)?),
                    fstype: fields.get(dash + 1)?.to_string(),
                })
            })
            .collect();
        Self { entries }
    }

    /// The identity of `path` (canonical): the last-mounted entry whose mount point is its
    /// longest prefix, and the path inside that file system.
    pub(crate) fn locate(&self, path: &Path) -> Option<Location<'_>> {
        let mount = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, m)| path.starts_with(&m.point))
            .max_by_key(|(i, m)| (m.point.components().count(), *i))
            .map(|(_, m)| m)?;
        let rest = path.strip_prefix(&mount.point).ok()?;
        Some(Location {
            mount,
            inner: if rest.as_os_str().is_empty() {
                mount.root.clone()
            } else {
                mount.root.join(rest)
            },
        })
    }

    /// Mounts whose mount point lies strictly inside `dir`.
    pub(crate) fn inside<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = &'a MountEntry> {
        self.entries
            .iter()
            .filter(move |m| m.point != dir && m.point.starts_with(dir))
    }
}

/// The mount table, read once and read again only when the kernel says it changed.
///
/// An open `mountinfo` file reports `POLLPRI | POLLERR` once the namespace's mounts have changed
/// since the file was opened or last polled; an unchanged table is answered from memory, so a
/// load with filesystem grants costs no file read. A mount made between a check and the use of
/// its answer is as invisible as it would be to a fresh read; the next check sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct MountWatch {
    seen: Arc<Mutex<Option<Watched>>>,
}

#[derive(Debug)]
struct Watched {
    file: File,
    table: Arc<MountTable>,
}

impl MountWatch {
    /// The current mount table.
    pub(crate) fn current(&self) -> std::io::Result<Arc<MountTable>> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = seen.as_mut() {
            let mut fds = [PollFd::new(&w.file, PollFlags::PRI)];
            let ready = poll(&mut fds, Some(&Timespec::default()))?;
            let changed = ready > 0
                && fds[0]
                    .revents()
                    .intersects(PollFlags::PRI | PollFlags::ERR | PollFlags::NVAL);
            if !changed {
                return Ok(Arc::clone(&w.table));
            }
            // The poll above consumed the change; what is read from here on includes it.
            w.file.rewind()?;
            w.table = Arc::new(read_table(&mut w.file)?);
            return Ok(Arc::clone(&w.table));
        }
        let mut file = File::open(MOUNTINFO)?;
        let table = Arc::new(read_table(&mut file)?);
        *seen = Some(Watched {
            file,
            table: Arc::clone(&table),
        });
        Ok(table)
    }
}

fn read_table(file: &mut File) -> std::io::Result<MountTable> {
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(MountTable::parse(&text))
}

/// How a directory is tied to a protected one through the file systems they live on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Exposure {
    /// The directory is a kernel file system, or one is mounted inside it.
    Kernel {
        /// Where it is mounted.
        point: PathBuf,
        /// Its type.
        fstype: String,
    },
    /// The directory is, lies inside, or contains the protected directory under another name.
    Alias {
        /// The protected directory.
        protected: PathBuf,
        /// Where it shows up.
        point: PathBuf,
        /// `is`, `lies inside` or `contains`.
        relation: &'static str,
    },
}

/// Whether `dir` (canonical) reaches a kernel file system or any of `protected` (canonical)
/// through a mount, whatever names the two have.
pub(crate) fn exposure(table: &MountTable, dir: &Path, protected: &[&Path]) -> Option<Exposure> {
    let here = table.locate(dir)?;
    if here.mount.is_kernel() {
        return Some(Exposure::Kernel {
            point: here.mount.point.clone(),
            fstype: here.mount.fstype.clone(),
        });
    }
    if let Some(m) = table.inside(dir).find(|m| m.is_kernel()) {
        return Some(Exposure::Kernel {
            point: m.point.clone(),
            fstype: m.fstype.clone(),
        });
    }
    for p in protected {
        let Some(there) = table.locate(p) else {
            continue;
        };
        let whole_fs_root = there.inner == Path::new("/") && *p == Path::new("/");
        let same = |device: &str| device == there.mount.device;
        if same(&here.mount.device) {
            let relation = if here.inner == there.inner {
                Some("is")
            } else if here.inner.starts_with(&there.inner) && !whole_fs_root {
                Some("lies inside")
            } else if there.inner.starts_with(&here.inner) {
                Some("contains")
            } else {
                None
            };
            if let Some(relation) = relation {
                return Some(Exposure::Alias {
                    protected: p.to_path_buf(),
                    point: here.mount.point.clone(),
                    relation,
                });
            }
        }
        let shown_inside = table.inside(dir).find(|m| {
            same(&m.device)
                && (there.inner.starts_with(&m.root)
                    || (!whole_fs_root && m.root.starts_with(&there.inner)))
        });
        if let Some(m) = shown_inside {
            return Some(Exposure::Alias {
                protected: p.to_path_buf(),
                point: m.point.clone(),
                relation: "contains",
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / /proc rw,nosuid - proc proc rw
31 22 0:6 / /sys rw - sysfs sysfs rw
40 22 8:1 /var/lib/capsule /srv/view rw - ext4 /dev/sda1 rw
41 22 8:1 /var /srv/other/var rw - ext4 /dev/sda1 rw
42 22 0:5 / /srv/p rw - proc proc rw
43 22 8:1 /home/u/data /srv/ok rw - ext4 /dev/sda1 rw
44 22 8:2 / /mnt/disk rw - ext4 /dev/sdb1 rw
45 22 8:1 /home/u/my\\040dir /srv/sp\\040ace rw master:3 - ext4 /dev/sda1 rw
";

    fn check(dir: &str) -> Option<Exposure> {
        let t = MountTable::parse(TABLE);
        exposure(
            &t,
            Path::new(dir),
            &[Path::new("/var/lib/capsule"), Path::new("/")],
        )
    }

    fn relation(dir: &str) -> &'static str {
        match check(dir) {
            Some(Exposure::Alias { relation, .. }) => relation,
            other => panic!("{dir}: expected an alias, got {other:?}"),
        }
    }

    #[test]
    fn bind_mounts_of_a_protected_directory_are_seen_through() {
        assert_eq!(relation("/srv/view"), "is");
        assert_eq!(relation("/srv/view/keys"), "lies inside");
        assert_eq!(
            relation("/srv/other"),
            "contains",
            "a bind of an ancestor inside"
        );
        assert_eq!(relation("/var/lib"), "contains", "the plain spelling");
        assert!(check("/srv/ok").is_none());
        assert!(check("/srv/ok/sub").is_none());
        assert!(check("/home/u").is_none());
        assert!(check("/mnt/disk").is_none(), "another file system");
        assert!(check("/srv/sp ace").is_none(), "escaped names parse");
    }

    #[test]
    fn kernel_file_systems_are_refused_wherever_they_are_mounted() {
        for dir in ["/srv/p", "/srv/p/self", "/proc", "/sys/kernel"] {
            assert!(
                matches!(check(dir), Some(Exposure::Kernel { .. })),
                "{dir}: {:?}",
                check(dir)
            );
        }
        assert!(matches!(
            check("/srv"),
            Some(Exposure::Kernel { .. }) | Some(Exposure::Alias { .. })
        ));
    }

    #[test]
    fn this_hosts_table_parses_and_locates_the_root() {
        let t = MountTable::read().unwrap_or_else(|e| panic!("{e}"));
        let root = t
            .locate(Path::new("/"))
            .unwrap_or_else(|| panic!("no mount holds /"));
        assert_eq!(root.mount.point, Path::new("/"));
        let proc = t
            .locate(Path::new("/proc/self"))
            .unwrap_or_else(|| panic!("no mount holds /proc"));
        assert!(proc.mount.is_kernel(), "{proc:?}");
    }

    #[test]
    fn an_unchanged_table_is_answered_from_memory() {
        let watch = MountWatch::default();
        let first = watch.current().unwrap_or_else(|e| panic!("{e}"));
        let again = watch.current().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            Arc::ptr_eq(&first, &again),
            "no mount changed, so the table must not have been read again"
        );
        assert!(first.locate(Path::new("/")).is_some());
    }

    /// Set in the copy of this test that runs inside its own mount namespace.
    const IN_NAMESPACE: &str = "CAPSULE_MOUNT_WATCH_IN_NAMESPACE";

    /// Mounting needs a mount namespace of its own, so the test runs itself again under
    /// `unshare -m`: there it mounts a tmpfs and checks the watch sees it.
    #[test]
    fn a_mount_made_after_the_first_read_is_seen() {
        if std::env::var_os(IN_NAMESPACE).is_some() {
            return in_namespace();
        }
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private"])
            .arg(exe)
            .args([
                "--exact",
                "mounts::tests::a_mount_made_after_the_first_read_is_seen",
                "--nocapture",
            ])
            .env(IN_NAMESPACE, "1")
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("`unshare` is not installed: the mount-change part is not run");
                return;
            }
            Err(e) => panic!("unshare: {e}"),
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(1) && stderr.contains("unshare failed") {
            eprintln!(
                "no mount namespace for this user ({stderr}): the mount-change part is not run"
            );
            return;
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("1 passed"),
            "the copy ran no test: {stdout}"
        );
    }

    fn in_namespace() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
        let watch = MountWatch::default();
        let before = watch.current().unwrap_or_else(|e| panic!("{e}"));
        let point = |t: &MountTable| t.locate(&dir).map(|l| l.mount.point.clone());
        assert_ne!(point(&before).as_deref(), Some(dir.as_path()));

        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "capsule-watch-test"])
            .arg(&dir)
            .status()
            .unwrap_or_else(|e| panic!("mount: {e}"));
        assert!(status.success(), "mount failed: {status}");

        let after = watch.current().unwrap_or_else(|e| panic!("{e}"));
        assert!(!Arc::ptr_eq(&before, &after), "the change was not noticed");
        let found = after
            .locate(&dir)
            .unwrap_or_else(|| panic!("{} is not in the new table", dir.display()));
        assert_eq!(found.mount.point, dir);
        assert_eq!(found.mount.fstype, "tmpfs");
        let again = watch.current().unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(&after, &again), "one change is read once");

        let status = std::process::Command::new("umount")
            .arg(&dir)
            .status()
            .unwrap_or_else(|e| panic!("umount: {e}"));
        assert!(status.success());
        let gone = watch.current().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(point(&gone).as_deref(), Some(dir.as_path()));
    }
}
