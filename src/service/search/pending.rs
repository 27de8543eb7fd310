//! Events waiting to be indexed, and the rooms that have some (the indexer that takes them in
//! bulk is `Search::run_indexer`).
//!
//! Sending an event stores one `search_pending` row beside it instead of the event's index
//! rows: a message's ten-odd postings and term counters are random inserts all over the index,
//! and written one event at a time they were most of a send's commit (two thirds of its rows).
//! The indexer indexes a room's pending events together, a moment later, so that the counters
//! of the words they share are written once, and the postings of a room's busy words land on
//! the same pages.
//!
//! Invariants:
//! - A stored, unredacted event with text to index (a string `body`, `name` or `topic`) has a
//!   pending row or index rows (`search_docs`), never both once its room is indexed, and never
//!   neither: the pending row commits with the event, and the indexer replaces it with the
//!   index rows in one commit.
//! - Everything that writes a room's index rows or pending rows holds the room's append lock
//!   until its commit (sends, redactions, the indexer), so the per-room counters never race,
//!   and the indexer reads an event's stored content after any redaction of it has committed
//!   (a redacted event's content has nothing left to index).
//! - A query first indexes every room with pending rows ([`super::Search::catch_up`]), so
//!   search answers as if events were indexed when sent.

use std::collections::HashMap;
use std::sync::Mutex;

use ruma::{OwnedRoomId, RoomId};
use tokio::sync::Notify;

use crate::{
    store::{Batch, Store, StoreError},
    table,
};

table!(
    /// `(room_sid, sid) → true`: the indexable event `sid` of the room is not indexed yet.
    pub Pending: "search_pending", (u64, u64) => bool
);

/// Stages the pending row of a new indexable event (in the event's own batch).
pub fn stage(batch: &mut Batch, room_sid: u64, sid: u64) {
    batch.put::<Pending>(&(room_sid, sid), &true);
}

/// The rooms with pending rows, in memory (rebuilt from the table at start), and the wake-up
/// of the indexer.
#[derive(Default)]
pub struct PendingRooms {
    /// Room sid → room id. A room is here from the commit of a pending row until the indexer
    /// takes it (it may hold no rows by then, if a query indexed them first).
    rooms: Mutex<HashMap<u64, OwnedRoomId>>,
    wake: Notify,
}

impl PendingRooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OwnedRoomId>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `room_id` has committed pending rows.
    pub fn mark(&self, room_sid: u64, room_id: &RoomId) {
        let mut rooms = self.lock();
        if let std::collections::hash_map::Entry::Vacant(entry) = rooms.entry(room_sid) {
            entry.insert(room_id.to_owned());
            drop(rooms);
            self.wake.notify_one();
        }
    }

    /// Takes every marked room.
    pub fn take(&self) -> Vec<(u64, OwnedRoomId)> {
        self.lock().drain().collect()
    }

    /// Waits until a room is marked (returns at once if one was marked since the last wait).
    pub async fn marked(&self) {
        self.wake.notified().await
    }

    /// Marks the rooms of the pending rows in the store (at start: left by the previous run).
    pub fn load(&self, store: &Store) -> Result<(), StoreError> {
        let mut from = (0u64, 0u64);
        loop {
            let Some(((room_sid, _), _)) = store.range::<Pending>(Some(&from), false, 1)?.pop()
            else {
                return Ok(());
            };
            if let Some(room_id) = store.lookup_short("room", room_sid)? {
                if let Ok(room_id) = RoomId::parse(room_id) {
                    self.mark(room_sid, &room_id);
                }
            }
            match room_sid.checked_add(1) {
                Some(next) => from = (next, 0),
                None => return Ok(()),
            }
        }
    }
}
