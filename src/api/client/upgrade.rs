//! `POST /rooms/{roomId}/upgrade`.

use std::sync::Arc;

use ruma::api::client::room::upgrade_room;

use crate::{
    api::client::room::{known_room, profile_fields},
    error::Result,
    http::{Ctx, Router},
    service::{rooms::upgrade::UpgradeRoom, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(upgrade);
}

async fn upgrade(
    services: Arc<Services>,
    ctx: Ctx,
    body: upgrade_room::v3::Request,
) -> Result<upgrade_room::v3::Response> {
    let me = ctx.authed()?;
    known_room(&services, &body.room_id)?;
    let request = UpgradeRoom {
        room_id: body.room_id.clone(),
        user_id: me.user_id.clone(),
        new_version: body.new_version.clone(),
        additional_creators: body.additional_creators.clone(),
        member_content: profile_fields(&services, &me.user_id)?,
    };
    let replacement = services.rooms.upgrade_room(request).await?;
    Ok(upgrade_room::v3::Response::new(replacement))
}
