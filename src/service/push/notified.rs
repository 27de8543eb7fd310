//! What a notification is about, for push delivery and `GET /notifications`: an event of a
//! room stored here (found by the notification's position, which is the event's), or a local
//! user's invite to a room held by other servers (`rooms/remote_invites.rs`: the record
//! written at that position), whose room is known only by the invite's stripped state.

use ruma::{events::StateEventType, RoomId, UserId};
use serde_json::Value;

use crate::{
    error::Result,
    service::rooms::{format::Viewer, remote_invites::RemoteInvite, Rooms, StoredEvent},
};

pub enum Notified {
    Stored(Box<StoredEvent>),
    RemoteInvite(Box<RemoteInvite>),
}

/// The event `user_id`'s notification at position `sid` in `room_id` is about. `None` when it
/// is gone (a remote invite that was since rejected or rescinded).
pub fn notified(
    rooms: &Rooms,
    user_id: &UserId,
    room_id: &str,
    sid: u64,
) -> Result<Option<Notified>> {
    if let Some(event) = rooms.event_by_sid(sid)? {
        return Ok(Some(Notified::Stored(Box::new(event))));
    }
    let Ok(room_id) = RoomId::parse(room_id) else {
        return Ok(None);
    };
    Ok(rooms
        .remote_invite_at(user_id, &room_id, sid)?
        .filter(|record| record.membership == "invite" && record.event.is_some())
        .map(|record| Notified::RemoteInvite(Box::new(record))))
}

impl Notified {
    pub fn kind(&self) -> String {
        match self {
            Notified::Stored(event) => event.meta.kind.clone(),
            Notified::RemoteInvite(_) => "m.room.member".to_owned(),
        }
    }

    pub fn sender(&self) -> String {
        match self {
            Notified::Stored(event) => event.meta.sender.clone(),
            Notified::RemoteInvite(record) => record.sender.clone(),
        }
    }

    pub fn state_key(&self) -> Option<String> {
        match self {
            Notified::Stored(event) => event.meta.state_key.clone(),
            Notified::RemoteInvite(record) => record
                .event_json()
                .and_then(|e| e["state_key"].as_str().map(str::to_owned)),
        }
    }

    pub fn content(&self) -> Option<Value> {
        match self {
            Notified::Stored(event) => event
                .json
                .get("content")
                .and_then(|c| serde_json::to_value(c).ok()),
            Notified::RemoteInvite(record) => record.event_json().map(|mut e| e["content"].take()),
        }
    }

    /// A string field of the content of the room's state event at `(kind, state_key)`: the
    /// current state of a room stored here, the stripped state of a remote invite.
    pub fn state_field(
        &self,
        rooms: &Rooms,
        kind: StateEventType,
        state_key: &str,
        field: &str,
    ) -> Option<String> {
        let content = match self {
            Notified::Stored(event) => rooms
                .state_event(event.meta.room_sid, &kind, state_key)
                .ok()??
                .pdu
                .content_as::<Value>()?,
            Notified::RemoteInvite(record) => {
                record.stripped_content(&kind.to_string(), state_key)?
            }
        };
        content.get(field)?.as_str().map(str::to_owned)
    }

    /// The event in the client format.
    pub fn client_event(&self, rooms: &Rooms, viewer: Option<Viewer<'_>>) -> Option<Value> {
        match self {
            Notified::Stored(event) => Some(rooms.client_event(event, viewer)),
            Notified::RemoteInvite(record) => record.client_event(),
        }
    }
}
