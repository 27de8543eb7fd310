//! Device lists over federation, both ways (spec: "Device Management", `m.device_list_update`,
//! `m.signing_key_update`).
//!
//! Outbound: every change of a local user's devices or keys leaves a marker in
//! `fed_device_list_dirty` (written by the e2ee service in the batch of the change). The
//! sender's dispatcher turns markers into EDUs by comparing the user's devices with what was
//! last announced (`fed_device_list_sent`), so a crash between the change and the
//! announcement loses nothing and a burst of changes costs one comparison. Each device update
//! takes the next `stream_id` of the user, with the previous one as `prev_id`, and goes to the
//! servers sharing a room with the user. A server that did not get an earlier update sees the
//! gap in `prev_id` and resyncs through `user/devices`.
//!
//! Inbound: a cache of remote users' devices and cross-signing keys, kept for users who share
//! a room with a local user (or were cached before, e.g. after a query). Updates apply in
//! `stream_id` order; a gap (a `prev_id` beyond what the cache has seen) replaces the cache
//! with a fresh `user/devices` answer. Every change is a device-list change of the remote user
//! in the e2ee stream, so local clients see it in `/sync`'s `device_lists.changed`.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex},
};

use ruma::{api::federation::device::get_devices, OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    client::FederationClient,
    queue::{Edu, Queue},
};
use crate::{
    error::{Error, Result},
    service::{
        e2ee::E2ee, presence::co_members, rooms::Rooms, sessions::DevicesTable, stream::Stream,
        users::now_ms,
    },
    store::{Batch, CommitError, Raw, Record, Store},
    table,
};

table!(
    /// `user_id → position`: the local user's devices or keys changed (at that stream
    /// position) and the change is not announced over federation yet.
    pub DeviceListDirty: "fed_device_list_dirty", String => u64
);
table!(
    /// `(user_id, device_id) → JSON {display_name, keys}`: what was last announced for a local
    /// device; compared with the device's current state to find what to announce.
    pub DeviceListSent: "fed_device_list_sent", (String, String) => Raw
);
table!(
    /// `user_id → AnnouncedUser`: the last `stream_id` used for the local user and the
    /// cross-signing keys last announced.
    pub DeviceListStream: "fed_device_list_stream", String => AnnouncedUser
);
table!(
    /// `user_id → RemoteUser`: a remote user whose device list is cached.
    pub RemoteDeviceLists: "fed_remote_device_lists", String => RemoteUser
);
table!(
    /// `(user_id, device_id) → RemoteDevice`: a cached device of a remote user.
    pub RemoteDevices: "fed_remote_devices", (String, String) => RemoteDevice
);
table!(
    /// `(user_id, "master" | "self_signing") → key JSON`: a remote user's cached
    /// cross-signing keys.
    pub RemoteCrossSigning: "fed_remote_cross_signing", (String, String) => Raw
);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AnnouncedUser {
    pub stream_id: u64,
    /// JSON `[master, self_signing]` as last announced.
    pub cross_signing: Vec<u8>,
}
impl Record for AnnouncedUser {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RemoteUser {
    /// The latest `stream_id` applied.
    pub stream_id: u64,
    /// When the list was last fetched whole (`user/devices`), ms since the epoch; 0: never.
    pub fetched_ms: u64,
}
impl Record for RemoteUser {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteDevice {
    pub display_name: Option<String>,
    /// The device keys JSON, if the device has keys.
    pub keys: Option<Vec<u8>>,
}
impl Record for RemoteDevice {}

/// Markers handled per scan.
const CHUNK: usize = 100;
/// Most devices kept for one remote user; a larger answer is cut (logged).
const MAX_REMOTE_DEVICES: usize = 1000;
const ATTEMPTS: usize = 8;
/// How long a fetched device list of a user sharing no room with a local user is used.
pub const UNSHARED_FRESH_MS: u64 = 60_000;

/// A remote user's cached devices and cross-signing keys.
#[derive(Debug, Clone, Default)]
pub struct CachedDevices {
    pub stream_id: u64,
    pub devices: BTreeMap<String, RemoteDevice>,
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
}

pub struct FederatedDevices {
    store: Store,
    stream: Arc<Stream>,
    e2ee: Arc<E2ee>,
    rooms: Arc<Rooms>,
    queue: Arc<Queue>,
    client: Arc<FederationClient>,
    /// Users with a resync running (one at a time per user).
    resyncing: Mutex<HashSet<OwnedUserId>>,
}

fn to_json(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::unknown(format!("cannot serialize: {e}")))
}

impl FederatedDevices {
    pub fn new(
        store: Store,
        stream: Arc<Stream>,
        e2ee: Arc<E2ee>,
        rooms: Arc<Rooms>,
        queue: Arc<Queue>,
        client: Arc<FederationClient>,
    ) -> Self {
        Self {
            store,
            stream,
            e2ee,
            rooms,
            queue,
            client,
            resyncing: Mutex::new(HashSet::new()),
        }
    }

    // ---- outbound ----

    /// The last `stream_id` announced for a local user (for `user/devices` answers).
    pub fn local_stream_id(&self, user_id: &UserId) -> Result<u64> {
        Ok(self
            .store
            .get::<DeviceListStream>(&user_id.to_string())?
            .map_or(0, |a| a.stream_id))
    }

    /// The remote servers sharing a joined room with `user_id`.
    fn servers_sharing(&self, user_id: &UserId) -> Result<BTreeSet<OwnedServerName>> {
        let members = co_members(&self.rooms, user_id)?;
        let mut servers = self
            .queue
            .remote_servers(members.iter().map(|u| u.as_ref()));
        servers.extend(self.rooms.partial_state_servers_of(user_id)?);
        Ok(servers)
    }

    /// Announces every pending local change (see the module documentation). Errors are
    /// logged; the markers stay and the next change (or start) tries again.
    pub async fn announce_local_changes(&self) {
        let mut from: Option<String> = None;
        loop {
            let rows = match self
                .store
                .range::<DeviceListDirty>(from.as_ref(), false, CHUNK)
            {
                Ok(rows) => rows,
                Err(e) => {
                    log::warn!("cannot read device-list markers: {e}");
                    return;
                }
            };
            let full = rows.len() == CHUNK;
            for (user, marker) in rows {
                from = Some(format!("{user}\0"));
                let Ok(user_id) = UserId::parse(&user) else {
                    continue;
                };
                if let Err(e) = self.announce_user(&user_id, marker).await {
                    log::warn!("cannot announce the device list of {user_id}: {e}");
                }
            }
            if !full {
                return;
            }
        }
    }

    /// The JSON announced for one local device: its display name and keys.
    fn device_state(&self, user_id: &UserId, device: &str) -> Result<Value> {
        let record = self
            .store
            .get::<DevicesTable>(&(user_id.to_string(), device.to_owned()))?;
        let keys = self
            .e2ee
            .device_keys_for(user_id, user_id, device)?
            .map(|mut k| {
                // The display name travels beside the keys, not in their `unsigned`.
                if let Some(object) = k.as_object_mut() {
                    object.remove("unsigned");
                }
                k
            });
        Ok(json!({
            "display_name": record.and_then(|r| r.display_name),
            "keys": keys,
        }))
    }

    async fn announce_user(&self, user_id: &UserId, marker: u64) -> Result<()> {
        let user = user_id.to_string();
        for _ in 0..ATTEMPTS {
            let devices: Vec<String> = self
                .store
                .scan_prefix::<DevicesTable, _>(&(user.as_str(),), usize::MAX)?
                .into_iter()
                .map(|((_, device), _)| device)
                .collect();
            let sent: BTreeMap<String, Raw> = self
                .store
                .scan_prefix::<DeviceListSent, _>(&(user.as_str(),), usize::MAX)?
                .into_iter()
                .map(|((_, device), raw)| (device, raw))
                .collect();
            let old = self.store.get::<DeviceListStream>(&user)?;
            let mut announced = old.clone().unwrap_or_default();
            let mut batch = Batch::new();
            let mut edus = Vec::new();
            let all: BTreeSet<&String> = devices.iter().chain(sent.keys()).collect();
            for device in all {
                let current = if devices.contains(device) {
                    Some(self.device_state(user_id, device)?)
                } else {
                    None
                };
                let row = (user.clone(), device.clone());
                let current_bytes = current.as_ref().map(to_json).transpose()?;
                if current_bytes.as_deref() == sent.get(device).map(|r| r.0.as_slice()) {
                    continue;
                }
                let prev = announced.stream_id;
                announced.stream_id += 1;
                let mut content = json!({
                    "user_id": user,
                    "device_id": device,
                    "stream_id": announced.stream_id,
                    "prev_id": if prev > 0 { vec![prev] } else { Vec::new() },
                });
                match (&current, current_bytes) {
                    (Some(state), Some(bytes)) => {
                        if let Some(name) = state["display_name"].as_str() {
                            content["device_display_name"] = json!(name);
                        }
                        if !state["keys"].is_null() {
                            content["keys"] = state["keys"].clone();
                        }
                        batch.put::<DeviceListSent>(&row, &Raw(bytes));
                    }
                    _ => {
                        content["deleted"] = json!(true);
                        batch.delete::<DeviceListSent>(&row);
                    }
                }
                edus.push(Edu::new("m.device_list_update", content));
            }
            let master = self
                .e2ee
                .cross_signing_key_for(user_id, user_id, "master")?;
            let self_signing = self
                .e2ee
                .cross_signing_key_for(user_id, user_id, "self_signing")?;
            let cross_signing = to_json(&json!([master, self_signing]))?;
            if cross_signing != announced.cross_signing {
                let mut content = json!({ "user_id": user });
                if let Some(master) = master {
                    content["master_key"] = master;
                }
                if let Some(self_signing) = self_signing {
                    content["self_signing_key"] = self_signing;
                }
                edus.push(Edu::new("m.signing_key_update", content));
                announced.cross_signing = cross_signing;
            }
            let destinations = self.servers_sharing(user_id)?;
            let mut positions = Vec::new();
            for edu in &edus {
                let pending = self.stream.allocate()?;
                self.queue
                    .stage_edu(&mut batch, pending.pos, &destinations, edu)?;
                positions.push(pending);
            }
            if old.as_ref() != Some(&announced) {
                batch
                    .expect_value::<DeviceListStream>(&user, old.as_ref())
                    .put::<DeviceListStream>(&user, &announced);
            }
            // A newer change moved the marker: it is handled in the next round.
            batch
                .expect_value::<DeviceListDirty>(&user, Some(&marker))
                .delete::<DeviceListDirty>(&user);
            match self.store.commit(batch).await {
                Ok(()) => {
                    drop(positions);
                    if !edus.is_empty() {
                        self.queue.wake(destinations);
                    }
                    return Ok(());
                }
                Err(CommitError::Conflict) => {
                    // Either a newer marker (its own round follows) or a concurrent write of
                    // the announced state: look again.
                    match self.store.get::<DeviceListDirty>(&user)? {
                        Some(newer) if newer != marker => return Ok(()),
                        _ => continue,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    // ---- inbound ----

    /// Whether updates about this remote user are kept: cached already, or sharing a room
    /// with a local user.
    fn tracked(&self, user_id: &UserId) -> Result<bool> {
        if self
            .store
            .get::<RemoteDeviceLists>(&user_id.to_string())?
            .is_some()
        {
            return Ok(true);
        }
        let members = co_members(&self.rooms, user_id)?;
        Ok(members.iter().any(|u| self.e2ee.is_local(u)))
    }

    /// The cached devices and keys of a remote user, if cached.
    pub fn cached(&self, user_id: &UserId) -> Result<Option<CachedDevices>> {
        let user = user_id.to_string();
        let Some(record) = self.store.get::<RemoteDeviceLists>(&user)? else {
            return Ok(None);
        };
        let devices = self
            .store
            .scan_prefix::<RemoteDevices, _>(&(user.as_str(),), MAX_REMOTE_DEVICES)?
            .into_iter()
            .map(|((_, device), d)| (device, d))
            .collect();
        let key = |usage: &str| -> Result<Option<Value>> {
            Ok(self
                .store
                .get::<RemoteCrossSigning>(&(user.clone(), usage.to_owned()))?
                .and_then(|Raw(bytes)| serde_json::from_slice(&bytes).ok()))
        };
        Ok(Some(CachedDevices {
            stream_id: record.stream_id,
            devices,
            master_key: key("master")?,
            self_signing_key: key("self_signing")?,
        }))
    }

    /// The devices of a remote user: from the cache, else fetched from their server
    /// (`user/devices`) and cached. Updates reach the cache only while the user shares a room
    /// with a local user (their server sends them to such servers alone), so for anyone else
    /// a cached list older than [`UNSHARED_FRESH_MS`] is fetched again.
    pub async fn devices_of(&self, user_id: &UserId) -> Result<CachedDevices> {
        let record = self.store.get::<RemoteDeviceLists>(&user_id.to_string())?;
        let fresh = match &record {
            None => false,
            Some(r) => {
                now_ms().saturating_sub(r.fetched_ms) < UNSHARED_FRESH_MS
                    || co_members(&self.rooms, user_id)?
                        .iter()
                        .any(|u| self.e2ee.is_local(u))
            }
        };
        if !fresh {
            self.resync(user_id).await?;
        }
        Ok(self.cached(user_id)?.unwrap_or_default())
    }

    /// Commits a change of the cache together with a device-list change of the remote user in
    /// the e2ee stream, and wakes the local users who see it.
    async fn commit_change(&self, mut batch: Batch, user_id: &UserId) -> Result<(), CommitError> {
        let pending = self.stream.allocate().map_err(CommitError::Store)?;
        self.e2ee
            .stage_change(&mut batch, pending.pos, user_id)
            .map_err(|e| CommitError::Store(crate::store::StoreError::Io(e.to_string())))?;
        let wake = self
            .e2ee
            .device_change_targets(user_id)
            .map_err(|e| CommitError::Store(crate::store::StoreError::Io(e.to_string())))?;
        self.e2ee
            .commit_positioned(batch, Some(pending), wake)
            .await
    }

    /// An `m.device_list_update` EDU (its sender already checked against the origin).
    pub async fn device_list_update(self: &Arc<Self>, content: &Value) -> Result<()> {
        #[derive(Deserialize)]
        struct Update {
            user_id: OwnedUserId,
            device_id: String,
            device_display_name: Option<String>,
            stream_id: u64,
            #[serde(default)]
            prev_id: Vec<u64>,
            deleted: Option<bool>,
            keys: Option<Value>,
        }
        let update: Update = serde_json::from_value(content.clone())
            .map_err(|e| Error::bad_json(format!("bad m.device_list_update: {e}")))?;
        let user_id = update.user_id.clone();
        if !self.tracked(&user_id)? {
            log::debug!("ignoring a device-list update of untracked user {user_id}");
            return Ok(());
        }
        let user = user_id.to_string();
        for _ in 0..ATTEMPTS {
            let old = self.store.get::<RemoteDeviceLists>(&user)?;
            let seen = old.as_ref().map(|o| o.stream_id);
            if seen.is_some_and(|s| s >= update.stream_id) {
                return Ok(());
            }
            let gap = match seen {
                None => !update.prev_id.is_empty(),
                Some(seen) => update.prev_id.iter().any(|p| *p > seen),
            };
            if gap {
                self.spawn_resync(user_id);
                return Ok(());
            }
            let mut batch = Batch::new();
            let row = (user.clone(), update.device_id.clone());
            if update.deleted == Some(true) {
                batch.delete::<RemoteDevices>(&row);
            } else {
                let keys = update.keys.as_ref().map(to_json).transpose()?;
                batch.put::<RemoteDevices>(
                    &row,
                    &RemoteDevice {
                        display_name: update.device_display_name.clone(),
                        keys,
                    },
                );
            }
            let record = RemoteUser {
                stream_id: update.stream_id,
                fetched_ms: old.as_ref().map_or(0, |o| o.fetched_ms),
            };
            batch
                .expect_value::<RemoteDeviceLists>(&user, old.as_ref())
                .put::<RemoteDeviceLists>(&user, &record);
            match self.commit_change(batch, &user_id).await {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// An `m.signing_key_update` EDU (its sender already checked against the origin).
    pub async fn signing_key_update(&self, content: &Value) -> Result<()> {
        let user_id: OwnedUserId = content
            .get("user_id")
            .and_then(Value::as_str)
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| Error::bad_json("m.signing_key_update without a valid user_id"))?;
        if !self.tracked(&user_id)? {
            log::debug!("ignoring a signing-key update of untracked user {user_id}");
            return Ok(());
        }
        let user = user_id.to_string();
        let mut batch = Batch::new();
        for (field, usage) in [
            ("master_key", "master"),
            ("self_signing_key", "self_signing"),
        ] {
            if let Some(key) = content.get(field).filter(|k| k.is_object()) {
                batch.put::<RemoteCrossSigning>(
                    &(user.clone(), usage.to_owned()),
                    &Raw(to_json(key)?),
                );
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        if self.store.get::<RemoteDeviceLists>(&user)?.is_none() {
            batch.put::<RemoteDeviceLists>(&user, &RemoteUser::default());
        }
        self.commit_change(batch, &user_id).await?;
        Ok(())
    }

    fn spawn_resync(self: &Arc<Self>, user_id: OwnedUserId) {
        {
            let mut running = self.resyncing.lock().unwrap_or_else(|e| e.into_inner());
            if !running.insert(user_id.clone()) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.resync(&user_id).await {
                log::info!("cannot resync the device list of {user_id}: {e}");
            }
            this.resyncing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&user_id);
        });
    }

    /// Replaces the cache of a remote user with their server's `user/devices` answer.
    pub async fn resync(&self, user_id: &UserId) -> Result<()> {
        let request = get_devices::v1::Request::new(user_id.to_owned());
        let response = self
            .client
            .send(user_id.server_name(), request)
            .await
            .map_err(|e| Error::unknown(format!("user/devices failed: {e}")))?;
        if response.user_id != user_id {
            return Err(Error::unknown("user/devices answered for another user"));
        }
        let user = user_id.to_string();
        for _ in 0..ATTEMPTS {
            let old = self.store.get::<RemoteDeviceLists>(&user)?;
            let mut batch = Batch::new();
            for (row, _) in self
                .store
                .scan_prefix::<RemoteDevices, _>(&(user.as_str(),), usize::MAX)?
            {
                batch.delete::<RemoteDevices>(&row);
            }
            if response.devices.len() > MAX_REMOTE_DEVICES {
                log::warn!(
                    "{user_id} has {} devices; keeping {MAX_REMOTE_DEVICES}",
                    response.devices.len()
                );
            }
            for device in response.devices.iter().take(MAX_REMOTE_DEVICES) {
                batch.put::<RemoteDevices>(
                    &(user.clone(), device.device_id.to_string()),
                    &RemoteDevice {
                        display_name: device.device_display_name.clone(),
                        keys: Some(device.keys.json().get().as_bytes().to_vec()),
                    },
                );
            }
            for (key, usage) in [
                (&response.master_key, "master"),
                (&response.self_signing_key, "self_signing"),
            ] {
                let row = (user.clone(), usage.to_owned());
                match key {
                    Some(key) => batch.put::<RemoteCrossSigning>(
                        &row,
                        &Raw(key.json().get().as_bytes().to_vec()),
                    ),
                    None => batch.delete::<RemoteCrossSigning>(&row),
                };
            }
            batch
                .expect_value::<RemoteDeviceLists>(&user, old.as_ref())
                .put::<RemoteDeviceLists>(
                    &user,
                    &RemoteUser {
                        stream_id: response.stream_id.into(),
                        fetched_ms: now_ms(),
                    },
                );
            match self.commit_change(batch, user_id).await {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }
}
