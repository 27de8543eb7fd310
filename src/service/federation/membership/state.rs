//! What a resident server answers to `send_join` and `send_knock`.
//!
//! `send_join` (v2): `state` is the room's state before the join (the state at the join's
//! `state_link`), `auth_chain` every event in the auth chains of the join and of the events of
//! `state`. With `omit_members`, member events are left out of `state` except those a joining
//! server needs at once: the joining user's own (an invite, say), the members cited by the
//! join's auth events (the restricted join's authoriser), and — when the room has neither a name
//! nor a canonical alias — the heroes a room summary would name; `auth_chain` then holds the
//! auth chains of the join and of what `state` keeps, less the events already in `state`, and
//! `servers_in_room` lists the servers with joined members before the join.

use std::collections::{BTreeSet, HashSet};

use ruma::{
    api::federation::membership::{create_join_event, RawStrippedState},
    CanonicalJsonObject, UserId,
};
use serde_json::value::RawValue as RawJsonValue;

use super::fill::raw_object;
use crate::{
    error::{Error, Result},
    service::rooms::{format::STRIPPED_STATE, Rooms, StoredEvent},
};

/// Heroes of a room summary (client-server API, `/sync`'s `m.heroes`).
const HEROES: usize = 5;

/// The `send_join` answer, in ruma's shape.
pub type JoinState = create_join_event::v2::RoomState;

fn raw_of(event: &StoredEvent) -> Result<Box<RawJsonValue>> {
    raw_object(&event.json)
}

/// The `send_join` answer for the join stored at `join_sid` (see the module doc). `event` is
/// the join as this server signed it, when it co-signed.
pub fn join_state(
    rooms: &Rooms,
    join_sid: u64,
    omit_members: bool,
    cosigned: Option<&CanonicalJsonObject>,
) -> Result<JoinState> {
    let join = rooms
        .event_by_sid(join_sid)?
        .ok_or_else(|| Error::unknown("join event vanished"))?;
    let joiner = join.meta.state_key.clone().unwrap_or_default();
    let before = rooms.full_state_at(join.meta.state_link)?;
    let mut state = Vec::with_capacity(before.len());
    let mut joined_servers = BTreeSet::new();
    let mut members_omitted = false;
    let keep_members: HashSet<String> = if omit_members {
        wanted_members(rooms, &join, &before)?
    } else {
        HashSet::new()
    };
    for (kind, key, sid) in &before {
        let Some(event) = rooms.event_by_sid(*sid)? else {
            continue;
        };
        if kind == "m.room.member" {
            let joined = event
                .pdu
                .content_as::<serde_json::Value>()
                .is_some_and(|c| c["membership"] == "join");
            if joined {
                if let Ok(user) = UserId::parse(key.as_str()) {
                    joined_servers.insert(user.server_name().to_string());
                }
            }
            if omit_members && *key != joiner && !keep_members.contains(key) {
                members_omitted = true;
                continue;
            }
        }
        state.push(event);
    }
    let room = join
        .pdu
        .room_id
        .as_deref()
        .map(|id| rooms.room(id))
        .transpose()?
        .flatten()
        .ok_or_else(|| Error::unknown("room record missing"))?;
    let mut roots: Vec<u64> = state.iter().map(|e| e.sid).collect();
    roots.push(join.sid);
    let mut chain = rooms.auth_chain(&room, &roots)?;
    if omit_members {
        let in_state: HashSet<u64> = state.iter().map(|e| e.sid).collect();
        chain.retain(|sid| !in_state.contains(sid));
    }
    let mut answer = JoinState::new();
    answer.state = state.iter().map(raw_of).collect::<Result<_>>()?;
    answer.auth_chain = rooms.pdus_of(&chain)?;
    answer.members_omitted = members_omitted;
    if omit_members {
        answer.servers_in_room = Some(joined_servers.into_iter().collect());
    }
    if let Some(object) = cosigned {
        answer.event = Some(raw_object(object)?);
    }
    Ok(answer)
}

/// With `omit_members`: the members whose events stay in `state` (see the module doc).
fn wanted_members(
    rooms: &Rooms,
    join: &StoredEvent,
    before: &[(String, String, u64)],
) -> Result<HashSet<String>> {
    let mut keep = HashSet::new();
    for id in &join.pdu.auth_events {
        if let Some(event) = rooms.event(id)? {
            if event.meta.kind == "m.room.member" {
                keep.extend(event.meta.state_key.clone());
            }
        }
    }
    let named = before
        .iter()
        .any(|(k, s, _)| s.is_empty() && (k == "m.room.name" || k == "m.room.canonical_alias"));
    if !named {
        let joiner = join.meta.state_key.as_deref().unwrap_or_default();
        let mut candidates: Vec<&str> = Vec::new();
        for (kind, key, sid) in before {
            if kind != "m.room.member" || key == joiner {
                continue;
            }
            let membership = rooms
                .event_by_sid(*sid)?
                .and_then(|e| e.pdu.content_as::<serde_json::Value>())
                .and_then(|c| c["membership"].as_str().map(str::to_owned));
            if matches!(membership.as_deref(), Some("join" | "invite")) {
                candidates.push(key);
            }
        }
        candidates.sort_unstable();
        keep.extend(candidates.into_iter().take(HEROES).map(str::to_owned));
    }
    Ok(keep)
}

/// The `send_knock` answer: the room's stripped state as full PDUs (spec since v1.16).
pub fn knock_state(rooms: &Rooms, knock_sid: u64) -> Result<Vec<RawStrippedState>> {
    let knock = rooms
        .event_by_sid(knock_sid)?
        .ok_or_else(|| Error::unknown("knock event vanished"))?;
    let mut out = Vec::new();
    for (kind, key, sid) in rooms.full_state_at(Some(knock.sid))? {
        if !key.is_empty() || !STRIPPED_STATE.contains(&kind.as_str()) {
            continue;
        }
        if let Some(event) = rooms.event_by_sid(sid)? {
            out.push(RawStrippedState::Pdu(raw_of(&event)?));
        }
    }
    Ok(out)
}
