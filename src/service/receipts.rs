//! Read receipts and read markers (spec: "Receipts", "Read and unread markers").
//!
//! A receipt is "read up to and including this event" for one `(room, user, receipt type,
//! thread)`, where the thread is `""` (unthreaded), `"main"` or a thread root's event id. Each
//! key holds one event; a receipt only ever moves forward in the timeline (a receipt for an
//! older event than the stored one is accepted and ignored, as the spec treats receipts as "up
//! to" markers). Every change takes a position in the global stream and one row in the room's
//! change log, which `/sync` reads for the `m.receipt` ephemeral event. `m.read.private`
//! receipts are only ever shown to their owner. The fully read marker (`m.fully_read`) is room
//! account data, written in the same batch.

use std::{collections::HashMap, sync::Arc};

use ruma::{OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{
    account_data::AccountData,
    federation::queue::{Edu, Queue},
    latest::LatestMarks,
    notifier::Notifier,
    push::notifications::{Notifications, ReadUpTo as ReadMark},
    rooms::{Rooms, StoredEvent},
    stream::Stream,
    users::now_ms,
};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `(room_id, user_id, receipt type, thread) → Receipt`: the current receipt of each key.
    /// The thread is `""` for unthreaded receipts, `"main"` or a thread root's event id.
    pub ReceiptsTable: "receipts", (String, String, String, String) => Receipt
);
table!(
    /// `(room_id, position) → ReceiptKey`: the room's change log. Each receipt has exactly one
    /// row here, at its `Receipt::pos`; the previous row is deleted in the same batch.
    pub ReceiptLog: "receipt_log", (String, u64) => ReceiptKey
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Receipt {
    pub event_id: String,
    /// The event's stream position (its timeline order).
    pub event_sid: u64,
    /// When the receipt was sent, in ms since the Unix epoch.
    pub ts: u64,
    /// Stream position of the write.
    pub pos: u64,
}
impl Record for Receipt {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceiptKey {
    pub user_id: String,
    pub receipt_type: String,
    pub thread: String,
}
impl Record for ReceiptKey {}

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";
pub const FULLY_READ: &str = "m.fully_read";

/// How often a write retries after losing a race with a concurrent write of the same receipt.
const UPDATE_ATTEMPTS: usize = 8;
/// Bounds one scan of a room's change log (there is one row per user, type and thread).
const MAX_ROWS: usize = 100_000;
/// Hops followed through `m.relates_to` to find an event's thread (the spec recommends 3).
const THREAD_HOPS: usize = 3;

/// One marker to move: a receipt (`m.read`, `m.read.private`) or the fully read marker.
pub struct Mark<'a> {
    pub receipt_type: &'static str,
    /// `""`, `"main"` or a thread root id; always `""` for `m.fully_read`.
    pub thread: String,
    pub event: &'a StoredEvent,
}

/// Where a user has read up to in a room: the later of `m.read` and `m.read.private`.
#[derive(Debug, Default, Clone)]
pub struct ReadUpTo {
    /// Unthreaded receipts.
    pub unthreaded: u64,
    /// Threaded receipts by thread id (`"main"` or a root id).
    pub threads: HashMap<String, u64>,
}

impl ReadUpTo {
    /// Whether the event at `sid` in thread `thread` counts as read.
    pub fn is_read(&self, sid: u64, thread: &str) -> bool {
        sid <= self.unthreaded || self.threads.get(thread).is_some_and(|&t| sid <= t)
    }
}

/// The thread an event belongs to: the root id of an `m.thread` relation, followed through up
/// to [`THREAD_HOPS`] other relations (an edit or reaction of a threaded event is in that
/// thread), else `"main"`.
pub fn thread_of(rooms: &Rooms, event: &StoredEvent) -> Result<String> {
    thread_of_pdu(rooms, &event.pdu, event.meta.room_sid)
}

/// [`thread_of`] for an event that may not be stored yet (`room_sid`: its room).
pub fn thread_of_pdu(rooms: &Rooms, pdu: &super::rooms::Pdu, room_sid: u64) -> Result<String> {
    #[derive(Deserialize)]
    struct Relation {
        rel_type: Option<String>,
        event_id: Option<String>,
    }
    #[derive(Deserialize)]
    struct Content {
        #[serde(rename = "m.relates_to")]
        relates_to: Option<Relation>,
    }
    let mut relation = pdu.content_as::<Content>().and_then(|c| c.relates_to);
    for hop in 0..=THREAD_HOPS {
        let Some(Relation {
            rel_type,
            event_id: Some(target),
        }) = relation
        else {
            break;
        };
        if rel_type.as_deref() == Some("m.thread") {
            return Ok(target);
        }
        if hop == THREAD_HOPS {
            break;
        }
        let Some(parent) = ruma::EventId::parse(&target)
            .ok()
            .map(|id| rooms.event(&id))
            .transpose()?
            .flatten()
        else {
            break;
        };
        if parent.meta.room_sid != room_sid {
            break;
        }
        relation = parent
            .pdu
            .content_as::<Content>()
            .and_then(|c| c.relates_to);
    }
    Ok("main".to_owned())
}

pub struct Receipts {
    store: Store,
    stream: Arc<Stream>,
    notifier: Arc<Notifier>,
    notifications: Arc<Notifications>,
    /// Local users' public receipts go to the other servers in the room.
    fed_queue: Arc<Queue>,
    /// The newest `receipt_log` position of each room (`service::latest`): a sync skips the
    /// receipts of a room with none past its token without a scan.
    latest: LatestMarks,
}

impl Receipts {
    pub fn new(
        store: Store,
        stream: Arc<Stream>,
        notifier: Arc<Notifier>,
        notifications: Arc<Notifications>,
        fed_queue: Arc<Queue>,
    ) -> Self {
        Self {
            store,
            stream,
            notifier,
            notifications,
            fed_queue,
            latest: LatestMarks::default(),
        }
    }

    /// The newest stored `receipt_log` position of a room (0 without receipts).
    fn stored_latest(&self, room_id: &RoomId) -> Result<u64> {
        Ok(self
            .store
            .range_in_prefix::<ReceiptLog, _>(&(room_id.as_str(),), None, true, 1)?
            .first()
            .map_or(0, |((_, pos), _)| *pos))
    }

    /// The user's read-up-to points in a room, from `m.read` and `m.read.private` alike.
    pub fn read_up_to(&self, room_id: &RoomId, user_id: &UserId) -> Result<ReadUpTo> {
        let rows = self
            .store
            .scan_prefix::<ReceiptsTable, _>(&(room_id.as_str(), user_id.as_str()), MAX_ROWS)?;
        let mut out = ReadUpTo::default();
        for ((_, _, kind, thread), receipt) in rows {
            if kind != READ && kind != READ_PRIVATE {
                continue;
            }
            let slot = if thread.is_empty() {
                &mut out.unthreaded
            } else {
                out.threads.entry(thread).or_default()
            };
            *slot = (*slot).max(receipt.event_sid);
        }
        Ok(out)
    }

    /// The `m.receipt` content of the changes in a room after position `since` (every receipt
    /// without one) up to `upto`, as `viewer` may see them, or `None` when there are none.
    pub fn room_since(
        &self,
        room_id: &RoomId,
        since: Option<u64>,
        upto: u64,
        viewer: &UserId,
    ) -> Result<Option<Value>> {
        if let Some(since) = since {
            if self.latest.get(room_id, || self.stored_latest(room_id))? <= since {
                return Ok(None);
            }
        }
        let from = since.map(|s| (room_id.to_string(), s + 1));
        let rows = self.store.range_in_prefix::<ReceiptLog, _>(
            &(room_id.as_str(),),
            from.as_ref(),
            false,
            MAX_ROWS,
        )?;
        let mut content: Map<String, Value> = Map::new();
        for ((_, pos), key) in rows {
            if pos > upto {
                break;
            }
            if key.receipt_type == READ_PRIVATE && key.user_id != viewer.as_str() {
                continue;
            }
            let full_key = (
                room_id.to_string(),
                key.user_id.clone(),
                key.receipt_type.clone(),
                key.thread.clone(),
            );
            let Some(receipt) = self.store.get::<ReceiptsTable>(&full_key)? else {
                continue;
            };
            if receipt.pos != pos {
                continue;
            }
            let mut info = json!({ "ts": receipt.ts });
            if !key.thread.is_empty() {
                info["thread_id"] = json!(key.thread);
            }
            let by_type = content.entry(receipt.event_id).or_insert_with(|| json!({}));
            by_type[key.receipt_type.as_str()][key.user_id.as_str()] = info;
        }
        Ok((!content.is_empty()).then_some(Value::Object(content)))
    }

    /// Checks a receipt's thread against its event: `thread_id` must be `main` for an event
    /// in the main timeline, or the root of the event's thread (400 `M_INVALID_PARAM`).
    pub fn check_thread(rooms: &Rooms, thread: &str, event: &StoredEvent) -> Result<()> {
        if thread.is_empty() {
            return Ok(());
        }
        let actual = thread_of(rooms, event)?;
        let ok = if thread == "main" {
            actual == "main"
        } else {
            actual == thread || event.pdu.event_id.as_str() == thread
        };
        if !ok {
            return Err(Error::invalid_param(format!(
                "The event is not in thread {thread}"
            )));
        }
        Ok(())
    }

    /// Moves the given markers of `user_id` in a room, all in one atomic write, and wakes the
    /// syncs that see a change: `members` (the room's joined members) for a public receipt,
    /// the user alone for private ones and the fully read marker. Markers never move back.
    pub async fn update(
        &self,
        rooms: &Rooms,
        account_data: &AccountData,
        room_id: &RoomId,
        user_id: &UserId,
        marks: &[Mark<'_>],
        members: &[OwnedUserId],
    ) -> Result<()> {
        // Unread counts change with receipts under the room lock, as with new events.
        let lock = rooms.lock_room(room_id).await;
        let lock = Arc::new(lock);
        let destinations = if user_id.server_name() == self.fed_queue.server_name() {
            self.fed_queue
                .remote_servers(members.iter().map(|m| m.as_ref()))
        } else {
            Default::default()
        };
        for _ in 0..UPDATE_ATTEMPTS {
            let mut batch = Batch::new();
            let mut pendings = Vec::new();
            let mut public = false;
            let mut reads = Vec::new();
            for mark in marks {
                if mark.receipt_type == FULLY_READ {
                    let current = account_data.get(user_id, Some(room_id), FULLY_READ)?;
                    let current_sid = match current.as_deref().and_then(marker_event) {
                        Some(id) => rooms.event_sid(&id)?,
                        None => None,
                    };
                    if current_sid.is_some_and(|sid| sid >= mark.event.sid) {
                        continue;
                    }
                    let content = serde_json::to_vec(&json!({"event_id": mark.event.pdu.event_id}))
                        .map_err(|_| Error::unknown("Cannot serialize the read marker"))?;
                    let pending = self.stream.allocate()?;
                    batch.expect_value::<super::account_data::AccountDataTable>(
                        &(
                            user_id.to_string(),
                            room_id.to_string(),
                            FULLY_READ.to_owned(),
                        ),
                        current.map(crate::store::Raw).as_ref(),
                    );
                    account_data.stage_set(
                        &mut batch,
                        pending.pos,
                        user_id,
                        Some(room_id),
                        FULLY_READ,
                        content,
                    )?;
                    pendings.push(pending);
                    continue;
                }
                let key = (
                    room_id.to_string(),
                    user_id.to_string(),
                    mark.receipt_type.to_owned(),
                    mark.thread.clone(),
                );
                let current = self.store.get::<ReceiptsTable>(&key)?;
                if current
                    .as_ref()
                    .is_some_and(|c| c.event_sid >= mark.event.sid)
                {
                    continue;
                }
                let pending = self.stream.allocate()?;
                if let Some(old) = &current {
                    batch.delete::<ReceiptLog>(&(room_id.to_string(), old.pos));
                }
                if mark.receipt_type == READ {
                    let mut data = json!({ "ts": now_ms() });
                    if !mark.thread.is_empty() {
                        data["thread_id"] = json!(mark.thread);
                    }
                    let content = json!({ room_id.as_str(): { READ: { user_id.as_str(): {
                        "data": data,
                        "event_ids": [mark.event.pdu.event_id],
                    }}}});
                    self.fed_queue.stage_edu(
                        &mut batch,
                        pending.pos,
                        &destinations,
                        &Edu::new("m.receipt", content),
                    )?;
                }
                batch
                    .expect_value::<ReceiptsTable>(&key, current.as_ref())
                    .put::<ReceiptsTable>(
                        &key,
                        &Receipt {
                            event_id: mark.event.pdu.event_id.to_string(),
                            event_sid: mark.event.sid,
                            ts: now_ms(),
                            pos: pending.pos,
                        },
                    )
                    .put::<ReceiptLog>(
                        &(room_id.to_string(), pending.pos),
                        &ReceiptKey {
                            user_id: user_id.to_string(),
                            receipt_type: mark.receipt_type.to_owned(),
                            thread: mark.thread.clone(),
                        },
                    );
                self.latest
                    .raise(room_id, pending.pos, || self.stored_latest(room_id))?;
                public |= mark.receipt_type == READ;
                pendings.push(pending);
                reads.push(match mark.thread.as_str() {
                    "" => ReadMark::All(mark.event.sid),
                    thread => ReadMark::Thread(thread.to_owned(), mark.event.sid),
                });
            }
            if batch.is_empty() {
                return Ok(());
            }
            let counts_changed = self
                .notifications
                .stage_read(&mut batch, room_id, user_id, &reads)?
                .is_some();
            // Public receipts wake the room's members; private ones only the user's own syncs.
            let mut wake_users: Vec<ruma::OwnedUserId> =
                if public { members.to_vec() } else { Vec::new() };
            wake_users.push(user_id.to_owned());
            let notifier = self.notifier.clone();
            let notifications = self.notifications.clone();
            let user = user_id.to_owned();
            let fed_queue = self.fed_queue.clone();
            let fed_wake = if public {
                destinations.clone()
            } else {
                Default::default()
            };
            let wake = move || {
                notifier.notify(wake_users.iter().map(|m| m.as_ref()));
                fed_queue.wake(fed_wake);
                if counts_changed {
                    notifications.changed([user]);
                }
            };
            match self
                .stream
                .commit(&self.store, batch, pendings, lock.clone(), wake)
                .await
            {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }
}

/// The event id of an `m.fully_read` content.
fn marker_event(content: &[u8]) -> Option<ruma::OwnedEventId> {
    let value: Value = serde_json::from_slice(content).ok()?;
    ruma::EventId::parse(value.get("event_id")?.as_str()?).ok()
}
