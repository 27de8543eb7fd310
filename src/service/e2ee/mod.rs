//! End-to-end encryption support: the server stores and relays keys, never plaintext.
//!
//! - [`keys`]: device identity keys, one-time and fallback keys (`/keys/upload`, `/keys/query`,
//!   `/keys/claim`);
//! - [`signing`]: cross-signing keys and signatures (`/keys/device_signing/upload`,
//!   `/keys/signatures/upload`);
//! - [`device_lists`]: the device-list change stream behind `/keys/changes` and `/sync`'s
//!   `device_lists`;
//! - [`to_device`]: send-to-device messages, one inbox per device;
//! - [`backup`]: server-side key backups (`/room_keys/...`).
//!
//! Every table is documented in `schema/e2ee.md`. Writes that clients sync (device-list changes,
//! to-device messages) take a position in the global stream and wake the affected users'
//! long polls after they commit.
//!
//! Devices are deleted by the sessions service; [`E2ee::stage_device_removed`] stages the
//! removal of the device's keys, inbox and transaction ids into the same batch and leaves a
//! durable marker, and [`E2ee::devices_removed`] (after the commit, and at every start for
//! markers a crash left behind) sweeps anything that raced the deletion and records the
//! device-list change. New and renamed devices record theirs in the batch that writes the
//! device ([`E2ee::commit_with_device_change`]).

pub mod backup;
pub mod device_lists;
pub mod keys;
pub mod signing;
pub mod to_device;

use std::{collections::HashMap, sync::Arc};

use base64::Engine as _;
use ruma::{
    canonical_json::try_from_json_map,
    signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes},
    DeviceId, OwnedServerName, SigningKeyAlgorithm, UserId,
};
use serde_json::{Map, Value};

use super::{federation::queue::Queue, notifier::Notifier, sessions::DevicesTable, stream::Stream};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Store, StoreError},
    table,
};

table!(
    /// `(user_id, device_id) → had device keys`: devices deleted whose end-to-end data still
    /// has to be swept and whose deletion still has to be announced in the device-list stream.
    /// Written in the batch that deletes the device; removed by the sweep.
    pub RemovedDevices: "e2ee_removed_devices", (String, String) => bool
);

/// Rows read or deleted per scan when sweeping a device's data.
const SWEEP_CHUNK: usize = 1000;
/// How often a write retries after losing a race with a concurrent write.
pub(crate) const ATTEMPTS: usize = 16;

pub struct E2ee {
    store: Store,
    stream: Arc<Stream>,
    notifier: Arc<Notifier>,
    server_name: OwnedServerName,
    /// Sizes of device inboxes, `(user, device) → size`, as far as counted (see
    /// `to_device.rs`): enforcing the inbox cap costs no scan per send.
    inbox_sizes: std::sync::Mutex<HashMap<(String, String), to_device::InboxSize>>,
    /// Device-list changes and to-device messages for other servers.
    fed_queue: Arc<Queue>,
}

impl E2ee {
    /// Builds the service and finishes any device removal a crash interrupted (blocking: call
    /// it where blocking is allowed, as `Services::open` is).
    pub fn new(
        store: Store,
        stream: Arc<Stream>,
        notifier: Arc<Notifier>,
        server_name: OwnedServerName,
        fed_queue: Arc<Queue>,
    ) -> Result<Self, StoreError> {
        let e2ee = Self {
            store,
            stream,
            notifier,
            server_name,
            fed_queue,
            inbox_sizes: Default::default(),
        };
        e2ee.sweep_all_blocking()?;
        Ok(e2ee)
    }

    /// Whether `user_id` belongs to this server.
    pub fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// Stages the removal of a device's end-to-end data into the batch that deletes the
    /// device: its identity keys and the signatures on them, one-time and fallback keys, its
    /// to-device inbox and send transaction ids. Also leaves the marker that
    /// [`E2ee::devices_removed`] turns into a device-list change.
    pub fn stage_device_removed(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        let had_keys = self.stage_sweep(batch, user_id.as_str(), device_id.as_str(), usize::MAX)?;
        let marker = (user_id.to_string(), device_id.to_string());
        let earlier = self.store.get::<RemovedDevices>(&marker)?.unwrap_or(false);
        batch.put::<RemovedDevices>(&marker, &(had_keys || earlier));
        Ok(())
    }

    /// Stages deletes of everything stored for one device (at most about `limit` rows per
    /// table). Returns whether it had identity keys.
    fn stage_sweep(
        &self,
        batch: &mut Batch,
        user: &str,
        device: &str,
        limit: usize,
    ) -> Result<bool> {
        let had_keys = keys::stage_delete_device_keys(&self.store, batch, user, device, limit)?;
        to_device::stage_delete_device_inbox(&self.store, batch, user, device, limit)?;
        Ok(had_keys)
    }

    /// After a batch that deleted devices of `user_id` committed: sweeps what raced the
    /// deletion, records one device-list change for the user if a deleted device had keys, and
    /// wakes the syncs that care. Best effort: a failure is logged and retried at next start.
    pub async fn devices_removed(&self, user_id: &UserId) {
        if let Err(e) = self.sweep_user(user_id).await {
            log::warn!("cannot finish removing devices of {user_id}: {e}");
        }
        self.forget_inbox_sizes_of(user_id.as_str());
    }

    /// Commits `batch`, which adds or renames a device of `user_id`, together with a
    /// device-list change of the user (other users' clients then refresh its device list),
    /// and wakes the syncs concerned. `Ok(Err(Conflict))` when a concurrent write won: the
    /// caller rebuilds its batch and tries again.
    pub async fn commit_with_device_change(
        &self,
        mut batch: Batch,
        user_id: &UserId,
    ) -> Result<Result<(), CommitError>> {
        let pending = self.stream.allocate()?;
        self.stage_change(&mut batch, pending.pos, user_id)?;
        let wake = self.device_change_targets(user_id)?;
        Ok(self.commit_positioned(batch, Some(pending), wake).await)
    }

    /// Commits a batch that uses stream positions (see `Stream::commit`): the positions are
    /// released after the write even if the request is dropped, then `wake` is notified.
    pub(crate) async fn commit_positioned(
        &self,
        batch: Batch,
        pending: Option<super::stream::Pending>,
        wake: Vec<ruma::OwnedUserId>,
    ) -> Result<(), CommitError> {
        let notifier = self.notifier.clone();
        let fed_queue = self.fed_queue.clone();
        let wake_fn = move || {
            notifier.notify(wake.iter().map(|u| u.as_ref()));
            // The batch may hold a device-list marker of a local user (see `stage_change`).
            fed_queue.device_lists_changed();
        };
        self.stream
            .commit(
                &self.store,
                batch,
                pending.into_iter().collect(),
                (),
                wake_fn,
            )
            .await
    }

    async fn sweep_user(&self, user_id: &UserId) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let (batch, pending) = self.prepare_sweep(user_id)?;
            if batch.is_empty() {
                return Ok(());
            }
            let wake = self.device_change_targets(user_id)?;
            match self.commit_positioned(batch, pending, wake).await {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// One sweep batch for a user's removal markers (empty when there are none) and the stream
    /// position of the device-list change it records (held until the batch commits).
    fn prepare_sweep(&self, user_id: &UserId) -> Result<(Batch, Option<super::stream::Pending>)> {
        let markers = self
            .store
            .scan_prefix::<RemovedDevices, _>(&(user_id.as_str(),), SWEEP_CHUNK)?;
        let mut batch = Batch::new();
        if markers.is_empty() {
            return Ok((batch, None));
        }
        for ((user, device), had_keys) in markers {
            // A device logged in again under the same id since owns its new data.
            let gone = self
                .store
                .get::<DevicesTable>(&(user.clone(), device.clone()))?
                .is_none();
            if gone {
                self.stage_sweep(&mut batch, &user, &device, SWEEP_CHUNK)?;
            }
            batch
                .expect_value::<RemovedDevices>(&(user.clone(), device.clone()), Some(&had_keys))
                .delete::<RemovedDevices>(&(user, device));
        }
        // Every removed device is a device-list change, whether or not it had keys: clients
        // show other users' device lists, not only their keys.
        let pending = self.stream.allocate()?;
        self.stage_change(&mut batch, pending.pos, user_id)?;
        Ok((batch, Some(pending)))
    }

    /// Finishes every removal left by a crash or by a process that could not (the admin CLI).
    /// A removal that still fails is logged and left for the next start.
    fn sweep_all_blocking(&self) -> Result<(), StoreError> {
        let markers = self.store.range::<RemovedDevices>(None, false, 100_000)?;
        let mut users: Vec<String> = markers.into_iter().map(|((user, _), _)| user).collect();
        users.dedup();
        for user in users {
            let Ok(user_id) = UserId::parse(&user) else {
                log::warn!("ignoring a device removal marker of the invalid user id {user:?}");
                continue;
            };
            let (batch, pending) = match self.prepare_sweep(&user_id) {
                Ok(prepared) => prepared,
                Err(e) => {
                    log::warn!("cannot finish removing devices of {user_id}: {e}");
                    continue;
                }
            };
            let done = self.store.commit_blocking(batch);
            drop(pending);
            match done {
                Ok(()) => {}
                Err(CommitError::Conflict) => {
                    log::warn!("device removal of {user_id} conflicted; retried at next start")
                }
                Err(CommitError::Store(e)) => return Err(e),
            }
        }
        Ok(())
    }
}

// ---- JSON helpers shared by the submodules ----

/// A JSON object from raw request JSON, or `M_BAD_JSON` naming `what`.
pub(crate) fn parse_object(raw: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object"))),
    }
}

/// The canonical JSON that signatures of `object` cover (without `signatures` and
/// `unsigned`); `M_BAD_JSON` if the object is not valid canonical JSON (floats, huge
/// integers).
pub(crate) fn signed_content(object: &Map<String, Value>) -> Result<String> {
    let canonical = try_from_json_map(object.clone())
        .map_err(|e| Error::bad_json(format!("Not canonical JSON: {e}")))?;
    to_canonical_json_string_for_signing(&canonical)
        .map_err(|e| Error::bad_json(format!("Not canonical JSON: {e}")))
}

const BASE64: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::STANDARD_NO_PAD_INDIFFERENT;

/// Whether `object` carries a valid ed25519 signature by `signer` with `key_id`
/// (`ed25519:…`) made with the unpadded-base64 `public_key`.
pub(crate) fn verify_signature(
    object: &Map<String, Value>,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> bool {
    let Some(signature) = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
    else {
        return false;
    };
    let (Ok(signature), Ok(public_key), Ok(content)) = (
        BASE64.decode(signature),
        BASE64.decode(public_key),
        signed_content(object),
    ) else {
        return false;
    };
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        content.as_bytes(),
    )
    .is_ok()
}

/// The signatures `signer` put on `object`: `(key id, signature)`.
pub(crate) fn signatures_by(object: &Map<String, Value>, signer: &str) -> Vec<(String, String)> {
    object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(Value::as_object)
        .map(|sigs| {
            sigs.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Adds one signature to `object.signatures[signer][key_id]`.
pub(crate) fn add_signature(
    object: &mut Map<String, Value>,
    signer: &str,
    key_id: &str,
    signature: &str,
) {
    let signatures = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    if !signatures.is_object() {
        *signatures = Value::Object(Map::new());
    }
    let Some(signatures) = signatures.as_object_mut() else {
        return;
    };
    let by_signer = signatures
        .entry(signer)
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(by_signer) = by_signer.as_object_mut() {
        by_signer.insert(key_id.to_owned(), Value::String(signature.to_owned()));
    }
}

/// A stored JSON object, or `M_UNKNOWN` if the stored bytes are corrupt.
pub(crate) fn stored_object(bytes: &[u8]) -> Result<Map<String, Value>> {
    serde_json::from_slice(bytes).map_err(|_| Error::unknown("Stored key is corrupt"))
}

pub(crate) fn to_bytes(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|_| Error::unknown("Cannot serialize JSON"))
}
