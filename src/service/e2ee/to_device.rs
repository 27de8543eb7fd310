//! Send-to-device messaging: one durable inbox per device, ordered by stream position.
//!
//! A send takes one stream position for all of its messages (a send puts at most one message
//! in each inbox, so `(user, device, position)` is unique) and is idempotent per sending
//! device: the transaction id is stored in the same batch as the messages, so a retried send
//! is a no-op. Messages stay in the inbox until the device acknowledges them by syncing with a
//! token at or past their position ([`E2ee::acknowledge_to_device`]); until then every sync
//! from an earlier token delivers them again, so nothing is lost to a dropped response or a
//! restart.

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use super::{E2ee, ATTEMPTS};
use crate::{
    error::{Error, Result},
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

/// Rows deleted per batch when acknowledging.
const ACK_CHUNK: usize = 1000;

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
    /// `PUT /sendToDevice/{type}/{txnId}`. Messages to unknown users or devices are dropped,
    /// as are messages to users of other servers (there is no federation yet; logged). A
    /// message addressed to a device explicitly wins over the same user's `*`.
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
            for (user_id, target, content) in messages {
                if !self.is_local(user_id) {
                    log::warn!("dropping a to-device message for {user_id}: no federation yet");
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
                batch.put::<ToDeviceInbox>(&(user.clone(), device, pending.pos), &Raw(bytes));
                recipients.push(user);
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
                Ok(()) => return Ok(()),
                // Either a retry of this send landed first (found on the next round) or a
                // recipient device changed meanwhile.
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// The device's to-device messages with positions in `(since, upto]` (all up to `upto`
    /// without `since`), oldest first, as `{type, sender, content}` objects.
    ///
    /// Everything in the range is returned. To bound a response, clamp `upto` first with
    /// [`E2ee::to_device_upto`].
    pub fn to_device_for_sync(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Value>> {
        Ok(self
            .to_device_rows(user_id, device_id, since, upto, usize::MAX)?
            .into_iter()
            .map(|(_, event)| event)
            .collect())
    }

    /// The highest position `p <= upto` such that `(since, p]` holds at most `limit` messages
    /// for the device: a sync that wants at most `limit` to-device messages per response uses
    /// it as its upper bound (and next token), and the rest arrive with the next sync.
    pub fn to_device_upto(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<u64> {
        let rows = self.to_device_rows(user_id, device_id, since, upto, limit.saturating_add(1))?;
        if rows.len() <= limit {
            return Ok(upto);
        }
        // Stop just before the first message that does not fit.
        Ok(rows[limit].0 - 1)
    }

    fn to_device_rows(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Value)>> {
        let from = (
            user_id.to_string(),
            device_id.to_string(),
            since.map_or(0, |s| s.saturating_add(1)),
        );
        let rows = self.store.range_in_prefix::<ToDeviceInbox, _>(
            &(user_id.as_str(), device_id.as_str()),
            Some(&from),
            false,
            limit,
        )?;
        let mut out = Vec::new();
        for ((_, _, pos), Raw(bytes)) in rows {
            if pos > upto {
                break;
            }
            let event = serde_json::from_slice(&bytes)
                .map_err(|_| Error::unknown("Stored to-device message is corrupt"))?;
            out.push((pos, event));
        }
        Ok(out)
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
            if !more {
                return Ok(());
            }
        }
    }
}
