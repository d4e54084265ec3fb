//! Principal profiles: a generated profile (each key well-typed or not, quotas at and past
//! their bounds) parses to exactly what the documented rules say, or is refused as malformed;
//! raw and damaged text never panics and never yields a profile that silently differs from
//! the defaults in a way the text did not ask for.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use capsule_security::{AUDIT_FIREHOSE_GRANT, PrincipalProfile, ProfileError, Quotas};

use crate::{mutate_text, pick, short_string, toml_str};

/// A TOML value as the generator writes it.
#[derive(Clone, Debug)]
pub enum Val {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// An array of strings.
    Strs(Vec<String>),
    /// An array mixing a string and an integer.
    Mixed,
}

impl Val {
    /// The value as TOML.
    pub fn render(&self) -> String {
        match self {
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Str(s) => toml_str(s),
            Self::Strs(v) => {
                let items: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
                format!("[{}]", items.join(", "))
            }
            Self::Mixed => "[\"a\", 1]".to_string(),
        }
    }
}

/// Quota names the host knows, and one it does not.
const QUOTA_KEYS: &[&str] = &[
    "max_memory_bytes",
    "max_timeout_secs",
    "max_ipc_throughput_bytes",
    "max_cpu_fuel_per_sec",
    "max_background_processes",
    "max_http_streams",
    "max_storage_bytes",
    "max_gpus",
];

/// A generated profile: which keys are present and with what values.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// `enabled`.
    pub enabled: Option<Val>,
    /// `groups`, `grants`, `revokes`.
    pub lists: [Option<Val>; 3],
    /// `[quotas]` entries (no key twice); `None` = no quotas table.
    pub quotas: Option<Vec<(&'static str, Val)>>,
    /// `quotas` written as a non-table value instead.
    pub quotas_not_table: bool,
    /// An unknown top-level key.
    pub unknown: bool,
}

fn grant_name(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    if u.ratio(1, 6)? {
        return short_string(u, 6);
    }
    Ok(pick(
        u,
        &[
            AUDIT_FIREHOSE_GRANT,
            "x",
            "",
            "audit:*",
            "AUDIT:READ_ALL",
            "admins",
        ],
    )?
    .to_string())
}

/// Whether to make a deliberate mistake: never in a clean model, `num` in `den` otherwise.
fn bad(u: &mut Unstructured<'_>, noisy: bool, num: u32, den: u32) -> arbitrary::Result<bool> {
    if noisy { u.ratio(num, den) } else { Ok(false) }
}

fn list_val(u: &mut Unstructured<'_>, noisy: bool) -> arbitrary::Result<Val> {
    if bad(u, noisy, 1, 3)? {
        return Ok(match u.int_in_range(0u8..=2)? {
            0 => Val::Str(grant_name(u)?),
            1 => Val::Mixed,
            _ => Val::Int(1),
        });
    }
    let n = u.int_in_range(0..=4)?;
    Ok(Val::Strs(
        (0..n)
            .map(|_| grant_name(u))
            .collect::<arbitrary::Result<_>>()?,
    ))
}

fn quota_val(u: &mut Unstructured<'_>, noisy: bool) -> arbitrary::Result<Val> {
    if !bad(u, noisy, 1, 2)? {
        return Ok(match u.int_in_range(0u8..=5)? {
            0 => Val::Int(1),
            1 => Val::Int(i64::from(u32::MAX)),
            _ => Val::Int(u.int_in_range(1..=1 << 40)?),
        });
    }
    Ok(match u.int_in_range(0u8..=7)? {
        0 => Val::Int(0),
        1 => Val::Int(-1),
        2 => Val::Int(i64::from(u32::MAX) + 1),
        3 => Val::Int(i64::MAX),
        4 => Val::Int(i64::MIN),
        5 => Val::Str("1".into()),
        6 => Val::Bool(true),
        _ => Val::Int(u.int_in_range(1..=1 << 40)?),
    })
}

impl<'a> Arbitrary<'a> for Model {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // Half the models make no deliberate mistake, so the accepted side is explored too.
        let noisy = u.ratio(1, 2)?;
        let mut m = Self::default();
        if u.ratio(1, 2)? {
            m.enabled = Some(if bad(u, noisy, 1, 3)? {
                if u.ratio(1, 2)? {
                    Val::Str("yes".into())
                } else {
                    Val::Int(1)
                }
            } else {
                Val::Bool(bool::arbitrary(u)?)
            });
        }
        for slot in &mut m.lists {
            if u.ratio(1, 2)? {
                *slot = Some(list_val(u, noisy)?);
            }
        }
        if bad(u, noisy, 1, 10)? {
            m.quotas_not_table = true;
        } else if u.ratio(2, 3)? {
            let mut entries = Vec::new();
            for key in QUOTA_KEYS {
                let present = if *key == "max_gpus" {
                    bad(u, noisy, 1, 5)?
                } else {
                    u.ratio(1, 3)?
                };
                if present {
                    entries.push((*key, quota_val(u, noisy)?));
                }
            }
            m.quotas = Some(entries);
        }
        m.unknown = bad(u, noisy, 1, 10)?;
        Ok(m)
    }
}

impl Model {
    /// The profile file this model describes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(v) = &self.enabled {
            out.push_str(&format!("enabled = {}\n", v.render()));
        }
        for (name, v) in ["groups", "grants", "revokes"].iter().zip(&self.lists) {
            if let Some(v) = v {
                out.push_str(&format!("{name} = {}\n", v.render()));
            }
        }
        if self.unknown {
            out.push_str("colour = \"blue\"\n");
        }
        if self.quotas_not_table {
            out.push_str("quotas = 5\n");
        }
        if let Some(entries) = &self.quotas {
            out.push_str("[quotas]\n");
            for (k, v) in entries {
                out.push_str(&format!("{k} = {}\n", v.render()));
            }
        }
        out
    }

    /// What the documented rules make of this model: the profile, or `None` (malformed).
    pub fn expected(&self) -> Option<PrincipalProfile> {
        let mut p = PrincipalProfile::default();
        if self.unknown || self.quotas_not_table {
            return None;
        }
        match &self.enabled {
            None => {}
            Some(Val::Bool(b)) => p.enabled = *b,
            Some(_) => return None,
        }
        for (slot, v) in [&mut p.groups, &mut p.grants, &mut p.revokes]
            .into_iter()
            .zip(&self.lists)
        {
            match v {
                None => {}
                Some(Val::Strs(list)) => slot.clone_from(list),
                Some(_) => return None,
            }
        }
        if let Some(entries) = &self.quotas {
            p.quotas = expected_quotas(entries)?;
        }
        Some(p)
    }
}

fn expected_quotas(entries: &[(&str, Val)]) -> Option<Quotas> {
    let mut q = Quotas::default();
    for (key, v) in entries {
        let Val::Int(i) = v else { return None };
        let n = u64::try_from(*i).ok()?;
        let positive = (n >= 1).then_some(n);
        let small = u32::try_from(n).ok();
        match *key {
            "max_memory_bytes" => q.max_memory_bytes = positive?,
            "max_timeout_secs" => q.max_timeout_secs = positive?,
            "max_ipc_throughput_bytes" => q.max_ipc_throughput_bytes = positive?,
            "max_cpu_fuel_per_sec" => q.max_cpu_fuel_per_sec = Some(positive?),
            "max_background_processes" => q.max_background_processes = small?,
            "max_http_streams" => q.max_http_streams = small?,
            "max_storage_bytes" => q.max_storage_bytes = n,
            _ => return None,
        }
    }
    Some(q)
}

/// A profile text: generated from a model, a model's text with one edit, or raw text.
#[derive(Debug)]
pub enum Input {
    /// Well-formed TOML whose meaning the model predicts.
    Model(Model),
    /// A model's text with one random edit.
    Damaged(String),
    /// Arbitrary text.
    Raw(String),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=9)? {
            0..=5 => Self::Model(Model::arbitrary(u)?),
            6..=8 => {
                let text = Model::arbitrary(u)?.render();
                Self::Damaged(mutate_text(u, &text)?)
            }
            _ => Self::Raw(String::arbitrary(u)?),
        })
    }
}

const FILE: &str = "/state/profiles/p.toml";

fn check_parsed(text: &str, r: &Result<PrincipalProfile, ProfileError>) -> Result<(), String> {
    match r {
        Ok(p) => {
            for g in p.grants.iter().chain(&p.revokes) {
                let want = p.grants.contains(g) && !p.revokes.contains(g);
                if p.has_grant(g) != want {
                    return Err(format!("has_grant({g:?}) ignores the revoke rule"));
                }
            }
            let firehose = p.grants.iter().any(|g| g == AUDIT_FIREHOSE_GRANT)
                && !p.revokes.iter().any(|g| g == AUDIT_FIREHOSE_GRANT);
            if p.audit_firehose() != firehose {
                return Err("audit_firehose disagrees with grants and revokes".into());
            }
            let q = &p.quotas;
            if q.max_memory_bytes == 0
                || q.max_timeout_secs == 0
                || q.max_ipc_throughput_bytes == 0
                || q.max_cpu_fuel_per_sec == Some(0)
            {
                return Err(format!("a zero quota was accepted from {text:?}"));
            }
            Ok(())
        }
        Err(ProfileError::Malformed { file, reason }) => {
            if file != Path::new(FILE) || reason.is_empty() {
                return Err(format!(
                    "malformed-profile error names {file:?}: {reason:?}"
                ));
            }
            if !r
                .as_ref()
                .err()
                .is_some_and(|e| e.to_string().contains(FILE))
            {
                return Err("the error message does not name the file".into());
            }
            Ok(())
        }
        Err(e) => Err(format!("parsing text gave an I/O error: {e}")),
    }
}

/// Parses the input's text and checks the outcome.
pub fn check(input: &Input) -> Result<(), String> {
    let text = match input {
        Input::Model(m) => m.render(),
        Input::Damaged(t) | Input::Raw(t) => t.clone(),
    };
    let got = PrincipalProfile::parse(&text, Path::new(FILE));
    check_parsed(&text, &got)?;
    if let Input::Model(m) = input {
        let want = m.expected();
        match (&got, &want) {
            (Ok(g), Some(w)) if g == w => {}
            (Err(_), None) => {}
            _ => {
                return Err(format!(
                    "profile {text:?} parsed to {got:?}, the rules say {want:?}"
                ));
            }
        }
    }
    Ok(())
}
