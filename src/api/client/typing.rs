//! Typing notifications: `PUT /rooms/{roomId}/typing/{userId}` (spec: "Typing
//! Notifications"). Users may only set their own typing state, in rooms they are joined to.
//!
//! A raw route on ruma's paths: the body is read here so the errors say what is wrong.
//! `typing` is required; `timeout` (milliseconds) is required only when `typing` is true and
//! ignored otherwise (spec: "If `false`, the `timeout` key can be omitted").

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use ruma::{
    api::client::typing::create_typing_event, events::room::member::MembershipState, OwnedRoomId,
    OwnedUserId, RoomId, UserId,
};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    http::{json_response, Incoming, Response, Router},
    service::{federation::queue::Edu, Services},
};

pub fn routes(router: &mut Router) {
    router.raw_ruma::<create_typing_event::v3::Request, _, _>(set_typing);
}

/// The typing state a request body asks for: `Some(timeout)` to start, `None` to stop.
fn parse_body(body: &[u8]) -> Result<Option<Duration>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::not_json(format!("The body is not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| Error::bad_json("The body must be a JSON object"))?;
    let typing = match object.get("typing") {
        None => return Err(Error::missing_param("Missing field 'typing'")),
        Some(Value::Bool(typing)) => *typing,
        Some(_) => return Err(Error::bad_json("'typing' must be a boolean")),
    };
    if !typing {
        return Ok(None);
    }
    match object.get("timeout") {
        None | Some(Value::Null) => Err(Error::missing_param(
            "'timeout' is required when 'typing' is true",
        )),
        Some(timeout) => timeout
            .as_u64()
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or_else(|| {
                Error::bad_json("'timeout' must be a non-negative integer (milliseconds)")
            }),
    }
}

/// The joined members of a room the user is joined to; 403 otherwise (also for rooms this
/// server does not know, so the answer does not reveal whether a room exists).
pub fn joined_members(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Vec<OwnedUserId>> {
    let room = match services.rooms.membership(room_id, user_id)? {
        Some(MembershipState::Join) => services.rooms.room(room_id)?,
        _ => None,
    }
    .ok_or_else(|| Error::forbidden("You are not joined to this room"))?;
    Ok(services
        .rooms
        .members(room.sid)?
        .into_iter()
        .filter(|(_, membership)| membership == "join")
        .filter_map(|(user, _)| UserId::parse(user).ok())
        .collect())
}

async fn set_typing(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    let arg = |i: usize| {
        incoming
            .path_args
            .get(i)
            .ok_or_else(|| Error::missing_param("Missing path parameter"))
    };
    let room_id = OwnedRoomId::try_from(arg(0)?.as_str())
        .map_err(|e| Error::invalid_param(format!("Invalid room id: {e}")))?;
    let user_id = OwnedUserId::try_from(arg(1)?.as_str())
        .map_err(|e| Error::invalid_param(format!("Invalid user id: {e}")))?;
    let timeout = parse_body(incoming.request.body())?;
    if me.user_id != user_id {
        return Err(Error::forbidden(
            "You cannot set the typing state of another user",
        ));
    }
    let members = joined_members(&services, &room_id, &me.user_id)?;
    services.typing.set(
        &room_id,
        &me.user_id,
        timeout,
        members.iter().map(|m| m.as_ref()),
    );
    let servers = services
        .fed_queue
        .remote_servers(members.iter().map(|m| m.as_ref()));
    let edu = Edu::new(
        "m.typing",
        serde_json::json!({
            "room_id": room_id,
            "user_id": me.user_id,
            "typing": timeout.is_some(),
        }),
    );
    services.fed_queue.enqueue_edus(&servers, &[edu]).await?;
    Ok(json_response(StatusCode::OK, b"{}".to_vec()))
}
