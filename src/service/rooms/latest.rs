//! The newest timeline position of each room (`service::latest`), so an incremental sync
//! skips a room with nothing past its token without reading its timeline or record. New
//! events are marked when staged (`build.rs`), promoted outliers when promoted in place
//! (`outliers.rs`), and the state fetched when a partial-state join completes
//! (`partial_state.rs`), whose member events take new positions outside the timeline. The
//! same marks keep answers that depend only on a room's timeline rows (`newest_of_kinds`).
//!
//! A second set of marks follows each room's current member events: every place that puts a
//! member event into the current state (an event staged, a federation join's state, a
//! completed partial state, a state fork, an event taken back) raises it. Some of those put
//! an event that already has a settled position (a fork's winner, a known event); a sync
//! whose horizon is past that position and that reads the mark just before such a commit
//! does not see the change, as it would not have seen it reading the rows just before.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use ruma::RoomId;

use super::{CurrentState, Rooms, Timeline};
use crate::error::Result;

/// Answers of [`Rooms::newest_of_kinds`]: `(room sid, kind set) → (the room's mark when
/// worked out, the answer)`. At most [`NEWEST_KEPT`] entries (emptied when full); the lock
/// guards only the map.
#[derive(Default)]
pub struct NewestOfKinds(Mutex<NewestMap>);

/// `(room sid, address of the kind list) → (mark, newest position of those kinds)`.
type NewestMap = HashMap<(u64, usize), (u64, Option<u64>)>;

const NEWEST_KEPT: usize = 16_384;

impl NewestOfKinds {
    fn lock(&self) -> MutexGuard<'_, NewestMap> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Rooms {
    /// The newest timeline (or completed-state) position of a room; 0 for an unknown room.
    pub fn latest_position(&self, room_id: &RoomId) -> Result<u64> {
        self.latest.get(room_id, || self.stored_latest(room_id))
    }

    /// Marks a row of the room at `pos` as staged. Call it when the row goes into a batch,
    /// before the batch commits.
    pub(super) fn mark_timeline_row(&self, room_id: &RoomId, pos: u64) -> Result<()> {
        self.latest
            .raise(room_id, pos, || self.stored_latest(room_id))
    }

    /// The newest position among the room's current member events: when it is at or below a
    /// token, no membership of the room changed after it (device lists read this). 0 for an
    /// unknown room.
    pub fn latest_member_change(&self, room_id: &RoomId) -> Result<u64> {
        self.member_changes
            .get(room_id, || self.stored_member_change(room_id))
    }

    /// Marks a current member event at `pos` as staged. Call it wherever a member event goes
    /// into a room's current state, when the row goes into a batch.
    pub(super) fn mark_member_change(&self, room_id: &RoomId, pos: u64) -> Result<()> {
        self.member_changes
            .raise(room_id, pos, || self.stored_member_change(room_id))
    }

    fn stored_member_change(&self, room_id: &RoomId) -> Result<u64> {
        let Some(record) = self.room(room_id)? else {
            return Ok(0);
        };
        Ok(self
            .store
            .scan_prefix::<CurrentState, _>(&(record.sid, "m.room.member"), usize::MAX)?
            .into_iter()
            .map(|(_, sid)| sid)
            .max()
            .unwrap_or(0))
    }

    /// [`Rooms::latest_of_kinds`] at a horizon `now` at or past the room's newest position,
    /// worked out once per position of the room's mark: no timeline row is added without
    /// raising the mark first, and every position up to `now` has settled, so the rows up to
    /// the mark, and the answer, stay the same until it moves. (A row removed later leaves
    /// the answer naming it until the next event.) `kinds` is a constant list: its address
    /// tells the lists apart.
    pub fn newest_of_kinds(
        &self,
        room_id: &RoomId,
        room_sid: u64,
        now: u64,
        kinds: &'static [&'static str],
        budget: usize,
    ) -> Result<Option<u64>> {
        let mark = self.latest_position(room_id)?;
        if mark > now {
            // A row past this request's horizon: the answer differs by horizon.
            return self.latest_of_kinds(room_sid, now, kinds, budget);
        }
        let key = (room_sid, kinds.as_ptr() as usize);
        if let Some((at, answer)) = self.newest_of_kinds.lock().get(&key) {
            if *at == mark {
                return Ok(*answer);
            }
        }
        let answer = self.latest_of_kinds(room_sid, now, kinds, budget)?;
        let mut kept = self.newest_of_kinds.lock();
        if kept.len() >= NEWEST_KEPT {
            kept.clear();
        }
        kept.insert(key, (mark, answer));
        Ok(answer)
    }

    fn stored_latest(&self, room_id: &RoomId) -> Result<u64> {
        Ok(match self.room(room_id)? {
            Some(record) => self
                .store
                .range_in_prefix::<Timeline, _>(&(record.sid,), None, true, 1)?
                .first()
                .map_or(0, |((_, sid), _)| *sid),
            None => 0,
        })
    }
}
