//! `GET /_matrix/federation/v1/query/profile` and `query/directory` (spec: Server-Server,
//! Querying for information); the answers are built in `service::federation::answers`.

use std::sync::Arc;

use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::{federation::answers, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(profile);
    router.ruma(directory);
}

async fn profile(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_profile_information::v1::Request,
) -> Result<get_profile_information::v1::Response> {
    ctx.origin()?;
    let fields = answers::profile(&services, &body.user_id, body.field.as_ref())?;
    Ok(fields.into_iter().collect())
}

async fn directory(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_room_information::v1::Request,
) -> Result<get_room_information::v1::Response> {
    ctx.origin()?;
    let (room_id, servers) = answers::resolve_alias(&services, &body.room_alias)?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}
