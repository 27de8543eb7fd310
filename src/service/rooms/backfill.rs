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
//! paging forwards from such a token runs up through it and on into the `timeline`. Nothing
//! that follows the stream (`/sync`, push, notifications, the federation queue) reads
//! `backfill_timeline`, so backfilled events are never new. See `schema/rooms.md`.

use std::fmt;

use ruma::api::client::filter::RoomEventFilter;

use super::{
    access::Reader,
    timeline::{MessagesQuery, SCAN_BUDGET},
    Rooms, StoredEvent,
};
use crate::{error::Result, service::sync::event_passes, table};

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

/// A place between two events of a room's history, as `/messages` tokens name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Between the `timeline` events at `n - 1` and `n` (a stream position).
    Stream(u64),
    /// Between the backfilled events at `seq - 1` and `seq`; `b{FIRST_SEQ}` is the boundary
    /// with the `timeline`.
    Backfill(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Stream(n) => write!(f, "{n}"),
            Position::Backfill(seq) => write!(f, "b{seq}"),
        }
    }
}

impl Position {
    /// A `b<seq>` token; `None` for anything else.
    pub fn parse_backfill(token: &str) -> Option<Position> {
        let seq = token.strip_prefix('b')?.parse().ok()?;
        Some(Position::Backfill(seq))
    }
}

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
    /// (backwards), or from it on, oldest first. With each, the token past it.
    pub fn backfilled(
        &self,
        room_sid: u64,
        seq: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(StoredEvent, u64)>> {
        let start = if backwards {
            match seq.checked_sub(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            }
        } else {
            seq
        };
        let rows = self.store.range_in_prefix::<BackfillTimeline, _>(
            &(room_sid,),
            Some(&(room_sid, start)),
            backwards,
            limit,
        )?;
        let mut events = Vec::with_capacity(rows.len());
        for ((_, at), sid) in rows {
            if let Some(event) = self.event_by_sid(sid)? {
                events.push((event, if backwards { at } else { at + 1 }));
            }
        }
        Ok(events)
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

impl Rooms {
    /// `/messages` across the room's `timeline` and its `backfill_timeline` (see the module
    /// doc): `query` pages the timeline as [`Rooms::messages`] does, from `from`; paging
    /// backwards past the timeline's start (with no `to`) continues into the backfilled
    /// events, and paging forwards from a backfill token runs up through them and on into the
    /// timeline. Returns the events and the token to continue from.
    pub fn messages_across(
        &self,
        reader: &mut Reader<'_>,
        room_sid: u64,
        from: Position,
        query: &MessagesQuery<'_>,
    ) -> Result<(Vec<StoredEvent>, Option<Position>)> {
        let limit = query.limit.max(1);
        match from {
            Position::Stream(_) => {
                let page = self.messages(reader, room_sid, query)?;
                let mut events = page.events;
                if let Some(end) = page.end {
                    return Ok((events, Some(Position::Stream(end))));
                }
                if !query.backwards || query.to.is_some() || !self.has_backfill(room_sid)? {
                    return Ok((events, None));
                }
                if events.len() == limit {
                    return Ok((events, Some(Position::Backfill(FIRST_SEQ))));
                }
                let (more, end) = self.backfilled_messages(
                    reader,
                    room_sid,
                    FIRST_SEQ,
                    true,
                    limit - events.len(),
                    query.filter,
                )?;
                events.extend(more);
                Ok((events, end.map(Position::Backfill)))
            }
            Position::Backfill(seq) => {
                let (mut events, end) = self.backfilled_messages(
                    reader,
                    room_sid,
                    seq,
                    query.backwards,
                    limit,
                    query.filter,
                )?;
                if let Some(end) = end {
                    return Ok((events, Some(Position::Backfill(end))));
                }
                if query.backwards {
                    return Ok((events, None));
                }
                // Forwards past the newest backfilled event: on into the timeline.
                if events.len() == limit {
                    return Ok((events, Some(Position::Stream(0))));
                }
                let rest = MessagesQuery {
                    from: 0,
                    to: query.to,
                    backwards: false,
                    limit: limit - events.len(),
                    filter: query.filter,
                };
                let page = self.messages(reader, room_sid, &rest)?;
                events.extend(page.events);
                Ok((events, page.end.map(Position::Stream)))
            }
        }
    }

    /// A page of backfilled events from the token `b{seq}` that the reader may see and that
    /// pass the filter, within [`SCAN_BUDGET`] events examined; with the token to continue
    /// from while more backfilled events lie in that direction.
    fn backfilled_messages(
        &self,
        reader: &mut Reader<'_>,
        room_sid: u64,
        seq: u64,
        backwards: bool,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<(Vec<StoredEvent>, Option<u64>)> {
        let mut cursor = seq;
        let mut events = Vec::new();
        let mut budget = SCAN_BUDGET;
        loop {
            if events.len() == limit || budget == 0 {
                let more = !self.backfilled(room_sid, cursor, backwards, 1)?.is_empty();
                return Ok((events, more.then_some(cursor)));
            }
            let want = (limit - events.len()).clamp(10, 100).min(budget);
            let rows = self.backfilled(room_sid, cursor, backwards, want)?;
            if rows.is_empty() {
                return Ok((events, None));
            }
            for (event, next) in rows {
                budget -= 1;
                cursor = next;
                if reader.may_see(&event)? && event_passes(filter, &event) {
                    events.push(event);
                }
                if events.len() == limit || budget == 0 {
                    break;
                }
            }
        }
    }
}

impl Rooms {
    /// Up to `limit` events next to the token `from` in one direction, across the timeline
    /// and the backfilled events as `/messages` pages them (no read authorization: the
    /// caller's), each with the token past it.
    pub fn history_page(
        &self,
        room_sid: u64,
        from: Position,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(StoredEvent, Position)>> {
        match from {
            Position::Stream(token) => {
                let start = if backwards {
                    token.checked_sub(1)
                } else {
                    Some(token)
                };
                let page = match start {
                    Some(start) => self.timeline(room_sid, Some(start), backwards, limit)?,
                    None => Vec::new(),
                };
                if page.is_empty() && backwards && self.has_backfill(room_sid)? {
                    return self.history_page(room_sid, Position::Backfill(FIRST_SEQ), true, limit);
                }
                Ok(page
                    .into_iter()
                    .map(|e| {
                        let past = if backwards { e.sid } else { e.sid + 1 };
                        (e, Position::Stream(past))
                    })
                    .collect())
            }
            Position::Backfill(seq) => {
                let page = self.backfilled(room_sid, seq, backwards, limit)?;
                if page.is_empty() && !backwards {
                    return self.history_page(room_sid, Position::Stream(0), false, limit);
                }
                Ok(page
                    .into_iter()
                    .map(|(e, past)| (e, Position::Backfill(past)))
                    .collect())
            }
        }
    }

    /// The tokens just before and just after a stored event.
    pub fn tokens_around(&self, event: &StoredEvent) -> Result<(Position, Position)> {
        Ok(match self.backfill_seq(event.sid)? {
            Some(seq) => (Position::Backfill(seq), Position::Backfill(seq + 1)),
            None => (Position::Stream(event.sid), Position::Stream(event.sid + 1)),
        })
    }
}
