//! The sections of rooms known only through another server (`rooms::remote_invites`): a
//! remote invite or knock shows its stored stripped state, a rejected, rescinded or withdrawn
//! one the member event that ended it. This server has no timeline or state of such a room.

use std::collections::HashSet;

use ruma::OwnedRoomId;
use serde_json::{json, Map, Value};

use crate::{
    error::Result,
    service::rooms::{remote_invites::RemoteInvite, Rooms},
};

/// Where a user's membership in a room comes from.
pub(super) enum Source {
    /// The room's own state here (`user_rooms`).
    Local,
    /// A remote invite or knock record, newer than any local membership.
    Remote(Box<RemoteInvite>),
}

/// The user's memberships `(room, membership, position, source)`: the local ones, with each
/// remote record taking the place of the local membership of its room when it is newer.
pub(super) fn memberships(
    rooms: &Rooms,
    user_id: &ruma::UserId,
) -> Result<Vec<(OwnedRoomId, String, u64, Source)>> {
    let mut out: Vec<(OwnedRoomId, String, u64, Source)> = rooms
        .memberships_of(user_id)?
        .into_iter()
        .map(|(room, membership, sid)| (room, membership, sid, Source::Local))
        .collect();
    for (room_id, record) in rooms.remote_invites_of(user_id)? {
        match out.iter_mut().find(|(room, ..)| *room == room_id) {
            Some(entry) if entry.2 > record.sid => {}
            Some(entry) => {
                *entry = (
                    room_id,
                    record.membership.clone(),
                    record.sid,
                    Source::Remote(Box::new(record)),
                )
            }
            None => out.push((
                room_id,
                record.membership.clone(),
                record.sid,
                Source::Remote(Box::new(record)),
            )),
        }
    }
    Ok(out)
}

/// The section of a remote record: `("invite" | "knock" | "leave", body)`. `None` for an
/// invite from an ignored user.
pub(super) fn section(
    record: &RemoteInvite,
    ignored: &HashSet<String>,
) -> Option<(&'static str, Value)> {
    let event = record.event_json();
    match record.membership.as_str() {
        "invite" | "knock" => {
            if record.membership == "invite" && ignored.contains(&record.sender) {
                return None;
            }
            let mut events: Vec<Value> = record
                .stripped_state
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect();
            if let Some(event) = &event {
                let mut own = stripped(event);
                own["event_id"] = json!(record.event_id);
                own["origin_server_ts"] = event["origin_server_ts"].clone();
                // The member event replaces any stripped copy of it.
                events.retain(|e| {
                    !(e["type"] == "m.room.member" && e["state_key"] == own["state_key"])
                });
                events.push(own);
            }
            if record.membership == "invite" {
                Some(("invite", json!({"invite_state": {"events": events}})))
            } else {
                Some(("knock", json!({"knock_state": {"events": events}})))
            }
        }
        _ => {
            let events: Vec<Value> = record.client_event().into_iter().collect();
            // No history here to page into: the token is the record's own position.
            let timeline =
                json!({"events": events, "limited": false, "prev_batch": record.sid.to_string()});
            Some((
                "leave",
                json!({"timeline": timeline, "state": {"events": []}}),
            ))
        }
    }
}

/// An event pruned to the stripped state fields (spec: "Stripped state").
pub fn stripped(event: &Value) -> Value {
    let mut out = Map::new();
    for key in ["content", "sender", "type", "state_key"] {
        if let Some(value) = event.get(key) {
            out.insert(key.to_owned(), value.clone());
        }
    }
    Value::Object(out)
}
