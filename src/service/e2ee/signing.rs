//! Cross-signing keys and the signatures users upload for keys.
//!
//! A user has at most one master, one self-signing and one user-signing key. The self-signing
//! and user-signing keys must be signed by the master key. Replacing the master key drops the
//! self-signing and user-signing keys it signed (unless replaced in the same upload) and the
//! signatures others made on it; replacing the self-signing key drops its signatures on the
//! user's devices.
//!
//! Uploaded signatures are stored apart from the keys they sign, one row per signature, so they
//! can be filtered by who may see them (spec: "Key and signature security"): a signature is
//! visible to everyone when the signer owns the signed key (self-signing key on devices,
//! devices on the master key), and otherwise only to the signer (a user-signing key's signature
//! on someone else's master key).

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use super::{
    add_signature, keys::DeviceKeysTable, signatures_by, signed_content, stored_object, to_bytes,
    verify_signature, E2ee, ATTEMPTS,
};
use crate::{
    error::{Error, Result},
    service::sessions::DevicesTable,
    store::{Batch, CommitError, Raw, Store},
    table,
};

table!(
    /// `(user_id, usage) → key` as compact JSON without `unsigned`; usage is `master`,
    /// `self_signing` or `user_signing`.
    pub CrossSigningKeys: "e2ee_cross_signing_keys", (String, String) => Raw
);
table!(
    /// `(target user_id, target key, signer user_id, signer key id) → signature` (unpadded
    /// base64). The target key is a device id (device keys) or a cross-signing public key.
    pub KeySignatures: "e2ee_signatures", (String, String, String, String) => String
);

pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// What `/keys/device_signing/upload` did.
#[derive(Debug, PartialEq, Eq)]
pub enum CrossSigningUpload {
    Done,
    /// The upload replaces existing keys: it needs User-Interactive Authentication first.
    NeedsAuth,
}

/// One signed object of `/keys/signatures/upload`: target user, key id, the object (or why it
/// could not be parsed).
pub type SignedKey = (OwnedUserId, String, Result<Map<String, Value>>);

/// Failures of `/keys/signatures/upload`: user → key id → `{errcode, error}`.
pub type SignatureFailures = BTreeMap<OwnedUserId, BTreeMap<String, Value>>;

fn failure(errcode: &str, error: &str) -> Value {
    json!({ "errcode": errcode, "error": error })
}

/// The public key of a cross-signing key object (its single `keys` value).
pub fn public_key(key: &Map<String, Value>) -> Option<&str> {
    let keys = key.get("keys")?.as_object()?;
    let (_, value) = keys.iter().next()?;
    value.as_str()
}

/// Checks an uploaded cross-signing key: it names the user, has the usage, and exactly one
/// ed25519 key named by itself. Returns it without `unsigned`, with its public key.
fn check_key(
    user_id: &UserId,
    mut key: Map<String, Value>,
    usage: &str,
) -> Result<(Map<String, Value>, String)> {
    key.remove("unsigned");
    if key.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()) {
        return Err(Error::invalid_param(format!(
            "The {usage} key must name the user's own id"
        )));
    }
    let has_usage = key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|u| u.as_str() == Some(usage)));
    if !has_usage {
        return Err(Error::invalid_param(format!(
            "The {usage} key must list {usage:?} in its usage"
        )));
    }
    let public = match key.get("keys").and_then(Value::as_object) {
        Some(keys) if keys.len() == 1 => {
            let (name, value) = keys.iter().next().expect("one entry");
            match (name.strip_prefix("ed25519:"), value.as_str()) {
                (Some(id), Some(value)) if id == value && !id.is_empty() => value.to_owned(),
                _ => {
                    return Err(Error::invalid_param(format!(
                        "The {usage} key must be one ed25519:<public key> entry naming itself"
                    )))
                }
            }
        }
        _ => {
            return Err(Error::invalid_param(format!(
                "The {usage} key must have exactly one key"
            )))
        }
    };
    if key.get("signatures").is_some_and(|s| !s.is_object()) {
        return Err(Error::bad_json("signatures must be an object"));
    }
    signed_content(&key)?;
    Ok((key, public))
}

/// Stages deletes of every signature on `(target user, target key)`.
pub(crate) fn stage_delete_signatures_on(
    store: &Store,
    batch: &mut Batch,
    user: &str,
    key: &str,
    limit: usize,
) -> Result<()> {
    for (row, _) in store.scan_prefix::<KeySignatures, _>(&(user, key), limit)? {
        batch.delete::<KeySignatures>(&row);
    }
    Ok(())
}

/// A stored key with its raw bytes (for preconditions) and parsed object.
struct Stored {
    raw: Raw,
    object: Map<String, Value>,
}

impl Stored {
    fn public_key(&self) -> Option<&str> {
        public_key(&self.object)
    }
}

impl E2ee {
    fn cross_signing_key(&self, user_id: &UserId, usage: &str) -> Result<Option<Stored>> {
        let row = (user_id.to_string(), usage.to_owned());
        match self.store.get::<CrossSigningKeys>(&row)? {
            Some(raw) => {
                let object = stored_object(&raw.0)?;
                Ok(Some(Stored { raw, object }))
            }
            None => Ok(None),
        }
    }

    /// Adds the stored signatures on `(user, key)` that `viewer` may see to `object`.
    pub(crate) fn merge_signatures(
        &self,
        object: &mut Map<String, Value>,
        viewer: &UserId,
        user_id: &UserId,
        key: &str,
    ) -> Result<()> {
        let rows = self
            .store
            .scan_prefix::<KeySignatures, _>(&(user_id.as_str(), key), usize::MAX)?;
        for ((_, _, signer, key_id), signature) in rows {
            if signer == user_id.as_str() || signer == viewer.as_str() {
                add_signature(object, &signer, &key_id, &signature);
            }
        }
        Ok(())
    }

    /// A user's cross-signing key of `usage` as `/keys/query` shows it to `viewer`.
    pub fn cross_signing_key_for(
        &self,
        viewer: &UserId,
        user_id: &UserId,
        usage: &str,
    ) -> Result<Option<Value>> {
        let Some(mut stored) = self.cross_signing_key(user_id, usage)? else {
            return Ok(None);
        };
        if let Some(public) = stored.public_key().map(str::to_owned) {
            self.merge_signatures(&mut stored.object, viewer, user_id, &public)?;
        }
        Ok(Some(Value::Object(stored.object)))
    }

    /// `/keys/device_signing/upload`. Without `authorized`, an upload that would replace an
    /// existing key returns [`CrossSigningUpload::NeedsAuth`] and changes nothing (spec: UIA
    /// is needed unless the user has no master key yet or the upload repeats the stored keys).
    pub async fn upload_cross_signing(
        &self,
        user_id: &UserId,
        master: Option<Map<String, Value>>,
        self_signing: Option<Map<String, Value>>,
        user_signing: Option<Map<String, Value>>,
        authorized: bool,
    ) -> Result<CrossSigningUpload> {
        let master = master.map(|k| check_key(user_id, k, MASTER)).transpose()?;
        let self_signing = self_signing
            .map(|k| check_key(user_id, k, SELF_SIGNING))
            .transpose()?;
        let user_signing = user_signing
            .map(|k| check_key(user_id, k, USER_SIGNING))
            .transpose()?;
        let user = user_id.to_string();

        for _ in 0..ATTEMPTS {
            let old_master = self.cross_signing_key(user_id, MASTER)?;
            let old_self = self.cross_signing_key(user_id, SELF_SIGNING)?;
            let old_user = self.cross_signing_key(user_id, USER_SIGNING)?;

            let master_public = match (&master, &old_master) {
                (Some((_, public)), _) => Some(public.clone()),
                (None, Some(old)) => old.public_key().map(str::to_owned),
                (None, None) => None,
            };
            for (key, usage) in [(&self_signing, SELF_SIGNING), (&user_signing, USER_SIGNING)] {
                let Some((key, _)) = key else { continue };
                let Some(master_public) = &master_public else {
                    return Err(Error::missing_param(format!(
                        "No master key is available to check the {usage} key against"
                    )));
                };
                let key_id = format!("ed25519:{master_public}");
                if !verify_signature(key, user_id.as_str(), &key_id, master_public) {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_INVALID_SIGNATURE",
                        format!("The {usage} key is not signed by the master key"),
                    ));
                }
            }
            let devices = self
                .store
                .scan_prefix::<DevicesTable, _>(&(user.as_str(),), usize::MAX)?;
            for (_, public) in [&master, &self_signing, &user_signing]
                .into_iter()
                .flatten()
            {
                if devices.iter().any(|((_, device), _)| device == public) {
                    return Err(Error::forbidden(
                        "A cross-signing public key equals one of the user's device ids",
                    ));
                }
            }

            let same = |new: &Option<(Map<String, Value>, String)>,
                        old: &Option<Stored>|
             -> Result<bool> {
                Ok(match (new, old) {
                    (Some((new, _)), Some(old)) => {
                        signed_content(new)? == signed_content(&old.object)?
                    }
                    _ => false,
                })
            };
            let master_same = master.is_none() || same(&master, &old_master)?;
            let self_same = self_signing.is_none() || same(&self_signing, &old_self)?;
            let user_same = user_signing.is_none() || same(&user_signing, &old_user)?;
            let exempt = old_master.is_none() || (master_same && self_same && user_same);
            if !exempt && !authorized {
                return Ok(CrossSigningUpload::NeedsAuth);
            }

            let mut batch = Batch::new();
            let mut changed = false;
            let master_replaced = master.is_some() && !master_same;
            if let (Some((key, _)), false) = (&master, master_same) {
                stage_put(&mut batch, &user, MASTER, key, old_master.as_ref())?;
                changed = true;
                if let Some(old_public) = old_master.as_ref().and_then(Stored::public_key) {
                    stage_delete_signatures_on(
                        &self.store,
                        &mut batch,
                        &user,
                        old_public,
                        usize::MAX,
                    )?;
                }
            }
            for (new, old, usage, is_same) in [
                (&self_signing, &old_self, SELF_SIGNING, self_same),
                (&user_signing, &old_user, USER_SIGNING, user_same),
            ] {
                match new {
                    Some((key, _)) if !is_same => {
                        stage_put(&mut batch, &user, usage, key, old.as_ref())?;
                        changed = true;
                    }
                    None if master_replaced && old.is_some() => {
                        // Signed by the replaced master key: no longer valid.
                        let row = (user.clone(), usage.to_owned());
                        batch
                            .expect_value::<CrossSigningKeys>(&row, old.as_ref().map(|o| &o.raw))
                            .delete::<CrossSigningKeys>(&row);
                        changed = true;
                    }
                    _ => continue,
                }
                if usage == SELF_SIGNING {
                    if let Some(old_public) = old.as_ref().and_then(Stored::public_key) {
                        self.stage_delete_signatures_by(&mut batch, user_id, old_public)?;
                    }
                }
            }
            if !changed {
                return Ok(CrossSigningUpload::Done);
            }
            let pending = self.stream.allocate()?;
            self.stage_change(&mut batch, pending.pos, user_id)?;
            let wake = self.device_change_targets(user_id)?;
            match self.commit_positioned(batch, Some(pending), wake).await {
                Ok(()) => return Ok(CrossSigningUpload::Done),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Deletes all of the user's cross-signing keys and every signature on the user's keys
    /// (account deactivation), and records a device-list change so other users' clients drop
    /// them. Idempotent.
    pub async fn delete_cross_signing(&self, user_id: &UserId) -> Result<()> {
        let user = user_id.to_string();
        for _ in 0..ATTEMPTS {
            let mut batch = Batch::new();
            for usage in [MASTER, SELF_SIGNING, USER_SIGNING] {
                let row = (user.clone(), usage.to_owned());
                if let Some(old) = self.store.get::<CrossSigningKeys>(&row)? {
                    batch
                        .expect_value::<CrossSigningKeys>(&row, Some(&old))
                        .delete::<CrossSigningKeys>(&row);
                }
            }
            let had_keys = !batch.is_empty();
            let signatures = self
                .store
                .scan_prefix::<KeySignatures, _>(&(user.as_str(),), usize::MAX)?;
            for (row, _) in signatures {
                batch.delete::<KeySignatures>(&row);
            }
            if batch.is_empty() {
                return Ok(());
            }
            let (pending, wake) = if had_keys {
                let pending = self.stream.allocate()?;
                self.stage_change(&mut batch, pending.pos, user_id)?;
                (Some(pending), self.device_change_targets(user_id)?)
            } else {
                (None, Vec::new())
            };
            match self.commit_positioned(batch, pending, wake).await {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Stages deletes of the signatures the user's key `public` made on the user's own keys.
    fn stage_delete_signatures_by(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        public: &str,
    ) -> Result<()> {
        let key_id = format!("ed25519:{public}");
        let rows = self
            .store
            .scan_prefix::<KeySignatures, _>(&(user_id.as_str(),), usize::MAX)?;
        for (row, _) in rows {
            if row.2 == user_id.as_str() && row.3 == key_id {
                batch.delete::<KeySignatures>(&row);
            }
        }
        Ok(())
    }

    /// `/keys/signatures/upload` by `signer`: `signed` holds `(target user, key id, signed
    /// object)`. Returns the failures, per user and key id; the valid signatures are stored.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        signed: &[SignedKey],
    ) -> Result<SignatureFailures> {
        for _ in 0..ATTEMPTS {
            let mut failures = SignatureFailures::new();
            let mut batch = Batch::new();
            let mut own_change = false;
            let mut notices = Vec::new();
            for (target, key_id, object) in signed {
                let outcome = match object {
                    Ok(object) => {
                        self.stage_signature(&mut batch, signer, target, key_id, object)?
                    }
                    Err(e) => Err(failure(e.errcode, &e.message)),
                };
                match outcome {
                    Ok(false) => {}
                    Ok(true) if target == signer => own_change = true,
                    Ok(true) => notices.push(target.clone()),
                    Err(fail) => {
                        failures
                            .entry(target.clone())
                            .or_default()
                            .insert(key_id.clone(), fail);
                    }
                }
            }
            if batch.is_empty() || (!own_change && notices.is_empty()) {
                return Ok(failures);
            }
            let pending = self.stream.allocate()?;
            if own_change {
                self.stage_change(&mut batch, pending.pos, signer)?;
            }
            notices.sort();
            notices.dedup();
            for target in &notices {
                self.stage_notice(&mut batch, pending.pos, signer, target);
            }
            let wake = if own_change {
                self.device_change_targets(signer)?
            } else {
                vec![signer.to_owned()]
            };
            match self.commit_positioned(batch, Some(pending), wake).await {
                Ok(()) => return Ok(failures),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Stages the new valid signatures `signer` put on one key. `Ok(true)`: something new is
    /// stored; `Ok(false)`: all already known; the inner `Err` is the failure to report.
    fn stage_signature(
        &self,
        batch: &mut Batch,
        signer: &UserId,
        target: &UserId,
        key_id: &str,
        object: &Map<String, Value>,
    ) -> Result<Result<bool, Value>> {
        if !self.is_local(target) {
            return Ok(Err(failure(
                "M_UNRECOGNIZED",
                "This homeserver does not federate yet, so it cannot reach other servers",
            )));
        }
        let Ok(content) = signed_content(object) else {
            return Ok(Err(failure(
                "M_BAD_JSON",
                "The signed object is not canonical JSON",
            )));
        };
        let user = target.to_string();
        // The key being signed, and the keys allowed to sign it: (key id, public key, the
        // precondition row of the signing key).
        let mut signing_keys: Vec<(String, String)> = Vec::new();
        let device_row = (user.clone(), key_id.to_owned());
        let target_master = self.cross_signing_key(target, MASTER)?;
        if target == signer {
            if let Some(Raw(bytes)) = self.store.get::<DeviceKeysTable>(&device_row)? {
                // A device of the signer, signed with their self-signing key.
                let stored = stored_object(&bytes)?;
                if signed_content(&stored)? != content {
                    return Ok(Err(failure(
                        "M_INVALID_PARAM",
                        "The signed object does not match the device's keys",
                    )));
                }
                let Some(self_key) = self.cross_signing_key(signer, SELF_SIGNING)? else {
                    return Ok(Err(failure(
                        "M_INVALID_SIGNATURE",
                        "The user has no self-signing key to sign devices with",
                    )));
                };
                batch.expect_value::<DeviceKeysTable>(&device_row, Some(&Raw(bytes)));
                let row = (user.clone(), SELF_SIGNING.to_owned());
                batch.expect_value::<CrossSigningKeys>(&row, Some(&self_key.raw));
                if let Some(public) = self_key.public_key() {
                    signing_keys.push((format!("ed25519:{public}"), public.to_owned()));
                }
            } else if let Some(master) = target_master
                .as_ref()
                .filter(|m| m.public_key() == Some(key_id))
            {
                // The signer's master key, signed with one of their devices.
                if signed_content(&master.object)? != content {
                    return Ok(Err(failure(
                        "M_INVALID_PARAM",
                        "The signed object does not match the master key",
                    )));
                }
                let row = (user.clone(), MASTER.to_owned());
                batch.expect_value::<CrossSigningKeys>(&row, Some(&master.raw));
                for (signature_key_id, _) in signatures_by(object, signer.as_str()) {
                    let Some(device) = signature_key_id.strip_prefix("ed25519:") else {
                        continue;
                    };
                    let row = (user.clone(), device.to_owned());
                    let Some(Raw(bytes)) = self.store.get::<DeviceKeysTable>(&row)? else {
                        continue;
                    };
                    let device_keys = stored_object(&bytes)?;
                    if let Some(public) = device_keys
                        .get("keys")
                        .and_then(|k| k.get(&signature_key_id))
                        .and_then(Value::as_str)
                    {
                        signing_keys.push((signature_key_id.clone(), public.to_owned()));
                        batch.expect_value::<DeviceKeysTable>(&row, Some(&Raw(bytes)));
                    }
                }
            } else {
                return Ok(Err(failure("M_NOT_FOUND", "No such key of this user")));
            }
        } else {
            // Someone else's master key, signed with the signer's user-signing key.
            let Some(master) = target_master
                .as_ref()
                .filter(|m| m.public_key() == Some(key_id))
            else {
                return Ok(Err(failure(
                    "M_NOT_FOUND",
                    "Only another user's master key can be signed, and this is not it",
                )));
            };
            if signed_content(&master.object)? != content {
                return Ok(Err(failure(
                    "M_INVALID_PARAM",
                    "The signed object does not match the master key",
                )));
            }
            let Some(user_key) = self.cross_signing_key(signer, USER_SIGNING)? else {
                return Ok(Err(failure(
                    "M_INVALID_SIGNATURE",
                    "The signer has no user-signing key",
                )));
            };
            batch.expect_value::<CrossSigningKeys>(
                &(user.clone(), MASTER.to_owned()),
                Some(&master.raw),
            );
            batch.expect_value::<CrossSigningKeys>(
                &(signer.to_string(), USER_SIGNING.to_owned()),
                Some(&user_key.raw),
            );
            if let Some(public) = user_key.public_key() {
                signing_keys.push((format!("ed25519:{public}"), public.to_owned()));
            }
        }

        let mut valid = 0;
        let mut new = false;
        for (signature_key_id, public) in signing_keys {
            if !verify_signature(object, signer.as_str(), &signature_key_id, &public) {
                continue;
            }
            valid += 1;
            let Some(signature) = object["signatures"][signer.as_str()][&signature_key_id].as_str()
            else {
                continue;
            };
            let row = (
                user.clone(),
                key_id.to_owned(),
                signer.to_string(),
                signature_key_id,
            );
            if self.store.get::<KeySignatures>(&row)?.as_deref() == Some(signature) {
                continue;
            }
            batch.put::<KeySignatures>(&row, &signature.to_owned());
            new = true;
        }
        if valid == 0 {
            return Ok(Err(failure(
                "M_INVALID_SIGNATURE",
                "No valid signature by a key allowed to sign this key",
            )));
        }
        Ok(Ok(new))
    }
}

/// Stages storing a cross-signing key, guarded by the value it replaces.
fn stage_put(
    batch: &mut Batch,
    user: &str,
    usage: &str,
    key: &Map<String, Value>,
    old: Option<&Stored>,
) -> Result<()> {
    let row = (user.to_owned(), usage.to_owned());
    batch
        .expect_value::<CrossSigningKeys>(&row, old.map(|o| &o.raw))
        .put::<CrossSigningKeys>(&row, &Raw(to_bytes(key)?));
    Ok(())
}
