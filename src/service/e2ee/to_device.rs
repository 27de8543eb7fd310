//! Send-to-device messaging: one durable inbox per device, ordered by stream position.
//!
//! A send takes one stream position for all of its messages (a send puts at most one message
//! in each inbox, so `(user, device, position)` is unique) and is idempotent per sending
//! device: the transaction id is stored in the same batch as the messages, so a retried send
//! is a no-op. Messages stay in the inbox until the device acknowledges them by syncing with a
//! token at or past their position ([`E2ee::acknowledge_to_device`]); until then every sync
//! from an earlier token delivers them again, so nothing is lost to a dropped response or a
//! restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::{DeviceId, OwnedDeviceId, OwnedServerName, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use super::{E2ee, ATTEMPTS};
use crate::{
    error::{Error, Result},
    service::federation::queue::Edu,
    service::sessions::DevicesTable,
    store::{Batch, CommitError, Raw, Store},
    table,
};

table!(
    /// `(user_id, device_id, position) → event` as compact JSON `{type, sender, content}`:
    /// messages waiting for the device, in stream order.
    pub ToDeviceInbox: "to_device_inbox", (String, String, u64) => Raw
);
table!(
    /// `(sender user_id, sender device_id, event type, txn_id) → position` of the send.
    pub ToDeviceTxns: "to_device_txns", (String, String, String, String) => u64
);

/// Rows deleted per batch when acknowledging. Small: rows are read with their values, and
/// a message can be as large as a request body.
const ACK_CHUNK: usize = 64;
/// Rows read per scan of an inbox (same reason).
const READ_CHUNK: usize = 16;
/// Most to-device messages one sync response carries.
pub const SYNC_MAX_MESSAGES: usize = 100;
/// Most bytes of to-device messages one sync response carries (beyond its first message).
pub const SYNC_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most messages a device's inbox holds; a send beyond it drops the oldest (logged).
pub const MAX_INBOX_MESSAGES: u64 = 1000;
/// Most bytes a device's inbox holds; a send beyond it drops the oldest (logged). The newest
/// message is always kept, whatever its size.
pub const MAX_INBOX_BYTES: u64 = 16 * 1024 * 1024;

/// Messages and bytes in a device's inbox.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct InboxSize {
    messages: u64,
    bytes: u64,
}

/// One sync's share of a device's inbox: see [`E2ee::to_device_batch`].
pub struct ToDeviceBatch {
    pub events: Vec<Value>,
    /// The highest position the batch covers: everything of the device's inbox up to here
    /// is in `events`.
    pub upto: u64,
}

/// Recipients of one message: one device, or every device of the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Device(OwnedDeviceId),
    AllDevices,
}

/// One send request's messages: `(user, target, content)`.
pub type Messages = Vec<(OwnedUserId, Target, Map<String, Value>)>;

/// Stages deletes of a device's inbox and of the transaction ids it sent with.
pub(crate) fn stage_delete_device_inbox(
    store: &Store,
    batch: &mut Batch,
    user: &str,
    device: &str,
    limit: usize,
) -> Result<()> {
    for (row, _) in store.scan_prefix::<ToDeviceInbox, _>(&(user, device), limit)? {
        batch.delete::<ToDeviceInbox>(&row);
    }
    for (row, _) in store.scan_prefix::<ToDeviceTxns, _>(&(user, device), limit)? {
        batch.delete::<ToDeviceTxns>(&row);
    }
    Ok(())
}

impl E2ee {
    /// `PUT /sendToDevice/{type}/{txnId}`. Messages to unknown local users or devices are
    /// dropped. Messages to users of other servers are queued in the same batch, one
    /// `m.direct_to_device` EDU per server whose `message_id` is the send's stream position
    /// (unique for this server), so a retried send queues nothing again. A message addressed
    /// to a device explicitly wins over the same user's `*`.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        event_type: &str,
        txn_id: &str,
        messages: &Messages,
    ) -> Result<()> {
        if event_type.is_empty() || event_type.len() > 255 {
            return Err(Error::invalid_param(
                "The event type must be 1 to 255 bytes",
            ));
        }
        let txn = (
            sender.to_string(),
            sender_device.to_string(),
            event_type.to_owned(),
            txn_id.to_owned(),
        );
        for _ in 0..ATTEMPTS {
            if self.store.get::<ToDeviceTxns>(&txn)?.is_some() {
                return Ok(());
            }
            let pending = self.stream.allocate()?;
            let mut batch = Batch::new();
            // (user, device) → content; explicit devices replace `*`, `*` fills in.
            let mut inbox: BTreeMap<(String, String), &Map<String, Value>> = BTreeMap::new();
            let mut remote: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
            for (user_id, target, content) in messages {
                if !self.is_local(user_id) {
                    let device = match target {
                        Target::Device(device) => device.to_string(),
                        Target::AllDevices => "*".to_owned(),
                    };
                    let by_user = remote
                        .entry(user_id.server_name().to_owned())
                        .or_default()
                        .entry(user_id.to_string())
                        .or_insert_with(|| Value::Object(Map::new()));
                    by_user[device.as_str()] = Value::Object(content.clone());
                    continue;
                }
                let user = user_id.to_string();
                match target {
                    Target::Device(device) => {
                        inbox.insert((user, device.to_string()), content);
                    }
                    Target::AllDevices => {
                        let devices = self
                            .store
                            .scan_prefix::<DevicesTable, _>(&(user.as_str(),), usize::MAX)?;
                        for ((_, device), _) in devices {
                            inbox.entry((user.clone(), device)).or_insert(content);
                        }
                    }
                }
            }
            let mut recipients = Vec::new();
            let mut sizes = Vec::new();
            for ((user, device), content) in inbox {
                let device_row = (user.clone(), device.clone());
                let Some(record) = self.store.get::<DevicesTable>(&device_row)? else {
                    continue;
                };
                // The device must still exist when this lands, so no message outlives it.
                batch.expect_value::<DevicesTable>(&device_row, Some(&record));
                let event = json!({
                    "type": event_type,
                    "sender": sender.as_str(),
                    "content": content,
                });
                let bytes = serde_json::to_vec(&event)
                    .map_err(|_| Error::unknown("Cannot serialize the message"))?;
                let size = self.inbox_size(&user, &device)?;
                let added = bytes.len() as u64;
                let dropped = self.stage_make_room(&mut batch, &user, &device, size, added)?;
                batch.put::<ToDeviceInbox>(
                    &(user.clone(), device.clone(), pending.pos),
                    &Raw(bytes),
                );
                sizes.push(((user.clone(), device), dropped, added));
                recipients.push(user);
            }
            for (server, by_user) in &remote {
                let edu = Edu::new(
                    "m.direct_to_device",
                    json!({
                        "sender": sender,
                        "type": event_type,
                        "message_id": pending.pos.to_string(),
                        "messages": by_user,
                    }),
                );
                let destination = BTreeSet::from([server.clone()]);
                self.fed_queue
                    .stage_edu(&mut batch, pending.pos, &destination, &edu)?;
            }
            batch
                .expect_absent::<ToDeviceTxns>(&txn)
                .put::<ToDeviceTxns>(&txn, &pending.pos);
            recipients.sort();
            recipients.dedup();
            let users: Vec<OwnedUserId> = recipients
                .iter()
                .filter_map(|u| UserId::parse(u.as_str()).ok())
                .collect();
            match self.commit_positioned(batch, Some(pending), users).await {
                Ok(()) => {
                    self.inbox_sizes_changed(sizes);
                    self.fed_queue.wake(remote.into_keys());
                    return Ok(());
                }
                // Either a retry of this send landed first (found on the next round) or a
                // recipient device changed meanwhile.
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// The next to-device messages for a sync of the device: those with positions in
    /// `(since, upto]` (from the start without `since`), oldest first, as `{type, sender,
    /// content}` objects, at most [`SYNC_MAX_MESSAGES`] of them and, past the first, at most
    /// about [`SYNC_MAX_BYTES`]. When messages are held back, the returned `upto` is lowered to
    /// just before the first of them: the sync uses it as its horizon (and next token), so the
    /// rest come with the following syncs, in order, and the token acknowledges exactly what
    /// was delivered. Reads in small chunks so memory stays bounded whatever the inbox holds.
    pub fn to_device_batch(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<ToDeviceBatch> {
        let prefix = (user_id.as_str(), device_id.as_str());
        let mut from = since.map_or(0, |s| s.saturating_add(1));
        let mut events = Vec::new();
        let mut bytes = 0usize;
        loop {
            let key = (user_id.to_string(), device_id.to_string(), from);
            let rows = self.store.range_in_prefix::<ToDeviceInbox, _>(
                &prefix,
                Some(&key),
                false,
                READ_CHUNK,
            )?;
            let full_chunk = rows.len() == READ_CHUNK;
            for ((_, _, pos), Raw(raw)) in rows {
                if pos > upto {
                    return Ok(ToDeviceBatch { events, upto });
                }
                if events.len() == SYNC_MAX_MESSAGES
                    || (!events.is_empty() && bytes + raw.len() > SYNC_MAX_BYTES)
                {
                    return Ok(ToDeviceBatch {
                        events,
                        upto: pos - 1,
                    });
                }
                bytes += raw.len();
                let event = serde_json::from_slice(&raw)
                    .map_err(|_| Error::unknown("Stored to-device message is corrupt"))?;
                events.push(event);
                from = pos.saturating_add(1);
            }
            if !full_chunk {
                return Ok(ToDeviceBatch { events, upto });
            }
        }
    }

    /// Deletes the device's messages at positions `<= since`: a sync with token `since` shows
    /// the client received everything up to it.
    pub async fn acknowledge_to_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: u64,
    ) -> Result<()> {
        loop {
            let rows = self.store.range_in_prefix::<ToDeviceInbox, _>(
                &(user_id.as_str(), device_id.as_str()),
                None,
                false,
                ACK_CHUNK,
            )?;
            let mut batch = Batch::new();
            let mut more = rows.len() == ACK_CHUNK;
            for ((user, device, pos), _) in rows {
                if pos > since {
                    more = false;
                    break;
                }
                batch.delete::<ToDeviceInbox>(&(user, device, pos));
            }
            if batch.is_empty() {
                return Ok(());
            }
            self.store.commit(batch).await?;
            self.forget_inbox_size(user_id.as_str(), device_id.as_str());
            if !more {
                return Ok(());
            }
        }
    }

    /// The size of a device's inbox: remembered since the last count, or counted now (in
    /// small chunks). Sends and acknowledgements that race a count can leave it off by the
    /// sends in flight, so the cap is exact only up to that; an acknowledgement or device
    /// removal forgets it, and the next send counts again.
    fn inbox_size(&self, user: &str, device: &str) -> Result<InboxSize> {
        let key = (user.to_owned(), device.to_owned());
        if let Some(size) = self.inbox_sizes().get(&key) {
            return Ok(*size);
        }
        let mut size = InboxSize::default();
        let mut from = 0;
        loop {
            let rows = self.store.range_in_prefix::<ToDeviceInbox, _>(
                &(user, device),
                Some(&(user.to_owned(), device.to_owned(), from)),
                false,
                READ_CHUNK,
            )?;
            let full_chunk = rows.len() == READ_CHUNK;
            for ((_, _, pos), Raw(raw)) in rows {
                size.messages += 1;
                size.bytes += raw.len() as u64;
                from = pos.saturating_add(1);
            }
            if !full_chunk {
                break;
            }
        }
        self.inbox_sizes().insert(key, size);
        Ok(size)
    }

    /// Stages deletes of the device's oldest messages until one more message of `incoming`
    /// bytes fits under [`MAX_INBOX_MESSAGES`] and [`MAX_INBOX_BYTES`] (each delete guarded by
    /// `expect_value`, so a race with an acknowledgement retries the send). Returns what it
    /// dropped; a drop is logged, since the device will never see those messages.
    fn stage_make_room(
        &self,
        batch: &mut Batch,
        user: &str,
        device: &str,
        size: InboxSize,
        incoming: u64,
    ) -> Result<InboxSize> {
        let over = |dropped: &InboxSize| {
            size.messages.saturating_sub(dropped.messages) + 1 > MAX_INBOX_MESSAGES
                || size.bytes.saturating_sub(dropped.bytes) + incoming > MAX_INBOX_BYTES
        };
        let mut dropped = InboxSize::default();
        let mut from = 0;
        'scan: while over(&dropped) {
            let rows = self.store.range_in_prefix::<ToDeviceInbox, _>(
                &(user, device),
                Some(&(user.to_owned(), device.to_owned(), from)),
                false,
                READ_CHUNK,
            )?;
            let full_chunk = rows.len() == READ_CHUNK;
            for (key, raw) in rows {
                if !over(&dropped) {
                    break 'scan;
                }
                from = key.2.saturating_add(1);
                dropped.messages += 1;
                dropped.bytes += raw.0.len() as u64;
                batch.expect_value::<ToDeviceInbox>(&key, Some(&raw));
                batch.delete::<ToDeviceInbox>(&key);
            }
            if !full_chunk {
                break;
            }
        }
        if dropped.messages > 0 {
            log::warn!(
                "to-device inbox of {user} / {device} is full: dropping its {} oldest \
                 message(s), {} bytes",
                dropped.messages,
                dropped.bytes
            );
        }
        Ok(dropped)
    }

    /// After a send committed: each recipient inbox gained one message of `added` bytes and
    /// lost what was `dropped`.
    fn inbox_sizes_changed(&self, changes: Vec<((String, String), InboxSize, u64)>) {
        let mut sizes = self.inbox_sizes();
        for (key, dropped, added) in changes {
            if let Some(size) = sizes.get_mut(&key) {
                size.messages = size.messages.saturating_sub(dropped.messages) + 1;
                size.bytes = size.bytes.saturating_sub(dropped.bytes) + added;
            }
        }
    }

    pub(super) fn forget_inbox_size(&self, user: &str, device: &str) {
        self.inbox_sizes()
            .remove(&(user.to_owned(), device.to_owned()));
    }

    pub(super) fn forget_inbox_sizes_of(&self, user: &str) {
        self.inbox_sizes().retain(|(u, _), _| u != user);
    }

    fn inbox_sizes(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), InboxSize>> {
        // The map holds plain counters: a panic while holding the lock leaves it usable.
        self.inbox_sizes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
