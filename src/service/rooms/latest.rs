//! The newest timeline position of each room, kept in memory, so an incremental sync skips a
//! room with nothing past its token without reading the room's timeline or record.
//!
//! Invariant: a room's mark, once present, is at least the position of every timeline row of
//! the room that is committed or staged. New events are marked when they are *staged*, while
//! their position is still pending, so before any sync can take a horizon at or past them:
//! "mark ≤ token" proves the room has nothing new for that token. A mark
//! may run ahead of the store (a commit that failed, a row removed later): that costs one
//! timeline read that finds nothing, never a skipped event.
//!
//! A room's first mark is the newest row in the store (one key read, no event decoded); the
//! map merges by maximum, so a load racing with a staging can only keep the higher value.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use ruma::{OwnedRoomId, RoomId};

use super::{Rooms, Timeline};
use crate::error::Result;

/// `room id → newest timeline position`, keyed by id so that a sync, which knows its rooms
/// by id, needs no room record to look. The lock guards only the map.
#[derive(Default)]
pub struct LatestPositions {
    marks: Mutex<HashMap<OwnedRoomId, u64>>,
}

impl LatestPositions {
    fn lock(&self) -> MutexGuard<'_, HashMap<OwnedRoomId, u64>> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises the mark to at least `value`, returning the result.
    fn merge(&self, room_id: &RoomId, value: u64) -> u64 {
        let mut marks = self.lock();
        let mark = match marks.get_mut(room_id) {
            Some(mark) => mark,
            None => marks.entry(room_id.to_owned()).or_insert(value),
        };
        *mark = (*mark).max(value);
        *mark
    }

    fn known(&self, room_id: &RoomId) -> Option<u64> {
        self.lock().get(room_id).copied()
    }
}

impl Rooms {
    /// The newest timeline position of a room (0 for a room without timeline events); see
    /// the module invariant.
    pub fn latest_position(&self, room_id: &RoomId) -> Result<u64> {
        if let Some(mark) = self.latest.known(room_id) {
            return Ok(mark);
        }
        let stored = match self.room(room_id)? {
            Some(record) => self
                .store
                .range_in_prefix::<Timeline, _>(&(record.sid,), None, true, 1)?
                .first()
                .map_or(0, |((_, sid), _)| *sid),
            None => 0,
        };
        Ok(self.latest.merge(room_id, stored))
    }

    /// Marks a timeline row of the room at `sid` as staged. Call it when the row goes into a
    /// batch, before the batch commits.
    pub(super) fn mark_timeline_row(&self, room_id: &RoomId, sid: u64) -> Result<()> {
        if self.latest.known(room_id).is_none() {
            // Load first: the store may hold rows newer than `sid` (a promoted outlier).
            self.latest_position(room_id)?;
        }
        self.latest.merge(room_id, sid);
        Ok(())
    }
}
