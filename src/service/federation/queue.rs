//! The durable outbound federation queue: what waits to be sent to each destination, and each
//! destination's delivery state (backoff, the transaction in flight). Tables in
//! `schema/federation-queue.md`.
//!
//! Items are keyed by `(destination, position)`. Positions come from the global stream
//! ([`Stream::allocate`]), so they are unique across destinations and restarts and order the
//! items as they were queued: a PDU uses its own event position (its JSON is read from `pdus`
//! when sending, so the queue holds no copy), an EDU takes a position of its own. Items are
//! written in the same batch as the change they announce (the event, the receipt, the
//! to-device send), so a change is queued exactly when it commits.
//!
//! A transaction is fixed before its first attempt: its id and the positions it carries are
//! written to the destination's record, and every retry — also after a restart — sends the
//! same id with the same items. The items and the in-flight record are deleted together, only
//! after the destination answered 200.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use ruma::{OwnedServerName, ServerName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use crate::{
    error::{Error, Result},
    service::{stream::Stream, users::now_ms},
    store::{Batch, Record, Store},
    table,
};

table!(
    /// `(destination, position) → QueueItem`: what waits to be sent, in order. Deleted only
    /// after the transaction carrying it was answered 200 (or refused as malformed).
    pub FedQueue: "fed_queue", (String, u64) => QueueItem
);
table!(
    /// `destination → DestinationState`: backoff and the transaction in flight. Absent: never
    /// failed and nothing in flight.
    pub FedDestinations: "fed_destinations", String => DestinationState
);

/// Most PDUs in one transaction (spec).
pub const MAX_PDUS: usize = 50;
/// Most EDUs in one transaction (spec).
pub const MAX_EDUS: usize = 100;
/// Typing notifications older than this are not worth delivering: receivers time them out.
const TYPING_STALE_MS: u64 = 30_000;
/// Rows read per scan when building a transaction.
const SCAN_CHUNK: usize = 64;
/// Most rows looked at for one transaction: when one kind is full, the other kind's items
/// behind a long backlog wait for a later transaction rather than cost a scan of it all.
const MAX_SCAN: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum QueueItem {
    /// A local PDU: the event stored at the item's position (`pdus` table).
    Pdu,
    /// An EDU as sent: compact JSON `{"edu_type", "content"}`.
    Edu {
        edu_type: String,
        json: Vec<u8>,
        queued_ms: u64,
    },
}
impl Record for QueueItem {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DestinationState {
    /// Failed attempts in a row.
    pub failures: u32,
    /// No attempt before this time (ms since the epoch); 0: none pending.
    pub retry_at_ms: u64,
    pub in_flight: Option<InFlight>,
}
impl Record for DestinationState {}

/// A transaction fixed before its first attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InFlight {
    pub txn_id: String,
    pub origin_server_ts: u64,
    /// Queue positions it carries, in order.
    pub positions: Vec<u64>,
}

/// PDUs or EDUs of a transaction, as sent.
pub type RawJsonList = Vec<Box<serde_json::value::RawValue>>;

/// An EDU to queue: its type and content.
pub struct Edu {
    pub edu_type: &'static str,
    pub content: Value,
}

impl Edu {
    pub fn new(edu_type: &'static str, content: Value) -> Self {
        Self { edu_type, content }
    }

    fn item(&self) -> Result<QueueItem> {
        let json = serde_json::to_vec(&serde_json::json!({
            "edu_type": self.edu_type,
            "content": self.content,
        }))
        .map_err(|e| Error::unknown(format!("cannot serialize an EDU: {e}")))?;
        Ok(QueueItem::Edu {
            edu_type: self.edu_type.to_owned(),
            json,
            queued_ms: now_ms(),
        })
    }
}

/// The queue's tables and the wake-up of the sender. Shared by every service that queues.
pub struct Queue {
    store: Store,
    stream: Arc<Stream>,
    server_name: OwnedServerName,
    /// Destinations with new items since the sender last looked.
    dirty: Mutex<BTreeSet<OwnedServerName>>,
    /// Local users' device lists changed (markers in `fed_device_list_dirty`).
    device_lists: AtomicBool,
    /// Wakes the sender's dispatcher.
    pub(super) notify: Notify,
}

impl Queue {
    pub fn new(store: Store, stream: Arc<Stream>, server_name: OwnedServerName) -> Self {
        Self {
            store,
            stream,
            server_name,
            dirty: Mutex::new(BTreeSet::new()),
            // Markers a crash left behind are announced at the first look.
            device_lists: AtomicBool::new(true),
            notify: Notify::new(),
        }
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// The other servers among `users` (each once, ours excluded).
    pub fn remote_servers<'a>(
        &self,
        users: impl IntoIterator<Item = &'a UserId>,
    ) -> BTreeSet<OwnedServerName> {
        users
            .into_iter()
            .map(UserId::server_name)
            .filter(|s| *s != self.server_name)
            .map(ToOwned::to_owned)
            .collect()
    }

    /// Stages the local PDU at `sid` for each destination. Call [`Queue::wake`] after the
    /// batch committed.
    pub fn stage_pdu(&self, batch: &mut Batch, sid: u64, destinations: &BTreeSet<OwnedServerName>) {
        for destination in destinations {
            batch.put::<FedQueue>(&(destination.to_string(), sid), &QueueItem::Pdu);
        }
    }

    /// Stages an EDU for each destination at `pos`, a stream position the caller holds until
    /// the batch committed (one position serves one EDU per destination). Call
    /// [`Queue::wake`] after the commit.
    pub fn stage_edu(
        &self,
        batch: &mut Batch,
        pos: u64,
        destinations: &BTreeSet<OwnedServerName>,
        edu: &Edu,
    ) -> Result<()> {
        if destinations.is_empty() {
            return Ok(());
        }
        let item = edu.item()?;
        for destination in destinations {
            batch.put::<FedQueue>(&(destination.to_string(), pos), &item);
        }
        Ok(())
    }

    /// Queues EDUs on their own (not part of another write) and wakes the sender.
    pub async fn enqueue_edus(
        &self,
        destinations: &BTreeSet<OwnedServerName>,
        edus: &[Edu],
    ) -> Result<()> {
        if destinations.is_empty() || edus.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut positions = Vec::new();
        for edu in edus {
            let pending = self.stream.allocate()?;
            self.stage_edu(&mut batch, pending.pos, destinations, edu)?;
            positions.push(pending);
        }
        self.store.commit(batch).await?;
        drop(positions);
        self.wake(destinations.iter().cloned());
        Ok(())
    }

    /// Tells the sender these destinations have new items (after they committed).
    pub fn wake(&self, destinations: impl IntoIterator<Item = OwnedServerName>) {
        let mut any = false;
        {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            for destination in destinations {
                dirty.insert(destination);
                any = true;
            }
        }
        if any {
            self.notify.notify_one();
        }
    }

    /// Tells the sender local device lists changed (after the marker committed).
    pub fn device_lists_changed(&self) {
        self.device_lists.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(super) fn take_dirty(&self) -> BTreeSet<OwnedServerName> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn take_device_lists_flag(&self) -> bool {
        self.device_lists.swap(false, Ordering::AcqRel)
    }

    pub fn destination_state(&self, destination: &ServerName) -> Result<DestinationState> {
        Ok(self
            .store
            .get::<FedDestinations>(&destination.to_string())?
            .unwrap_or_default())
    }

    /// Number of items waiting for `destination` (bounded scan: at most `limit`).
    pub fn queued(&self, destination: &ServerName, limit: usize) -> Result<usize> {
        Ok(self
            .store
            .scan_prefix::<FedQueue, _>(&(destination.as_str(),), limit)?
            .len())
    }

    /// Every destination with queued items (at start: their senders resume).
    pub fn destinations_with_items(&self) -> Result<Vec<OwnedServerName>> {
        let mut out = Vec::new();
        let mut from: Option<(String, u64)> = None;
        loop {
            let rows = self.store.range::<FedQueue>(from.as_ref(), false, 2)?;
            let Some(((destination, _), _)) = rows
                .into_iter()
                .find(|((d, _), _)| from.as_ref().is_none_or(|(f, _)| f != d))
            else {
                return Ok(out);
            };
            match ServerName::parse(&destination) {
                Ok(name) => out.push(name),
                Err(_) => log::warn!("ignoring queued items for invalid server {destination:?}"),
            }
            // Skip the rest of this destination's items.
            from = Some((destination, u64::MAX));
        }
    }

    /// The transaction to send to `destination` next: the one in flight, or a new one built
    /// from the queue's oldest items and persisted before it is returned. `None` when nothing
    /// is queued. Stale typing notifications are dropped on the way.
    pub async fn next_transaction(
        &self,
        destination: &ServerName,
    ) -> Result<Option<(DestinationState, InFlight)>> {
        let key = destination.to_string();
        let stored = self.store.get::<FedDestinations>(&key)?;
        let state = stored.clone().unwrap_or_default();
        if let Some(in_flight) = &state.in_flight {
            return Ok(Some((state.clone(), in_flight.clone())));
        }
        let now = now_ms();
        let mut batch = Batch::new();
        let (mut pdus, mut edus) = (0, 0);
        let mut positions = Vec::new();
        let mut from: Option<(String, u64)> = None;
        let mut scanned = 0;
        'scan: loop {
            let rows = self.store.range_in_prefix::<FedQueue, _>(
                &(key.as_str(),),
                from.as_ref(),
                false,
                SCAN_CHUNK,
            )?;
            let full = rows.len() == SCAN_CHUNK;
            for ((_, pos), item) in rows {
                from = Some((key.clone(), pos + 1));
                scanned += 1;
                match &item {
                    QueueItem::Pdu if pdus < MAX_PDUS => {
                        pdus += 1;
                        positions.push(pos);
                    }
                    QueueItem::Edu {
                        edu_type,
                        queued_ms,
                        ..
                    } if edu_type == "m.typing"
                        && now.saturating_sub(*queued_ms) > TYPING_STALE_MS =>
                    {
                        batch
                            .expect_value::<FedQueue>(&(key.clone(), pos), Some(&item))
                            .delete::<FedQueue>(&(key.clone(), pos));
                    }
                    QueueItem::Edu { .. } if edus < MAX_EDUS => {
                        edus += 1;
                        positions.push(pos);
                    }
                    // Items of a kind that is full wait for the next transaction; their order
                    // among themselves is kept.
                    _ => {}
                }
                if (pdus == MAX_PDUS && edus == MAX_EDUS) || scanned >= MAX_SCAN {
                    break 'scan;
                }
            }
            if !full {
                break;
            }
        }
        if positions.is_empty() {
            if !batch.is_empty() {
                self.store.commit(batch).await?;
            }
            return Ok(None);
        }
        let in_flight = InFlight {
            // Positions are never reused, so the first one makes the id unique for this
            // origin; the time guards against a store restored from an old backup.
            txn_id: format!("{now}.{}", positions[0]),
            origin_server_ts: now,
            positions,
        };
        let next = DestinationState {
            in_flight: Some(in_flight.clone()),
            ..state.clone()
        };
        batch
            .expect_value::<FedDestinations>(&key, stored.as_ref())
            .put::<FedDestinations>(&key, &next);
        self.store.commit(batch).await?;
        Ok(Some((next, in_flight)))
    }

    /// The JSON of the items a transaction carries: PDUs (from the `pdus` table) and EDUs, in
    /// order. Items that vanished (an event purged since) are skipped.
    pub fn transaction_body(
        &self,
        destination: &ServerName,
        in_flight: &InFlight,
    ) -> Result<(RawJsonList, RawJsonList)> {
        let mut pdus = Vec::new();
        let mut edus = Vec::new();
        for &pos in &in_flight.positions {
            let item = self
                .store
                .get::<FedQueue>(&(destination.to_string(), pos))?;
            match item {
                Some(QueueItem::Pdu) => {
                    if let Some(crate::store::Raw(json)) =
                        self.store.get::<crate::service::rooms::Pdus>(&pos)?
                    {
                        pdus.push(json);
                    }
                }
                Some(QueueItem::Edu { json, .. }) => edus.push(json),
                None => {}
            }
        }
        let to_raw = |json: Vec<u8>| {
            String::from_utf8(json)
                .ok()
                .and_then(|s| serde_json::value::RawValue::from_string(s).ok())
        };
        Ok((
            pdus.into_iter().filter_map(to_raw).collect(),
            edus.into_iter().filter_map(to_raw).collect(),
        ))
    }

    /// After a 200 (or a refusal that retrying cannot change): deletes the transaction's items
    /// and clears the in-flight record and the backoff.
    pub async fn transaction_done(
        &self,
        destination: &ServerName,
        in_flight: &InFlight,
    ) -> Result<()> {
        let key = destination.to_string();
        let mut batch = Batch::new();
        for &pos in &in_flight.positions {
            batch.delete::<FedQueue>(&(key.clone(), pos));
        }
        batch.delete::<FedDestinations>(&key);
        self.store.commit(batch).await?;
        Ok(())
    }

    /// After a failed attempt: one more failure, the next attempt not before `retry_at_ms`.
    /// The in-flight transaction stays as it is.
    pub async fn transaction_failed(
        &self,
        destination: &ServerName,
        retry_at_ms: u64,
    ) -> Result<u32> {
        let key = destination.to_string();
        let mut state = self.destination_state(destination)?;
        state.failures = state.failures.saturating_add(1);
        state.retry_at_ms = retry_at_ms;
        let mut batch = Batch::new();
        batch.put::<FedDestinations>(&key, &state);
        self.store.commit(batch).await?;
        Ok(state.failures)
    }

    /// The destination showed it is up (it sent us a transaction): an attempt is due now.
    /// Whether it was backing off.
    pub async fn clear_backoff(&self, destination: &ServerName) -> Result<bool> {
        let key = destination.to_string();
        let Some(mut state) = self.store.get::<FedDestinations>(&key)? else {
            return Ok(false);
        };
        if state.retry_at_ms == 0 {
            return Ok(false);
        }
        let old = state.clone();
        state.retry_at_ms = 0;
        let mut batch = Batch::new();
        batch
            .expect_value::<FedDestinations>(&key, Some(&old))
            .put::<FedDestinations>(&key, &state);
        // A concurrent update of the record (the sender itself) is as good as ours.
        match self.store.commit(batch).await {
            Ok(()) | Err(crate::store::CommitError::Conflict) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}
