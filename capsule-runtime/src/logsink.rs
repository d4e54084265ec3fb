//! Capsule log files: one per (principal, capsule), opened through `capsule-vfs` (no symlink
//! following, mode 0600) relative to the principal's home handle when the first record is
//! written (a capsule that never logs holds no descriptor for its log), written one
//! timestamped line per record. Guest-supplied text is
//! bounded and has its control characters escaped, so a capsule cannot forge extra lines. A
//! file that reaches [`MAX_LOG_FILE_BYTES`] is rotated to `<capsule>.log.1` (replacing the
//! previous generation), so a capsule's logs for one principal never take more than about
//! twice that.

use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use capsule_vfs::{LogFile, Mount};
use parking_lot::Mutex;

/// Longest message kept per log record, in bytes; longer ones are truncated and marked.
pub(crate) const MAX_LOG_MESSAGE: usize = 16 * 1024;

/// Size at which a capsule log file is rotated: the record that reaches it is the last one
/// in that file, which becomes `<capsule>.log.1`.
pub const MAX_LOG_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Serialises rotations: several sinks (one per scope) may append to the same file.
static ROTATION: Mutex<()> = Mutex::new(());

/// Where a sink stands with its file.
#[derive(Debug)]
enum LogState {
    /// Not opened yet: opened from this home handle by the first record.
    Pending {
        home: Arc<Mount>,
        capsule: String,
    },
    Open(LogFile),
    /// Opening failed (reported once); records are dropped, never sent elsewhere.
    Failed,
}

/// A capsule log file; clones append to the same file.
#[derive(Clone, Debug)]
pub(crate) struct LogSink {
    file: Arc<Mutex<LogState>>,
}

impl LogSink {
    /// The log of `capsule` in the principal's opened `home`, opened by the first record.
    pub(crate) fn lazy(home: Arc<Mount>, capsule: &str) -> Self {
        Self {
            file: Arc::new(Mutex::new(LogState::Pending {
                home,
                capsule: capsule.to_string(),
            })),
        }
    }

    /// Whether the file is open now.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        matches!(*self.file.lock(), LogState::Open(_))
    }

    /// Appends one record, rotating the file once it reaches [`MAX_LOG_FILE_BYTES`].
    pub(crate) fn write(&self, level: &str, message: &str) {
        let line = format!("{} {level} {}\n", rfc3339_now(), sanitize(message));
        let mut state = self.file.lock();
        if let LogState::Pending { home, capsule } = &*state {
            *state = match LogFile::open_in_home(home, capsule) {
                Ok(f) => LogState::Open(f),
                Err(e) => {
                    tracing::warn!(capsule = %capsule, home = %home.root().display(), error = %e, "cannot open the capsule log; its records are dropped");
                    LogState::Failed
                }
            };
        }
        let LogState::Open(log) = &mut *state else {
            return;
        };
        if let Err(e) = log.file().write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "could not write a capsule log record");
            return;
        }
        let full = log
            .file()
            .metadata()
            .is_ok_and(|m| m.len() >= MAX_LOG_FILE_BYTES);
        if full {
            let _rotating = ROTATION.lock();
            if let Err(e) = log.rotate() {
                tracing::warn!(error = %e, "could not rotate a capsule log");
            }
        }
    }

    /// Appends raw guest output (stdout/stderr), escaped like messages.
    pub(crate) fn write_output(&self, stream: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.split_inclusive('\n') {
            let line = line.strip_suffix('\n').unwrap_or(line);
            if !line.is_empty() {
                self.write(stream, line);
            }
        }
    }
}

/// Bounds `message` and escapes control characters (newlines included).
pub(crate) fn sanitize(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_LOG_MESSAGE) + 16);
    for c in message.chars() {
        if out.len() >= MAX_LOG_MESSAGE {
            out.push_str("…[truncated]");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339_now() -> String {
    rfc3339_ms(unix_ms())
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with millisecond precision.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = capsule_store::civil_date(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_795_435_200_000), "2026-11-23T12:00:00.000Z");
    }

    fn home(state: &std::path::Path) -> Arc<Mount> {
        let principal = capsule_bus::PrincipalId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        let dirs = capsule_vfs::StateLayout::new(state)
            .open_principal_dirs(&principal)
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(dirs.home)
    }

    #[test]
    fn a_sink_opens_its_file_with_the_first_record() {
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let home = home(state.path());
        let sink = LogSink::lazy(Arc::clone(&home), "pong");
        let path = home.root().join(".local/log/pong.log");
        assert!(!sink.is_open() && !path.exists());
        sink.write("info", "hello");
        sink.clone().write("info", "again");
        assert!(sink.is_open());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("info hello"), "{text}");
    }

    #[test]
    fn a_link_planted_before_the_first_record_is_not_followed() {
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let home = home(state.path());
        let local = home.root().join(".local");
        std::fs::create_dir_all(&local).unwrap_or_else(|e| panic!("{e}"));
        // The host made `.local/log` when it opened the home; a process of the principal's
        // swaps a link in.
        std::fs::remove_dir(local.join("log")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(outside.path(), local.join("log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let sink = LogSink::lazy(home, "pong");
        sink.write("info", "secret");
        assert!(!sink.is_open());
        assert_eq!(
            std::fs::read_dir(outside.path())
                .unwrap_or_else(|e| panic!("{e}"))
                .count(),
            0,
            "nothing was written through the link"
        );
    }

    #[test]
    fn sanitize_escapes_and_bounds() {
        assert_eq!(sanitize("a\nb\tc"), "a\\nb\\tc");
        let long = "x".repeat(MAX_LOG_MESSAGE * 2);
        let s = sanitize(&long);
        assert!(s.len() < MAX_LOG_MESSAGE + 32);
        assert!(s.ends_with("[truncated]"));
    }
}
