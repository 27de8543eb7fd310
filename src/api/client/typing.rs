//! Typing notifications: `PUT /rooms/{roomId}/typing/{userId}` (spec: "Typing
//! Notifications"). Users may only set their own typing state, in rooms they are joined to.

use std::sync::Arc;

use ruma::{
    api::client::typing::create_typing_event::v3::{Request, Response, Typing},
    events::room::member::MembershipState,
    OwnedUserId, RoomId, UserId,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(set_typing);
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

async fn set_typing(services: Arc<Services>, ctx: Ctx, body: Request) -> Result<Response> {
    let me = ctx.authed()?;
    if me.user_id != body.user_id {
        return Err(Error::forbidden(
            "You cannot set the typing state of another user",
        ));
    }
    let members = joined_members(&services, &body.room_id, &me.user_id)?;
    let timeout = match body.state {
        Typing::Yes(info) => Some(info.timeout),
        Typing::No => None,
    };
    services.typing.set(
        &body.room_id,
        &me.user_id,
        timeout,
        members.iter().map(|m| m.as_ref()),
    );
    Ok(Response::new())
}
