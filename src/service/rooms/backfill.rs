//! Backfilled history: events older than anything this server had of a room (a room joined
//! over federation starts at the join), fetched from other servers when `/messages` pages
//! past the start of what is here (`federation/pdus/backfill.rs`).
//!
//! An event's sid is its position in the global stream, and the `timeline` is ordered by it,
//! so an old event stored now would sort after every event here and `/sync` would deliver it
//! as new. Backfilled events therefore get a sid (for the event tables) but no `timeline`
//! row: they sit in `backfill_timeline`, keyed by a per-room sequence that counts *down* from
//! [`FIRST_SEQ`] as older events arrive, so its key order is the events' topological order
//! and all of it lies before the room's `timeline`. `/messages` paging backwards continues
//! from the start of the `timeline` into it, with tokens `b<seq>` ([`Position::Backfill`]);
//! paging forwards from such a token runs up through it and on into the `timeline`
//! (`rooms/history.rs`). Nothing
//! that follows the stream (`/sync`, push, notifications, the federation queue) reads
//! `backfill_timeline`, so backfilled events are never new. See `schema/rooms.md`.

use super::{Rooms, StoredEvent};
use crate::{error::Result, table};

table!(
    /// `(room_sid, seq) → sid`: a room's backfilled events, oldest first.
    pub BackfillTimeline: "backfill_timeline", (u64, u64) => u64
);
table!(
    /// `sid → seq` for every backfilled event (its place in `backfill_timeline`).
    pub BackfilledEvents: "backfilled_events", u64 => u64
);
table!(
    /// `room_sid → seq`: the lowest sequence number used in the room's `backfill_timeline`.
    pub BackfillFloor: "backfill_floor", u64 => u64
);

/// The sequence number above the first backfilled event of a room (room for 2^63 events
/// older than it).
pub const FIRST_SEQ: u64 = 1 << 63;

pub use super::history::Position;

impl Rooms {
    /// Where a backfilled event sits, if it is one.
    pub fn backfill_seq(&self, sid: u64) -> Result<Option<u64>> {
        Ok(self.store.get::<BackfilledEvents>(&sid)?)
    }

    /// Whether the room has backfilled events.
    pub fn has_backfill(&self, room_sid: u64) -> Result<bool> {
        Ok(self.store.get::<BackfillFloor>(&room_sid)?.is_some())
    }

    /// Up to `limit` backfilled events from the token `b{seq}`: below it, newest first
    /// (backwards), or from it on, oldest first; as `(seq, sid)`.
    pub(super) fn backfilled_rows(
        &self,
        room_sid: u64,
        seq: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>> {
        let start = if backwards {
            match seq.checked_sub(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            }
        } else {
            seq
        };
        Ok(self
            .store
            .range_in_prefix::<BackfillTimeline, _>(
                &(room_sid,),
                Some(&(room_sid, start)),
                backwards,
                limit,
            )?
            .into_iter()
            .map(|((_, seq), sid)| (seq, sid))
            .collect())
    }

    /// The oldest event of the room here: the first backfilled one, else the first of the
    /// timeline.
    pub fn oldest_event(&self, room_sid: u64) -> Result<Option<StoredEvent>> {
        let rows =
            self.store
                .range_in_prefix::<BackfillTimeline, _>(&(room_sid,), None, false, 1)?;
        if let Some((_, sid)) = rows.first() {
            return self.event_by_sid(*sid);
        }
        Ok(self.timeline(room_sid, None, false, 1)?.into_iter().next())
    }
}
