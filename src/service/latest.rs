//! Newest-position marks per room, in memory: how a sync skips a room whose timeline (or
//! receipts) has nothing past its token without reading the store. A service that writes a
//! per-room stream keeps one of these for it.
//!
//! Invariant (each owner keeps it): a room's mark, once present, is at least the position
//! of every row of the stream for that room that is committed or staged. Writers raise the
//! mark when they *stage* a row, while its position is still pending — before any sync can
//! take a horizon at or past it — so "mark ≤ token" proves the room has nothing new for that
//! token. A mark may run ahead of the store (a commit that failed, a row removed later): that
//! costs one read that finds nothing, never a skipped row.
//!
//! A room's first mark is loaded from the store (its newest row); the map merges by maximum,
//! so a load racing with a staging can only keep the higher value.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use ruma::{OwnedRoomId, RoomId};

use crate::error::Result;

/// `room id → newest position`. The lock guards only the map (never held across a read).
#[derive(Default)]
pub struct LatestMarks {
    marks: Mutex<HashMap<OwnedRoomId, u64>>,
}

impl LatestMarks {
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

    /// The room's mark; `load` reads the newest stored position the first time.
    pub fn get(&self, room_id: &RoomId, load: impl FnOnce() -> Result<u64>) -> Result<u64> {
        if let Some(mark) = self.lock().get(room_id).copied() {
            return Ok(mark);
        }
        Ok(self.merge(room_id, load()?))
    }

    /// Marks a row at `pos` as staged; `load` as for [`LatestMarks::get`] (the store may
    /// hold newer rows than `pos`, so an absent mark is loaded first).
    pub fn raise(
        &self,
        room_id: &RoomId,
        pos: u64,
        load: impl FnOnce() -> Result<u64>,
    ) -> Result<()> {
        self.get(room_id, load)?;
        self.merge(room_id, pos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_load_once_and_only_rise() {
        let marks = LatestMarks::default();
        let room: &RoomId = "!a:x".try_into().unwrap();
        assert_eq!(marks.get(room, || Ok(7)).unwrap(), 7);
        // Loaded: the store is not read again.
        assert_eq!(marks.get(room, || panic!("read twice")).unwrap(), 7);
        marks.raise(room, 5, || panic!("read twice")).unwrap();
        assert_eq!(marks.get(room, || Ok(0)).unwrap(), 7);
        marks.raise(room, 9, || Ok(0)).unwrap();
        assert_eq!(marks.get(room, || Ok(0)).unwrap(), 9);
        // An absent room is loaded before it is raised: a newer stored row wins.
        let other: &RoomId = "!b:x".try_into().unwrap();
        marks.raise(other, 3, || Ok(11)).unwrap();
        assert_eq!(marks.get(other, || Ok(0)).unwrap(), 11);
    }
}
