//! `GET /_matrix/federation/v1/backfill/{roomId}?v=&limit=` (spec: Server-Server,
//! "Backfilling and retrieving missing events"); the walk and who may have it are
//! `service::rooms::serve`.

use std::sync::Arc;

use ruma::api::federation::backfill::get_backfill;

use crate::{
    api::federation::events::now,
    error::Result,
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(backfill);
}

async fn backfill(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_backfill::v1::Request,
) -> Result<get_backfill::v1::Response> {
    let origin = ctx.origin()?.to_owned();
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let pdus = services
        .rooms
        .backfill_for_server(origin, body.room_id, body.v, limit)
        .await?;
    Ok(get_backfill::v1::Response::new(
        services.rooms.server_name().to_owned(),
        now(),
        pdus,
    ))
}
