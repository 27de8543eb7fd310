//! Membership changes of local users in rooms this server is not in, done through a resident
//! server (spec: server-server API, "Leaving Rooms (Rejecting Invites)", "Knocking upon a
//! room"): the resident server hands out a template (`make_leave`, `make_knock`), this server
//! fills in and signs the user's member event, and the resident server accepts it
//! (`send_leave` v2, `send_knock` v1) and sends it to the room.
//!
//! The outcome is recorded in `rooms::remote_invites`: a knock with the room's stripped state
//! from `send_knock`, a rejected invite or withdrawn knock as `leave` with the signed event.
//! When no resident server takes a rejection, it is recorded here anyway (without an event):
//! the inviting server may be gone for good, and the user must be able to get rid of the
//! invite; the room's servers then still list the user as invited.

use std::time::Duration;

use http::StatusCode;
use ruma::{
    api::federation::membership::{
        create_knock_event, create_leave_event, prepare_knock_event, prepare_leave_event,
    },
    CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{value::RawValue as RawJsonValue, Map, Value};

use super::{
    invite::{incompatible_version, prune_stripped_state, remote_error},
    membership::fill::{raw_object, sign_member_template},
};
use crate::{
    error::{Error, Result},
    service::{rooms::remote_invites::RemoteInvite, Services},
};

/// How long one resident server may take for one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer accepted (a template, or a knock's stripped state).
const MAX_RESPONSE: usize = 1024 * 1024;
/// Most servers tried for one change.
const MAX_SERVERS: usize = 5;

fn bad_gateway(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", message)
}

/// Fills in and signs a member-event template from a resident server
/// ([`sign_member_template`]); the reason and `extra` content fields (the profile of a knock)
/// are the user's. Returns the event id and the signed event.
fn sign_template(
    services: &Services,
    template: &RawJsonValue,
    version: &RoomVersionId,
    room_id: &RoomId,
    user_id: &UserId,
    membership: &str,
    extra: Map<String, Value>,
) -> Result<(OwnedEventId, CanonicalJsonObject)> {
    let rules = version
        .rules()
        .ok_or_else(|| incompatible_version(version))?;
    sign_member_template(
        services, template, &rules, room_id, user_id, membership, &extra,
    )
    .map_err(bad_gateway)
}

/// The servers to try, in order, each once, never this one, at most [`MAX_SERVERS`].
fn candidates(services: &Services, servers: &[String]) -> Vec<OwnedServerName> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    for server in servers {
        let Ok(server) = ServerName::parse(server) else {
            continue;
        };
        if server.as_str() != services.config.server_name && !out.contains(&server) {
            out.push(server);
        }
    }
    out.truncate(MAX_SERVERS);
    out
}

/// `make_leave` then `send_leave` through `server`.
async fn leave_via(
    services: &Services,
    server: &ServerName,
    room_id: &RoomId,
    user_id: &UserId,
    reason: Option<&str>,
) -> Result<(OwnedEventId, CanonicalJsonObject)> {
    let request = prepare_leave_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
    let template = services
        .federation
        .send_with_limits(server, request, STEP_TIMEOUT, MAX_RESPONSE)
        .await
        .map_err(|e| remote_error(server, e, "leave"))?;
    // Servers that omit the version mean version 1 (spec).
    let version = template.room_version.unwrap_or(RoomVersionId::V1);
    let mut extra = Map::new();
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        extra.insert("reason".into(), Value::String(reason.to_owned()));
    }
    let (event_id, object) = sign_template(
        services,
        &template.event,
        &version,
        room_id,
        user_id,
        "leave",
        extra,
    )?;
    let request = create_leave_event::v2::Request::new(
        room_id.to_owned(),
        event_id.clone(),
        raw_object(&object)?,
    );
    services
        .federation
        .send_with_limits(server, request, STEP_TIMEOUT, MAX_RESPONSE)
        .await
        .map_err(|e| remote_error(server, e, "leave"))?;
    Ok((event_id, object))
}

/// Rejects a remote invite or withdraws a remote knock of `user_id` (see the module doc).
/// Nothing to do when the user already left.
pub async fn leave_remote(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    reason: Option<&str>,
) -> Result<()> {
    let rooms = &services.rooms;
    let Some(record) = rooms.remote_membership(user_id, room_id)? else {
        return Err(Error::not_found("Unknown room"));
    };
    if !matches!(record.membership.as_str(), "invite" | "knock") {
        return Ok(());
    }
    let mut left = None;
    for server in candidates(services, &record.servers) {
        match leave_via(services, &server, room_id, user_id, reason).await {
            Ok(done) => {
                left = Some(done);
                break;
            }
            Err(e) => log::info!("cannot leave {room_id} via {server}: {e}"),
        }
    }
    if left.is_none() {
        log::warn!("no server took {user_id}'s leave of {room_id}: recorded here only");
    }
    let (event_id, event) = match left {
        Some((id, object)) => (
            Some(id.to_string()),
            Some(serde_json::to_string(&object).map_err(|e| Error::unknown(e.to_string()))?),
        ),
        None => (None, None),
    };
    let next = RemoteInvite {
        membership: "leave".into(),
        event,
        event_id,
        sender: user_id.to_string(),
        ..record.clone()
    };
    rooms
        .record_remote_invite(user_id, room_id, next, Some(&record))
        .await?;
    Ok(())
}

/// Knocks on a room this server is not in, through the first of `servers` that takes the
/// knock; `extra` are the knock's profile fields. Knocking again while knocking changes
/// nothing.
pub async fn knock_remote(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    reason: Option<&str>,
    servers: &[String],
    mut extra: Map<String, Value>,
) -> Result<()> {
    let rooms = &services.rooms;
    let previous = rooms.remote_membership(user_id, room_id)?;
    if previous.as_ref().is_some_and(|p| p.membership == "knock") {
        return Ok(());
    }
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        extra.insert("reason".into(), Value::String(reason.to_owned()));
    }
    let servers = candidates(services, servers);
    let mut last_error =
        Error::not_found("No server to knock through: give the room's server in `via`");
    for server in &servers {
        match knock_via(services, server, room_id, user_id, extra.clone()).await {
            Ok((event_id, object, version, state)) => {
                // The server that took the knock first: the likeliest to take its withdrawal.
                let others: Vec<String> = std::iter::once(server)
                    .chain(servers.iter().filter(|s| *s != server))
                    .map(ToString::to_string)
                    .collect();
                let record = RemoteInvite {
                    membership: "knock".into(),
                    sid: 0,
                    room_version: version.to_string(),
                    event: Some(
                        serde_json::to_string(&object)
                            .map_err(|e| Error::unknown(e.to_string()))?,
                    ),
                    event_id: Some(event_id.to_string()),
                    stripped_state: state.iter().map(Value::to_string).collect(),
                    servers: others,
                    sender: user_id.to_string(),
                    updated_ms: 0,
                };
                let current = rooms.remote_invite(user_id, room_id)?;
                rooms
                    .record_remote_invite(user_id, room_id, record, current.as_ref())
                    .await?;
                return Ok(());
            }
            Err(e) => {
                log::info!("cannot knock on {room_id} via {server}: {e}");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

/// `make_knock` then `send_knock` through `server`: the event, its version and the room's
/// pruned stripped state.
async fn knock_via(
    services: &Services,
    server: &ServerName,
    room_id: &RoomId,
    user_id: &UserId,
    extra: Map<String, Value>,
) -> Result<(OwnedEventId, CanonicalJsonObject, RoomVersionId, Vec<Value>)> {
    let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
    request.ver = super::membership::join::supported_versions();
    let template = services
        .federation
        .send_with_limits(server, request, STEP_TIMEOUT, MAX_RESPONSE)
        .await
        .map_err(|e| remote_error(server, e, "knock"))?;
    let version = template.room_version;
    let (event_id, object) = sign_template(
        services,
        &template.event,
        &version,
        room_id,
        user_id,
        "knock",
        extra,
    )?;
    let request = create_knock_event::v1::Request::new(
        room_id.to_owned(),
        event_id.clone(),
        raw_object(&object)?,
    );
    let answer = services
        .federation
        .send_with_limits(server, request, STEP_TIMEOUT, MAX_RESPONSE)
        .await
        .map_err(|e| remote_error(server, e, "knock"))?;
    let state = prune_stripped_state(&answer.knock_room_state, room_id, &version)?;
    Ok((event_id, object, version, state))
}
