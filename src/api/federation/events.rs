//! `GET /_matrix/federation/v1/event/{eventId}`, `state/{roomId}`, `state_ids/{roomId}`,
//! `event_auth/{roomId}/{eventId}`, `POST get_missing_events/{roomId}` and
//! `GET timestamp_to_event/{roomId}` (spec: Server-Server, "Retrieving events", "Retrieving
//! event authorisation information", "Backfilling and retrieving missing events"). The
//! answers and who may have them are `service::rooms::serve`.

use std::sync::Arc;

use ruma::{
    api::{
        federation::{
            authorization::get_event_authorization,
            event::{
                get_event, get_event_by_timestamp, get_missing_events, get_room_state,
                get_room_state_ids,
            },
        },
        Direction,
    },
    MilliSecondsSinceUnixEpoch, UInt,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{rooms::serve::MissingEventsQuery, users::now_ms, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(event);
    router.ruma(state);
    router.ruma(state_ids);
    router.ruma(event_auth);
    router.ruma(missing_events);
    router.ruma(timestamp_to_event);
}

/// Now, as the `origin_server_ts` of a response.
pub fn now() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::try_from(now_ms()).unwrap_or(UInt::MAX))
}

async fn event(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_event::v1::Request,
) -> Result<get_event::v1::Response> {
    let origin = ctx.origin()?;
    let pdu = services.rooms.event_for_server(origin, &body.event_id)?;
    Ok(get_event::v1::Response::new(
        services.rooms.server_name().to_owned(),
        now(),
        pdu,
    ))
}

async fn state(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_room_state::v1::Request,
) -> Result<get_room_state::v1::Response> {
    let origin = ctx.origin()?.to_owned();
    let (pdus, auth_chain) = services
        .rooms
        .state_for_server(origin, body.room_id, body.event_id)
        .await?;
    Ok(get_room_state::v1::Response::new(auth_chain, pdus))
}

async fn state_ids(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_room_state_ids::v1::Request,
) -> Result<get_room_state_ids::v1::Response> {
    let origin = ctx.origin()?.to_owned();
    let (pdu_ids, auth_chain_ids) = services
        .rooms
        .state_ids_for_server(origin, body.room_id, body.event_id)
        .await?;
    Ok(get_room_state_ids::v1::Response::new(
        auth_chain_ids,
        pdu_ids,
    ))
}

async fn event_auth(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_event_authorization::v1::Request,
) -> Result<get_event_authorization::v1::Response> {
    let origin = ctx.origin()?.to_owned();
    let auth_chain = services
        .rooms
        .event_auth_for_server(origin, body.room_id, body.event_id)
        .await?;
    Ok(get_event_authorization::v1::Response::new(auth_chain))
}

async fn missing_events(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_missing_events::v1::Request,
) -> Result<get_missing_events::v1::Response> {
    let origin = ctx.origin()?.to_owned();
    let query = MissingEventsQuery {
        earliest_events: body.earliest_events,
        latest_events: body.latest_events,
        limit: usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX),
        min_depth: u64::from(body.min_depth),
    };
    let events = services
        .rooms
        .missing_events_for_server(origin, body.room_id, query)
        .await?;
    Ok(get_missing_events::v1::Response::new(events))
}

async fn timestamp_to_event(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_event_by_timestamp::v1::Request,
) -> Result<get_event_by_timestamp::v1::Response> {
    let origin = ctx.origin()?.to_owned();
    let ts = u64::from(body.ts.get());
    let forward = body.dir == Direction::Forward;
    let event = services
        .rooms
        .timestamp_for_server(origin, body.room_id, ts, forward)
        .await?
        .ok_or_else(|| {
            let dir = if forward { "forward" } else { "backward" };
            Error::not_found(format!(
                "Unable to find an event from {ts} in {dir} direction"
            ))
        })?;
    let origin_server_ts = MilliSecondsSinceUnixEpoch(
        UInt::try_from(event.meta.origin_server_ts).unwrap_or(UInt::MAX),
    );
    Ok(get_event_by_timestamp::v1::Response::new(
        event.pdu.event_id,
        origin_server_ts,
    ))
}
