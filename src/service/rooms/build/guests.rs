//! Guest accounts in rooms (spec: client-server API, "Guest Access", server behaviour).
//!
//! Invariant: no local guest is joined to a room whose current `m.room.guest_access` is not
//! `can_join`. Both halves are enforced while an event is staged, under the room lock:
//! - a local guest's own join is refused (403 `M_GUEST_ACCESS_FORBIDDEN`) unless the room's
//!   state, as staged, allows guests — whatever the path to the join (`/join`, `/rooms/…/join`,
//!   `PUT /state/m.room.member/…`, accepting an invite);
//! - an `m.room.guest_access` event that takes guest access away is followed, in the same
//!   batch, by the leave of every local guest joined to the room. The guest is the sender of
//!   its own leave (the authorisation rules always let a member leave, whatever the power of
//!   whoever changed `guest_access`), so the change and the removals commit together or not
//!   at all, even across a crash. The redaction of a `can_join` event counts as taking guest
//!   access away (its redacted content no longer says `can_join`). Only joined guests are
//!   made to leave; an invited or knocking guest stays so, and cannot join.
//!
//! Whether a user is a guest is this server's own knowledge (the `users` record); users of
//! other servers are never treated as guests here.

use ruma::{
    events::{StateEventType, TimelineEventType},
    OwnedUserId, UserId,
};
use serde_json::{json, Value};

use super::Staged;
use crate::{
    error::{Error, Result},
    service::rooms::NewEvent,
};

/// The only `guest_access` value that lets guests join.
const CAN_JOIN: &str = "can_join";

/// Whether `content` (of `m.room.guest_access`) lets guests join; absent or anything else
/// (`forbidden`, an unknown value) does not.
fn allows_guests(content: Option<&Value>) -> bool {
    content
        .and_then(|c| c.get("guest_access"))
        .and_then(Value::as_str)
        == Some(CAN_JOIN)
}

/// Whether `new` sets the room's guest access to something other than `can_join`.
fn revokes_guest_access(new: &NewEvent) -> bool {
    new.kind == TimelineEventType::RoomGuestAccess
        && new.state_key.as_deref() == Some("")
        && !allows_guests(Some(&new.content))
}

impl Staged<'_> {
    /// Whether `new` takes guest access away: a `guest_access` other than `can_join`, or the
    /// redaction of the current `can_join` event (redacted, its content is empty).
    pub(super) fn revokes_guest_access(&self, new: &NewEvent) -> bool {
        if revokes_guest_access(new) {
            return true;
        }
        let Some(target) = new.redacts.as_deref() else {
            return false;
        };
        new.kind == TimelineEventType::RoomRedaction
            && self
                .state_pdu(&StateEventType::RoomGuestAccess, "")
                .is_some_and(|pdu| {
                    pdu.event_id == target && allows_guests(pdu.content_as::<Value>().as_ref())
                })
    }

    fn guests_may_join(&self) -> bool {
        let content = self
            .state_pdu(&StateEventType::RoomGuestAccess, "")
            .and_then(|pdu| pdu.content_as::<Value>());
        allows_guests(content.as_ref())
    }

    fn is_local_guest(&self, user_id: &UserId) -> Result<bool> {
        Ok(
            user_id.server_name() == self.rooms.server_name
                && self.rooms.users.is_guest(user_id)?,
        )
    }

    /// Refuses a local guest's own join of a room that does not allow guests (403
    /// `M_GUEST_ACCESS_FORBIDDEN`: the spec's code for "the room does not permit guests").
    /// An invite does not change this: the spec lets guests join only `can_join` rooms.
    pub(super) fn check_guest_join(&self, sender: &UserId, new: &NewEvent) -> Result<()> {
        let own_join = new.kind == TimelineEventType::RoomMember
            && new.state_key.as_deref() == Some(sender.as_str())
            && new.content.get("membership").and_then(Value::as_str) == Some("join");
        if !own_join || self.guests_may_join() || !self.is_local_guest(sender)? {
            return Ok(());
        }
        Err(Error::guest_access_forbidden(
            "Guests may not join this room (its m.room.guest_access is not can_join)",
        ))
    }

    /// Stages the leave of every local guest joined to the room, after an event that took
    /// guest access away (spec: "the server MUST set those users' m.room.member state to
    /// leave").
    pub(super) fn stage_guest_removal(&mut self) -> Result<()> {
        let Some(room_sid) = self.record.as_ref().map(|r| r.sid) else {
            return Ok(());
        };
        let mut guests: Vec<OwnedUserId> = Vec::new();
        for (user, membership) in self.rooms.members(room_sid)? {
            if membership != "join" {
                continue;
            }
            let Ok(user_id) = UserId::parse(user) else {
                continue;
            };
            // The committed membership may have been changed by an event staged before this one.
            let staged_join = self
                .state_pdu(&StateEventType::RoomMember, user_id.as_str())
                .and_then(|pdu| pdu.content_as::<Value>())
                .is_some_and(|c| c.get("membership").and_then(Value::as_str) == Some("join"));
            if staged_join && self.is_local_guest(&user_id)? {
                guests.push(user_id);
            }
        }
        for guest in guests {
            let leave = NewEvent::state(
                TimelineEventType::RoomMember,
                guest.as_str(),
                json!({"membership": "leave", "reason": "Guest access to this room was turned off"}),
            );
            self.add(&guest, leave)?;
        }
        Ok(())
    }
}
