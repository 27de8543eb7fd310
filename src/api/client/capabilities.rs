//! `GET /capabilities`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{api::client::discovery::get_capabilities::v3 as caps, RoomVersionId};

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(capabilities);
}

#[allow(deprecated)] // m.set_displayname/m.set_avatar_url: still read by current clients
async fn capabilities(
    services: Arc<Services>,
    ctx: Ctx,
    _: caps::Request,
) -> Result<caps::Response> {
    let mut capabilities = caps::Capabilities::new();
    capabilities.change_password = caps::ChangePasswordCapability::new(true);
    capabilities.set_displayname = caps::SetDisplayNameCapability::new(true);
    capabilities.set_avatar_url = caps::SetAvatarUrlCapability::new(true);
    capabilities.thirdparty_id_changes =
        caps::ThirdPartyIdChangesCapability::new(services.mailer.is_some());
    capabilities.get_login_token = caps::GetLoginTokenCapability::new(true);
    // Per user: only server admins may lock and suspend (omitted for everyone else, as the
    // spec asks when both would be false).
    if services.users.is_admin(&ctx.authed()?.user_id)? {
        capabilities.account_moderation = caps::AccountModerationCapability::new(true, true);
    }
    let stable = [
        RoomVersionId::V1,
        RoomVersionId::V2,
        RoomVersionId::V3,
        RoomVersionId::V4,
        RoomVersionId::V5,
        RoomVersionId::V6,
        RoomVersionId::V7,
        RoomVersionId::V8,
        RoomVersionId::V9,
        RoomVersionId::V10,
        RoomVersionId::V11,
        RoomVersionId::V12,
    ];
    let available: BTreeMap<_, _> = stable
        .into_iter()
        .map(|v| (v, caps::RoomVersionStability::Stable))
        .collect();
    capabilities.room_versions =
        caps::RoomVersionsCapability::new(super::room::DEFAULT_ROOM_VERSION, available);
    Ok(caps::Response::new(capabilities))
}
