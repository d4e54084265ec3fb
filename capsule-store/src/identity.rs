//! The identity directory: host users and the platform identities linked to them, kept in the
//! runtime's redb database. Contract: a platform identity (platform, platform user id) is
//! linked to at most one user, ever, at any moment; every change is one durable transaction
//! that keeps the link table and each user's link index in step; every field is validated
//! and bounded before it is stored, so nothing a guest sends can grow a record or the
//! directory without limit. The directory is host-wide, so what a capsule's calls add to it is
//! also charged to that capsule ([`IdentityStore::create_user_for`],
//! [`IdentityStore::link_for`]) and bounded by [`IdentityLimits`]: one capsule filling its
//! share never stops another from creating users or linking (links it made are given back to
//! it when unlinked; users are never removed, so users it created stay charged).
//!
//! Host user ids are principal ids (`capsule-ids`), so a resolved user can be acted for as it
//! is. Who may see or change which links is the runtime's decision; this store offers the
//! conditional forms ([`IdentityStore::unlink`] with an owner to match) that let it decide
//! inside the transaction.

use std::ops::Bound;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use capsule_ids::{CapsuleName, PrincipalId};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::{InvalidField, KvStore};

/// User id → display name (a flag byte, then the name's bytes).
const USERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("identity_users");
/// `platform\0platform user id` → `user\0linked at\0method`.
const LINKS: TableDefinition<'_, &str, &str> = TableDefinition::new("identity_links");
/// `user\0platform\0platform user id` → nothing: each user's links, in order.
const USER_LINKS: TableDefinition<'_, &str, ()> = TableDefinition::new("identity_user_links");
/// `capsule\0users` / `capsule\0links` → how many users that capsule created / how many of
/// the current links it made.
const CHARGES: TableDefinition<'_, &str, u64> = TableDefinition::new("identity_charges");

/// Longest platform name, in bytes (`[a-z0-9._-]`).
pub const MAX_PLATFORM_BYTES: usize = 64;
/// Longest platform user id, in bytes.
pub const MAX_PLATFORM_USER_BYTES: usize = 256;
/// Longest link method, in bytes (`[A-Za-z0-9._:-]`).
pub const MAX_METHOD_BYTES: usize = 64;
/// Longest display name, in bytes.
pub const MAX_DISPLAY_NAME_BYTES: usize = 128;
/// Most platform identities one user may have linked.
pub const MAX_LINKS_PER_USER: usize = 64;
/// Most users the directory holds.
pub const MAX_USERS: u64 = 100_000;
/// Most users one capsule creates, by default.
pub const MAX_USERS_PER_CAPSULE: u64 = 10_000;
/// Most current links one capsule made, by default.
pub const MAX_LINKS_PER_CAPSULE: u64 = 20_000;

/// How much of the host-wide directory one capsule's calls may fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityLimits {
    /// Most users one capsule creates (ever: users are never removed).
    pub users_per_capsule: u64,
    /// Most links one capsule made that are linked at once.
    pub links_per_capsule: u64,
}

impl IdentityLimits {
    /// Limits of `users_per_capsule` users and `links_per_capsule` links.
    pub fn new(users_per_capsule: u64, links_per_capsule: u64) -> Self {
        Self {
            users_per_capsule,
            links_per_capsule,
        }
    }
}

impl Default for IdentityLimits {
    /// [`MAX_USERS_PER_CAPSULE`] and [`MAX_LINKS_PER_CAPSULE`].
    fn default() -> Self {
        Self::new(MAX_USERS_PER_CAPSULE, MAX_LINKS_PER_CAPSULE)
    }
}

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A field is empty, too long or has characters its grammar does not allow.
    #[error(transparent)]
    InvalidInput(InvalidField),
    /// The host user does not exist.
    #[error("no such user")]
    UserNotFound,
    /// The platform identity is not linked (to the user the caller may see).
    #[error("the platform identity is not linked")]
    LinkNotFound,
    /// The platform identity is linked to a user already.
    #[error("the platform identity is already linked")]
    AlreadyLinked,
    /// A directory bound would be exceeded.
    #[error("{what}: the limit is {limit}")]
    Full {
        /// Which bound.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The database failed.
    #[error("identity storage failure: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Storage(e.to_string())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> IdentityError {
    IdentityError::InvalidInput(InvalidField::new(field, reason))
}

/// `text` is 1 to `max` bytes of characters `allowed` accepts.
fn check(
    field: &'static str,
    text: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), IdentityError> {
    if text.is_empty() || text.len() > max {
        return Err(invalid(
            field,
            format!("must be 1 to {max} bytes ({} given)", text.len()),
        ));
    }
    if !text.chars().all(allowed) {
        return Err(invalid(field, "has characters that are not allowed"));
    }
    Ok(())
}

/// Printable text: no control characters, line or paragraph separators, and nothing that
/// renders as nothing (format characters, fillers, variation selectors, tags), any of which
/// could make two ids look alike on a screen or forge terminal output.
pub fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// Parses a host user id: a principal id.
pub fn parse_user(text: &str) -> Result<PrincipalId, IdentityError> {
    PrincipalId::parse(text).map_err(|e| invalid("user id", e.to_string()))
}

/// Checks a link method: 1 to [`MAX_METHOD_BYTES`] of `[A-Za-z0-9._:-]`.
pub fn check_method(method: &str) -> Result<(), IdentityError> {
    check("method", method, MAX_METHOD_BYTES, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
    })
}

/// Checks a display name: 1 to [`MAX_DISPLAY_NAME_BYTES`] of printable text.
pub fn check_display_name(name: &str) -> Result<(), IdentityError> {
    check("display name", name, MAX_DISPLAY_NAME_BYTES, printable)
}

/// A platform identity, validated: a platform name (`[a-z0-9._-]`, lower case so one platform
/// has one spelling) and the user's printable id there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlatformIdentity {
    platform: String,
    user: String,
}

impl PlatformIdentity {
    /// Validates both parts.
    pub fn new(platform: &str, platform_user_id: &str) -> Result<Self, IdentityError> {
        check("platform", platform, MAX_PLATFORM_BYTES, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
        })?;
        check(
            "platform user id",
            platform_user_id,
            MAX_PLATFORM_USER_BYTES,
            printable,
        )?;
        Ok(Self {
            platform: platform.to_string(),
            user: platform_user_id.to_string(),
        })
    }

    /// The platform's name.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// The user's id on the platform.
    pub fn platform_user_id(&self) -> &str {
        &self.user
    }

    fn key(&self) -> String {
        format!("{}\0{}", self.platform, self.user)
    }
}

/// A host user.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    /// Its id.
    pub id: PrincipalId,
    /// Its display name, if one is set.
    pub display_name: Option<String>,
}

/// A platform identity linked to a user.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Link {
    /// The platform identity.
    pub identity: PlatformIdentity,
    /// The user it is linked to.
    pub user: PrincipalId,
    /// When it was linked, RFC 3339 in UTC.
    pub linked_at: String,
    /// How it was linked.
    pub method: String,
}

fn encode_name(name: Option<&str>) -> Vec<u8> {
    match name {
        None => vec![0],
        Some(n) => {
            let mut v = Vec::with_capacity(n.len() + 1);
            v.push(1);
            v.extend_from_slice(n.as_bytes());
            v
        }
    }
}

fn decode_name(bytes: &[u8]) -> Result<Option<String>, IdentityError> {
    match bytes.split_first() {
        Some((0, _)) => Ok(None),
        Some((1, name)) => String::from_utf8(name.to_vec())
            .map(Some)
            .map_err(|_| storage("a stored display name is not UTF-8")),
        _ => Err(storage("a stored user record is malformed")),
    }
}

/// The capsule a link record (`user\0linked at\0method[\0capsule]`) is charged to, if any.
fn link_maker(value: &str) -> Option<&str> {
    value.splitn(4, '\0').nth(3)
}

/// The link record `user\0linked at\0method[\0capsule]`, decoded.
fn decode_link(identity: PlatformIdentity, value: &str) -> Result<Link, IdentityError> {
    let mut parts = value.splitn(4, '\0');
    let (Some(user), Some(linked_at), Some(method)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(storage("a stored link record is malformed"));
    };
    Ok(Link {
        identity,
        user: PrincipalId::parse(user).map_err(storage)?,
        linked_at: linked_at.to_string(),
        method: method.to_string(),
    })
}

/// `secs` since the Unix epoch as an RFC 3339 UTC timestamp.
fn rfc3339(secs: u64) -> String {
    let (year, month, day) = crate::civil_date(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// The identity directory of a runtime, in the KV store's database file.
#[derive(Clone, Debug)]
pub struct IdentityStore {
    db: Arc<Database>,
    limits: IdentityLimits,
}

/// The charge key of `what` for `capsule`.
fn charge_key(capsule: &CapsuleName, what: &str) -> String {
    format!("{capsule}\0{what}")
}

/// Adds one to `capsule`'s count of `what` in `txn`, or refuses when it holds `limit`.
fn charge(
    txn: &redb::WriteTransaction,
    capsule: &CapsuleName,
    what: &'static str,
    limit: u64,
) -> Result<(), IdentityError> {
    let key = charge_key(capsule, what);
    let mut charges = txn.open_table(CHARGES).map_err(storage)?;
    let held = charges
        .get(key.as_str())
        .map_err(storage)?
        .map_or(0, |v| v.value());
    if held >= limit {
        return Err(IdentityError::Full {
            what: match what {
                "users" => "users created by one capsule",
                _ => "links made by one capsule",
            },
            limit,
        });
    }
    charges
        .insert(key.as_str(), held.saturating_add(1))
        .map_err(storage)?;
    Ok(())
}

impl IdentityStore {
    /// The directory kept in `kv`'s database (its tables are created if missing).
    pub fn open(kv: &KvStore) -> Result<Self, IdentityError> {
        let db = kv.database();
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(USERS).map_err(storage)?;
        txn.open_table(LINKS).map_err(storage)?;
        txn.open_table(USER_LINKS).map_err(storage)?;
        txn.open_table(CHARGES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self {
            db,
            limits: IdentityLimits::default(),
        })
    }

    /// This directory with `limits` in force for the charged calls.
    pub fn with_limits(mut self, limits: IdentityLimits) -> Self {
        self.limits = limits;
        self
    }

    /// What `capsule` is charged now: (users it created, current links it made).
    pub fn charged(&self, capsule: &CapsuleName) -> Result<(u64, u64), IdentityError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let charges = txn.open_table(CHARGES).map_err(storage)?;
        let get = |what: &str| -> Result<u64, IdentityError> {
            Ok(charges
                .get(charge_key(capsule, what).as_str())
                .map_err(storage)?
                .map_or(0, |v| v.value()))
        };
        Ok((get("users")?, get("links")?))
    }

    /// Creates a user with a fresh random id (`u-` and 32 hex digits), charged to nobody (the
    /// operator's way).
    pub fn create_user(&self, display_name: Option<&str>) -> Result<PrincipalId, IdentityError> {
        self.fresh_user(display_name, None)
    }

    /// Creates a user as [`Self::create_user`] does, charged to `capsule`:
    /// [`IdentityError::Full`] once it created its [`IdentityLimits::users_per_capsule`].
    pub fn create_user_for(
        &self,
        capsule: &CapsuleName,
        display_name: Option<&str>,
    ) -> Result<PrincipalId, IdentityError> {
        self.fresh_user(display_name, Some(capsule))
    }

    fn fresh_user(
        &self,
        display_name: Option<&str>,
        by: Option<&CapsuleName>,
    ) -> Result<PrincipalId, IdentityError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| storage(format!("OS random source failed: {e}")))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let id = parse_user(&format!("u-{hex}"))?;
        if !self.insert_user(&id, display_name, by)? {
            return Err(storage("a fresh random user id is taken"));
        }
        Ok(id)
    }

    /// Registers `id` as a user (the operator's way to make an existing principal linkable).
    /// Answers whether it was new; an existing user keeps its display name.
    pub fn add_user(
        &self,
        id: &PrincipalId,
        display_name: Option<&str>,
    ) -> Result<bool, IdentityError> {
        self.insert_user(id, display_name, None)
    }

    fn insert_user(
        &self,
        id: &PrincipalId,
        display_name: Option<&str>,
        by: Option<&CapsuleName>,
    ) -> Result<bool, IdentityError> {
        if let Some(name) = display_name {
            check_display_name(name)?;
        }
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut users = txn.open_table(USERS).map_err(storage)?;
            if users.get(id.as_str()).map_err(storage)?.is_some() {
                return Ok(false);
            }
            if users.len().map_err(storage)? >= MAX_USERS {
                return Err(IdentityError::Full {
                    what: "users",
                    limit: MAX_USERS,
                });
            }
            if let Some(capsule) = by {
                charge(&txn, capsule, "users", self.limits.users_per_capsule)?;
            }
            users
                .insert(id.as_str(), encode_name(display_name).as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(true)
    }

    /// The user `id`, if it exists.
    pub fn user(&self, id: &PrincipalId) -> Result<Option<User>, IdentityError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let users = txn.open_table(USERS).map_err(storage)?;
        let Some(record) = users.get(id.as_str()).map_err(storage)? else {
            return Ok(None);
        };
        Ok(Some(User {
            id: id.clone(),
            display_name: decode_name(record.value())?,
        }))
    }

    /// Links `identity` to the existing user `user`, recording `method`, charged to nobody (the
    /// operator's way). One transaction: either the identity was unlinked and is now linked to
    /// `user`, or nothing changed.
    pub fn link(
        &self,
        identity: &PlatformIdentity,
        user: &PrincipalId,
        method: &str,
    ) -> Result<(), IdentityError> {
        self.insert_link(identity, user, method, None)
    }

    /// Links as [`Self::link`] does, charged to `capsule` until the link is removed:
    /// [`IdentityError::Full`] while it holds [`IdentityLimits::links_per_capsule`] links.
    pub fn link_for(
        &self,
        capsule: &CapsuleName,
        identity: &PlatformIdentity,
        user: &PrincipalId,
        method: &str,
    ) -> Result<(), IdentityError> {
        self.insert_link(identity, user, method, Some(capsule))
    }

    fn insert_link(
        &self,
        identity: &PlatformIdentity,
        user: &PrincipalId,
        method: &str,
        by: Option<&CapsuleName>,
    ) -> Result<(), IdentityError> {
        check_method(method)?;
        let key = identity.key();
        let index_key = format!("{user}\0{key}");
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let users = txn.open_table(USERS).map_err(storage)?;
            if users.get(user.as_str()).map_err(storage)?.is_none() {
                return Err(IdentityError::UserNotFound);
            }
            let mut links = txn.open_table(LINKS).map_err(storage)?;
            if links.get(key.as_str()).map_err(storage)?.is_some() {
                return Err(IdentityError::AlreadyLinked);
            }
            let mut index = txn.open_table(USER_LINKS).map_err(storage)?;
            let prefix = format!("{user}\0");
            let held = index
                .range::<&str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .map_err(storage)?
                .take(MAX_LINKS_PER_USER + 1)
                .map_while(|item| item.ok())
                .take_while(|(k, _)| k.value().starts_with(&prefix))
                .count();
            if held >= MAX_LINKS_PER_USER {
                return Err(IdentityError::Full {
                    what: "links of one user",
                    limit: MAX_LINKS_PER_USER as u64,
                });
            }
            if let Some(capsule) = by {
                charge(&txn, capsule, "links", self.limits.links_per_capsule)?;
            }
            let record = match by {
                Some(capsule) => format!("{user}\0{}\0{method}\0{capsule}", now()),
                None => format!("{user}\0{}\0{method}", now()),
            };
            links
                .insert(key.as_str(), record.as_str())
                .map_err(storage)?;
            index.insert(index_key.as_str(), ()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Removes the link of `identity` and answers the user it belonged to. With `only_of`, the
    /// link is removed only if it belongs to that user; a link of anyone else is reported as
    /// [`IdentityError::LinkNotFound`], exactly like a missing one.
    pub fn unlink(
        &self,
        identity: &PlatformIdentity,
        only_of: Option<&PrincipalId>,
    ) -> Result<PrincipalId, IdentityError> {
        let key = identity.key();
        let txn = self.db.begin_write().map_err(storage)?;
        let user = {
            let mut links = txn.open_table(LINKS).map_err(storage)?;
            let Some(record) = links
                .get(key.as_str())
                .map_err(storage)?
                .map(|v| v.value().to_string())
            else {
                return Err(IdentityError::LinkNotFound);
            };
            let link = decode_link(identity.clone(), &record)?;
            if only_of.is_some_and(|owner| *owner != link.user) {
                return Err(IdentityError::LinkNotFound);
            }
            links.remove(key.as_str()).map_err(storage)?;
            if let Some(maker) = link_maker(&record).and_then(|m| CapsuleName::parse(m).ok()) {
                let key = charge_key(&maker, "links");
                let mut charges = txn.open_table(CHARGES).map_err(storage)?;
                let held = charges
                    .get(key.as_str())
                    .map_err(storage)?
                    .map_or(0, |v| v.value());
                if held <= 1 {
                    charges.remove(key.as_str()).map_err(storage)?;
                } else {
                    charges.insert(key.as_str(), held - 1).map_err(storage)?;
                }
            }
            let mut index = txn.open_table(USER_LINKS).map_err(storage)?;
            index
                .remove(format!("{}\0{key}", link.user).as_str())
                .map_err(storage)?;
            link.user
        };
        txn.commit().map_err(storage)?;
        Ok(user)
    }

    /// The link of `identity`, if there is one.
    pub fn resolve(&self, identity: &PlatformIdentity) -> Result<Option<Link>, IdentityError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let links = txn.open_table(LINKS).map_err(storage)?;
        let Some(record) = links.get(identity.key().as_str()).map_err(storage)? else {
            return Ok(None);
        };
        decode_link(identity.clone(), record.value()).map(Some)
    }

    /// Every platform identity linked to `user` (at most [`MAX_LINKS_PER_USER`]), ordered by
    /// platform then platform user id; [`IdentityError::UserNotFound`] if there is no such
    /// user.
    pub fn links(&self, user: &PrincipalId) -> Result<Vec<Link>, IdentityError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let users = txn.open_table(USERS).map_err(storage)?;
        if users.get(user.as_str()).map_err(storage)?.is_none() {
            return Err(IdentityError::UserNotFound);
        }
        let index = txn.open_table(USER_LINKS).map_err(storage)?;
        let links = txn.open_table(LINKS).map_err(storage)?;
        let prefix = format!("{user}\0");
        let mut out = Vec::new();
        for item in index
            .range::<&str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .map_err(storage)?
        {
            let (k, _) = item.map_err(storage)?;
            let Some(key) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            if out.len() >= MAX_LINKS_PER_USER {
                break;
            }
            let Some((platform, platform_user)) = key.split_once('\0') else {
                return Err(storage("a stored link index entry is malformed"));
            };
            let identity = PlatformIdentity {
                platform: platform.to_string(),
                user: platform_user.to_string(),
            };
            let Some(record) = links.get(key).map_err(storage)? else {
                return Err(storage("the link index names a missing link"));
            };
            out.push(decode_link(identity, record.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
