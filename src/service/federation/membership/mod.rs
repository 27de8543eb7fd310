//! Membership over federation (spec: server-server API, "Joining Rooms", "Leaving Rooms
//! (Rejecting Invites)", "Knocking").
//!
//! As the **resident** server (this module): one mechanism for the three handshakes —
//! `make_join`/`send_join`, `make_leave`/`send_leave`, `make_knock`/`send_knock`, told apart by
//! [`Kind`]:
//! - [`make_template`]: the requesting server must be the user's; this server must be in the
//!   room, with its full state (not a partial-state join still resyncing: 404); the room's
//!   server ACL must allow the requester; for joins and knocks the room version must be one
//!   the requester lists (`M_INCOMPATIBLE_ROOM_VERSION`); for joins of a restricted room a
//!   local user who may invite is named in `join_authorised_via_users_server`
//!   (`M_UNABLE_TO_AUTHORISE_JOIN` / `M_UNABLE_TO_GRANT_JOIN` / 403 when that cannot be); the
//!   template must already pass the authorisation rules against the current state (403).
//! - [`accept`]: the sent event must be the event the path names (its id), a member event
//!   of the kind's membership for a user of the requesting server about themself, with a
//!   content hash that matches (400 `M_INVALID_PARAM` otherwise); a restricted join naming a
//!   local user is co-signed by this server once the allow conditions still hold; every
//!   required signature must verify (the requester's, and ours); then it is judged and stored
//!   like any received PDU and queued for the room's other servers in the same batch
//!   (`pdus::direct`). Refused by the rules → 403, nothing stored.
//! - [`join_state`]: the `send_join` answer (state before the join, auth chain, the co-signed
//!   event, `omit_members`); [`knock_state`]: the `send_knock` answer.
//!
//! As the **joining** server: [`join`].

pub mod fill;
pub mod join;
pub mod partial;
mod state;
mod verify;

pub use state::{join_state, knock_state, JoinState};

use std::sync::Arc;

use http::StatusCode;
use ruma::{
    room_version_rules::RoomVersionRules, signatures::Verified, CanonicalJsonObject,
    CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{json, value::RawValue as RawJsonValue, Value};

use super::{
    acl,
    pdus::{checks, Direct, SigningKeys},
};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{membership::RestrictedJoin, Pdu, RoomRecord, Rooms},
        Services,
    },
};

/// Which membership handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Join,
    Leave,
    Knock,
}

impl Kind {
    pub fn membership(self) -> &'static str {
        match self {
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Knock => "knock",
        }
    }
}

/// A member event accepted through `send_*`.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its position in the store.
    pub sid: u64,
    /// The event as stored and sent on (with this server's signature when co-signed).
    pub object: CanonicalJsonObject,
    /// Whether this server added its signature (a restricted join it authorised).
    pub cosigned: bool,
}

/// The room, when this server is in it (has a joined user), else 404. Also 404 while the
/// room's state here is partial (`rooms/partial_state.rs`): the template's auth events, the
/// checks of the sent event and the `send_join` answer all need the full state (Synapse
/// answers the same), and the other server tries another resident.
fn resident_room(rooms: &Rooms, room_id: &RoomId) -> Result<RoomRecord> {
    let room = rooms
        .room(room_id)?
        .ok_or_else(|| Error::not_found("This server does not know the room"))?;
    if !rooms.is_resident(room_id)? {
        return Err(Error::not_found("This server is not in the room"));
    }
    if rooms.is_partial_state(room_id) {
        return Err(Error::not_found(
            "This server is not fully joined to the room yet",
        ));
    }
    Ok(room)
}

fn incompatible(version: &RoomVersionId) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
        format!("The room has version {version}, which the requesting server does not support"),
    )
    .with("room_version", version.as_str())
}

/// `make_join`, `make_leave`, `make_knock`: the template of `user_id`'s member event (see the
/// module doc). `ver` is the requester's supported room versions (`None` for `make_leave`).
pub async fn make_template(
    rooms: &Rooms,
    origin: &ServerName,
    room_id: &RoomId,
    user_id: &UserId,
    kind: Kind,
    ver: Option<&[RoomVersionId]>,
) -> Result<(RoomVersionId, Value)> {
    if user_id.server_name() != origin {
        return Err(Error::forbidden(format!(
            "{origin} cannot ask for a member event of {user_id}"
        )));
    }
    let room = resident_room(rooms, room_id)?;
    acl::check(rooms, room_id, origin)?;
    let version = rooms.room_version(&room)?;
    if let Some(ver) = ver {
        if !ver.contains(&version) {
            return Err(incompatible(&version));
        }
    }
    let rules = version
        .rules()
        .ok_or_else(|| Error::unknown("unsupported room version"))?;
    if kind == Kind::Knock && !rules.authorization.knocking {
        return Err(incompatible(&version));
    }
    let mut content = json!({ "membership": kind.membership() });
    if kind == Kind::Join {
        match rooms.restricted_join(room_id, user_id)? {
            RestrictedJoin::NotNeeded => {}
            RestrictedJoin::Authorised(authoriser) => {
                content["join_authorised_via_users_server"] = json!(authoriser);
            }
            RestrictedJoin::NotAllowed => {
                return Err(Error::forbidden(
                    "The user meets none of the room's allow conditions",
                ))
            }
            RestrictedJoin::NoAllowedRoomKnown => {
                return Err(Error::new(
                    StatusCode::BAD_REQUEST,
                    "M_UNABLE_TO_AUTHORISE_JOIN",
                    "This server is in none of the rooms the join rule allows",
                ))
            }
            RestrictedJoin::NoAuthoriser => {
                return Err(Error::new(
                    StatusCode::BAD_REQUEST,
                    "M_UNABLE_TO_GRANT_JOIN",
                    "No user of this server in the room may invite: try another server",
                ))
            }
        }
    }
    let staged = rooms.stage(room_id).await?;
    let template = staged.member_template(user_id, &content)?;
    staged.check_template(&template)?;
    Ok((version, template))
}

/// The `join_authorised_via_users_server` of a join, when it names a user of `server`.
fn names_local_user(object: &CanonicalJsonObject, server: &ServerName) -> Option<String> {
    let CanonicalJsonValue::Object(content) = object.get("content")? else {
        return None;
    };
    let CanonicalJsonValue::String(user) = content.get("join_authorised_via_users_server")? else {
        return None;
    };
    let user_id = UserId::parse(user.as_str()).ok()?;
    (user_id.server_name() == server).then(|| user.clone())
}

fn string_field<'a>(object: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match object.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// The checks of a `send_*` event that need no state: its id, shape, sender and content
/// hash. Returns the parsed event.
fn check_shape(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    event_id: &EventId,
    origin: &ServerName,
    kind: Kind,
) -> Result<()> {
    let computed = checks::event_id(object, rules).map_err(Error::invalid_param)?;
    if computed != event_id {
        return Err(Error::invalid_param(format!(
            "The event's id is {computed}, not {event_id}"
        )));
    }
    checks::check_format(object, rules).map_err(Error::invalid_param)?;
    if string_field(object, "room_id") != Some(room_id.as_str()) {
        return Err(Error::invalid_param("The event is not for this room"));
    }
    if string_field(object, "type") != Some("m.room.member") {
        return Err(Error::invalid_param("The event is not a member event"));
    }
    let sender = string_field(object, "sender")
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| Error::invalid_param("The event has no valid sender"))?;
    if sender.server_name() != origin {
        return Err(Error::invalid_param(format!(
            "The sender is not a user of {origin}"
        )));
    }
    if string_field(object, "state_key") != Some(sender.as_str()) {
        return Err(Error::invalid_param("The state_key is not the sender"));
    }
    let membership = match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => string_field(content, "membership"),
        _ => None,
    };
    if membership != Some(kind.membership()) {
        return Err(Error::invalid_param(format!(
            "The membership is not {}",
            kind.membership()
        )));
    }
    let hash = ruma::signatures::content_hash(object)
        .map_err(|e| Error::invalid_param(format!("Cannot hash the event: {e}")))?;
    let claimed = match object.get("hashes") {
        Some(CanonicalJsonValue::Object(hashes)) => string_field(hashes, "sha256"),
        _ => None,
    };
    if claimed != Some(hash.encode().as_str()) {
        return Err(Error::invalid_param(
            "The event's content hash does not match",
        ));
    }
    Ok(())
}

/// `send_join`, `send_leave`, `send_knock`: checks, co-signs when it authorises a restricted
/// join, and stores the event (see the module doc).
pub async fn accept(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    kind: Kind,
    raw: &RawJsonValue,
) -> Result<Accepted> {
    let rooms = &services.rooms;
    let room = resident_room(rooms, room_id)?;
    acl::check(rooms, room_id, origin)?;
    let version = rooms.room_version(&room)?;
    let rules = version
        .rules()
        .ok_or_else(|| Error::unknown("unsupported room version"))?;
    if kind == Kind::Knock && !rules.authorization.knocking {
        return Err(incompatible(&version));
    }
    let mut object = checks::parse(raw).map_err(Error::bad_json)?;
    check_shape(&object, &rules, room_id, event_id, origin, kind)?;
    let sender = string_field(&object, "sender")
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| Error::invalid_param("The event has no valid sender"))?;

    // A restricted join naming one of our users: vouch only if the conditions hold now. A
    // resent event this server signed already is stored: its stored form answers.
    let mut cosigned = false;
    if kind == Kind::Join {
        if let Some(authoriser) = names_local_user(&object, rooms.server_name()) {
            if let Some(stored) = rooms.event(event_id)? {
                return Ok(Accepted {
                    sid: stored.sid,
                    object: stored.json,
                    cosigned: true,
                });
            }
            match rooms.restricted_join(room_id, &sender)? {
                RestrictedJoin::Authorised(_) | RestrictedJoin::NotNeeded => {}
                _ => {
                    return Err(Error::forbidden(
                        "The user meets none of the room's allow conditions",
                    ))
                }
            }
            let authoriser = UserId::parse(authoriser.as_str())
                .map_err(|_| Error::invalid_param("Invalid join_authorised_via_users_server"))?;
            if rooms.membership(room_id, &authoriser)?
                != Some(ruma::events::room::member::MembershipState::Join)
            {
                return Err(Error::forbidden(format!("{authoriser} is not in the room")));
            }
            ruma::signatures::sign_event(
                rooms.server_name().as_str(),
                &services.keys.keypair,
                &mut object,
                &rules.redaction,
            )
            .map_err(|e| Error::unknown(format!("cannot sign the event: {e}")))?;
            cosigned = true;
        }
    }

    let wanted = checks::wanted_keys(&object, &rules).map_err(Error::invalid_param)?;
    let (valid_at, enforce) = checks::key_validity(&object, &rules);
    let keyring: Arc<dyn SigningKeys> = services.keyring.clone();
    let keys = keyring
        .public_key_map(&wanted, valid_at, enforce)
        .await
        .map_err(|e| Error::invalid_param(format!("Cannot get the signing keys: {e}")))?;
    match ruma::signatures::verify_event(&keys, &object, &rules) {
        Ok(Verified::All) => {}
        Ok(Verified::Signatures) => {
            return Err(Error::invalid_param(
                "The event's content hash does not match",
            ))
        }
        Err(e) => {
            return Err(Error::invalid_param(format!(
                "The event's signatures do not verify: {e}"
            )))
        }
    }
    let event_id: OwnedEventId = event_id.to_owned();
    let pdu = Pdu::from_object(event_id.clone(), &object).map_err(Error::invalid_param)?;
    let outcome = services
        .pdus
        .receive_direct(room_id, origin, event_id.clone(), pdu, object)
        .await?;
    let sid = match outcome {
        Direct::Accepted { sid, relayed_to } => {
            log::info!(
                "{} of {sender} in {room_id} accepted, sent on to {} servers",
                kind.membership(),
                relayed_to.len()
            );
            sid
        }
        Direct::Known { sid } => sid,
        Direct::Refused(reason) => {
            return Err(Error::forbidden(format!(
                "The event is not authorised: {reason}"
            )))
        }
    };
    let stored = rooms
        .event_by_sid(sid)?
        .ok_or_else(|| Error::unknown("stored event vanished"))?;
    Ok(Accepted {
        sid,
        object: stored.json,
        cosigned,
    })
}
