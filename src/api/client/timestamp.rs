//! `GET /rooms/{roomId}/timestamp_to_event`: the event closest to a time (spec: v1.6).
//!
//! The search is `Rooms::event_near_time` (shared with the federation endpoint).

use std::sync::Arc;

use ruma::{
    api::{client::room::get_event_by_timestamp, Direction},
    MilliSecondsSinceUnixEpoch, UInt,
};

use crate::{
    api::client::room::known_room,
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(timestamp_to_event);
}

async fn timestamp_to_event(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_event_by_timestamp::v1::Request,
) -> Result<get_event_by_timestamp::v1::Response> {
    let me = ctx.authed()?;
    let room = known_room(&services, &body.room_id)?;
    let mut reader = services.rooms.reader(&body.room_id, &me.user_id)?;
    reader.access.require_history()?;
    let ts = u64::from(body.ts.get());
    let forward = body.dir == Direction::Forward;
    let not_found = || {
        let dir = if forward { "forward" } else { "backward" };
        Error::not_found(format!(
            "Unable to find an event from {ts} in {dir} direction"
        ))
    };
    let event = services
        .rooms
        .event_near_time(&mut reader, room.sid, ts, forward)?
        .ok_or_else(not_found)?;
    let origin_server_ts = MilliSecondsSinceUnixEpoch(
        UInt::try_from(event.meta.origin_server_ts).unwrap_or(UInt::MAX),
    );
    Ok(get_event_by_timestamp::v1::Response::new(
        event.pdu.event_id.clone(),
        origin_server_ts,
    ))
}
