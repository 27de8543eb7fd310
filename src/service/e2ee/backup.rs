//! Server-side key backups (spec: "Server-side key backups").
//!
//! Each user has numbered backup versions; the current one is the newest that is not deleted,
//! and only it accepts keys. A deleted version stays as a tombstone so its number is never
//! handed out again and deleting it twice succeeds. Keys are stored per `(version, room,
//! session)`; an upload for a session that has a key replaces it only when the new key is
//! better (verified beats unverified, then a lower `first_message_index`, then a lower
//! `forwarded_count`). The version record keeps the key count and an etag that changes
//! whenever the stored keys change, both updated in the batch that changes the keys.

use std::collections::BTreeMap;

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{stored_object, to_bytes, E2ee, ATTEMPTS};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Raw, Record},
    table,
};

table!(
    /// `(user_id, version) → BackupVersion`.
    pub BackupVersions: "backup_versions", (String, u64) => BackupVersion
);
table!(
    /// `(user_id, version, room_id, session_id) → KeyBackupData` as compact JSON.
    pub BackupKeys: "backup_keys", (String, u64, String, String) => Raw
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupVersion {
    pub algorithm: String,
    /// `auth_data` as compact JSON (an object).
    pub auth_data: Vec<u8>,
    /// Keys stored in this version.
    pub count: u64,
    /// Bumped by every change of the stored keys.
    pub etag: u64,
    pub deleted: bool,
}
impl Record for BackupVersion {}

/// Rows deleted per batch when deleting many keys.
const DELETE_CHUNK: usize = 1000;

/// A backup version as `GET /room_keys/version` shows it.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub version: String,
    pub algorithm: String,
    pub auth_data: Map<String, Value>,
    pub count: u64,
    pub etag: String,
}

/// Keys of a backup: room → session → key data.
pub type BackupRooms = BTreeMap<String, BTreeMap<String, Value>>;

/// The metadata of an uploaded key that decides whether it replaces a stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quality {
    is_verified: bool,
    first_message_index: u64,
    forwarded_count: u64,
}

impl Quality {
    fn of(data: &Map<String, Value>) -> Option<Self> {
        Some(Self {
            is_verified: data.get("is_verified")?.as_bool()?,
            first_message_index: data.get("first_message_index")?.as_u64()?,
            forwarded_count: data.get("forwarded_count")?.as_u64()?,
        })
    }

    /// Whether a key of this quality replaces a stored key of quality `old` (spec order).
    fn beats(&self, old: &Self) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

/// Checks uploaded key data (`first_message_index`, `forwarded_count`, `is_verified`,
/// `session_data`).
pub fn check_key_data(data: &Map<String, Value>) -> Result<()> {
    if Quality::of(data).is_none() || !data.get("session_data").is_some_and(Value::is_object) {
        return Err(Error::bad_json(
            "Key data needs first_message_index and forwarded_count (non-negative integers), \
             is_verified (boolean) and session_data (object)",
        ));
    }
    Ok(())
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

fn parse_version(version: &str) -> Option<u64> {
    // Versions are decimal numbers handed out by this server; anything else never existed.
    if version.is_empty() || version.len() > 19 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok()
}

fn check_algorithm(algorithm: &str, auth_data: &Map<String, Value>) -> Result<()> {
    if algorithm.is_empty() || algorithm.len() > 255 {
        return Err(Error::invalid_param("The algorithm must be 1 to 255 bytes"));
    }
    if algorithm == "m.megolm_backup.v1.curve25519-aes-sha2"
        && !auth_data.get("public_key").is_some_and(Value::is_string)
    {
        return Err(Error::bad_json(
            "auth_data.public_key is required for m.megolm_backup.v1.curve25519-aes-sha2",
        ));
    }
    Ok(())
}

impl E2ee {
    fn backup_version(&self, user_id: &UserId, version: u64) -> Result<Option<BackupVersion>> {
        Ok(self
            .store
            .get::<BackupVersions>(&(user_id.to_string(), version))?)
    }

    /// The current (newest not deleted) backup version.
    fn current_backup(&self, user_id: &UserId) -> Result<Option<(u64, BackupVersion)>> {
        let mut from = None;
        loop {
            let rows = self.store.range_in_prefix::<BackupVersions, _>(
                &(user_id.as_str(),),
                from.as_ref(),
                true,
                64,
            )?;
            let last = rows.len() < 64;
            for ((user, version), record) in rows {
                if !record.deleted {
                    return Ok(Some((version, record)));
                }
                if version == 0 {
                    return Ok(None);
                }
                from = Some((user, version - 1));
            }
            if last {
                return Ok(None);
            }
        }
    }

    /// A version that exists and is not deleted, or 404.
    fn live_backup(&self, user_id: &UserId, version: &str) -> Result<(u64, BackupVersion)> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        match self.backup_version(user_id, number)? {
            Some(record) if !record.deleted => Ok((number, record)),
            _ => Err(unknown_version()),
        }
    }

    /// `POST /room_keys/version`: a new backup version, which becomes the current one.
    pub async fn create_backup(
        &self,
        user_id: &UserId,
        algorithm: &str,
        auth_data: Map<String, Value>,
    ) -> Result<String> {
        check_algorithm(algorithm, &auth_data)?;
        let auth_data = to_bytes(&auth_data)?;
        for _ in 0..ATTEMPTS {
            let newest = self.store.range_in_prefix::<BackupVersions, _>(
                &(user_id.as_str(),),
                None,
                true,
                1,
            )?;
            let version = newest.first().map_or(1, |((_, v), _)| v + 1);
            let row = (user_id.to_string(), version);
            let mut batch = Batch::new();
            batch
                .expect_absent::<BackupVersions>(&row)
                .put::<BackupVersions>(
                    &row,
                    &BackupVersion {
                        algorithm: algorithm.to_owned(),
                        auth_data: auth_data.clone(),
                        count: 0,
                        etag: 0,
                        deleted: false,
                    },
                );
            match self.store.commit(batch).await {
                Ok(()) => return Ok(version.to_string()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    fn version_info(version: u64, record: BackupVersion) -> Result<VersionInfo> {
        Ok(VersionInfo {
            version: version.to_string(),
            algorithm: record.algorithm,
            auth_data: stored_object(&record.auth_data)?,
            count: record.count,
            etag: record.etag.to_string(),
        })
    }

    /// `GET /room_keys/version[/{version}]`: the named version, or the current one.
    pub fn backup_info(&self, user_id: &UserId, version: Option<&str>) -> Result<VersionInfo> {
        let (number, record) = match version {
            Some(version) => self.live_backup(user_id, version)?,
            None => self
                .current_backup(user_id)?
                .ok_or_else(|| Error::not_found("No current backup version"))?,
        };
        Self::version_info(number, record)
    }

    /// `PUT /room_keys/version/{version}`: replaces `auth_data`; the algorithm (and the body's
    /// `version`, if given) must match.
    pub async fn update_backup(
        &self,
        user_id: &UserId,
        version: &str,
        algorithm: &str,
        auth_data: Map<String, Value>,
        body_version: Option<&str>,
    ) -> Result<()> {
        if body_version.is_some_and(|v| v != version) {
            return Err(Error::invalid_param(
                "The version in the body does not match the version in the path",
            ));
        }
        let auth_data = to_bytes(&auth_data)?;
        for _ in 0..ATTEMPTS {
            let (number, record) = self.live_backup(user_id, version)?;
            if record.algorithm != algorithm {
                return Err(Error::invalid_param(
                    "The algorithm does not match the backup's algorithm",
                ));
            }
            let row = (user_id.to_string(), number);
            let updated = BackupVersion {
                auth_data: auth_data.clone(),
                ..record.clone()
            };
            let mut batch = Batch::new();
            batch
                .expect_value::<BackupVersions>(&row, Some(&record))
                .put::<BackupVersions>(&row, &updated);
            match self.store.commit(batch).await {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// `DELETE /room_keys/version/{version}`: marks the version deleted and deletes its keys.
    /// Deleting a deleted version succeeds (and finishes deleting its keys).
    pub async fn delete_backup(&self, user_id: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let row = (user_id.to_string(), number);
        for _ in 0..ATTEMPTS {
            let Some(record) = self.store.get::<BackupVersions>(&row)? else {
                return Err(unknown_version());
            };
            if record.deleted {
                break;
            }
            let tombstone = BackupVersion {
                count: 0,
                etag: record.etag + 1,
                deleted: true,
                ..record.clone()
            };
            let mut batch = Batch::new();
            batch
                .expect_value::<BackupVersions>(&row, Some(&record))
                .put::<BackupVersions>(&row, &tombstone);
            match self.store.commit(batch).await {
                Ok(()) => break,
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // No key can be added to a deleted version, so this terminates.
        loop {
            let rows = self
                .store
                .scan_prefix::<BackupKeys, _>(&(user_id.as_str(), number), DELETE_CHUNK)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut batch = Batch::new();
            for (key, _) in rows {
                batch.delete::<BackupKeys>(&key);
            }
            self.store.commit(batch).await?;
        }
    }

    /// Deletes every backup version of the user with its keys (account deactivation).
    /// Idempotent: versions already deleted only have their remaining keys swept.
    pub async fn delete_all_backups(&self, user_id: &UserId) -> Result<()> {
        let versions = self
            .store
            .scan_prefix::<BackupVersions, _>(&(user_id.as_str(),), usize::MAX)?;
        for ((_, number), _) in versions {
            self.delete_backup(user_id, &number.to_string()).await?;
        }
        Ok(())
    }

    /// `PUT /room_keys/keys[...]` into `version`, which must be the current version (403
    /// `M_WRONG_ROOM_KEYS_VERSION` otherwise, 404 without any backup). Each key is
    /// `(room, session, data)`. Returns the version's `(etag, count)` afterwards.
    pub async fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        keys: &[(String, String, Map<String, Value>)],
    ) -> Result<(String, u64)> {
        for (_, _, data) in keys {
            check_key_data(data)?;
        }
        let user = user_id.to_string();
        for _ in 0..ATTEMPTS {
            let Some((current, record)) = self.current_backup(user_id)? else {
                return Err(Error::not_found("No current backup version"));
            };
            if parse_version(version) != Some(current) {
                return Err(Error::new(
                    http::StatusCode::FORBIDDEN,
                    "M_WRONG_ROOM_KEYS_VERSION",
                    "Keys can only be added to the current backup version",
                )
                .with("current_version", current.to_string()));
            }
            let mut batch = Batch::new();
            let mut updated = record.clone();
            let mut changed = false;
            // The same session twice in one request: the best one wins.
            let mut best: BTreeMap<(&str, &str), &Map<String, Value>> = BTreeMap::new();
            for (room, session, data) in keys {
                let slot = best
                    .entry((room.as_str(), session.as_str()))
                    .or_insert(data);
                let (Some(new), Some(old)) = (Quality::of(data), Quality::of(slot)) else {
                    continue;
                };
                if new.beats(&old) {
                    *slot = data;
                }
            }
            for ((room, session), data) in best {
                let row = (user.clone(), current, room.to_owned(), session.to_owned());
                let existing = self.store.get::<BackupKeys>(&row)?;
                if let Some(Raw(bytes)) = &existing {
                    let old = Quality::of(&stored_object(bytes)?);
                    let new = Quality::of(data).expect("checked above");
                    if !old.is_none_or(|old| new.beats(&old)) {
                        continue;
                    }
                } else {
                    updated.count += 1;
                }
                batch
                    .expect_value::<BackupKeys>(&row, existing.as_ref())
                    .put::<BackupKeys>(&row, &Raw(to_bytes(data)?));
                changed = true;
            }
            if !changed {
                return Ok((record.etag.to_string(), record.count));
            }
            updated.etag += 1;
            let version_row = (user.clone(), current);
            batch
                .expect_value::<BackupVersions>(&version_row, Some(&record))
                .put::<BackupVersions>(&version_row, &updated);
            match self.store.commit(batch).await {
                Ok(()) => return Ok((updated.etag.to_string(), updated.count)),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// `GET /room_keys/keys[...]`: the version's keys, all of them or one room's or one
    /// session's. 404 for an unknown or deleted version.
    pub fn get_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<BackupRooms> {
        let (number, _) = self.live_backup(user_id, version)?;
        let user = user_id.as_str();
        let rows = match (room, session) {
            (Some(room), Some(session)) => {
                let row = (user.to_owned(), number, room.to_owned(), session.to_owned());
                self.store
                    .get::<BackupKeys>(&row)?
                    .map(|raw| vec![(row, raw)])
                    .unwrap_or_default()
            }
            (Some(room), None) => self
                .store
                .scan_prefix::<BackupKeys, _>(&(user, number, room), usize::MAX)?,
            _ => self
                .store
                .scan_prefix::<BackupKeys, _>(&(user, number), usize::MAX)?,
        };
        let mut out = BackupRooms::new();
        for ((_, _, room, session), Raw(bytes)) in rows {
            out.entry(room)
                .or_default()
                .insert(session, Value::Object(stored_object(&bytes)?));
        }
        Ok(out)
    }

    /// `DELETE /room_keys/keys[...]`: deletes the version's keys (all, one room's, or one
    /// session's). Returns the version's `(etag, count)` afterwards.
    pub async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<(String, u64)> {
        let user = user_id.to_string();
        let mut attempts = 0;
        loop {
            let (number, record) = self.live_backup(user_id, version)?;
            let rows: Vec<(String, u64, String, String)> = match (room, session) {
                (Some(room), Some(session)) => {
                    let row = (user.clone(), number, room.to_owned(), session.to_owned());
                    match self.store.get::<BackupKeys>(&row)? {
                        Some(_) => vec![row],
                        None => vec![],
                    }
                }
                (Some(room), None) => self
                    .store
                    .scan_prefix::<BackupKeys, _>(&(user.as_str(), number, room), DELETE_CHUNK)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect(),
                _ => self
                    .store
                    .scan_prefix::<BackupKeys, _>(&(user.as_str(), number), DELETE_CHUNK)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect(),
            };
            if rows.is_empty() {
                return Ok((record.etag.to_string(), record.count));
            }
            let mut batch = Batch::new();
            let mut updated = record.clone();
            for row in &rows {
                // Guard each row: one deleted concurrently must not be counted twice.
                let current = self.store.get::<BackupKeys>(row)?;
                if current.is_none() {
                    continue;
                }
                batch
                    .expect_value::<BackupKeys>(row, current.as_ref())
                    .delete::<BackupKeys>(row);
                updated.count = updated.count.saturating_sub(1);
            }
            updated.etag += 1;
            let version_row = (user.clone(), number);
            batch
                .expect_value::<BackupVersions>(&version_row, Some(&record))
                .put::<BackupVersions>(&version_row, &updated);
            match self.store.commit(batch).await {
                Ok(()) => {}
                Err(CommitError::Conflict) => {
                    attempts += 1;
                    if attempts >= ATTEMPTS {
                        return Err(CommitError::Conflict.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
