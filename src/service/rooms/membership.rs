//! Membership events a local user asks for: the fields only a homeserver may set, and joins
//! to restricted rooms (spec: client-server API, "Restricted rooms"; room versions 8+ for
//! `restricted`, 10+ for `knock_restricted`).
//!
//! A restricted join is authorised by a server that has a joined user with the power to invite:
//! that server names the user in `join_authorised_via_users_server` and signs the event. The
//! authorisation rules only check that the named user is joined and powerful enough, so the
//! field is the server's word that the allow conditions hold. A client must never be able to set
//! it: it is removed from every client-supplied member event, and added here only after the
//! allow conditions were checked.

use ruma::{events::StateEventType, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::Rooms;
use crate::error::{Error, Result};

/// Member-event content fields that only a homeserver may set: the restricted-join
/// authorisation and the proof of a third-party invite (which this server does not issue).
pub const SERVER_ONLY_MEMBER_FIELDS: [&str; 2] =
    ["join_authorised_via_users_server", "third_party_invite"];

impl Rooms {
    /// Makes member content sent by a client of this server fit to send: removes the fields
    /// only a server may set, and for a user's own join of a restricted room adds the
    /// authorisation once the allow conditions hold (403 when they do not).
    pub fn prepare_member_content(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &str,
        content: &mut Value,
    ) -> Result<()> {
        let Some(map) = content.as_object_mut() else {
            return Ok(());
        };
        for field in SERVER_ONLY_MEMBER_FIELDS {
            map.remove(field);
        }
        let joining_self =
            map.get("membership").and_then(Value::as_str) == Some("join") && target == sender;
        if joining_self {
            if let Some(authoriser) = self.restricted_join_authoriser(room_id, sender)? {
                map.insert(
                    "join_authorised_via_users_server".into(),
                    Value::String(authoriser.to_string()),
                );
            }
        }
        Ok(())
    }

    /// For `user_id` joining a restricted room: the local joined user with invite power who
    /// authorises the join. `None` when no authorisation is needed (the join rule is not
    /// restricted for the room's version, or the user is already joined or invited, which the
    /// rules allow by themselves). 403 when the user meets none of the allow conditions (joined
    /// to one of the listed rooms), or no local user can authorise.
    pub fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let Some(room) = self.room(room_id)? else {
            return Ok(None);
        };
        let version = self.room_version(&room)?;
        let Some(rules) = version.rules() else {
            return Ok(None);
        };
        let join_rules = self
            .state_event(room.sid, &StateEventType::RoomJoinRules, "")?
            .and_then(|e| e.pdu.content_as::<Value>())
            .unwrap_or_default();
        let restricted = match join_rules.get("join_rule").and_then(Value::as_str) {
            Some("restricted") => rules.authorization.restricted_join_rule,
            Some("knock_restricted") => rules.authorization.knock_restricted_join_rule,
            _ => false,
        };
        if !restricted {
            return Ok(None);
        }
        use ruma::events::room::member::MembershipState as M;
        match self.membership(room_id, user_id)? {
            Some(M::Join | M::Invite) => return Ok(None),
            // Banned: the authorisation rules refuse the join, with their own message.
            Some(M::Ban) => return Ok(None),
            _ => {}
        }
        let allowed = join_rules
            .get("allow")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|rule| rule.get("type").and_then(Value::as_str) == Some("m.room_membership"))
            .filter_map(|rule| rule.get("room_id").and_then(Value::as_str))
            .filter_map(|id| RoomId::parse(id).ok())
            .any(|allowed_room| {
                self.membership(&allowed_room, user_id)
                    .is_ok_and(|m| m == Some(M::Join))
            });
        if !allowed {
            return Err(Error::forbidden(
                "This room is restricted to members of other rooms, and you are not joined to \
                 any of them: ask for an invite",
            ));
        }
        let power = self.power_levels(&room)?;
        let authoriser = self
            .members(room.sid)?
            .into_iter()
            .filter(|(_, membership)| membership == "join")
            .filter_map(|(user, _)| UserId::parse(user).ok())
            .filter(|user| user.server_name() == self.server_name)
            .find(|user| power.user_can_invite(user));
        match authoriser {
            Some(user) => Ok(Some(user)),
            None => Err(Error::forbidden(
                "No user of this server in the room may authorise the join: ask for an invite",
            )),
        }
    }
}
