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

/// Events `event_near_time` examines after its binary search before giving up.
pub const TIME_SCAN_LIMIT: usize = 1000;
/// Events read per step of that scan.
const TIME_SCAN_PAGE: usize = 100;

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

    /// The first event of the room at or after position `pos`.
    fn next_at(&self, room_sid: u64, pos: u64) -> Result<Option<StoredEvent>> {
        Ok(self
            .timeline(room_sid, Some(pos), false, 1)?
            .into_iter()
            .next())
    }

    /// The event closest to `ts` (`timestamp_to_event`, client and federation) that the reader
    /// may see: forwards, the first with `origin_server_ts >= ts`; backwards, the last with
    /// `origin_server_ts <= ts`.
    ///
    /// This server stamps its events with its clock as it appends them, so `origin_server_ts`
    /// grows with the position. The search is a binary search over positions: each probe is
    /// one range scan for the next event at or after a position plus one event read, at most
    /// 64 probes (usually about log2 of the room's position span), independent of the room's
    /// size. From the position found, a bounded scan ([`TIME_SCAN_LIMIT`] events) in the
    /// requested direction skips events the reader may not see and events out of order (from
    /// a clock that went backwards, or remote timestamps); if the clock never went backwards
    /// the answer is exact.
    pub fn event_near_time(
        &self,
        reader: &mut Reader<'_>,
        room_sid: u64,
        ts: u64,
        forward: bool,
    ) -> Result<Option<StoredEvent>> {
        let (Some(first), Some(last)) = (
            self.timeline(room_sid, None, false, 1)?.into_iter().next(),
            self.timeline(room_sid, None, true, 1)?.into_iter().next(),
        ) else {
            return Ok(None);
        };
        // The smallest position whose next event is at or after `ts` (forwards) or after `ts`
        // (backwards); `last + 1` if there is none.
        let bound = if forward { ts } else { ts.saturating_add(1) };
        let (mut low, mut high) = (first.sid, last.sid + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.next_at(room_sid, mid)? {
                Some(event) if event.meta.origin_server_ts >= bound => high = mid,
                // Every position up to this event has the same next event.
                Some(event) => low = event.sid + 1,
                None => high = mid,
            }
        }
        // Forwards: the first visible event from there with a timestamp at or after `ts`;
        // backwards: the last visible event before there, whose timestamp is at or before `ts`.
        let mut cursor = if forward {
            Some(low)
        } else {
            low.checked_sub(1)
        };
        let mut budget = TIME_SCAN_LIMIT;
        while let Some(pos) = cursor {
            if budget == 0 {
                break;
            }
            let page = self.timeline(room_sid, Some(pos), !forward, TIME_SCAN_PAGE.min(budget))?;
            if page.is_empty() {
                break;
            }
            for event in &page {
                budget -= 1;
                let ts_ok = if forward {
                    event.meta.origin_server_ts >= ts
                } else {
                    event.meta.origin_server_ts <= ts
                };
                if ts_ok && reader.may_see(event)? {
                    return Ok(Some(event.clone()));
                }
            }
            let edge = page.last().map(|e| e.sid);
            cursor = match edge {
                Some(sid) if forward => sid.checked_add(1),
                Some(sid) => sid.checked_sub(1),
                None => None,
            };
        }
        Ok(None)
    }
}

impl Rooms {
    /// The position of the newest event at or below `upto` whose type is one of `kinds`,
    /// looking at no more than `budget` events (newest first; only their metadata is read).
    /// `None` when none is found within the budget.
    pub fn latest_of_kinds(
        &self,
        room_sid: u64,
        upto: u64,
        kinds: &[&str],
        budget: usize,
    ) -> Result<Option<u64>> {
        const PAGE: usize = 16;
        let mut cursor = Some(upto);
        let mut left = budget;
        while let Some(from) = cursor.filter(|_| left > 0) {
            let rows = self.store.range_in_prefix::<Timeline, _>(
                &(room_sid,),
                Some(&(room_sid, from)),
                true,
                PAGE.min(left),
            )?;
            if rows.is_empty() {
                break;
            }
            for ((_, sid), _) in rows {
                left -= 1;
                cursor = sid.checked_sub(1);
                let Some(meta) = self.store.get::<EventMetaTable>(&sid)? else {
                    continue;
                };
                if kinds.contains(&meta.kind.as_str()) {
                    return Ok(Some(sid));
                }
            }
        }
        Ok(None)
    }
}
