//! Holes in a room's timeline: a received event accepted with prev events this server never
//! got (it was offline, or `get_missing_events` reached only part of a long stretch: the gap
//! was bridged with the state from `state_ids`, `federation/pdus/gaps.rs`) sits in the
//! timeline right after older events, with the history between them missing. The event is the
//! hole's **anchor**: the hole lies just before it, between it and the timeline event before
//! it.
//!
//! [`TimelineHoles`] records an open hole with the events still missing at its older edge;
//! `/messages` paging backwards past an anchor with an open hole has them fetched from other
//! servers (`federation/pdus/backfill.rs`, the same backfill as at the start of a room's
//! history). The fetched events are stored like backfilled ones — a sid for the event tables,
//! never a `timeline` row, so nothing that follows the stream (`/sync`, push, the federation
//! queue) ever sees them as new — in [`HoleTimeline`], keyed by the anchor and a sequence that
//! counts down from [`FIRST_SEQ`] as older events of the hole arrive, so that its key order is
//! the hole's history order. Paging reads them between the anchor and the timeline event
//! before it (`rooms/history.rs`). See `schema/rooms.md`, "Holes".

use ruma::{EventId, OwnedEventId};
use serde::{Deserialize, Serialize};

use super::{backfill::FIRST_SEQ, Rooms};
use crate::{
    error::Result,
    store::{Batch, Record},
    table,
};

/// The most event ids an open hole remembers as missing (a branching history could name
/// more: the others are reached through them, or not at all).
pub const MAX_MISSING: usize = 20;

table!(
    /// `(room_sid, anchor sid) → OpenHole`: an open hole before the timeline event `anchor`.
    /// Deleted once nothing is missing.
    pub TimelineHoles: "timeline_holes", (u64, u64) => OpenHole
);
table!(
    /// `(room_sid, anchor sid, seq) → sid`: the events fetched into the hole before `anchor`,
    /// oldest first (`seq` counts down from [`FIRST_SEQ`]).
    pub HoleTimeline: "hole_timeline", (u64, u64, u64) => u64
);
table!(
    /// `sid → HolePlace` for every event of a hole (its place in [`HoleTimeline`]).
    pub HoleEvents: "hole_events", u64 => HolePlace
);

/// What an open hole still lacks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenHole {
    /// The events missing at its older edge: prev events of the anchor or of the hole's
    /// events that are not here (at most [`MAX_MISSING`]).
    pub missing: Vec<String>,
}
impl Record for OpenHole {}

/// An event's place in a hole.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct HolePlace {
    pub anchor: u64,
    pub seq: u64,
}
impl Record for HolePlace {}

impl Rooms {
    /// The events missing at the older edge of the open hole before `anchor`, if there is one.
    pub fn open_hole(&self, room_sid: u64, anchor: u64) -> Result<Option<Vec<OwnedEventId>>> {
        Ok(self
            .store
            .get::<TimelineHoles>(&(room_sid, anchor))?
            .map(|hole| {
                hole.missing
                    .iter()
                    .filter_map(|id| EventId::parse(id).ok())
                    .collect()
            }))
    }

    /// The anchors of the room's open holes with `low <= anchor < high`, newest first, at most
    /// `limit`.
    pub fn open_holes_between(
        &self,
        room_sid: u64,
        low: u64,
        high: u64,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let Some(start) = high.checked_sub(1) else {
            return Ok(Vec::new());
        };
        Ok(self
            .store
            .range_in_prefix::<TimelineHoles, _>(
                &(room_sid,),
                Some(&(room_sid, start)),
                true,
                limit,
            )?
            .into_iter()
            .map(|((_, anchor), _)| anchor)
            .filter(|anchor| *anchor >= low)
            .collect())
    }

    /// Stages the open hole before `anchor` (a timeline event being stored) with the events
    /// `missing` at its edge, or its end when none is missing any more.
    pub fn stage_hole(batch: &mut Batch, room_sid: u64, anchor: u64, missing: &[OwnedEventId]) {
        if missing.is_empty() {
            batch.delete::<TimelineHoles>(&(room_sid, anchor));
            return;
        }
        let missing = missing
            .iter()
            .take(MAX_MISSING)
            .map(|id| id.to_string())
            .collect();
        batch.put::<TimelineHoles>(&(room_sid, anchor), &OpenHole { missing });
    }

    /// The lowest sequence number used in the hole before `anchor`, if it holds events.
    pub fn hole_floor(&self, room_sid: u64, anchor: u64) -> Result<Option<u64>> {
        Ok(self
            .store
            .range_in_prefix::<HoleTimeline, _>(&(room_sid, anchor), None, false, 1)?
            .first()
            .map(|((_, _, seq), _)| *seq))
    }

    /// The nearest anchor of a hole holding events, below `before` (backwards) or at or above
    /// `from` (forwards).
    pub(super) fn filled_hole_near(
        &self,
        room_sid: u64,
        at: u64,
        backwards: bool,
    ) -> Result<Option<u64>> {
        let start = if backwards {
            match at.checked_sub(1) {
                Some(below) => (room_sid, below, u64::MAX),
                None => return Ok(None),
            }
        } else {
            (room_sid, at, 0)
        };
        Ok(self
            .store
            .range_in_prefix::<HoleTimeline, _>(&(room_sid,), Some(&start), backwards, 1)?
            .first()
            .map(|((_, anchor, _), _)| *anchor))
    }

    /// Up to `limit` events of the hole before `anchor` from `seq`: below it, newest first
    /// (backwards), or from it on, oldest first; as `(seq, sid)`.
    pub(super) fn hole_rows(
        &self,
        room_sid: u64,
        anchor: u64,
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
            .range_in_prefix::<HoleTimeline, _>(
                &(room_sid, anchor),
                Some(&(room_sid, anchor, start)),
                backwards,
                limit,
            )?
            .into_iter()
            .map(|((_, _, seq), sid)| (seq, sid))
            .collect())
    }

    /// Where an event of a hole sits: its anchor and sequence number.
    pub fn hole_place(&self, sid: u64) -> Result<Option<HolePlace>> {
        Ok(self.store.get::<HoleEvents>(&sid)?)
    }

    /// The sequence number below which the next run of events of the hole before `anchor`
    /// goes.
    pub fn next_hole_floor(&self, room_sid: u64, anchor: u64) -> Result<u64> {
        Ok(self.hole_floor(room_sid, anchor)?.unwrap_or(FIRST_SEQ))
    }
}
