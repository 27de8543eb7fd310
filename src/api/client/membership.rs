//! Joining, inviting, leaving, kicking, banning, knocking and forgetting. The rules live in
//! `service::rooms::membership`; these handlers add what needs other services (profiles, the
//! user list) and the request shapes. Rooms of other servers go through
//! `service::federation`: joins (`membership::join`), invites of their users (`invite`), and
//! leaving or knocking on a room known only through an invite or knock (`remote_membership`).

use std::sync::Arc;

use ruma::{
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
            kick_user, leave_room, unban_user,
        },
    },
    events::room::member::MembershipState,
    OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, UserId,
};
use serde_json::{Map, Value};

use super::room::profile_fields;
use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        federation::{
            invite as fed_invite, membership::join as fed_membership, queries::Requester,
            remote_membership,
        },
        rooms::membership::MembershipChange,
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(join_by_id);
    router.ruma(join_by_id_or_alias);
    router.ruma(invite);
    router.ruma(leave);
    router.ruma(forget);
    router.ruma(kick);
    router.ruma(ban);
    router.ruma(unban);
    router.ruma(knock);
}

/// A local user's profile as member-event fields; nothing for users of other servers.
fn profile_of(services: &Services, user_id: &UserId) -> Result<Map<String, Value>> {
    if user_id.server_name().as_str() == services.config.server_name {
        profile_fields(services, user_id)
    } else {
        Ok(Map::new())
    }
}

/// Sends `target`'s membership event with `sender`'s authority. Profile fields are copied
/// into join events (and into invites, from the invitee's profile), as clients expect.
pub async fn set_membership(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: MembershipState,
    reason: Option<&str>,
) -> Result<()> {
    let profile = match membership {
        MembershipState::Join | MembershipState::Invite | MembershipState::Knock => {
            profile_of(services, target)?
        }
        _ => Map::new(),
    };
    services
        .rooms
        .change_membership(MembershipChange {
            room_id,
            sender,
            target,
            membership,
            reason,
            profile,
        })
        .await
}

/// Joins through this server when it is in the room, else over federation through
/// `servers` (the request's `via`, an alias' servers).
async fn join(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    reason: Option<&str>,
    servers: Vec<OwnedServerName>,
) -> Result<()> {
    let profile = profile_of(services, user_id)?;
    fed_membership::join_room(services, room_id, user_id, reason, profile, servers).await
}

/// The room to join or knock on, with the servers that may know it: an alias of another
/// server is resolved by asking it, and its answer names servers in the room.
async fn resolve(
    services: &Services,
    user_id: &UserId,
    target: &RoomOrAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    match <&RoomId>::try_from(target) {
        Ok(room_id) => Ok((room_id.to_owned(), Vec::new())),
        Err(alias) => {
            let requester = Requester::User(user_id);
            super::alias::resolve_alias(services, requester, alias).await
        }
    }
}

async fn join_by_id(
    services: Arc<Services>,
    ctx: Ctx,
    body: join_room_by_id::v3::Request,
) -> Result<join_room_by_id::v3::Response> {
    let me = ctx.authed()?;
    if body.third_party_signed.is_some() {
        return Err(Error::invalid_param(
            "Third-party invites are not supported by this server",
        ));
    }
    join(
        &services,
        &body.room_id,
        &me.user_id,
        body.reason.as_deref(),
        Vec::new(),
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(body.room_id))
}

async fn join_by_id_or_alias(
    services: Arc<Services>,
    ctx: Ctx,
    body: join_room_by_id_or_alias::v3::Request,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let me = ctx.authed()?;
    if body.third_party_signed.is_some() {
        return Err(Error::invalid_param(
            "Third-party invites are not supported by this server",
        ));
    }
    let (room_id, alias_servers) = resolve(&services, &me.user_id, &body.room_id_or_alias).await?;
    let mut servers = body.via.clone();
    servers.extend(alias_servers);
    join(
        &services,
        &room_id,
        &me.user_id,
        body.reason.as_deref(),
        servers,
    )
    .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

async fn invite(
    services: Arc<Services>,
    ctx: Ctx,
    body: invite_user::v3::Request,
) -> Result<invite_user::v3::Response> {
    let me = ctx.authed()?;
    services
        .rooms
        .require_joined_caller(&body.room_id, &me.user_id)?;
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &body.recipient else {
        return Err(Error::invalid_param(
            "Third-party invites are not supported by this server",
        ));
    };
    let target = &recipient.user_id;
    if target.server_name().as_str() != services.config.server_name {
        // The invitee's server co-signs the invite before it is stored.
        fed_invite::invite_remote(
            &services,
            &body.room_id,
            &me.user_id,
            target,
            recipient.reason.as_deref(),
        )
        .await?;
        return Ok(invite_user::v3::Response::new());
    }
    if !services.users.exists(target)? {
        return Err(Error::not_found("Unknown user"));
    }
    services
        .rooms
        .check_invite(&body.room_id, &me.user_id, target)?;
    set_membership(
        &services,
        &body.room_id,
        &me.user_id,
        target,
        MembershipState::Invite,
        recipient.reason.as_deref(),
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

async fn leave(
    services: Arc<Services>,
    ctx: Ctx,
    body: leave_room::v3::Request,
) -> Result<leave_room::v3::Response> {
    let me = ctx.authed()?;
    if services
        .rooms
        .remote_membership(&me.user_id, &body.room_id)?
        .is_some()
    {
        // An invite or knock known through another server: rejected or withdrawn there.
        remote_membership::leave_remote(
            &services,
            &body.room_id,
            &me.user_id,
            body.reason.as_deref(),
        )
        .await?;
        return Ok(leave_room::v3::Response::new());
    }
    services
        .rooms
        .leave_room(&body.room_id, &me.user_id, body.reason.as_deref())
        .await?;
    Ok(leave_room::v3::Response::new())
}

async fn forget(
    services: Arc<Services>,
    ctx: Ctx,
    body: forget_room::v3::Request,
) -> Result<forget_room::v3::Response> {
    let me = ctx.authed()?;
    let remote = services
        .rooms
        .remote_membership(&me.user_id, &body.room_id)?;
    if let Some(remote) = remote {
        // A remote invite or knock that ended: forgotten like a left room.
        if matches!(remote.membership.as_str(), "invite" | "knock") {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Leave the room before forgetting it",
            ));
        }
        services.rooms.forget(&body.room_id, &me.user_id).await?;
        return Ok(forget_room::v3::Response::new());
    }
    services
        .rooms
        .forget_room(&body.room_id, &me.user_id)
        .await?;
    Ok(forget_room::v3::Response::new())
}

async fn kick(
    services: Arc<Services>,
    ctx: Ctx,
    body: kick_user::v3::Request,
) -> Result<kick_user::v3::Response> {
    let me = ctx.authed()?;
    services
        .rooms
        .kick_user(
            &body.room_id,
            &me.user_id,
            &body.user_id,
            body.reason.as_deref(),
        )
        .await?;
    Ok(kick_user::v3::Response::new())
}

async fn ban(
    services: Arc<Services>,
    ctx: Ctx,
    body: ban_user::v3::Request,
) -> Result<ban_user::v3::Response> {
    let me = ctx.authed()?;
    services
        .rooms
        .ban_user(
            &body.room_id,
            &me.user_id,
            &body.user_id,
            body.reason.as_deref(),
        )
        .await?;
    Ok(ban_user::v3::Response::new())
}

async fn unban(
    services: Arc<Services>,
    ctx: Ctx,
    body: unban_user::v3::Request,
) -> Result<unban_user::v3::Response> {
    let me = ctx.authed()?;
    services
        .rooms
        .unban_user(
            &body.room_id,
            &me.user_id,
            &body.user_id,
            body.reason.as_deref(),
        )
        .await?;
    Ok(unban_user::v3::Response::new())
}

async fn knock(
    services: Arc<Services>,
    ctx: Ctx,
    body: knock_room::v3::Request,
) -> Result<knock_room::v3::Response> {
    let me = ctx.authed()?;
    let (room_id, alias_servers) = resolve(&services, &me.user_id, &body.room_id_or_alias).await?;
    let mut servers: Vec<String> = alias_servers.iter().map(ToString::to_string).collect();
    if let Ok(alias) = <&ruma::RoomAliasId>::try_from(&*body.room_id_or_alias) {
        servers.push(alias.server_name().to_string());
    }
    let profile = profile_of(&services, &me.user_id)?;
    if !services.rooms.is_resident(&room_id)? {
        // A room this server is not in: knocked on through a resident server (the servers
        // the client names, the alias's, the room id's).
        servers.extend(body.via.iter().map(ToString::to_string));
        servers.extend(room_id.server_name().map(ToString::to_string));
        remote_membership::knock_remote(
            &services,
            &room_id,
            &me.user_id,
            body.reason.as_deref(),
            &servers,
            profile,
        )
        .await?;
        return Ok(knock_room::v3::Response::new(room_id));
    }
    services
        .rooms
        .knock_room(&room_id, &me.user_id, body.reason.as_deref(), profile)
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}
