//! Invites across servers (spec: server-server API, "Inviting to a room", `invite` v2, and the
//! deprecated v1 for servers that lack v2).
//!
//! Inbound ([`receive_invite`], [`receive_invite_v1`]): another server asks us to co-sign an
//! invite of one of our users. The event must be a well-formed invite of an existing local user by a user of the
//! asking server, for a room version this server supports, carrying a valid signature of that
//! server and a matching content hash; the room's server ACL (from the room here, else from the
//! stripped state) must let the asking server in. We sign it, and record it with its stripped
//! state (`rooms::remote_invites`) so the user sees it in `/sync` although the room may be
//! unknown here.
//!
//! Outbound ([`invite_remote`]): a local user invites a user of another server. The invite is
//! built and staged under the room's lock like any local event, sent to the invitee's server
//! with the room's stripped state, and committed only once that server's signature on it is
//! verified, so a refused or unreachable invitee leaves the room unchanged (the client gets a
//! Matrix error). The room's lock is held meanwhile, which keeps the invite's `prev_events`
//! current; the request is bounded by [`INVITE_TIMEOUT`]. A server that does not know `invite`
//! v2 ([`FedError::is_unknown_endpoint`]) is asked v1 in rooms of versions 1 and 2, the only
//! ones v1 can carry; in later versions the client gets `400 M_UNSUPPORTED_ROOM_VERSION`.

use std::{collections::BTreeMap, time::Duration};

use http::StatusCode;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use ruma::{
    api::federation::membership::{create_invite, RawStrippedState},
    canonical_json::redact,
    events::{
        room::{member::MembershipState, server_acl::RoomServerAclEventContent},
        StateEventType, TimelineEventType,
    },
    room_version_rules::EventIdFormatVersion,
    signatures::{sign_event, verify_json},
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UserId,
};
use serde::{de::IgnoredAny, Deserialize};
use serde_json::{json, value::RawValue as RawJsonValue, Value};

use super::{
    acl,
    client::FedError,
    pdus::{checks, SigningKeys},
};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{format::STRIPPED_STATE, remote_invites::RemoteInvite, NewEvent},
        sync::stripped,
        Services,
    },
};

/// How long the invitee's server may take to answer, the room's lock held.
pub const INVITE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer accepted: one signed event.
const MAX_INVITE_RESPONSE: usize = 256 * 1024;
/// Most stripped state events kept from an invite or knock.
pub const MAX_STRIPPED_STATE: usize = 64;

/// The server ACL, given with the stripped state of an invite: the invitee's server checks it.
const SERVER_ACL: &str = "m.room.server_acl";

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_param(message)
}

/// `400 M_INCOMPATIBLE_ROOM_VERSION`, naming the version.
pub fn incompatible_version(version: &RoomVersionId) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
        format!("This server does not support room version {version}"),
    )
    .with("room_version", version.to_string())
}

fn string_field<'a>(object: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match object.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// The membership in a member event's content.
pub fn membership_of(object: &CanonicalJsonObject) -> Option<&str> {
    match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// Checks format, id, signatures and content hash of a received event (steps 1 to 3 of the
/// PDU checks); a content hash that does not match is refused here, as this server would
/// otherwise co-sign or record a redacted copy.
pub async fn verify_pdu(
    services: &Services,
    object: CanonicalJsonObject,
    version: &RoomVersionId,
) -> Result<(ruma::OwnedEventId, CanonicalJsonObject)> {
    let rules = version
        .rules()
        .ok_or_else(|| incompatible_version(version))?;
    checks::check_format(&object, &rules).map_err(invalid)?;
    let event_id = checks::event_id(&object, &rules).map_err(invalid)?;
    let wanted = checks::wanted_keys(&object, &rules).map_err(invalid)?;
    let (valid_at, enforce) = checks::key_validity(&object, &rules);
    let keys = SigningKeys::public_key_map(&*services.keyring, &wanted, valid_at, enforce)
        .await
        .map_err(|e| invalid(format!("Cannot get the signing keys: {e}")))?;
    let (object, redacted) = checks::verify(&keys, object, &rules).map_err(invalid)?;
    if redacted {
        return Err(invalid("The event's content hash does not match"));
    }
    Ok((event_id, object))
}

/// Stripped state events received from another server, pruned to the stripped fields (spec
/// 1.16: servers must not pass on what they receive). Entries of another room are refused;
/// from room version 12 the create event is required.
pub fn prune_stripped_state(
    entries: &[RawStrippedState],
    room_id: &RoomId,
    version: &RoomVersionId,
) -> Result<Vec<Value>> {
    let strict = version
        .rules()
        .is_some_and(|r| r.authorization.room_create_event_id_as_room_id);
    let mut out = Vec::new();
    for entry in entries.iter().take(MAX_STRIPPED_STATE) {
        #[allow(deprecated)]
        let (raw, full) = match entry {
            RawStrippedState::Stripped(raw) => (raw.json().get(), false),
            RawStrippedState::Pdu(raw) => (raw.get(), true),
            _ => continue,
        };
        let Ok(value) = serde_json::from_str::<Value>(raw) else {
            return Err(invalid("A stripped state event is not JSON"));
        };
        if full {
            let elsewhere = value
                .get("room_id")
                .and_then(Value::as_str)
                .is_some_and(|id| id != room_id.as_str());
            if elsewhere {
                return Err(invalid("A stripped state event is of another room"));
            }
        }
        let pruned = stripped(&value);
        if pruned["type"].is_string() && pruned["state_key"].is_string() {
            out.push(pruned);
        }
    }
    let has_create = out.iter().any(|e| e["type"] == "m.room.create");
    if strict && !has_create {
        return Err(Error::missing_param(
            "The stripped state lacks the room's m.room.create event",
        ));
    }
    Ok(out)
}

/// From room version 12 on (spec 1.16: servers SHOULD), stripped state entries that are full
/// PDUs must be of the room and pass the signature and hash checks: the create event by its
/// id (the room id is its reference hash), the others by their `room_id`. The create event
/// must be such a PDU (it is what proves the room id); other entries in the old stripped
/// form are still taken, with a warning, as the spec allows while servers migrate.
async fn verify_stripped_pdus(
    services: &Services,
    entries: &[RawStrippedState],
    room_id: &RoomId,
    version: &RoomVersionId,
) -> Result<()> {
    let strict = version
        .rules()
        .is_some_and(|r| r.authorization.room_create_event_id_as_room_id);
    if !strict {
        return Ok(());
    }
    for entry in entries.iter().take(MAX_STRIPPED_STATE) {
        #[allow(deprecated)]
        let raw = match entry {
            RawStrippedState::Pdu(raw) => raw,
            RawStrippedState::Stripped(raw) => {
                let create = raw.get_field::<String>("type").ok().flatten().as_deref()
                    == Some("m.room.create");
                if create {
                    return Err(invalid(
                        "The create event of stripped state must be the full event",
                    ));
                }
                log::warn!(
                    "stripped state of {room_id} (version {version}) is not all full events"
                );
                continue;
            }
            _ => continue,
        };
        let object = checks::parse(raw).map_err(invalid)?;
        let is_create = string_field(&object, "type") == Some("m.room.create");
        let in_room = string_field(&object, "room_id").map(str::to_owned);
        let (event_id, _) = verify_pdu(services, object, version).await?;
        let ours = if is_create {
            room_id.as_str().get(1..) == event_id.as_str().get(1..)
        } else {
            in_room.as_deref() == Some(room_id.as_str())
        };
        if !ours {
            return Err(invalid("A stripped state event is of another room"));
        }
    }
    Ok(())
}

/// Whether `server` passes the server ACL of stripped state (allowed when there is none).
fn stripped_acl_allows(state: &[Value], server: &ServerName) -> bool {
    match state.iter().find(|e| e["type"] == SERVER_ACL) {
        Some(acl) => serde_json::from_value::<RoomServerAclEventContent>(acl["content"].clone())
            .is_ok_and(|content| content.is_allowed(server)),
        None => true,
    }
}

/// An invite another server asks this one to co-sign, whichever version of `/invite` brought
/// it.
pub struct InboundInvite<'a> {
    pub room_id: &'a RoomId,
    pub event_id: &'a EventId,
    pub room_version: &'a RoomVersionId,
    /// The invite event, as signed by the inviting server.
    pub event: &'a RawJsonValue,
    pub invite_room_state: &'a [RawStrippedState],
}

impl<'a> From<&'a create_invite::v2::Request> for InboundInvite<'a> {
    fn from(request: &'a create_invite::v2::Request) -> Self {
        InboundInvite {
            room_id: &request.room_id,
            event_id: &request.event_id,
            room_version: &request.room_version,
            event: &request.event,
            invite_room_state: &request.invite_room_state,
        }
    }
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}` from `origin` (deprecated, still in
/// the spec for servers without v2): the body is the invite event itself, its stripped state
/// in `unsigned.invite_room_state`, and the room version is 1 or 2 (spec: the receiver must
/// assume so) — 2 when the stripped create event says so, else 1; the two share event format,
/// signing and redaction rules, so the checks are the same either way. Checks, signs and
/// records the invite as [`receive_invite`] does, and returns the signed event.
pub async fn receive_invite_v1(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    body: &[u8],
) -> Result<Box<RawJsonValue>> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| Error::not_json("The body is not JSON"))?;
    let Value::Object(mut event) = value else {
        return Err(Error::bad_json("The body is not an event"));
    };
    // The stripped state rides along unsigned; the event proper is the rest.
    let mut state = Vec::new();
    if let Some(Value::Object(unsigned)) = event.get_mut("unsigned") {
        if let Some(entries) = unsigned.remove("invite_room_state") {
            state = serde_json::from_str::<Vec<RawStrippedState>>(&entries.to_string())
                .map_err(|e| Error::bad_json(format!("invite_room_state is not a list: {e}")))?;
        }
        if unsigned.is_empty() {
            event.remove("unsigned");
        }
    }
    let event = serde_json::value::to_raw_value(&event)
        .map_err(|e| Error::unknown(format!("cannot re-encode the event: {e}")))?;
    let version = match create_room_version(&state).as_deref() {
        Some("2") => RoomVersionId::V2,
        _ => RoomVersionId::V1,
    };
    let invite = InboundInvite {
        room_id,
        event_id,
        room_version: &version,
        event: &event,
        invite_room_state: &state,
    };
    receive_invite(services, origin, invite).await
}

/// The `room_version` of the create event among stripped state entries (`"1"` when the create
/// event names none, as in room version 1).
fn create_room_version(entries: &[RawStrippedState]) -> Option<String> {
    entries.iter().find_map(|entry| {
        #[allow(deprecated)]
        let raw = match entry {
            RawStrippedState::Stripped(raw) => raw.json(),
            RawStrippedState::Pdu(raw) => raw,
            _ => return None,
        };
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        if value["type"] != "m.room.create" {
            return None;
        }
        Some(
            value["content"]["room_version"]
                .as_str()
                .unwrap_or("1")
                .to_owned(),
        )
    })
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` from `origin` (or v1, through
/// [`receive_invite_v1`]): checks the invite, signs it with this server's key, records it for
/// the invitee, and returns it.
pub async fn receive_invite(
    services: &Services,
    origin: &ServerName,
    request: InboundInvite<'_>,
) -> Result<Box<RawJsonValue>> {
    let version = request.room_version;
    let rules = version
        .rules()
        .ok_or_else(|| incompatible_version(version))?;
    let object = checks::parse(request.event).map_err(invalid)?;

    // What the event must be before anything is fetched for it.
    if string_field(&object, "type") != Some("m.room.member") {
        return Err(invalid("The event is not an m.room.member event"));
    }
    if membership_of(&object) != Some("invite") {
        return Err(invalid("The event's membership is not invite"));
    }
    if string_field(&object, "room_id") != Some(request.room_id.as_str()) {
        return Err(invalid("The event is not of the room in the path"));
    }
    let sender = string_field(&object, "sender")
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| invalid("The event has no valid sender"))?;
    if sender.server_name() != origin {
        return Err(invalid("The sender is not a user of the requesting server"));
    }
    let invitee = string_field(&object, "state_key")
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| invalid("The event has no valid state_key"))?;
    if invitee.server_name().as_str() != services.config.server_name {
        return Err(invalid("The invitee is not a user of this server"));
    }
    if !services.users.exists(&invitee)? {
        return Err(Error::not_found("The invited user does not exist"));
    }

    let state = prune_stripped_state(request.invite_room_state, request.room_id, version)?;
    if !acl::allows(&services.rooms, request.room_id, origin)?
        || !stripped_acl_allows(&state, origin)
    {
        return Err(Error::forbidden(format!(
            "{origin} is denied by the room's server ACL"
        )));
    }

    verify_stripped_pdus(
        services,
        request.invite_room_state,
        request.room_id,
        version,
    )
    .await?;
    let (event_id, mut object) = verify_pdu(services, object, version).await?;
    if event_id != request.event_id {
        return Err(invalid("The event id does not match the event"));
    }
    sign_event(
        &services.config.server_name,
        &services.keys.keypair,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| Error::unknown(format!("cannot sign the invite: {e}")))?;
    let event = serde_json::to_string(&object).map_err(|e| Error::unknown(e.to_string()))?;

    let rooms = &services.rooms;
    if rooms.is_resident(request.room_id)? {
        // This server is in the room: the invite arrives as a PDU of the room as well and is
        // stored from there, against the room's state; a record here would only shadow it.
        return RawJsonValue::from_string(event).map_err(|e| Error::unknown(e.to_string()));
    }
    let previous = rooms.remote_invite(&invitee, request.room_id)?;
    let same = previous.as_ref().is_some_and(|p| {
        p.membership == "invite" && p.event_id.as_deref() == Some(event_id.as_str())
    });
    if !same {
        let mut servers = vec![origin.to_string()];
        if let Some(server) = request.room_id.server_name() {
            if server != origin {
                servers.push(server.to_string());
            }
        }
        let record = RemoteInvite {
            membership: "invite".into(),
            sid: 0,
            room_version: version.to_string(),
            event: Some(event.clone()),
            event_id: Some(event_id.to_string()),
            stripped_state: state.iter().map(Value::to_string).collect(),
            servers,
            sender: sender.to_string(),
            updated_ms: 0,
        };
        rooms
            .record_remote_invite(&invitee, request.room_id, record, previous.as_ref())
            .await?;
    }
    RawJsonValue::from_string(event).map_err(|e| Error::unknown(e.to_string()))
}

/// The room's stripped state as full PDUs (spec 1.16: "formatted according to the room's
/// version"), plus the inviter's own member event.
fn invite_room_state(
    services: &Services,
    room_id: &RoomId,
    inviter: &UserId,
) -> Result<Vec<RawStrippedState>> {
    let rooms = &services.rooms;
    let room = rooms
        .room(room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    let mut out = Vec::new();
    let keys = STRIPPED_STATE
        .iter()
        .chain([&SERVER_ACL])
        .map(|kind| (StateEventType::from(*kind), String::new()))
        .chain([(StateEventType::RoomMember, inviter.to_string())]);
    for (kind, state_key) in keys {
        if let Some(event) = rooms.state_event(room.sid, &kind, &state_key)? {
            let raw = serde_json::to_string(&event.json)
                .ok()
                .and_then(|s| RawJsonValue::from_string(s).ok());
            out.extend(raw.map(RawStrippedState::Pdu));
        }
    }
    Ok(out)
}

/// A client-facing error for a failed request to another server about a membership.
pub fn remote_error(server: &ServerName, error: FedError, what: &str) -> Error {
    match error {
        FedError::Remote {
            status,
            errcode,
            error,
        } => {
            log::info!("{what} refused by {server}: {status} {errcode}: {error}");
            let (status, code) = match errcode.as_str() {
                "M_INCOMPATIBLE_ROOM_VERSION" => {
                    (StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION")
                }
                "M_NOT_FOUND" => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
                "M_UNSUPPORTED_ROOM_VERSION" => {
                    (StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION")
                }
                // A request the other server found invalid is our fault, not the client's
                // (spec: such errors become 5xx).
                "M_INVALID_PARAM" | "M_MISSING_PARAM" | "M_BAD_JSON" => {
                    (StatusCode::BAD_GATEWAY, "M_UNKNOWN")
                }
                _ if status == StatusCode::NOT_FOUND => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
                _ => (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            };
            Error::new(
                status,
                code,
                format!("{server} refused the {what}: {error}"),
            )
        }
        other => {
            log::info!("{what} via {server} failed: {other}");
            Error::new(
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("Cannot reach {server} for the {what}: {other}"),
            )
        }
    }
}

/// Verifies that `server` signed `object` (an event of `version`) with a key it publishes.
pub async fn verify_server_signature(
    services: &Services,
    object: &CanonicalJsonObject,
    version: &RoomVersionId,
    server: &ServerName,
) -> Result<CanonicalJsonValue> {
    let rules = version
        .rules()
        .ok_or_else(|| incompatible_version(version))?;
    let theirs = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(all)) => all.get(server.as_str()).cloned(),
        _ => None,
    };
    let Some(CanonicalJsonValue::Object(theirs)) = theirs else {
        return Err(Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server} did not sign the event"),
        ));
    };
    let wanted = BTreeMap::from([(server.to_owned(), theirs.keys().cloned().collect())]);
    let (valid_at, enforce) = checks::key_validity(object, &rules);
    let keys = SigningKeys::public_key_map(&*services.keyring, &wanted, valid_at, enforce)
        .await
        .map_err(|e| Error::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("{e}")))?;
    // Events are signed in their redacted form; only this server's signatures are checked.
    let mut redacted = redact(object.clone(), &rules.redaction, None)
        .map_err(|e| Error::unknown(format!("cannot redact the event: {e}")))?;
    redacted.insert(
        "signatures".into(),
        CanonicalJsonValue::Object(CanonicalJsonObject::from([(
            server.to_string(),
            CanonicalJsonValue::Object(theirs.clone()),
        )])),
    );
    verify_json(&keys, &redacted).map_err(|e| {
        Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server}'s signature on the event does not verify: {e}"),
        )
    })?;
    Ok(CanonicalJsonValue::Object(theirs))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}` to `server`: the body is the event
/// with the stripped state in its `unsigned.invite_room_state`, the answer `[200, {"event":
/// …}]`. Returns the event of the answer.
async fn send_invite_v1(
    services: &Services,
    server: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    event: &CanonicalJsonObject,
    state: &[RawStrippedState],
) -> std::result::Result<Box<RawJsonValue>, FedError> {
    let mut body = serde_json::to_value(event).map_err(|e| FedError::Request(e.to_string()))?;
    let state = serde_json::to_value(state).map_err(|e| FedError::Request(e.to_string()))?;
    body["unsigned"] = json!({ "invite_room_state": state });
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let path = format!(
        "/_matrix/federation/v1/invite/{}/{}",
        enc(room_id.as_str()),
        enc(event_id.as_str())
    );
    let answer = services
        .federation
        .send_json(
            server,
            http::Method::PUT,
            &path,
            body.to_string().into_bytes(),
            INVITE_TIMEOUT,
            MAX_INVITE_RESPONSE,
        )
        .await?;
    #[derive(Deserialize)]
    struct Container {
        event: Box<RawJsonValue>,
    }
    let (_, container): (IgnoredAny, Container) = serde_json::from_slice(&answer)
        .map_err(|e| FedError::Response(format!("not a v1 invite answer: {e}")))?;
    Ok(container.event)
}

/// A local user invites a user of another server (see the module doc). The caller checked
/// that `sender` is joined.
pub async fn invite_remote(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<()> {
    let rooms = &services.rooms;
    rooms.check_invite(room_id, sender, target)?;
    let server: OwnedServerName = target.server_name().to_owned();
    if !acl::allows(rooms, room_id, &server)? {
        return Err(Error::forbidden(format!(
            "{server} is denied by the room's server ACL"
        )));
    }
    let mut content = json!({ "membership": MembershipState::Invite.as_str() });
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        content["reason"] = json!(reason);
    }
    if is_direct {
        content["is_direct"] = json!(true);
    }
    let state = invite_room_state(services, room_id, sender)?;
    let mut staged = rooms.stage(room_id).await?;
    let version = staged.version().clone();
    let event_id = staged.add(
        sender,
        NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content),
    )?;
    let ours = staged
        .staged_json(&event_id)
        .cloned()
        .ok_or_else(|| Error::unknown("the invite is not staged"))?;
    let event = RawJsonValue::from_string(
        serde_json::to_string(&ours).map_err(|e| Error::unknown(e.to_string()))?,
    )
    .map_err(|e| Error::unknown(e.to_string()))?;
    let request = create_invite::v2::Request::new(
        room_id.to_owned(),
        event_id.clone(),
        version.clone(),
        event,
        state.clone(),
    );
    let answer = services
        .federation
        .send_with_limits(&server, request, INVITE_TIMEOUT, MAX_INVITE_RESPONSE)
        .await;
    let returned = match answer {
        Ok(response) => response.event,
        // A server without `invite` v2: v1 carries rooms of versions 1 and 2 (theirs is the
        // event format v1 has), no later ones.
        Err(e) if e.is_unknown_endpoint() => {
            let rules = version
                .rules()
                .ok_or_else(|| incompatible_version(&version))?;
            if rules.event_id_format != EventIdFormatVersion::V1 {
                return Err(Error::new(
                    StatusCode::BAD_REQUEST,
                    "M_UNSUPPORTED_ROOM_VERSION",
                    format!("{server} does not support room version {version}"),
                ));
            }
            send_invite_v1(services, &server, room_id, &event_id, &ours, &state)
                .await
                .map_err(|e| remote_error(&server, e, "invite"))?
        }
        Err(e) => return Err(remote_error(&server, e, "invite")),
    };
    let returned = checks::parse(&returned).map_err(|e| {
        Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server}: {e}"),
        )
    })?;
    // The same event back (only signatures may differ), signed by the invitee's server.
    let without_signatures = |o: &CanonicalJsonObject| {
        let mut o = o.clone();
        o.remove("signatures");
        o.remove("unsigned");
        o
    };
    if without_signatures(&returned) != without_signatures(&ours) {
        return Err(Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server} returned another event than the invite"),
        ));
    }
    let signature = verify_server_signature(services, &returned, &version, &server).await?;
    staged.add_signatures(&event_id, server.as_str(), signature)?;
    staged.commit().await?;
    Ok(())
}
