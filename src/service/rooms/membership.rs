//! Membership changes local users ask for (join, invite, leave, kick, ban, unban, knock,
//! forget): the preconditions the spec's endpoints add to the authorisation rules, the fields
//! only a homeserver may set, and joins to restricted rooms (spec: client-server API,
//! "Restricted rooms"; room versions 8+ for `restricted`, 10+ for `knock_restricted`).
//!
//! A restricted join is authorised by a server that has a joined user with the power to invite:
//! that server names the user in `join_authorised_via_users_server` and signs the event. The
//! authorisation rules only check that the named user is joined and powerful enough, so the
//! field is the server's word that the allow conditions hold. A client must never be able to set
//! it: it is removed from every client-supplied member event, and added here only after the
//! allow conditions were checked.

use ruma::{
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::{NewEvent, Rooms};
use crate::error::{Error, Result};

/// A membership change by a local user.
pub struct MembershipChange<'a> {
    pub room_id: &'a RoomId,
    pub sender: &'a UserId,
    pub target: &'a UserId,
    pub membership: MembershipState,
    pub reason: Option<&'a str>,
    /// The target's profile fields (`displayname`, `avatar_url`), copied into join, invite and
    /// knock events as clients expect; empty for other changes.
    pub profile: Map<String, Value>,
}

/// Member-event content fields that only a homeserver may set: the restricted-join
/// authorisation and the proof of a third-party invite (which this server does not issue).
pub const SERVER_ONLY_MEMBER_FIELDS: [&str; 2] =
    ["join_authorised_via_users_server", "third_party_invite"];

impl Rooms {
    /// Sends the target's member event with the sender's authority (404 for an unknown room;
    /// the authorisation rules decide the rest).
    pub async fn change_membership(&self, change: MembershipChange<'_>) -> Result<()> {
        if self.room(change.room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        let mut content = json!({ "membership": change.membership.as_str() });
        if matches!(
            change.membership,
            MembershipState::Join | MembershipState::Invite | MembershipState::Knock
        ) {
            for (key, value) in change.profile {
                content[key] = value;
            }
        }
        if let Some(reason) = change.reason.filter(|r| !r.is_empty()) {
            content["reason"] = json!(reason);
        }
        // A join of a restricted room carries this server's authorisation when the user may.
        self.prepare_member_content(
            change.room_id,
            change.sender,
            change.target.as_str(),
            &mut content,
        )?;
        let event = NewEvent::state(
            TimelineEventType::RoomMember,
            change.target.as_str(),
            content,
        );
        self.send(change.room_id, change.sender, event).await?;
        Ok(())
    }

    /// Refuses a caller who is not joined, before anything about the target is looked at, so
    /// an outsider cannot learn other users' memberships from the error.
    pub fn require_joined_caller(&self, room_id: &RoomId, caller: &UserId) -> Result<()> {
        if self.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if self.membership(room_id, caller)? != Some(MembershipState::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        Ok(())
    }

    /// Joins a local user to a room this server knows; joining again changes nothing.
    pub async fn join_room(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
        profile: Map<String, Value>,
    ) -> Result<()> {
        if self.room(room_id)?.is_none() {
            // Rooms on other servers are joined through `federation::membership::join`.
            return Err(Error::not_found(
                "No room with this id is known to this server",
            ));
        }
        if self.membership(room_id, user_id)? == Some(MembershipState::Join) {
            return Ok(());
        }
        self.change_membership(MembershipChange {
            room_id,
            sender: user_id,
            target: user_id,
            membership: MembershipState::Join,
            reason,
            profile,
        })
        .await
    }

    /// Whether this server is in the room: it knows it and one of its users is joined. A
    /// room it is not in is joined over federation (`federation::membership::join`).
    pub fn is_resident(&self, room_id: &RoomId) -> Result<bool> {
        let Some(room) = self.room(room_id)? else {
            return Ok(false);
        };
        Ok(self.members(room.sid)?.iter().any(|(user, m)| {
            m == "join"
                && UserId::parse(user.as_str()).is_ok_and(|u| u.server_name() == self.server_name)
        }))
    }

    /// Checks for an invite beyond the authorisation rules: the inviter is joined, and the
    /// invitee is neither in the room nor banned from it (403).
    pub fn check_invite(&self, room_id: &RoomId, sender: &UserId, target: &UserId) -> Result<()> {
        self.require_joined_caller(room_id, sender)?;
        match self.membership(room_id, target)? {
            Some(MembershipState::Join) => {
                Err(Error::forbidden(format!("{target} is already in the room")))
            }
            Some(MembershipState::Ban) => Err(Error::forbidden(format!(
                "{target} is banned from the room"
            ))),
            _ => Ok(()),
        }
    }

    /// Leaves (or declines an invite, or withdraws a knock). Leaving a room one has already
    /// left or was banned from changes nothing; 403 for a room one was never in.
    pub async fn leave_room(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        match self.membership(room_id, user_id)? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
                self.change_membership(MembershipChange {
                    room_id,
                    sender: user_id,
                    target: user_id,
                    membership: MembershipState::Leave,
                    reason,
                    profile: Map::new(),
                })
                .await
            }
            Some(_) => Ok(()),
            None => {
                if self.room(room_id)?.is_none() {
                    return Err(Error::not_found("Unknown room"));
                }
                Err(Error::forbidden("You are not a member of this room"))
            }
        }
    }

    /// Forgets a room the user has left (400 while still in it, 404 if never in it).
    pub async fn forget_room(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        match self.membership(room_id, user_id)? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
                Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Leave the room before forgetting it",
                ))
            }
            Some(_) => self.forget(room_id, user_id).await,
            None => Err(Error::not_found("You have never been in this room")),
        }
    }

    /// Kicks a user who is in the room (joined, invited or knocking).
    pub async fn kick_user(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.require_joined_caller(room_id, sender)?;
        match self.membership(room_id, target)? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
            _ => return Err(Error::forbidden(format!("{target} is not in the room"))),
        }
        self.change_membership(MembershipChange {
            room_id,
            sender,
            target,
            membership: MembershipState::Leave,
            reason,
            profile: Map::new(),
        })
        .await
    }

    /// Bans a user, in the room or not (a pre-emptive ban).
    pub async fn ban_user(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.change_membership(MembershipChange {
            room_id,
            sender,
            target,
            membership: MembershipState::Ban,
            reason,
            profile: Map::new(),
        })
        .await
    }

    /// Lifts a ban (the user's membership becomes `leave`).
    pub async fn unban_user(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.require_joined_caller(room_id, sender)?;
        if self.membership(room_id, target)? != Some(MembershipState::Ban) {
            return Err(Error::forbidden(format!("{target} is not banned")));
        }
        self.change_membership(MembershipChange {
            room_id,
            sender,
            target,
            membership: MembershipState::Leave,
            reason,
            profile: Map::new(),
        })
        .await
    }

    /// Knocks on a room whose version allows knocking (403 otherwise).
    pub async fn knock_room(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
        profile: Map<String, Value>,
    ) -> Result<()> {
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let version = self.room_version(&room)?;
        if !version.rules().is_some_and(|r| r.authorization.knocking) {
            return Err(Error::forbidden(format!(
                "Room version {version} does not allow knocking"
            )));
        }
        self.change_membership(MembershipChange {
            room_id,
            sender: user_id,
            target: user_id,
            membership: MembershipState::Knock,
            reason,
            profile,
        })
        .await
    }

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
        match self.restricted_join(room_id, user_id)? {
            RestrictedJoin::NotNeeded => Ok(None),
            RestrictedJoin::Authorised(user) => Ok(Some(user)),
            RestrictedJoin::NotAllowed | RestrictedJoin::NoAllowedRoomKnown => {
                Err(Error::forbidden(
                    "This room is restricted to members of other rooms, and you are not joined \
                     to any of them: ask for an invite",
                ))
            }
            RestrictedJoin::NoAuthoriser => Err(Error::forbidden(
                "No user of this server in the room may authorise the join: ask for an invite",
            )),
        }
    }

    /// What this server can say about `user_id` (of any server) joining a restricted room:
    /// see [`RestrictedJoin`]. The allow conditions are read from this server's own view of
    /// the listed rooms' memberships.
    pub fn restricted_join(&self, room_id: &RoomId, user_id: &UserId) -> Result<RestrictedJoin> {
        let Some(room) = self.room(room_id)? else {
            return Ok(RestrictedJoin::NotNeeded);
        };
        let version = self.room_version(&room)?;
        let Some(rules) = version.rules() else {
            return Ok(RestrictedJoin::NotNeeded);
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
            return Ok(RestrictedJoin::NotNeeded);
        }
        use MembershipState as M;
        match self.membership(room_id, user_id)? {
            Some(M::Join | M::Invite) => return Ok(RestrictedJoin::NotNeeded),
            // Banned: the authorisation rules refuse the join, with their own message.
            Some(M::Ban) => return Ok(RestrictedJoin::NotNeeded),
            _ => {}
        }
        let listed: Vec<_> = join_rules
            .get("allow")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|rule| rule.get("type").and_then(Value::as_str) == Some("m.room_membership"))
            .filter_map(|rule| rule.get("room_id").and_then(Value::as_str))
            .filter_map(|id| RoomId::parse(id).ok())
            .collect();
        let mut known = false;
        let mut allowed = false;
        for allowed_room in &listed {
            // Only a listed room this server is in says anything: the memberships of a room
            // it left are no longer kept up to date.
            if !self.is_resident(allowed_room)? {
                continue;
            }
            known = true;
            if self.membership(allowed_room, user_id)? == Some(M::Join) {
                allowed = true;
                break;
            }
        }
        if !allowed {
            return Ok(if known || user_id.server_name() == self.server_name {
                RestrictedJoin::NotAllowed
            } else {
                RestrictedJoin::NoAllowedRoomKnown
            });
        }
        let power = self.power_levels(&room)?;
        let authoriser = self
            .members(room.sid)?
            .into_iter()
            .filter(|(_, membership)| membership == "join")
            .filter_map(|(user, _)| UserId::parse(user).ok())
            .filter(|user| user.server_name() == self.server_name)
            .find(|user| power.user_can_invite(user));
        Ok(match authoriser {
            Some(user) => RestrictedJoin::Authorised(user),
            None => RestrictedJoin::NoAuthoriser,
        })
    }
}

/// This server's answer to a join of a restricted room (spec: client-server API, "Restricted
/// rooms"; server-server API, `make_join`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestrictedJoin {
    /// The join rule is not restricted, or the user is already joined, invited or banned: the
    /// authorisation rules decide alone.
    NotNeeded,
    /// The user meets an allow condition; this local user (joined, with invite power) vouches.
    Authorised(OwnedUserId),
    /// The user meets none of the allow conditions this server can check (403).
    NotAllowed,
    /// This server is in none of the listed rooms, so it cannot tell
    /// (`M_UNABLE_TO_AUTHORISE_JOIN`).
    NoAllowedRoomKnown,
    /// The user meets a condition, but no local user may invite (`M_UNABLE_TO_GRANT_JOIN`).
    NoAuthoriser,
}
