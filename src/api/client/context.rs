//! `GET /rooms/{roomId}/context/{eventId}`: events around an event, and the state at the end.

use std::{collections::HashSet, sync::Arc};

use ruma::api::client::{context::get_context, filter::RoomEventFilter};

use super::room::{known_room, passes, raw, viewer};
use crate::{
    error::{Error, Result},
    http::{Authed, Ctx, Router},
    service::{
        rooms::{access::Reader, backfill::Position, state::state_head, StoredEvent},
        Services,
    },
};

/// The most context events (before and after together) one request returns.
const MAX_LIMIT: usize = 100;

pub fn routes(router: &mut Router) {
    router.ruma(context);
}

/// Events next to `event` in one direction that pass the filter and that the user may see,
/// nearest first, at most `limit`. Returns them and the token where the scan stopped (a
/// `/messages` token continuing in the same direction). The scan crosses from the timeline
/// into the backfilled events and back as `/messages` does (`rooms/backfill.rs`).
pub(super) fn around(
    services: &Services,
    reader: &mut Reader<'_>,
    event: &StoredEvent,
    filter: &RoomEventFilter,
    backwards: bool,
    limit: usize,
) -> Result<(Vec<StoredEvent>, Position)> {
    let room_sid = event.meta.room_sid;
    let mut found = Vec::new();
    // Tokens sit between events: one before the event, one after it.
    let (before, after) = services.rooms.tokens_around(event)?;
    let mut token = if backwards { before } else { after };
    if limit == 0 {
        return Ok((found, token));
    }
    // Filtered-out events do not count, but the scan is bounded as in `/messages`.
    let mut budget = limit * 20 + 100;
    'pages: while found.len() < limit && budget > 0 {
        let page = services
            .rooms
            .history_page(room_sid, token, backwards, limit.min(budget))?;
        if page.is_empty() {
            break;
        }
        for (next, past) in page {
            budget = budget.saturating_sub(1);
            if !reader.may_see(&next)? {
                if backwards {
                    // History the user cannot see ends the context, as in `/messages`.
                    break 'pages;
                }
                token = past;
                continue;
            }
            token = past;
            if passes(filter, &next) {
                found.push(next);
                if found.len() == limit {
                    break 'pages;
                }
            }
        }
    }
    Ok((found, token))
}

/// The events before and after an event (together at most `limit`, split evenly), with
/// `start`/`end` tokens for `/messages` and the room state at the last event returned. The
/// filter applies to the context events and the state, not to the event itself; with
/// `lazy_load_members` only the member events of the returned events' senders are included.
/// 404 if the event is unknown, in another room or not visible to the user.
async fn context(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_context::v3::Request,
) -> Result<get_context::v3::Response> {
    let me = ctx.authed()?.clone();
    let reading = services.clone();
    services
        .rooms
        .heavy_read(move || context_page(&reading, &me, &body))
        .await
}

fn context_page(
    services: &Services,
    me: &Authed,
    body: &get_context::v3::Request,
) -> Result<get_context::v3::Response> {
    let room = known_room(services, &body.room_id)?;
    let mut reader = services.rooms.reader(&body.room_id, &me.user_id)?;
    // The context carries the room state: only for users who may read it (an invitee sees
    // their invite through `/sync`'s stripped state, not here). 404 as for an unknown event.
    if reader.access.state_head(room.last_state).is_none() {
        return Err(Error::not_found("Event not found"));
    }
    let event = services
        .rooms
        .event(&body.event_id)?
        .filter(|e| e.meta.room_sid == room.sid);
    let event = reader.visible(event)?;
    // The event asked for is shown whoever sent it; the events around it leave out what
    // ignored users sent, as every timeline does.
    reader.ignore(services.account_data.ignored_users_of(&me.user_id)?);
    let limit = usize::try_from(u64::from(body.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let before_limit = limit / 2;
    let (before, start) = around(
        services,
        &mut reader,
        &event,
        &body.filter,
        true,
        before_limit,
    )?;
    let (after, end) = around(
        services,
        &mut reader,
        &event,
        &body.filter,
        false,
        limit - before.len(),
    )?;

    let last = after.last().unwrap_or(&event);
    let lazy = !body.filter.lazy_load_options.is_disabled();
    let senders: HashSet<&str> = before
        .iter()
        .chain(after.iter())
        .chain(std::iter::once(&event))
        .map(|e| e.meta.sender.as_str())
        .collect();
    let mut state = Vec::new();
    for (kind, state_key, sid) in services.rooms.full_state_at(state_head(last))? {
        if lazy && kind == "m.room.member" && !senders.contains(state_key.as_str()) {
            continue;
        }
        let Some(state_event) = services.rooms.event_by_sid(sid)? else {
            continue;
        };
        if !passes(&body.filter, &state_event) {
            continue;
        }
        state.push(raw(services
            .rooms
            .client_event(&state_event, Some(viewer(me))))?);
    }

    let bundled =
        |e: &StoredEvent| raw(services.rooms.client_event_bundled(e, Some(viewer(me)))?);
    let mut response = get_context::v3::Response::new();
    response.start = Some(start.to_string());
    response.end = Some(end.to_string());
    response.event = Some(bundled(&event)?);
    response.events_before = before.iter().map(bundled).collect::<Result<_>>()?;
    response.events_after = after.iter().map(bundled).collect::<Result<_>>()?;
    response.state = state;
    Ok(response)
}
