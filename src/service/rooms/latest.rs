//! The newest timeline position of each room (`service::latest`), so an incremental sync
//! skips a room with nothing past its token without reading its timeline or record. New
//! events are marked when staged (`build.rs`), promoted outliers when promoted in place
//! (`outliers.rs`), and the state fetched when a partial-state join completes
//! (`partial_state.rs`), whose member events take new positions outside the timeline.

use ruma::RoomId;

use super::{Rooms, Timeline};
use crate::error::Result;

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
