//! `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` (spec: server-server API,
//! "Inviting to a room"): another server asks this one to co-sign an invite of a local user.
//! The checks, the signing and the record are in `service::federation::invite`.

use std::sync::Arc;

use ruma::api::federation::membership::create_invite;

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::{federation::invite, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(invite_v2);
}

async fn invite_v2(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_invite::v2::Request,
) -> Result<create_invite::v2::Response> {
    let origin = ctx.origin()?;
    let event = invite::receive_invite(&services, origin, &body).await?;
    Ok(create_invite::v2::Response::new(event))
}
