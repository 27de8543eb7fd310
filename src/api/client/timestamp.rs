//! `GET /rooms/{roomId}/timestamp_to_event`: the event closest to a time (spec: v1.6).
//!
//! A room's timeline is keyed by stream position, and this server stamps its events with its
//! clock as it appends them, so `origin_server_ts` grows with the position. The search is a
//! binary search over positions: each probe is one range scan for the next event at or after a
//! position plus one event read, at most 64 probes (usually about log2 of the room's position
//! span), independent of the room's size. From the position found, a bounded scan
//! (`SCAN_LIMIT` events) in the requested direction skips events the user may not see and
//! events out of order (from a clock that went backwards, or, once federation arrives, remote
//! timestamps); if the clock never went backwards the answer is exact.

use std::sync::Arc;

use ruma::{
    api::{client::room::get_event_by_timestamp, Direction},
    MilliSecondsSinceUnixEpoch, UInt,
};

use crate::{
    api::client::room::known_room,
    error::{Error, Result},
    http::{Ctx, Router},
    service::{rooms::StoredEvent, Services},
};

/// Events examined after the binary search before giving up.
const SCAN_LIMIT: usize = 1000;
/// Events read per step of that scan.
const PAGE: usize = 100;

pub fn routes(router: &mut Router) {
    router.ruma(timestamp_to_event);
}

/// The first event of the room at or after position `pos`.
fn next_at(services: &Services, room_sid: u64, pos: u64) -> Result<Option<StoredEvent>> {
    Ok(services
        .rooms
        .timeline(room_sid, Some(pos), false, 1)?
        .into_iter()
        .next())
}

async fn timestamp_to_event(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_event_by_timestamp::v1::Request,
) -> Result<get_event_by_timestamp::v1::Response> {
    let me = ctx.authed()?;
    let room = known_room(&services, &body.room_id)?;
    let mut reader = services.rooms.reader(&body.room_id, &me.user_id)?;
    reader.access.require_history()?;
    let ts = u64::from(body.ts.get());
    let forward = body.dir == Direction::Forward;
    let not_found = || {
        let dir = if forward { "forward" } else { "backward" };
        Error::not_found(format!(
            "Unable to find an event from {ts} in {dir} direction"
        ))
    };
    let rooms = &services.rooms;
    let (Some(first), Some(last)) = (
        rooms.timeline(room.sid, None, false, 1)?.into_iter().next(),
        rooms.timeline(room.sid, None, true, 1)?.into_iter().next(),
    ) else {
        return Err(not_found());
    };

    // The smallest position whose next event is at or after `ts` (forwards) or after `ts`
    // (backwards); `last + 1` if there is none.
    let bound = if forward { ts } else { ts.saturating_add(1) };
    let (mut low, mut high) = (first.sid, last.sid + 1);
    while low < high {
        let mid = low + (high - low) / 2;
        match next_at(&services, room.sid, mid)? {
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
    let mut budget = SCAN_LIMIT;
    while let Some(pos) = cursor {
        if budget == 0 {
            break;
        }
        let page = rooms.timeline(room.sid, Some(pos), !forward, PAGE.min(budget))?;
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
                let origin_server_ts = MilliSecondsSinceUnixEpoch(
                    UInt::try_from(event.meta.origin_server_ts).unwrap_or(UInt::MAX),
                );
                return Ok(get_event_by_timestamp::v1::Response::new(
                    event.pdu.event_id.clone(),
                    origin_server_ts,
                ));
            }
        }
        let edge = page.last().map(|e| e.sid);
        cursor = match edge {
            Some(sid) if forward => sid.checked_add(1),
            Some(sid) => sid.checked_sub(1),
            None => None,
        };
    }
    Err(not_found())
}
