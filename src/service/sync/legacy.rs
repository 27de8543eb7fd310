//! The deprecated sync API that older clients and bridges still call: the event stream
//! (`GET /events`, and its peeking form with `room_id`), `GET /initialSync` and
//! `GET /rooms/{roomId}/initialSync`.
//!
//! Nothing here reads the timeline itself: every room is read through the `/messages` pager
//! ([`Rooms::messages`]) with the user's [`Reader`], so the read rules (`rooms::access`,
//! history visibility, ignored users) are exactly those of every other read path. Tokens are
//! `/sync` tokens ([`SyncToken`]): the stream position the client has seen everything up to,
//! so an `/events` token and a `/sync` `next_batch` are interchangeable.

use ruma::{
    api::client::filter::{FilterDefinition, RoomEventFilter},
    events::room::member::MembershipState,
    RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::{presence::presence_events, Sources, SyncRequest, SyncToken};
use crate::{
    error::{Error, Result},
    service::{
        presence::View,
        rooms::{
            access::{Access, Reader},
            format::Viewer,
            state::state_head,
            timeline::MessagesQuery,
            StoredEvent,
        },
        users::now_ms,
    },
};

/// Most events one `/events` response carries; more wait for the next request (its `end`
/// stops before the first one left out).
pub const EVENTS_LIMIT: usize = 100;
/// Messages per room in an initial sync when the client gives no `limit`, and the most it may
/// ask for.
pub const DEFAULT_INITIAL_LIMIT: usize = 10;
pub const MAX_INITIAL_LIMIT: usize = 100;

/// One pass of the event stream.
pub struct EventsPage {
    pub chunk: Vec<Value>,
    /// The position the next request continues from: everything up to it has been delivered.
    pub end: u64,
}

fn request<'a>(user_id: &'a UserId, device_id: &'a str, since: Option<u64>) -> SyncRequest<'a> {
    SyncRequest {
        user_id,
        device_id,
        since,
        typing_since: None,
        full_state: false,
        filter: FilterDefinition::default(),
    }
}

/// A reader of one room that also leaves out the user's ignored users.
fn reader<'a>(sources: &Sources<'a>, user_id: &'a UserId, access: Access) -> Result<Reader<'a>> {
    let mut reader = Reader::new(sources.rooms, user_id, access);
    reader.ignore(sources.account_data.ignored_users_of(user_id)?);
    Ok(reader)
}

/// Whether `user_id` may peek at `room_id` through `/events?room_id=`: joined, or the room
/// is `world_readable` (403 otherwise, also for unknown rooms, so existence does not leak).
pub fn peek_access(sources: &Sources<'_>, room_id: &RoomId, user_id: &UserId) -> Result<Access> {
    match sources.rooms.read_access(room_id, user_id)? {
        access @ (Access::Joined | Access::WorldReadable) => Ok(access),
        _ => Err(Error::forbidden(
            "You are not joined to this room and it is not world readable",
        )),
    }
}

/// The events after position `since` up to `now` that the user may see: of the rooms they are
/// joined to and of those whose membership changed after `since` (an invite, their leave), or,
/// with `peek`, of that one room only (see [`peek_access`]); and, without `peek`, the presence
/// changes of the users they share a room with. At most [`EVENTS_LIMIT`] room events, oldest
/// first; the page's `end` never passes an event left out.
pub fn events_since(
    sources: &Sources<'_>,
    user_id: &UserId,
    device_id: &str,
    since: u64,
    now: u64,
    peek: Option<&RoomId>,
) -> Result<EventsPage> {
    let rooms = sources.rooms;
    let targets: Vec<(ruma::OwnedRoomId, Access)> = match peek {
        Some(room_id) => vec![(room_id.to_owned(), peek_access(sources, room_id, user_id)?)],
        None => {
            let mut targets = Vec::new();
            for (room_id, membership, member_sid) in rooms.memberships_of(user_id)? {
                if membership == "join" || member_sid > since {
                    targets.push((room_id.clone(), rooms.read_access(&room_id, user_id)?));
                }
            }
            targets
        }
    };
    let filter = RoomEventFilter::default();
    let mut horizon = now;
    let mut events: Vec<StoredEvent> = Vec::new();
    for (room_id, access) in targets {
        let Some(record) = rooms.room(&room_id)? else {
            continue;
        };
        let mut reader = reader(sources, user_id, access)?;
        let query = MessagesQuery {
            from: since + 1,
            to: Some(horizon + 1),
            backwards: false,
            limit: EVENTS_LIMIT,
            filter: &filter,
        };
        let page = rooms.messages(&mut reader, record.sid, &query)?;
        if let Some(next) = page.end {
            // This room has more: the response stops just before its next event.
            horizon = horizon.min(next.saturating_sub(1));
        }
        events.extend(page.events);
    }
    events.sort_by_key(|e| e.sid);
    events.retain(|e| e.sid <= horizon);
    if events.len() > EVENTS_LIMIT {
        events.truncate(EVENTS_LIMIT);
        horizon = events.last().map_or(horizon, |e| e.sid);
    }
    let viewer = Some(Viewer {
        user_id,
        device_id: Some(device_id),
    });
    let mut chunk: Vec<Value> = events
        .iter()
        .map(|e| rooms.client_event_bundled(e, viewer))
        .collect::<Result<_>>()?;
    if peek.is_none() {
        chunk.extend(presence_events(
            sources,
            &request(user_id, device_id, Some(since)),
            horizon,
            &[],
        )?);
    }
    Ok(EventsPage {
        chunk,
        end: horizon,
    })
}

/// `GET /initialSync`'s parameters.
pub struct InitialSyncQuery {
    pub limit: Option<u64>,
    pub archived: bool,
}

/// A messages limit as asked, defaulted and capped.
fn initial_limit(limit: Option<u64>) -> usize {
    limit
        .map(|l| usize::try_from(l).unwrap_or(MAX_INITIAL_LIMIT))
        .unwrap_or(DEFAULT_INITIAL_LIMIT)
        .clamp(1, MAX_INITIAL_LIMIT)
}

/// `GET /initialSync`: every joined room (and invite, and with `archived` every left room)
/// with its newest `limit` messages and its state, global account data and the presence of
/// the users sharing a room with the user, as of position `now`.
pub fn initial_sync(
    sources: &Sources<'_>,
    user_id: &UserId,
    device_id: &str,
    query: &InitialSyncQuery,
    now: u64,
) -> Result<Value> {
    let rooms = sources.rooms;
    let limit = initial_limit(query.limit);
    let viewer = Some(Viewer {
        user_id,
        device_id: Some(device_id),
    });
    let mut out = Vec::new();
    for (room_id, membership, member_sid) in rooms.memberships_of(user_id)? {
        let Some(record) = rooms.room(&room_id)? else {
            continue;
        };
        let (membership, member_sid) = if member_sid > now {
            // Still settling: as the membership stood at `now`.
            match rooms.membership_as_of(record.sid, user_id, now)? {
                Some(earlier) => earlier,
                None => continue,
            }
        } else {
            (membership, member_sid)
        };
        let access = match membership.as_str() {
            "join" => Access::Joined,
            "invite" => {
                let invite = rooms
                    .event_by_sid(member_sid)?
                    .map(|e| rooms.client_event(&e, viewer));
                let ignored = sources.account_data.ignored_users_of(user_id)?;
                let from_ignored = invite
                    .as_ref()
                    .is_some_and(|i| i["sender"].as_str().is_some_and(|s| ignored.contains(s)));
                if !from_ignored {
                    out.push(json!({
                        "room_id": room_id,
                        "membership": "invite",
                        "invite": invite,
                    }));
                }
                continue;
            }
            "leave" | "ban" if query.archived && !rooms.is_forgotten(&room_id, user_id)? => {
                match rooms.last_join(record.sid, user_id)? {
                    // As the room was when the user's last join ended.
                    Some((_, Some(until))) => Access::Departed {
                        until: until.min(now),
                    },
                    // Never joined (a rejected invite, a ban): only the membership.
                    _ => {
                        out.push(json!({"room_id": room_id, "membership": membership}));
                        continue;
                    }
                }
            }
            _ => continue,
        };
        let mut room = room_snapshot(sources, user_id, device_id, &room_id, access, limit, now)?;
        room["membership"] = json!(membership);
        out.push(room);
    }

    let account_data: Vec<Value> = sources
        .account_data
        .global(user_id)?
        .into_iter()
        .filter_map(|(kind, content)| {
            let content: Value = serde_json::from_slice(&content).ok()?;
            Some(json!({"type": kind, "content": content}))
        })
        .collect();
    let presence = presence_events(sources, &request(user_id, device_id, None), now, &[])?;
    Ok(json!({
        "end": SyncToken { pos: now, typing: None }.to_string(),
        "rooms": out,
        "presence": presence,
        "account_data": account_data,
    }))
}

/// `GET /rooms/{roomId}/initialSync`: the room as the user may read it (joined, peeking at a
/// `world_readable` room, or as it was when they left), with the presence of its joined
/// members and its receipts; 403 for anyone else.
pub fn room_initial_sync(
    sources: &Sources<'_>,
    user_id: &UserId,
    device_id: &str,
    room_id: &RoomId,
    now: u64,
) -> Result<Value> {
    let rooms = sources.rooms;
    let access = rooms.read_access(room_id, user_id)?;
    let Some(record) = rooms.room(room_id)? else {
        return Err(Error::forbidden("You are not allowed to read this room"));
    };
    let access = match access {
        Access::Joined | Access::WorldReadable => access,
        Access::Departed { until } => Access::Departed {
            until: until.min(now),
        },
        _ => return Err(Error::forbidden("You are not allowed to read this room")),
    };
    let mut room = room_snapshot(
        sources,
        user_id,
        device_id,
        room_id,
        access,
        DEFAULT_INITIAL_LIMIT,
        now,
    )?;
    if let Some(membership) = rooms.membership(room_id, user_id)? {
        room["membership"] = json!(membership.as_str());
    }

    // Presence of the joined members (a departed user sees who was there when they left).
    let now_ms = now_ms();
    let mut presence = Vec::new();
    if matches!(access, Access::Joined | Access::WorldReadable) {
        for (member, membership) in rooms.members(record.sid)? {
            let Ok(member) = UserId::parse(member) else {
                continue;
            };
            if membership != MembershipState::Join.as_str() {
                continue;
            }
            if let Some(record) = sources.presence.get(&member)? {
                let view = View::of(Some(&record), now_ms);
                presence.push(
                    json!({"type": "m.presence", "sender": member, "content": view.content()}),
                );
            }
        }
    }
    room["presence"] = json!(presence);
    let receipts = match access {
        Access::Joined | Access::WorldReadable => sources
            .receipts
            .room_since(room_id, None, now, user_id)?
            .map(|content| json!({"type": "m.receipt", "room_id": room_id, "content": content})),
        _ => None,
    };
    room["receipts"] = json!(receipts.into_iter().collect::<Vec<_>>());
    Ok(room)
}

/// A room's `room_id`, `messages` (its newest `limit` events the user may see, oldest first,
/// with `/messages` tokens), `state` (the state the user may read), `visibility` and the
/// user's room `account_data`.
fn room_snapshot(
    sources: &Sources<'_>,
    user_id: &UserId,
    device_id: &str,
    room_id: &RoomId,
    access: Access,
    limit: usize,
    now: u64,
) -> Result<Value> {
    let rooms = sources.rooms;
    let record = rooms
        .room(room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    let viewer = Some(Viewer {
        user_id,
        device_id: Some(device_id),
    });
    let upto = access.until().unwrap_or(now).min(now);
    let filter = RoomEventFilter::default();
    let mut reader = reader(sources, user_id, access)?;
    let page = rooms.messages(
        &mut reader,
        record.sid,
        &MessagesQuery {
            from: upto + 1,
            to: None,
            backwards: true,
            limit,
            filter: &filter,
        },
    )?;
    let mut chunk: Vec<Value> = page
        .events
        .iter()
        .map(|e| rooms.client_event_bundled(e, viewer))
        .collect::<Result<_>>()?;
    chunk.reverse();
    let mut messages = Map::new();
    if let Some(start) = page.end {
        messages.insert("start".into(), json!(start.to_string()));
    }
    messages.insert("end".into(), json!((upto + 1).to_string()));
    messages.insert("chunk".into(), Value::Array(chunk));

    // The state as of the newest event covered: the departure for a departed user.
    let head = match access {
        Access::Departed { until } => Some(until),
        _ => {
            let newest = rooms.timeline(record.sid, Some(upto), true, 1)?;
            match newest.first() {
                Some(event) => state_head(event),
                None => record.last_state,
            }
        }
    };
    let state: Vec<Value> = rooms
        .full_state_at(head)?
        .into_iter()
        .filter_map(|(_, _, sid)| rooms.event_by_sid(sid).transpose())
        .map(|e| e.map(|e| rooms.client_event(&e, viewer)))
        .collect::<Result<_>>()?;
    let account_data: Vec<Value> = sources
        .account_data
        .room(user_id, room_id)?
        .into_iter()
        .filter_map(|(kind, content)| {
            let content: Value = serde_json::from_slice(&content).ok()?;
            Some(json!({"type": kind, "content": content}))
        })
        .collect();
    let visibility = if rooms.is_published(room_id)? {
        "public"
    } else {
        "private"
    };
    Ok(json!({
        "room_id": room_id,
        "messages": messages,
        "state": state,
        "visibility": visibility,
        "account_data": account_data,
    }))
}
