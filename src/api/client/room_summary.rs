//! `GET /room_summary/{roomIdOrAlias}` (spec: "Room Summaries") and `GET /mutual_rooms`
//! (spec: "Mutual Rooms").

use std::sync::Arc;

use ruma::{
    api::client::{membership::get_mutual_rooms, room::get_summary},
    RoomId, UInt,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(summary);
    router.ruma(mutual_rooms);
}

/// Authentication is optional: without a token only rooms the spec lets anyone preview are
/// summarised (see `service::rooms::summary`).
async fn summary(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_summary::v1::Request,
) -> Result<get_summary::v1::Response> {
    let requester = ctx.user.as_ref().map(|u| u.user_id.as_ref());
    let (summary, membership) = services
        .rooms
        .room_summary(requester, &body.room_id_or_alias)?;
    let mut response = get_summary::v1::Response::new(summary);
    response.membership = membership;
    Ok(response)
}

/// `from` is the last room of the previous page (rooms come in room-id order).
async fn mutual_rooms(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_mutual_rooms::v1::Request,
) -> Result<get_mutual_rooms::v1::Response> {
    let me = ctx.authed()?;
    if body.user_id == me.user_id {
        return Err(Error::invalid_param(
            "user_id is your own user ID; ask about another user",
        ));
    }
    let after = match body.from.as_deref() {
        None => None,
        Some(from) => Some(
            RoomId::parse(from)
                .map_err(|_| Error::invalid_param("Unknown or expired pagination token"))?,
        ),
    };
    let page = services
        .rooms
        .mutual_rooms(&me.user_id, &body.user_id, after.as_deref())?;
    let count = UInt::try_from(page.total).unwrap_or(UInt::MAX);
    let mut response = get_mutual_rooms::v1::Response::new(count, page.rooms);
    response.next_batch = page.next_after.map(|room| room.to_string());
    Ok(response)
}
