//! `make_join`/`send_join` (v2), `make_leave`/`send_leave` (v2), `make_knock`/`send_knock`
//! (v1): this server as the resident server of a room (spec: server-server API, "Joining
//! Rooms", "Leaving Rooms", "Knocking"). The router verified the X-Matrix signature; the work
//! is in `service::federation::membership`, one mechanism for the three.

use std::sync::Arc;

use ruma::api::federation::membership::{
    create_join_event, create_knock_event, create_leave_event, prepare_join_event,
    prepare_knock_event, prepare_leave_event,
};
use serde_json::value::{to_raw_value, RawValue as RawJsonValue};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        federation::membership::{self, Kind},
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(make_join);
    router.ruma(send_join);
    router.ruma(make_leave);
    router.ruma(send_leave);
    router.ruma(make_knock);
    router.ruma(send_knock);
}

fn raw(value: &serde_json::Value) -> Result<Box<RawJsonValue>> {
    to_raw_value(value).map_err(|e| Error::unknown(e.to_string()))
}

async fn make_join(
    services: Arc<Services>,
    ctx: Ctx,
    body: prepare_join_event::v1::Request,
) -> Result<prepare_join_event::v1::Response> {
    let origin = ctx.origin()?;
    let (version, template) = membership::make_template(
        &services.rooms,
        origin,
        &body.room_id,
        &body.user_id,
        Kind::Join,
        Some(&body.ver),
    )
    .await?;
    let mut response = prepare_join_event::v1::Response::new(raw(&template)?);
    response.room_version = Some(version);
    Ok(response)
}

async fn send_join(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_join_event::v2::Request,
) -> Result<create_join_event::v2::Response> {
    let origin = ctx.origin()?;
    let accepted = membership::accept(
        &services,
        origin,
        &body.room_id,
        &body.event_id,
        Kind::Join,
        &body.pdu,
    )
    .await?;
    let rooms = services.rooms.clone();
    let omit = body.omit_members;
    // Reading the state and the auth chain walks many events: off the async workers.
    let state = services
        .rooms
        .heavy_read(move || {
            membership::join_state(
                &rooms,
                accepted.sid,
                omit,
                accepted.cosigned.then_some(&accepted.object),
            )
        })
        .await?;
    Ok(create_join_event::v2::Response::new(state))
}

async fn make_leave(
    services: Arc<Services>,
    ctx: Ctx,
    body: prepare_leave_event::v1::Request,
) -> Result<prepare_leave_event::v1::Response> {
    let origin = ctx.origin()?;
    let (version, template) = membership::make_template(
        &services.rooms,
        origin,
        &body.room_id,
        &body.user_id,
        Kind::Leave,
        None,
    )
    .await?;
    Ok(prepare_leave_event::v1::Response::new(
        Some(version),
        raw(&template)?,
    ))
}

async fn send_leave(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_leave_event::v2::Request,
) -> Result<create_leave_event::v2::Response> {
    let origin = ctx.origin()?;
    membership::accept(
        &services,
        origin,
        &body.room_id,
        &body.event_id,
        Kind::Leave,
        &body.pdu,
    )
    .await?;
    Ok(create_leave_event::v2::Response::new())
}

async fn make_knock(
    services: Arc<Services>,
    ctx: Ctx,
    body: prepare_knock_event::v1::Request,
) -> Result<prepare_knock_event::v1::Response> {
    let origin = ctx.origin()?;
    let (version, template) = membership::make_template(
        &services.rooms,
        origin,
        &body.room_id,
        &body.user_id,
        Kind::Knock,
        Some(&body.ver),
    )
    .await?;
    Ok(prepare_knock_event::v1::Response::new(
        version,
        raw(&template)?,
    ))
}

async fn send_knock(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_knock_event::v1::Request,
) -> Result<create_knock_event::v1::Response> {
    let origin = ctx.origin()?;
    let accepted = membership::accept(
        &services,
        origin,
        &body.room_id,
        &body.event_id,
        Kind::Knock,
        &body.pdu,
    )
    .await?;
    let state = membership::knock_state(&services.rooms, accepted.sid)?;
    Ok(create_knock_event::v1::Response::new(state))
}
