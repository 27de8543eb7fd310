//! History visibility (spec: client-server API, room history visibility): the lookups behind
//! the per-event rule. Read paths go through [`super::access::Reader`], which applies the
//! room-level access first and then [`decide`] with these, cached per state run.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use ruma::{events::StateEventType, UserId};
use serde_json::Value;

use super::{EventMetaTable, Rooms};
use crate::error::Result;

/// Fields kept in memory by [`KeptFields`].
const MAX_KEPT_FIELDS: usize = 100_000;

/// The content fields history visibility reads, by event: `membership` of member events and
/// `history_visibility` of visibility events. Redaction keeps both (every room version's
/// redaction algorithm), and a position is never reused, so a value read once holds for good:
/// one decode serves every later reader of the event, e.g. the fifty syncs one send wakes.
/// Bounded by [`MAX_KEPT_FIELDS`]; the map starts over when full. The lock guards only the map.
#[derive(Default)]
pub struct KeptFields {
    values: Mutex<HashMap<(u64, Kept), Option<String>>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kept {
    Membership,
    HistoryVisibility,
}

impl Kept {
    fn name(self) -> &'static str {
        match self {
            Kept::Membership => "membership",
            Kept::HistoryVisibility => "history_visibility",
        }
    }
}

impl KeptFields {
    fn lock(&self) -> MutexGuard<'_, HashMap<(u64, Kept), Option<String>>> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How far back a user's chain of member events is followed to find a past join. A user who
/// changed membership more often than this without joining is treated as never joined, which
/// only ever hides history, never reveals it.
const MEMBERSHIP_HISTORY_LIMIT: usize = 100;

impl Rooms {
    fn content_field(&self, sid: Option<u64>, field: Kept) -> Result<Option<String>> {
        let Some(sid) = sid else { return Ok(None) };
        if let Some(value) = self.kept_fields.lock().get(&(sid, field)) {
            return Ok(value.clone());
        }
        let Some(event) = self.event_by_sid(sid)? else {
            // Not kept: an event not stored (yet) may be later.
            return Ok(None);
        };
        let value = event.pdu.content_as::<Value>().and_then(|c| {
            c.get(field.name())
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let mut kept = self.kept_fields.lock();
        if kept.len() >= MAX_KEPT_FIELDS {
            kept.clear();
        }
        kept.insert((sid, field), value.clone());
        Ok(value)
    }

    /// The `history_visibility` in the state whose newest state event is `head`.
    pub fn visibility_at_head(&self, head: Option<u64>) -> Result<String> {
        let sid = self.state_at(head, &StateEventType::RoomHistoryVisibility, "")?;
        Ok(self
            .content_field(sid, Kept::HistoryVisibility)?
            .unwrap_or_else(|| "shared".into()))
    }

    /// The user's membership in the state whose newest state event is `head`.
    pub fn membership_at_head(
        &self,
        head: Option<u64>,
        user_id: &UserId,
    ) -> Result<Option<String>> {
        let sid = self.state_at(head, &StateEventType::RoomMember, user_id.as_str())?;
        self.content_field(sid, Kept::Membership)
    }

    /// The user's newest join event in the room and the member event that followed it (the
    /// one that ended that join, if it has ended), walking the user's member events newest
    /// first; `None` if no join is found within the walk limit.
    pub fn last_join(&self, room_sid: u64, user_id: &UserId) -> Result<Option<(u64, Option<u64>)>> {
        let key = (room_sid, "m.room.member".to_owned(), user_id.to_string());
        let mut cursor = self.store.get::<super::CurrentState>(&key)?;
        let mut newer = None;
        for _ in 0..MEMBERSHIP_HISTORY_LIMIT {
            let Some(sid) = cursor else { return Ok(None) };
            // The metadata and the kept membership: no event is parsed for this walk.
            let Some(meta) = self.store.get::<EventMetaTable>(&sid)? else {
                return Ok(None);
            };
            if self.content_field(Some(sid), Kept::Membership)?.as_deref() == Some("join") {
                return Ok(Some((sid, newer)));
            }
            newer = Some(sid);
            cursor = meta.replaces_state;
        }
        Ok(None)
    }

    /// The sid of the user's newest join event in the room, if any within the walk limit.
    pub fn latest_join(&self, room_sid: u64, user_id: &UserId) -> Result<Option<u64>> {
        Ok(self.last_join(room_sid, user_id)?.map(|(join, _)| join))
    }

    /// Whether `user_id` joined the room at any point after the event `after_sid`.
    pub fn joined_since(&self, room_sid: u64, user_id: &UserId, after_sid: u64) -> Result<bool> {
        Ok(self
            .latest_join(room_sid, user_id)?
            .is_some_and(|join| join > after_sid))
    }

    /// The user's membership in the room as it stood at stream position `pos`, with the sid of
    /// that member event: the current member event, or the one it replaced, and so on back.
    pub fn membership_as_of(
        &self,
        room_sid: u64,
        user_id: &UserId,
        pos: u64,
    ) -> Result<Option<(String, u64)>> {
        let key = (room_sid, "m.room.member".to_owned(), user_id.to_string());
        let mut cursor = self.store.get::<super::CurrentState>(&key)?;
        for _ in 0..MEMBERSHIP_HISTORY_LIMIT {
            let Some(sid) = cursor else { return Ok(None) };
            let Some(event) = self.event_by_sid(sid)? else {
                return Ok(None);
            };
            if sid <= pos {
                let content = event.pdu.content_as::<Value>();
                let membership = content
                    .as_ref()
                    .and_then(|c| c.get("membership"))
                    .and_then(Value::as_str);
                return Ok(membership.map(|m| (m.to_owned(), sid)));
            }
            cursor = event.meta.replaces_state;
        }
        Ok(None)
    }
}

/// The visibility rule given the history visibility and the user's membership at an event;
/// `None` when it depends on whether the user joined after the event (`shared`).
pub(super) fn decide(visibility: &str, membership: Option<&str>) -> Option<bool> {
    if visibility == "world_readable" {
        return Some(true);
    }
    match membership {
        Some("join") => return Some(true),
        Some("invite") if visibility == "invited" => return Some(true),
        _ => {}
    }
    if visibility == "shared" {
        return None;
    }
    Some(false)
}
