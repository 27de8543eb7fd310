//! Room aliases: create, resolve and delete local aliases, resolve other servers' aliases
//! (through `query/directory`), and list a room's local aliases.

use std::sync::Arc;

use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        room::aliases,
    },
    OwnedRoomId, OwnedServerName, RoomAliasId,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{rooms::access::Access, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(create);
    router.ruma(resolve);
    router.ruma(delete);
    router.ruma(room_aliases);
}

fn require_local(services: &Services, alias: &RoomAliasId) -> Result<()> {
    if alias.server_name().as_str() != services.config.server_name {
        return Err(Error::invalid_param(format!(
            "{alias} is not an alias of this server ({})",
            services.config.server_name
        )));
    }
    Ok(())
}

async fn create(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_alias::v3::Request,
) -> Result<create_alias::v3::Response> {
    let me = ctx.authed()?;
    require_local(&services, &body.room_alias)?;
    services
        .rooms
        .set_alias(&body.room_alias, &body.room_id, &me.user_id)
        .await?;
    Ok(create_alias::v3::Response::new())
}

async fn resolve(
    services: Arc<Services>,
    _ctx: Ctx,
    body: get_alias::v3::Request,
) -> Result<get_alias::v3::Response> {
    let (room_id, servers) = resolve_alias(&services, &body.room_alias).await?;
    Ok(get_alias::v3::Response::new(room_id, servers))
}

/// The room an alias names and servers to join it through: local aliases from the store,
/// other servers' aliases by asking that server (`query/directory`).
pub async fn resolve_alias(
    services: &Services,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    if !services.queries.is_local(alias.server_name()) {
        return services.queries.resolve_alias(alias).await;
    }
    let room_id = services
        .rooms
        .alias_room(alias)?
        .ok_or_else(|| Error::not_found(format!("Room alias {alias} not found")))?;
    Ok((room_id, vec![services.rooms.server_name().to_owned()]))
}

async fn delete(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_alias::v3::Request,
) -> Result<delete_alias::v3::Response> {
    let me = ctx.authed()?;
    services
        .rooms
        .delete_alias(&body.room_alias, &me.user_id)
        .await?;
    Ok(delete_alias::v3::Response::new())
}

/// Members of the room, or anyone when its history is world-readable; 403 otherwise (also
/// for rooms this server does not know, so the answer does not reveal which rooms exist).
async fn room_aliases(
    services: Arc<Services>,
    ctx: Ctx,
    body: aliases::v3::Request,
) -> Result<aliases::v3::Response> {
    let me = ctx.authed()?;
    let forbidden = || Error::forbidden("You are not a member of the room");
    services.rooms.room(&body.room_id)?.ok_or_else(forbidden)?;
    match services.rooms.read_access(&body.room_id, &me.user_id)? {
        Access::Joined | Access::WorldReadable => {}
        _ => return Err(forbidden()),
    }
    let aliases = services.rooms.local_aliases(&body.room_id)?;
    Ok(aliases::v3::Response::new(aliases))
}
