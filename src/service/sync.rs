//! `/sync`: what changed for a user between a token and now.
//!
//! A token is a stream position `p`: the client has seen everything with a position up to and
//! including `p`. "Now" is the stream's settled position, so a write that commits late is
//! never skipped: the next sync picks it up. Tokens are positions in the durable stream, so
//! they stay valid across restarts.

use std::collections::HashSet;

use ruma::{
    api::client::filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
    events::StateEventType,
    RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    account_data::AccountData,
    rooms::{format::Viewer, Rooms, StoredEvent},
};
use crate::error::Result;

/// Timeline events per room when the filter gives no limit (the spec suggests 10 or so).
const DEFAULT_TIMELINE_LIMIT: usize = 10;
const MAX_TIMELINE_LIMIT: usize = 100;
/// Heroes shown in a room summary.
const HEROES: usize = 5;
/// State types shown to invitees and knockers (spec: stripped state).
const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

pub struct SyncRequest<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a str,
    pub since: Option<u64>,
    pub full_state: bool,
    pub filter: FilterDefinition,
}

/// What `/sync` reads, passed explicitly.
pub struct Sources<'a> {
    pub rooms: &'a Rooms,
    pub account_data: &'a AccountData,
}

/// Whether an event passes a room event filter's type and sender conditions.
pub fn event_passes(filter: &RoomEventFilter, event: &StoredEvent) -> bool {
    let kind = event.meta.kind.as_str();
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    if filter.not_types.iter().any(matches) {
        return false;
    }
    if filter
        .types
        .as_ref()
        .is_some_and(|types| !types.iter().any(matches))
    {
        return false;
    }
    if filter
        .not_senders
        .iter()
        .any(|s| s.as_str() == event.meta.sender)
    {
        return false;
    }
    if filter
        .senders
        .as_ref()
        .is_some_and(|s| !s.iter().any(|s| s.as_str() == event.meta.sender))
    {
        return false;
    }
    true
}

fn room_wanted(filter: &FilterDefinition, room_id: &RoomId) -> bool {
    if filter.room.not_rooms.iter().any(|r| r == room_id) {
        return false;
    }
    filter
        .room
        .rooms
        .as_ref()
        .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

/// The result of one sync pass: the response body and whether it carries anything new.
pub struct SyncResult {
    pub body: Value,
    pub has_updates: bool,
}

pub fn sync_once(sources: &Sources<'_>, request: &SyncRequest<'_>, now: u64) -> Result<SyncResult> {
    let mut join = Map::new();
    let mut invite = Map::new();
    let mut knock = Map::new();
    let mut leave = Map::new();
    let rooms = sources.rooms;

    let memberships = rooms.memberships_of(request.user_id)?;
    for (room_id, membership, member_sid) in memberships {
        if !room_wanted(&request.filter, &room_id) || member_sid > now {
            continue;
        }
        let changed_membership = request.since.is_none_or(|since| member_sid > since);
        match membership.as_str() {
            "join" => {
                // A room joined since the token is new to the client: give it in full.
                let since = if changed_membership {
                    None
                } else {
                    request.since
                };
                if let Some(room) = joined_room(sources, request, &room_id, since, now)? {
                    join.insert(room_id.to_string(), room);
                }
            }
            "invite" | "knock" if changed_membership => {
                let Some(record) = rooms.room(&room_id)? else {
                    continue;
                };
                let mut events = Vec::new();
                for kind in STRIPPED_STATE {
                    if let Some(e) =
                        rooms.state_event(record.sid, &StateEventType::from(*kind), "")?
                    {
                        events.push(rooms.stripped_event(&e));
                    }
                }
                if let Some(own) = rooms.state_event(
                    record.sid,
                    &StateEventType::RoomMember,
                    request.user_id.as_str(),
                )? {
                    let mut stripped = rooms.stripped_event(&own);
                    stripped["origin_server_ts"] = json!(own.meta.origin_server_ts);
                    stripped["event_id"] = json!(own.pdu.event_id);
                    events.push(stripped);
                }
                if membership == "invite" {
                    invite.insert(
                        room_id.to_string(),
                        json!({"invite_state": {"events": events}}),
                    );
                } else {
                    knock.insert(
                        room_id.to_string(),
                        json!({"knock_state": {"events": events}}),
                    );
                }
            }
            "leave" | "ban"
                if changed_membership
                    && (request.since.is_some() || request.filter.room.include_leave) =>
            {
                if rooms.is_forgotten(&room_id, request.user_id)? {
                    continue;
                }
                // Everything up to and including the user's final membership event.
                let upto = member_sid.min(now);
                let since = if request.since.is_some() {
                    request.since
                } else {
                    None
                };
                if let Some(room) = room_timeline(sources, request, &room_id, since, upto, false)? {
                    leave.insert(room_id.to_string(), room);
                }
            }
            _ => {}
        }
    }

    let mut body = Map::new();
    let mut has_updates =
        !invite.is_empty() || !knock.is_empty() || !leave.is_empty() || !join.is_empty();
    body.insert("next_batch".into(), json!(now.to_string()));
    let mut rooms_body = Map::new();
    for (key, section) in [
        ("join", join),
        ("invite", invite),
        ("knock", knock),
        ("leave", leave),
    ] {
        if !section.is_empty() {
            rooms_body.insert(key.into(), Value::Object(section));
        }
    }
    if !rooms_body.is_empty() {
        body.insert("rooms".into(), Value::Object(rooms_body));
    }
    let account_data = sources
        .account_data
        .global_since(request.user_id, request.since, now)?;
    if !account_data.is_empty() {
        has_updates = true;
        let events: Vec<Value> = account_data
            .into_iter()
            .filter_map(|(kind, content)| {
                let content: Value = serde_json::from_slice(&content).ok()?;
                Some(json!({"type": kind, "content": content}))
            })
            .collect();
        body.insert("account_data".into(), json!({ "events": events }));
    }
    Ok(SyncResult {
        body: Value::Object(body),
        has_updates,
    })
}

/// A joined room's section, or `None` when nothing changed since the token.
fn joined_room(
    sources: &Sources<'_>,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    since: Option<u64>,
    now: u64,
) -> Result<Option<Value>> {
    let Some(mut room) = room_timeline(sources, request, room_id, since, now, true)? else {
        return Ok(None);
    };
    let rooms = sources.rooms;
    let Some(record) = rooms.room(room_id)? else {
        return Ok(None);
    };
    // The summary changes rarely; it is sent whenever membership changed in this batch or
    // on a fresh start.
    let members = rooms.members(record.sid)?;
    let joined = members.iter().filter(|(_, m)| m == "join").count();
    let invited = members.iter().filter(|(_, m)| m == "invite").count();
    let heroes: Vec<&str> = members
        .iter()
        .filter(|(u, m)| u != request.user_id.as_str() && (m == "join" || m == "invite"))
        .map(|(u, _)| u.as_str())
        .take(HEROES)
        .collect();
    room["summary"] = json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    });
    room["ephemeral"] = json!({"events": []});
    room["account_data"] = json!({"events": []});
    room["unread_notifications"] = json!({"notification_count": 0, "highlight_count": 0});
    Ok(Some(room))
}

/// The timeline and state of a room between `since` (exclusive) and `upto` (inclusive).
fn room_timeline(
    sources: &Sources<'_>,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    since: Option<u64>,
    upto: u64,
    skip_if_empty: bool,
) -> Result<Option<Value>> {
    let rooms = sources.rooms;
    let Some(record) = rooms.room(room_id)? else {
        return Ok(None);
    };
    let filter = &request.filter.room.timeline;
    let limit = filter
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(MAX_TIMELINE_LIMIT))
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, MAX_TIMELINE_LIMIT);
    let viewer = Viewer {
        user_id: request.user_id,
        device_id: Some(request.device_id),
    };

    // Newest first, down to the token; one more than the limit tells whether it is limited.
    let mut picked: Vec<StoredEvent> = Vec::new();
    let mut limited = false;
    let mut cursor = Some(upto);
    let mut budget = limit * 20 + 100;
    'scan: while let Some(from) = cursor {
        let page = rooms.timeline(record.sid, Some(from), true, limit + 1)?;
        if page.is_empty() {
            break;
        }
        for event in page {
            cursor = event.sid.checked_sub(1);
            budget = budget.saturating_sub(1);
            if since.is_some_and(|s| event.sid <= s) {
                break 'scan;
            }
            if !rooms.can_see(request.user_id, &event)? {
                // History the user may not read ends the timeline here.
                limited = true;
                break 'scan;
            }
            if !event_passes(filter, &event) {
                continue;
            }
            if picked.len() == limit || budget == 0 {
                limited = true;
                break 'scan;
            }
            picked.push(event);
        }
    }
    picked.reverse();
    if skip_if_empty && picked.is_empty() && since.is_some() && !request.full_state {
        return Ok(None);
    }

    // State: everything the client lacks before the first timeline event.
    let start_head = match picked.first() {
        Some(first) => first.meta.state_link,
        None => record.last_state,
    };
    let full = since.is_none() || request.full_state;
    let lazy = matches!(
        request.filter.room.state.lazy_load_options,
        LazyLoadOptions::Enabled { .. }
    );
    let include_redundant = matches!(
        request.filter.room.state.lazy_load_options,
        LazyLoadOptions::Enabled {
            include_redundant_members: true
        }
    );
    let timeline_senders: HashSet<&str> = picked.iter().map(|e| e.meta.sender.as_str()).collect();
    let timeline_sids: HashSet<u64> = picked.iter().map(|e| e.sid).collect();
    let mut state = Vec::new();
    for (kind, key, sid) in rooms.full_state_at(start_head)? {
        if timeline_sids.contains(&sid) {
            continue;
        }
        if !full && since.is_some_and(|s| sid <= s) {
            continue;
        }
        if lazy && kind == "m.room.member" && key != request.user_id.as_str() {
            // Lazy loading: only members who sent something in this timeline (the client
            // has the others or will fetch them), unless it asked for redundant ones.
            if !timeline_senders.contains(key.as_str()) {
                continue;
            }
            if !include_redundant && !full && since.is_some_and(|s| sid <= s) {
                continue;
            }
        }
        if let Some(event) = rooms.event_by_sid(sid)? {
            if event_passes(&request.filter.room.state, &event) {
                state.push(rooms.client_event(&event, Some(viewer)));
            }
        }
    }

    let prev_batch = picked.first().map(|e| e.sid.to_string());
    let events: Vec<Value> = picked
        .iter()
        .map(|e| rooms.client_event(e, Some(viewer)))
        .collect();
    let mut timeline = json!({"events": events, "limited": limited});
    if let Some(prev_batch) = prev_batch {
        timeline["prev_batch"] = json!(prev_batch);
    }
    Ok(Some(
        json!({"timeline": timeline, "state": {"events": state}}),
    ))
}
