//! Reading `<state>/process-uids.json`: the host uses the record only if every part of it is
//! what the host itself would have written — a regular file (never followed through a
//! symbolic link, never a FIFO), a JSON object naming each principal once, by a valid
//! principal id, with a user id that may be given out (not 0, not the host's own, not `-1`),
//! lies in the configured range and belongs to no other principal. Anything else refuses
//! every spawn with a reason naming the fault, so a tampered record can never map a
//! principal to root or to another principal's id.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::ops::RangeInclusive;
use std::path::Path;

use capsule_bus::PrincipalId;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::{ProcessError, assignable, unreadable};

/// Largest record read (a principal id and a number per entry).
const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;

/// The record's entries, refusing a principal named twice.
struct Entries(BTreeMap<String, u32>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of principal ids to user ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, u32>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "principal `{k}` is recorded twice"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Each)
    }
}

/// The record at `file` for ids from `range`; empty if there is none yet.
pub(super) fn load(
    file: &Path,
    range: &RangeInclusive<u32>,
) -> Result<BTreeMap<String, u32>, ProcessError> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(unreadable(file, "it is a symbolic link"));
        }
        Err(e) => return Err(unreadable(file, e)),
    };
    let meta = f.metadata().map_err(|e| unreadable(file, e))?;
    if !meta.is_file() {
        return Err(unreadable(file, "it is not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_RECORD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| unreadable(file, e))?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(unreadable(file, "it is too large"));
    }
    let Entries(table) = serde_json::from_str(&text).map_err(|e| unreadable(file, e))?;
    let mut seen = std::collections::HashSet::new();
    for (p, &id) in &table {
        if PrincipalId::parse(p).is_err() {
            return Err(unreadable(file, format!("`{p}` is not a principal id")));
        }
        if !assignable(id) {
            return Err(unreadable(
                file,
                format!("principal `{p}` is recorded with user id {id}, which is never given out"),
            ));
        }
        if !range.contains(&id) {
            return Err(unreadable(
                file,
                format!(
                    "principal `{p}` is recorded with user id {id}, outside the range {}-{}; \
                     widen the range or remove the entry",
                    range.start(),
                    range.end()
                ),
            ));
        }
        if !seen.insert(id) {
            return Err(unreadable(
                file,
                format!("user id {id} is recorded for more than one principal (`{p}`)"),
            ));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `load` says of a record with `text`, for ids 10-20.
    fn verdict(text: &str) -> Result<BTreeMap<String, u32>, ProcessError> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("process-uids.json");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        load(&file, &(10..=20))
    }

    fn refused(text: &str, why: &str) {
        match verdict(text) {
            Err(ProcessError::Unenforceable(m)) => assert!(m.contains(why), "{text}: {m}"),
            other => panic!("{text} was not refused: {other:?}"),
        }
    }

    #[test]
    fn a_tampered_record_is_refused_with_its_fault_named() {
        refused(r#"{"alice": 0}"#, "never given out");
        refused(r#"{"alice": 4294967295}"#, "never given out");
        refused(r#"{"alice": 9}"#, "outside the range");
        refused(r#"{"alice": 21}"#, "outside the range");
        refused(r#"{"alice": 11, "bob": 11}"#, "more than one principal");
        refused(r#"{"alice": 11, "alice": 12}"#, "recorded twice");
        refused(r#"{"alice": "11"}"#, "invalid type");
        refused(r#"{"alice": -1}"#, "invalid value");
        refused(r#"{"alice": 11.5}"#, "invalid type");
        refused(r#"[["alice", 11]]"#, "invalid type");
        refused(r#"{"../x": 11}"#, "not a principal id");
        refused("", "EOF");
        let ok = verdict(r#"{"alice": 10, "bob": 20}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.get("bob"), Some(&20));
    }

    #[test]
    fn a_link_or_fifo_in_place_of_the_record_is_refused_and_not_followed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let real = dir.path().join("elsewhere.json");
        std::fs::write(&real, r#"{"alice": 11}"#).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("process-uids.json");
        std::os::unix::fs::symlink(&real, &file).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            load(&file, &(10..=20)),
            Err(ProcessError::Unenforceable(m)) if m.contains("symbolic link")
        ));
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
        let made = std::process::Command::new("mkfifo")
            .arg(&file)
            .status()
            .unwrap_or_else(|e| panic!("mkfifo: {e}"));
        assert!(made.success());
        // Refused at once, not waiting for a writer.
        assert!(matches!(
            load(&file, &(10..=20)),
            Err(ProcessError::Unenforceable(m)) if m.contains("not a regular file")
        ));
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(load(&file, &(10..=20)).is_ok_and(|t| t.is_empty()));
    }
}
