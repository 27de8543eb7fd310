//! `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` and its deprecated v1 (spec:
//! server-server API, "Inviting to a room"): another server asks this one to co-sign an invite
//! of a local user. The checks, the signing and the record are in `service::federation::invite`.
//!
//! The v1 body is the invite event itself, with fields ruma's v1 request type does not keep
//! (hashes, signatures, auth and prev events), so v1 is a raw route on ruma's path.

use std::sync::Arc;

use http::StatusCode;
use ruma::{api::federation::membership::create_invite, OwnedEventId, OwnedRoomId};
use serde_json::json;

use crate::{
    error::{Error, Result},
    http::{json_response, Ctx, Incoming, Response, Router},
    service::{federation::invite, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(invite_v2);
    router.raw_ruma::<create_invite::v1::Request, _, _>(invite_v1);
}

async fn invite_v2(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_invite::v2::Request,
) -> Result<create_invite::v2::Response> {
    let origin = ctx.origin()?;
    let event = invite::receive_invite(&services, origin, (&body).into()).await?;
    Ok(create_invite::v2::Response::new(event))
}

/// Answers `[200, {"event": …}]`, as v1 always did.
async fn invite_v1(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let origin = incoming.ctx.origin()?;
    let arg = |i: usize| {
        incoming
            .path_args
            .get(i)
            .ok_or_else(|| Error::missing_param("Missing path parameter"))
    };
    let room_id = OwnedRoomId::try_from(arg(0)?.as_str())
        .map_err(|e| Error::invalid_param(format!("Invalid room id: {e}")))?;
    let event_id = OwnedEventId::try_from(arg(1)?.as_str())
        .map_err(|e| Error::invalid_param(format!("Invalid event id: {e}")))?;
    let event = invite::receive_invite_v1(
        &services,
        origin,
        &room_id,
        &event_id,
        incoming.request.body(),
    )
    .await?;
    let body = json!([200, { "event": event }]);
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}
