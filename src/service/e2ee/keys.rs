//! Device identity keys, one-time keys and fallback keys.
//!
//! - Identity keys are stored once per device, as uploaded (minus `unsigned`). A device may
//!   upload them again unchanged, but never different ones: the device's ed25519 key is its
//!   fingerprint, so a changed signed key is refused (400).
//! - One-time keys are keyed by upload order (the stream position of the upload) so claims
//!   hand out the oldest first. A claim deletes the key under a precondition on its exact
//!   value, so of any number of concurrent claims exactly one gets each key.
//! - Fallback keys: at most one per algorithm and device. A claim that finds no one-time key
//!   returns the fallback key and marks it used (again under a precondition); it is handed out
//!   again until the device replaces it.

use std::collections::{BTreeMap, HashMap};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    parse_object, signed_content, stored_object, to_bytes, verify_signature, E2ee, ATTEMPTS,
};
use crate::{
    error::{Error, Result},
    service::sessions::DevicesTable,
    store::{Batch, CommitError, Raw, Record, Store},
    table,
};

table!(
    /// `(user_id, device_id) → device keys` as compact JSON, exactly as uploaded without
    /// `unsigned`.
    pub DeviceKeysTable: "e2ee_device_keys", (String, String) => Raw
);
table!(
    /// `(user_id, device_id, (algorithm, upload position), key name) → key` (JSON: a string or
    /// a signed object). Scans in upload order per algorithm.
    pub OneTimeKeys: "e2ee_one_time_keys", (String, String, (String, u64), String) => Raw
);
table!(
    /// `(user_id, device_id, algorithm, key name) → upload position`: exactly one row per row
    /// of `e2ee_one_time_keys`, to find a key by its id.
    pub OneTimeKeyIds: "e2ee_one_time_key_ids", (String, String, String, String) => u64
);
table!(
    /// `(user_id, device_id, algorithm) → FallbackKey`.
    pub FallbackKeys: "e2ee_fallback_keys", (String, String, String) => FallbackKey
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FallbackKey {
    pub key_name: String,
    /// The key as JSON (compact bytes).
    pub key: Vec<u8>,
    /// Handed out by a claim since it was uploaded.
    pub used: bool,
}
impl Record for FallbackKey {}

/// The one-time key algorithm of Olm v1.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// Most one-time keys a device may hold (clients keep about 50).
pub const MAX_ONE_TIME_KEYS: usize = 10_000;

/// What a device uploads: identity keys, and keys as `(algorithm, key name, key)`.
#[derive(Debug, Default)]
pub struct Upload {
    pub device_keys: Option<Map<String, Value>>,
    pub one_time_keys: Vec<(String, String, Value)>,
    pub fallback_keys: Vec<(String, String, Value)>,
}

/// `/keys/query` results for local users.
#[derive(Debug, Default)]
pub struct QueryResult {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>,
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    pub user_signing_keys: BTreeMap<OwnedUserId, Value>,
}

/// Claimed keys: user → device → `algorithm:key name` → key.
pub type Claimed = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<String, Value>>>;

/// Splits a one-time key id `algorithm:name`.
pub fn split_key_id(id: &str) -> Result<(String, String)> {
    match id.split_once(':') {
        Some((algorithm, name)) if !algorithm.is_empty() && !name.is_empty() => {
            Ok((algorithm.to_owned(), name.to_owned()))
        }
        _ => Err(Error::invalid_param(format!(
            "Key id {id:?} is not of the form <algorithm>:<key id>"
        ))),
    }
}

fn check_key_value(value: &Value, id: &str) -> Result<()> {
    match value {
        Value::String(_) => Ok(()),
        Value::Object(object) if object.get("key").is_some_and(Value::is_string) => {
            signed_content(object).map(|_| ())
        }
        _ => Err(Error::bad_json(format!(
            "Key {id} must be a string or an object with a string `key`"
        ))),
    }
}

/// Checks uploaded identity keys: they name this user and device, list algorithms, carry the
/// device's ed25519 key and are signed with it. Returns them without `unsigned`.
fn check_device_keys(
    user_id: &UserId,
    device_id: &DeviceId,
    mut keys: Map<String, Value>,
) -> Result<Map<String, Value>> {
    keys.remove("unsigned");
    if keys.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.user_id must be the user's own id",
        ));
    }
    if keys.get("device_id").and_then(Value::as_str) != Some(device_id.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.device_id must be the id of the uploading device",
        ));
    }
    let algorithms_ok = keys
        .get("algorithms")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().all(Value::is_string));
    if !algorithms_ok {
        return Err(Error::bad_json(
            "device_keys.algorithms must be a list of strings",
        ));
    }
    let Some(key_map) = keys.get("keys").and_then(Value::as_object) else {
        return Err(Error::bad_json("device_keys.keys must be an object"));
    };
    if !key_map.values().all(Value::is_string) {
        return Err(Error::bad_json("device_keys.keys values must be strings"));
    }
    let signing_key_id = format!("ed25519:{device_id}");
    let Some(signing_key) = key_map.get(&signing_key_id).and_then(Value::as_str) else {
        return Err(Error::invalid_param(format!(
            "device_keys.keys must contain {signing_key_id}"
        )));
    };
    if !keys.get("signatures").is_some_and(Value::is_object) {
        return Err(Error::bad_json("device_keys.signatures must be an object"));
    }
    if !verify_signature(&keys, user_id.as_str(), &signing_key_id, signing_key) {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_INVALID_SIGNATURE",
            format!("device_keys must be signed by {signing_key_id}"),
        ));
    }
    Ok(keys)
}

/// Stages deletes of a device's identity keys (with the signatures on them), one-time keys
/// and fallback keys, at most about `limit` rows per table. Returns whether it had identity
/// keys.
pub(crate) fn stage_delete_device_keys(
    store: &Store,
    batch: &mut Batch,
    user: &str,
    device: &str,
    limit: usize,
) -> Result<bool> {
    let key = (user.to_owned(), device.to_owned());
    let had_keys = store.get::<DeviceKeysTable>(&key)?.is_some();
    if had_keys {
        batch.delete::<DeviceKeysTable>(&key);
    }
    super::signing::stage_delete_signatures_on(store, batch, user, device, limit)?;
    for ((u, d, (algorithm, order), name), _) in
        store.scan_prefix::<OneTimeKeys, _>(&(user, device), limit)?
    {
        batch.delete::<OneTimeKeyIds>(&(u.clone(), d.clone(), algorithm.clone(), name.clone()));
        batch.delete::<OneTimeKeys>(&(u, d, (algorithm, order), name));
    }
    // Index rows without a key row cannot exist (same batches), but sweep them anyway.
    for (id, _) in store.scan_prefix::<OneTimeKeyIds, _>(&(user, device), limit)? {
        batch.delete::<OneTimeKeyIds>(&id);
    }
    for (id, _) in store.scan_prefix::<FallbackKeys, _>(&(user, device), limit)? {
        batch.delete::<FallbackKeys>(&id);
    }
    Ok(had_keys)
}

impl E2ee {
    /// `/keys/upload` for one device. Returns the device's one-time key counts afterwards.
    pub async fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upload: Upload,
    ) -> Result<BTreeMap<String, u64>> {
        let device_keys = upload
            .device_keys
            .map(|keys| check_device_keys(user_id, device_id, keys))
            .transpose()?;
        let new_content = device_keys.as_ref().map(signed_content).transpose()?;
        for (algorithm, name, value) in upload.one_time_keys.iter().chain(&upload.fallback_keys) {
            check_key_value(value, &format!("{algorithm}:{name}"))?;
        }
        let mut fallback_by_algorithm = HashMap::new();
        for (algorithm, name, value) in &upload.fallback_keys {
            if fallback_by_algorithm
                .insert(algorithm.clone(), (name.clone(), value))
                .is_some()
            {
                return Err(Error::invalid_param(format!(
                    "At most one fallback key per algorithm ({algorithm})"
                )));
            }
        }
        let user = user_id.to_string();
        let device = device_id.to_string();
        let device_row = (user.clone(), device.clone());

        for _ in 0..ATTEMPTS {
            let Some(record) = self.store.get::<DevicesTable>(&device_row)? else {
                return Err(Error::unknown_token(false));
            };
            let mut batch = Batch::new();
            // The device must still exist when this lands, so nothing outlives its deletion.
            batch.expect_value::<DevicesTable>(&device_row, Some(&record));

            let mut keys_changed = false;
            if let (Some(keys), Some(content)) = (&device_keys, &new_content) {
                let existing = self.store.get::<DeviceKeysTable>(&device_row)?;
                match &existing {
                    Some(Raw(bytes)) => {
                        if signed_content(&stored_object(bytes)?)? != *content {
                            return Err(Error::invalid_param(
                                "This device already has different identity keys; \
                                 log in as a new device to use new keys",
                            ));
                        }
                    }
                    None => {
                        batch
                            .expect_absent::<DeviceKeysTable>(&device_row)
                            .put::<DeviceKeysTable>(&device_row, &Raw(to_bytes(keys)?));
                        keys_changed = true;
                    }
                }
            }

            let pending = self.stream.allocate()?;
            let mut new_keys = 0;
            for (algorithm, name, value) in &upload.one_time_keys {
                let id = (
                    user.clone(),
                    device.clone(),
                    algorithm.clone(),
                    name.clone(),
                );
                let bytes = to_bytes(value)?;
                if let Some(order) = self.store.get::<OneTimeKeyIds>(&id)? {
                    let row = (
                        user.clone(),
                        device.clone(),
                        (algorithm.clone(), order),
                        name.clone(),
                    );
                    let same = self
                        .store
                        .get::<OneTimeKeys>(&row)?
                        .is_some_and(|Raw(stored)| {
                            serde_json::from_slice::<Value>(&stored).ok().as_ref() == Some(value)
                        });
                    if same {
                        continue;
                    }
                    return Err(Error::invalid_param(format!(
                        "One-time key {algorithm}:{name} already exists with a different value"
                    )));
                }
                new_keys += 1;
                let row = (
                    user.clone(),
                    device.clone(),
                    (algorithm.clone(), pending.pos),
                    name.clone(),
                );
                batch
                    .expect_absent::<OneTimeKeyIds>(&id)
                    .put::<OneTimeKeyIds>(&id, &pending.pos)
                    .put::<OneTimeKeys>(&row, &Raw(bytes));
            }
            if new_keys > 0 {
                let held = self
                    .store
                    .scan_prefix::<OneTimeKeyIds, _>(
                        &(user.as_str(), device.as_str()),
                        MAX_ONE_TIME_KEYS + 1,
                    )?
                    .len();
                if held + new_keys > MAX_ONE_TIME_KEYS {
                    return Err(Error::invalid_param(format!(
                        "A device may hold at most {MAX_ONE_TIME_KEYS} one-time keys"
                    )));
                }
            }

            for (algorithm, (name, value)) in &fallback_by_algorithm {
                let row = (user.clone(), device.clone(), algorithm.clone());
                let existing = self.store.get::<FallbackKeys>(&row)?;
                let bytes = to_bytes(*value)?;
                let unchanged = existing
                    .as_ref()
                    .is_some_and(|old| old.key_name == *name && old.key == bytes);
                if unchanged {
                    continue;
                }
                batch
                    .expect_value::<FallbackKeys>(&row, existing.as_ref())
                    .put::<FallbackKeys>(
                        &row,
                        &FallbackKey {
                            key_name: name.clone(),
                            key: bytes,
                            used: false,
                        },
                    );
            }

            if keys_changed {
                self.stage_change(&mut batch, pending.pos, user_id)?;
            }
            if batch.len() == 1 {
                // Only the device precondition: nothing new to write.
                return self.one_time_key_counts(user_id, device_id);
            }
            let wake = if keys_changed {
                self.device_change_targets(user_id)?
            } else {
                Vec::new()
            };
            match self.commit_positioned(batch, Some(pending), wake).await {
                Ok(()) => return self.one_time_key_counts(user_id, device_id),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// For each algorithm, how many unclaimed one-time keys the device has: `/keys/upload`'s
    /// `one_time_key_counts` and `/sync`'s `device_one_time_keys_count`. Algorithms with none
    /// are absent, except `signed_curve25519`, which is always present (0 when out of keys):
    /// some clients treat a missing count as "unchanged" and would never top up.
    pub fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<BTreeMap<String, u64>> {
        let rows = self.store.scan_prefix::<OneTimeKeyIds, _>(
            &(user_id.as_str(), device_id.as_str()),
            MAX_ONE_TIME_KEYS + 1,
        )?;
        let mut counts = BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 0)]);
        for ((_, _, algorithm, _), _) in rows {
            *counts.entry(algorithm).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// The algorithms for which the device has a fallback key no claim has returned yet
    /// (`/sync`'s `device_unused_fallback_key_types`), sorted.
    pub fn unused_fallback_key_types(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<String>> {
        let rows = self
            .store
            .scan_prefix::<FallbackKeys, _>(&(user_id.as_str(), device_id.as_str()), 1000)?;
        Ok(rows
            .into_iter()
            .filter(|(_, key)| !key.used)
            .map(|((_, _, algorithm), _)| algorithm)
            .collect())
    }

    /// The identity keys of one device as `/keys/query` shows them to `viewer`: the uploaded
    /// object with the signatures the viewer may see and `unsigned.device_display_name`.
    pub fn device_keys_for(
        &self,
        viewer: &UserId,
        user_id: &UserId,
        device_id: &str,
    ) -> Result<Option<Value>> {
        let row = (user_id.to_string(), device_id.to_owned());
        let Some(Raw(bytes)) = self.store.get::<DeviceKeysTable>(&row)? else {
            return Ok(None);
        };
        let Some(device) = self.store.get::<DevicesTable>(&row)? else {
            return Ok(None);
        };
        let mut keys = stored_object(&bytes)?;
        self.merge_signatures(&mut keys, viewer, user_id, device_id)?;
        let mut unsigned = Map::new();
        if let Some(name) = device.display_name {
            unsigned.insert("device_display_name".into(), Value::String(name));
        }
        keys.insert("unsigned".into(), Value::Object(unsigned));
        Ok(Some(Value::Object(keys)))
    }

    /// `/keys/query` for local users: `requested` maps each user to the devices wanted (all
    /// devices when empty). Unknown users and devices are left out.
    pub fn query_keys(
        &self,
        viewer: &UserId,
        requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<QueryResult> {
        let mut result = QueryResult::default();
        for (user_id, devices) in requested {
            if !self.is_local(user_id) {
                continue;
            }
            let wanted: Vec<String> = if devices.is_empty() {
                self.store
                    .scan_prefix::<DeviceKeysTable, _>(&(user_id.as_str(),), usize::MAX)?
                    .into_iter()
                    .map(|((_, device), _)| device)
                    .collect()
            } else {
                devices.iter().map(|d| d.to_string()).collect()
            };
            let mut found = BTreeMap::new();
            for device in wanted {
                if let Some(keys) = self.device_keys_for(viewer, user_id, &device)? {
                    found.insert(OwnedDeviceId::from(device), keys);
                }
            }
            result.device_keys.insert(user_id.clone(), found);
            if let Some(key) = self.cross_signing_key_for(viewer, user_id, "master")? {
                result.master_keys.insert(user_id.clone(), key);
            }
            if let Some(key) = self.cross_signing_key_for(viewer, user_id, "self_signing")? {
                result.self_signing_keys.insert(user_id.clone(), key);
            }
            if viewer == user_id {
                if let Some(key) = self.cross_signing_key_for(viewer, user_id, "user_signing")? {
                    result.user_signing_keys.insert(user_id.clone(), key);
                }
            }
        }
        Ok(result)
    }

    /// `/keys/claim` for local devices: one key per `(user, device, algorithm)` — the oldest
    /// one-time key, else the fallback key (marked used). Devices with neither are left out.
    pub async fn claim_keys(
        &self,
        wanted: &[(OwnedUserId, OwnedDeviceId, String)],
    ) -> Result<Claimed> {
        let mut claimed = Claimed::new();
        let mut pending: Vec<&(OwnedUserId, OwnedDeviceId, String)> =
            wanted.iter().filter(|(u, _, _)| self.is_local(u)).collect();
        for _ in 0..ATTEMPTS {
            if pending.is_empty() {
                return Ok(claimed);
            }
            // One batch per device, committed together: each lands or conflicts on its own.
            let mut batches = Vec::new();
            let mut candidates = Vec::new();
            let mut retry = Vec::new();
            for request in pending {
                let (user_id, device_id, algorithm) = request;
                match self.stage_claim(user_id, device_id, algorithm)? {
                    Some((batch, key_id, key)) if batch.is_empty() => {
                        insert_claimed(&mut claimed, user_id, device_id, key_id, key);
                    }
                    Some((batch, key_id, key)) => {
                        batches.push(batch);
                        candidates.push((request, key_id, key));
                    }
                    None => {}
                }
            }
            let results = self.store.commit_all(batches).await?;
            for (result, (request, key_id, key)) in results.into_iter().zip(candidates) {
                match result {
                    Ok(()) => insert_claimed(&mut claimed, &request.0, &request.1, key_id, key),
                    Err(_) => retry.push(request),
                }
            }
            pending = retry;
        }
        if pending.is_empty() {
            Ok(claimed)
        } else {
            Err(CommitError::Conflict.into())
        }
    }

    /// The batch that claims one key of the device (empty when nothing needs writing: a fallback
    /// key already marked used), with the key's id and value; `None` when there is no key.
    fn stage_claim(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(Batch, String, Value)>> {
        let prefix = (user_id.as_str(), device_id.as_str(), algorithm);
        let oldest = self.store.scan_prefix::<OneTimeKeys, _>(&prefix, 1)?;
        if let Some((row, Raw(bytes))) = oldest.into_iter().next() {
            let (user, device, (algorithm, _), name) = row.clone();
            let mut batch = Batch::new();
            batch
                .expect_value::<OneTimeKeys>(&row, Some(&Raw(bytes.clone())))
                .delete::<OneTimeKeys>(&row)
                .delete::<OneTimeKeyIds>(&(user, device, algorithm.clone(), name.clone()));
            let key = serde_json::from_slice(&bytes)
                .map_err(|_| Error::unknown("Stored one-time key is corrupt"))?;
            return Ok(Some((batch, format!("{algorithm}:{name}"), key)));
        }
        let row = (
            user_id.to_string(),
            device_id.to_string(),
            algorithm.to_owned(),
        );
        let Some(fallback) = self.store.get::<FallbackKeys>(&row)? else {
            return Ok(None);
        };
        let key = serde_json::from_slice(&fallback.key)
            .map_err(|_| Error::unknown("Stored fallback key is corrupt"))?;
        let key_id = format!("{algorithm}:{}", fallback.key_name);
        let mut batch = Batch::new();
        if !fallback.used {
            let used = FallbackKey {
                used: true,
                ..fallback.clone()
            };
            batch
                .expect_value::<FallbackKeys>(&row, Some(&fallback))
                .put::<FallbackKeys>(&row, &used);
        }
        Ok(Some((batch, key_id, key)))
    }
}

fn insert_claimed(
    claimed: &mut Claimed,
    user_id: &UserId,
    device_id: &DeviceId,
    key_id: String,
    key: Value,
) {
    claimed
        .entry(user_id.to_owned())
        .or_default()
        .entry(device_id.to_owned())
        .or_default()
        .insert(key_id, key);
}

/// Parses raw request JSON for a key into a value (`M_BAD_JSON` if it is not JSON).
pub fn parse_key(raw: &str, id: &str) -> Result<Value> {
    serde_json::from_str(raw).map_err(|_| Error::bad_json(format!("Key {id} is not JSON")))
}

/// Parses uploaded identity keys.
pub fn parse_device_keys(raw: &str) -> Result<Map<String, Value>> {
    parse_object(raw, "device_keys")
}
