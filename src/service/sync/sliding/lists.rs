//! The rooms of a sliding sync connection and their order: every room the user is joined to,
//! invited to or knocked on, newest bump first, and the lists' filters and ranges over them.

use std::collections::HashSet;

use ruma::{
    api::client::sync::sync_events::v5::request::{List, ListFilters},
    events::StateEventType,
    OwnedRoomId, UserId,
};
use serde_json::Value;

use super::{super::remote, connections::Snapshot};
use crate::{
    error::Result,
    service::{
        account_data::AccountData,
        rooms::{RoomRecord, Rooms},
    },
};

/// The events that move a room up the list (MSC4186 leaves the choice to the server; these
/// are what a person would call activity). The user's own membership changes count too.
pub static BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
    "m.beacon_info",
    "org.matrix.msc3672.beacon_info",
];
/// Events examined per room when looking for its newest bump event; a room whose newest
/// activity lies further back is ordered by the user's membership event instead.
const BUMP_SCAN: usize = 200;

/// A room the user has a membership in, as the lists see it.
pub struct Candidate {
    pub room_id: OwnedRoomId,
    /// `join`, `invite`, `knock`, `leave` or `ban`.
    pub membership: String,
    /// Stream position of the user's membership.
    pub member_sid: u64,
    /// `None` for a room known only through another server (a remote invite or knock).
    pub record: Option<RoomRecord>,
    /// Invites and knocks: the stripped state the user sees.
    pub stripped: Option<Vec<Value>>,
    /// The stream position of the newest bump event (or the user's membership).
    pub bump: u64,
    pub is_dm: bool,
}

impl Candidate {
    /// A state event's content, from the room's state here or, for a room known through
    /// another server or an invite, its stripped state.
    fn state_content(&self, rooms: &Rooms, kind: &str) -> Result<Option<Value>> {
        if let Some(stripped) = &self.stripped {
            return Ok(stripped
                .iter()
                .find(|e| e["type"] == kind && e["state_key"] == "")
                .map(|e| e["content"].clone()));
        }
        let Some(record) = &self.record else {
            return Ok(None);
        };
        Ok(rooms
            .state_event(record.sid, &StateEventType::from(kind), "")?
            .and_then(|e| e.pdu.content_as::<Value>()))
    }
}

/// The user's rooms, newest bump first (ties by room id). Left and banned rooms are included
/// only when the membership changed after the snapshot and the connection was sent the room
/// (so the client learns it left); invites from ignored users are left out.
pub fn candidates(
    rooms: &Rooms,
    account_data: &AccountData,
    user_id: &UserId,
    previous: Option<&Snapshot>,
    ignored: &HashSet<String>,
    now: u64,
) -> Result<Vec<Candidate>> {
    let direct = dm_rooms(account_data, user_id)?;
    let mut out = Vec::new();
    for (room_id, membership, member_sid, source) in remote::memberships(rooms, user_id)? {
        if let remote::Source::Remote(record) = source {
            if member_sid > now {
                continue;
            }
            let (membership, stripped) = match remote::section(&record, ignored) {
                Some(("invite" | "knock", body)) => {
                    let key = if record.membership == "invite" {
                        "invite_state"
                    } else {
                        "knock_state"
                    };
                    let events = body[key]["events"].as_array().cloned().unwrap_or_default();
                    (record.membership.clone(), Some(events))
                }
                Some(_) if was_sent(previous, &room_id, member_sid) => {
                    (record.membership.clone(), None)
                }
                _ => continue,
            };
            let is_dm = direct.contains(room_id.as_str()) || invite_is_direct(stripped.as_ref());
            out.push(Candidate {
                room_id,
                membership,
                member_sid,
                record: None,
                stripped,
                bump: member_sid,
                is_dm,
            });
            continue;
        }
        let Some((membership, member_sid)) = super::super::settled_membership(
            rooms,
            &room_id,
            user_id,
            (membership, member_sid),
            now,
        )?
        else {
            continue;
        };
        let Some(record) = rooms.room(&room_id)? else {
            continue;
        };
        let mut stripped = None;
        match membership.as_str() {
            "join" => {}
            "invite" | "knock" => {
                match super::super::room::stripped_room_state(rooms, &record, user_id, ignored)? {
                    Some(events) => stripped = Some(events),
                    None => continue,
                }
            }
            _ => {
                if !was_sent(previous, &room_id, member_sid)
                    || rooms.is_forgotten(&room_id, user_id)?
                {
                    continue;
                }
            }
        }
        let bump = if membership == "join" {
            rooms
                .newest_of_kinds(&room_id, record.sid, now, BUMP_TYPES, BUMP_SCAN)?
                .map_or(member_sid, |sid| sid.max(member_sid))
        } else {
            member_sid
        };
        let is_dm = direct.contains(room_id.as_str()) || invite_is_direct(stripped.as_ref());
        out.push(Candidate {
            room_id,
            membership,
            member_sid,
            record: Some(record),
            stripped,
            bump,
            is_dm,
        });
    }
    out.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(out)
}

/// Whether the connection was sent the room before the membership at `member_sid`.
fn was_sent(previous: Option<&Snapshot>, room_id: &OwnedRoomId, member_sid: u64) -> bool {
    previous.is_some_and(|p| member_sid > p.stream && p.rooms.contains_key(room_id))
}

/// The rooms the user's `m.direct` account data names.
fn dm_rooms(account_data: &AccountData, user_id: &UserId) -> Result<HashSet<String>> {
    let Some(content) = account_data.get(user_id, None, "m.direct")? else {
        return Ok(HashSet::new());
    };
    let Ok(content) = serde_json::from_slice::<Value>(&content) else {
        return Ok(HashSet::new());
    };
    Ok(content
        .as_object()
        .into_iter()
        .flat_map(|users| users.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

/// Whether an invite's own member event (the last stripped event) says `is_direct`.
fn invite_is_direct(stripped: Option<&Vec<Value>>) -> bool {
    stripped
        .and_then(|events| events.iter().rev().find(|e| e["type"] == "m.room.member"))
        .is_some_and(|e| e["content"]["is_direct"] == true)
}

/// Whether a room passes a list's filters (all of them; an absent filter passes everything).
pub fn passes(rooms: &Rooms, filters: Option<&ListFilters>, room: &Candidate) -> Result<bool> {
    let Some(filters) = filters else {
        return Ok(true);
    };
    if filters.is_dm.is_some_and(|dm| dm != room.is_dm) {
        return Ok(false);
    }
    if filters
        .is_invite
        .is_some_and(|invite| invite != (room.membership == "invite"))
    {
        return Ok(false);
    }
    if let Some(encrypted) = filters.is_encrypted {
        if encrypted != room.state_content(rooms, "m.room.encryption")?.is_some() {
            return Ok(false);
        }
    }
    if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
        let create = room.state_content(rooms, "m.room.create")?;
        let room_type = create
            .as_ref()
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str);
        if filters
            .not_room_types
            .iter()
            .any(|t| t.as_str() == room_type)
        {
            return Ok(false);
        }
        if !filters.room_types.is_empty()
            && !filters.room_types.iter().any(|t| t.as_str() == room_type)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A list's rooms (indices into `candidates`, in order) and those its ranges cover.
pub fn window(rooms: &Rooms, list: &List, candidates: &[Candidate]) -> Result<(usize, Vec<usize>)> {
    let mut matching = Vec::new();
    for (i, room) in candidates.iter().enumerate() {
        if passes(rooms, list.filters.as_ref(), room)? {
            matching.push(i);
        }
    }
    let mut covered = Vec::new();
    let mut seen = HashSet::new();
    for (start, end) in &list.ranges {
        let start = usize::try_from(u64::from(*start)).unwrap_or(usize::MAX);
        let end = usize::try_from(u64::from(*end)).unwrap_or(usize::MAX);
        if start > end || start >= matching.len() {
            continue;
        }
        for &i in &matching[start..=end.min(matching.len() - 1)] {
            if seen.insert(i) {
                covered.push(i);
            }
        }
    }
    Ok((matching.len(), covered))
}
