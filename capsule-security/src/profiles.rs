//! Principal profiles as an API: read, list, write and delete the files under
//! `<state>/profiles/`, and render a profile back to the TOML it is read from. A profile is
//! written only after the text it renders to has been read back into the very same profile
//! (so nothing is written that the host would refuse or read differently), atomically and
//! private to the host's user, so a running host never sees half a profile.

use std::path::{Path, PathBuf};

use capsule_ids::PrincipalId;

use crate::private::{create_private_dir, write_atomic};
use crate::profile::{PrincipalProfile, ProfileError, Quotas};

impl PrincipalProfile {
    /// The profile as the TOML [`PrincipalProfile::parse`] reads, every quota written out.
    pub fn to_toml(&self) -> String {
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
            format!("[{}]", quoted.join(", "))
        };
        // Destructured without `..` so that a quota added to `Quotas` cannot be left out of
        // the text (a profile would then fail to read back as itself).
        let Quotas {
            max_memory_bytes,
            max_timeout_secs,
            max_ipc_throughput_bytes,
            max_cpu_fuel_per_sec,
            max_background_processes,
            max_http_streams,
            max_http_response_bytes,
            max_storage_bytes,
            max_claimed_principals_per_minute,
            max_process_cpu_secs,
            max_process_memory_bytes,
            max_process_open_files,
            max_process_pids,
            max_process_wall_secs,
            max_process_output_bytes,
            max_sockets,
            max_listeners,
        } = &self.quotas;
        let mut out = format!(
            "enabled = {}\ngroups = {}\ngrants = {}\nrevokes = {}\n\n[quotas]\n",
            self.enabled,
            list(&self.groups),
            list(&self.grants),
            list(&self.revokes)
        );
        for (key, value) in [
            ("max_memory_bytes", Some(*max_memory_bytes)),
            ("max_timeout_secs", Some(*max_timeout_secs)),
            ("max_ipc_throughput_bytes", Some(*max_ipc_throughput_bytes)),
            ("max_cpu_fuel_per_sec", *max_cpu_fuel_per_sec),
            (
                "max_background_processes",
                Some(u64::from(*max_background_processes)),
            ),
            ("max_http_streams", Some(u64::from(*max_http_streams))),
            ("max_http_response_bytes", Some(*max_http_response_bytes)),
            ("max_storage_bytes", Some(*max_storage_bytes)),
            ("max_sockets", Some(u64::from(*max_sockets))),
            ("max_listeners", Some(u64::from(*max_listeners))),
            (
                "max_claimed_principals_per_minute",
                Some(u64::from(*max_claimed_principals_per_minute)),
            ),
            ("max_process_cpu_secs", Some(*max_process_cpu_secs)),
            ("max_process_memory_bytes", Some(*max_process_memory_bytes)),
            (
                "max_process_open_files",
                Some(u64::from(*max_process_open_files)),
            ),
            ("max_process_pids", Some(u64::from(*max_process_pids))),
            ("max_process_wall_secs", Some(*max_process_wall_secs)),
            ("max_process_output_bytes", Some(*max_process_output_bytes)),
        ] {
            if let Some(v) = value {
                out.push_str(&format!("{key} = {v}\n"));
            }
        }
        out
    }

    /// Checks that the profile can be stored: its text reads back as exactly this profile.
    /// Refused are values a profile file cannot carry (a zero memory, deadline, throughput
    /// or fuel quota; a lifted fuel limit; a number beyond TOML's integers).
    pub fn validate(&self) -> Result<(), String> {
        if self.quotas.max_cpu_fuel_per_sec.is_none() {
            return Err(
                "a lifted fuel limit (max_cpu_fuel_per_sec = None) cannot be stored".into(),
            );
        }
        let text = self.to_toml();
        match Self::parse(&text, Path::new("<profile>")) {
            Ok(back) if back == *self => Ok(()),
            Ok(_) => Err("the profile does not survive being written and read back".into()),
            Err(ProfileError::Malformed { reason, .. }) => Err(reason),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The principal profiles of one state directory.
#[derive(Clone, Debug)]
pub struct ProfileStore {
    dir: PathBuf,
}

impl ProfileStore {
    /// The profiles under `<state_dir>/profiles/`.
    pub fn new(state_dir: impl AsRef<Path>) -> Self {
        Self {
            dir: state_dir.as_ref().join("profiles"),
        }
    }

    /// Where `principal`'s profile lives.
    pub fn path(&self, principal: &PrincipalId) -> PathBuf {
        self.dir.join(format!("{}.toml", principal.as_str()))
    }

    /// The profile in force for `principal`: the stored one, or the defaults when none is.
    pub fn get(&self, principal: &PrincipalId) -> Result<PrincipalProfile, ProfileError> {
        Ok(self.stored(principal)?.unwrap_or_default())
    }

    /// The stored profile of `principal`, `None` when there is none.
    pub fn stored(
        &self,
        principal: &PrincipalId,
    ) -> Result<Option<PrincipalProfile>, ProfileError> {
        let file = self.path(principal);
        match std::fs::read_to_string(&file) {
            Ok(text) => PrincipalProfile::parse(&text, &file).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ProfileError::Io { file, source }),
        }
    }

    /// Stores `profile` for `principal` after [validating](PrincipalProfile::validate) it,
    /// replacing any previous one atomically (0600 file, 0700 directory).
    pub fn set(
        &self,
        principal: &PrincipalId,
        profile: &PrincipalProfile,
    ) -> Result<(), ProfileError> {
        let file = self.path(principal);
        profile
            .validate()
            .map_err(|reason| ProfileError::Malformed {
                file: file.clone(),
                reason,
            })?;
        let io = |source| ProfileError::Io {
            file: file.clone(),
            source,
        };
        create_private_dir(&self.dir).map_err(io)?;
        write_atomic(&file, profile.to_toml().as_bytes()).map_err(io)
    }

    /// Removes `principal`'s profile (it falls back to the defaults); whether one existed.
    pub fn delete(&self, principal: &PrincipalId) -> Result<bool, ProfileError> {
        let file = self.path(principal);
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ProfileError::Io { file, source }),
        }
    }

    /// The principals that have a stored profile, sorted. Files that are not
    /// `<principal>.toml` with a valid principal id (such as a write's temporary file) are
    /// not profiles and are skipped.
    pub fn list(&self) -> Result<Vec<PrincipalId>, ProfileError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ProfileError::Io {
                    file: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ProfileError::Io {
                file: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".toml")) else {
                continue;
            };
            if let Ok(p) = PrincipalId::parse(stem)
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Quotas;

    fn pid(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_profile_round_trips_through_its_text() {
        let p = PrincipalProfile {
            enabled: false,
            groups: vec!["ops \"night\"".into(), "a\\b\n".into()],
            grants: vec!["audit:read_all".into()],
            revokes: vec![],
            // Every quota off its default, so one the text leaves out reads back different.
            quotas: Quotas {
                max_memory_bytes: 1 << 20,
                max_timeout_secs: 7,
                max_ipc_throughput_bytes: 1234,
                max_cpu_fuel_per_sec: Some(99),
                max_background_processes: 3,
                max_http_streams: 5,
                max_http_response_bytes: 4321,
                max_storage_bytes: 0,
                max_claimed_principals_per_minute: 11,
                max_process_cpu_secs: 13,
                max_process_memory_bytes: 1 << 24,
                max_process_open_files: 17,
                max_process_pids: 19,
                max_process_wall_secs: 23,
                max_process_output_bytes: 29,
                max_sockets: 31,
                max_listeners: 2,
            },
        };
        assert_ne!(p.quotas, Quotas::default());
        let back = PrincipalProfile::parse(&p.to_toml(), Path::new("x"))
            .unwrap_or_else(|e| panic!("{e}\n{}", p.to_toml()));
        assert_eq!(back, p);
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(PrincipalProfile::default().validate(), Ok(()));
    }

    #[test]
    fn what_a_file_cannot_carry_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = ProfileStore::new(dir.path());
        for bad in [
            Quotas {
                max_memory_bytes: 0,
                ..Quotas::default()
            },
            Quotas {
                max_cpu_fuel_per_sec: None,
                ..Quotas::default()
            },
            Quotas {
                max_timeout_secs: u64::MAX,
                ..Quotas::default()
            },
        ] {
            let p = PrincipalProfile {
                quotas: bad.clone(),
                ..PrincipalProfile::default()
            };
            match store.set(&pid("alice"), &p) {
                Err(ProfileError::Malformed { .. }) => {}
                other => panic!("{bad:?} stored: {other:?}"),
            }
            assert!(!store.path(&pid("alice")).exists());
        }
    }

    #[test]
    fn set_get_list_delete() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = ProfileStore::new(dir.path());
        assert_eq!(store.list().unwrap_or_else(|e| panic!("{e}")), vec![]);
        assert_eq!(
            store.get(&pid("bob")).unwrap_or_else(|e| panic!("{e}")),
            PrincipalProfile::default()
        );
        let mut p = PrincipalProfile::default();
        p.quotas.max_storage_bytes = 4096;
        for who in ["bob", "alice"] {
            store.set(&pid(who), &p).unwrap_or_else(|e| panic!("{e}"));
        }
        // Not profiles: another extension, an invalid principal id, a directory.
        std::fs::write(dir.path().join("profiles/notes.txt"), "x")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("profiles/.alice.toml.tmp"), "x")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("profiles/dir.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store.list().unwrap_or_else(|e| panic!("{e}")),
            vec![pid("alice"), pid("bob")]
        );
        // What the runtime reads is what was stored.
        assert_eq!(
            PrincipalProfile::load(dir.path(), &pid("bob")).unwrap_or_else(|e| panic!("{e}")),
            p
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path(&pid("bob")))
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.delete(&pid("bob")).unwrap_or_else(|e| panic!("{e}")));
        assert!(!store.delete(&pid("bob")).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            store.list().unwrap_or_else(|e| panic!("{e}")),
            vec![pid("alice")]
        );
        // A malformed stored profile is an error, never the defaults.
        std::fs::write(store.path(&pid("carol")), "enabled = 3").unwrap_or_else(|e| panic!("{e}"));
        assert!(store.get(&pid("carol")).is_err());
    }
}
