//! Paging through a room's timeline for `/messages`.
//!
//! Tokens are stream positions: a token `t` sits between the events at `t - 1` and `t`; paging
//! backwards from `t` returns events below it, forwards events from it on. The page ends with
//! the token to continue from, present exactly when another event lies in that direction
//! within what the user may read, so `end` is omitted only at the true end.

use std::collections::HashSet;

use ruma::api::client::filter::RoomEventFilter;

use super::{access::Reader, state::state_head, EventMetaTable, Rooms, StoredEvent, Timeline};
use crate::{error::Result, service::sync::event_passes};

/// The most timeline events one `/messages` request examines (filtered-out and invisible ones
/// included). A page that runs out returns what it found with the token to continue, so a
/// long stretch of history the user may not see costs each request this much, not the room.
pub const SCAN_BUDGET: usize = 2_000;

/// What `/messages` asks for (tokens already parsed into positions).
pub struct MessagesQuery<'a> {
    pub from: u64,
    /// Exclusive boundary where the page stops, as a position token.
    pub to: Option<u64>,
    pub backwards: bool,
    pub limit: usize,
    pub filter: &'a RoomEventFilter,
}

pub struct MessagesPage {
    /// In the order read: newest first when paging backwards.
    pub events: Vec<StoredEvent>,
    /// The token to continue from; `None` when no further event may follow.
    pub end: Option<u64>,
}

impl Rooms {
    /// A page of the room's timeline that the reader may see and that passes the filter.
    /// Events the user may not see or the filter drops are skipped, not a stop (a user who left
    /// and came back has visible history behind invisible stretches), within `SCAN_BUDGET`
    /// events examined; a page cut by the budget still carries the token to continue.
    pub fn messages(
        &self,
        reader: &mut Reader<'_>,
        room_sid: u64,
        query: &MessagesQuery<'_>,
    ) -> Result<MessagesPage> {
        let backwards = query.backwards;
        // A departed user's history ends at their departure: start there, stop there.
        let until = reader.access.until();
        let in_bounds = |sid: u64| {
            let within_to = match query.to {
                Some(to) if backwards => sid >= to,
                Some(to) => sid < to,
                None => true,
            };
            within_to && until.is_none_or(|until| sid <= until)
        };
        let mut cursor = match until {
            Some(until) if backwards => query.from.min(until + 1),
            _ => query.from,
        };
        let limit = query.limit.max(1);
        let mut budget = SCAN_BUDGET;
        let mut events = Vec::new();
        loop {
            if events.len() == limit || budget == 0 {
                let more = self
                    .next_position(room_sid, cursor, backwards)?
                    .is_some_and(in_bounds);
                return Ok(MessagesPage {
                    events,
                    end: more.then_some(cursor),
                });
            }
            let Some(start) = (if backwards {
                cursor.checked_sub(1)
            } else {
                Some(cursor)
            }) else {
                return Ok(MessagesPage { events, end: None });
            };
            // Positions first: visibility is decided from the metadata, and only the events
            // the user may see are loaded.
            let want = (limit - events.len()).clamp(10, 100).min(budget);
            let rows = self.store.range_in_prefix::<Timeline, _>(
                &(room_sid,),
                Some(&(room_sid, start)),
                backwards,
                want,
            )?;
            if rows.is_empty() {
                return Ok(MessagesPage { events, end: None });
            }
            for ((_, sid), _) in rows {
                if !in_bounds(sid) {
                    return Ok(MessagesPage { events, end: None });
                }
                budget -= 1;
                cursor = if backwards { sid } else { sid + 1 };
                let visible = match self.store.get::<EventMetaTable>(&sid)? {
                    Some(meta) => reader.may_see_meta(sid, &meta)?,
                    None => false,
                };
                if visible {
                    if let Some(event) = self.event_by_sid(sid)? {
                        if event_passes(query.filter, &event) {
                            events.push(event);
                        }
                    }
                }
                if events.len() == limit || budget == 0 {
                    break;
                }
            }
        }
    }

    /// The position of the first event at or after the token `cursor` (forwards), or below it
    /// (backwards), without loading it.
    fn next_position(&self, room_sid: u64, cursor: u64, backwards: bool) -> Result<Option<u64>> {
        let start = if backwards {
            match cursor.checked_sub(1) {
                Some(start) => start,
                None => return Ok(None),
            }
        } else {
            cursor
        };
        let rows = self.store.range_in_prefix::<Timeline, _>(
            &(room_sid,),
            Some(&(room_sid, start)),
            backwards,
            1,
        )?;
        Ok(rows.first().map(|((_, sid), _)| *sid))
    }

    /// For lazy-loading clients: the member event of each sender of `events`, as it stood at
    /// that sender's first event in the list, once per sender.
    pub fn sender_members(&self, events: &[StoredEvent]) -> Result<Vec<StoredEvent>> {
        let mut seen = HashSet::new();
        let mut members = Vec::new();
        for event in events {
            if !seen.insert(event.meta.sender.as_str()) {
                continue;
            }
            let sid = self.state_at(
                state_head(event),
                &ruma::events::StateEventType::RoomMember,
                &event.meta.sender,
            )?;
            if let Some(member) = sid.map(|sid| self.event_by_sid(sid)).transpose()? {
                members.extend(member);
            }
        }
        Ok(members)
    }
}
