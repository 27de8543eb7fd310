//! Server ACLs (`m.room.server_acl`, spec: Server-Server API, Server Access Control Lists):
//! whether another server may take part in a room, judged on the room's current state.
//!
//! The federation endpoints about a room ask here before doing anything; `/send` asks per PDU
//! and per room-scoped EDU (typing, receipts).

use http::StatusCode;
use ruma::events::{room::server_acl::RoomServerAclEventContent, StateEventType};
use ruma::{RoomId, ServerName};

use crate::error::{Error, Result};
use crate::service::rooms::Rooms;

/// Whether `origin` passes the ACL of `room_id`. A room without an ACL (or unknown here)
/// allows everyone; an ACL whose content cannot be read allows nobody, as an ACL with
/// no `allow` list does (the spec's default is an empty allow list).
pub fn allows(rooms: &Rooms, room_id: &RoomId, origin: &ServerName) -> Result<bool> {
    let Some(room) = rooms.room(room_id)? else {
        return Ok(true);
    };
    let Some(acl) = rooms.state_event(room.sid, &StateEventType::RoomServerAcl, "")? else {
        return Ok(true);
    };
    Ok(match acl.pdu.content_as::<RoomServerAclEventContent>() {
        Some(content) => content.is_allowed(origin),
        None => {
            log::warn!("{room_id}: unreadable m.room.server_acl; denying {origin}");
            false
        }
    })
}

/// [`allows`] as the spec's answer: 403 `M_FORBIDDEN` when denied.
pub fn check(rooms: &Rooms, room_id: &RoomId, origin: &ServerName) -> Result<()> {
    if allows(rooms, room_id, origin)? {
        Ok(())
    } else {
        Err(Error::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            format!("Server {origin} is denied by the room's server ACL"),
        ))
    }
}
