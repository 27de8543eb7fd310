//! Joining, inviting, leaving, kicking, banning, knocking and forgetting.

use std::sync::Arc;

use ruma::{
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
            kick_user, leave_room, unban_user,
        },
    },
    events::{room::member::MembershipState, TimelineEventType},
    OwnedRoomId, RoomId, RoomOrAliasId, UserId,
};
use serde_json::json;

use super::room::{known_room, profile_fields};
use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{rooms::NewEvent, Services},
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
    known_room(services, room_id)?;
    let mut content = json!({ "membership": membership.as_str() });
    if matches!(
        membership,
        MembershipState::Join | MembershipState::Invite | MembershipState::Knock
    ) && target.server_name().as_str() == services.config.server_name
    {
        for (key, value) in profile_fields(services, target)? {
            content[key] = value;
        }
    }
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        content["reason"] = json!(reason);
    }
    // A join of a restricted room carries this server's authorisation when the user may join.
    services
        .rooms
        .prepare_member_content(room_id, sender, target.as_str(), &mut content)?;
    let event = NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content);
    services.rooms.send(room_id, sender, event).await?;
    Ok(())
}

/// Refuses a caller who is not joined, before anything about the target is looked at, so an
/// outsider cannot learn other users' memberships from the error.
fn require_caller_joined(services: &Services, room_id: &RoomId, caller: &UserId) -> Result<()> {
    known_room(services, room_id)?;
    if services.rooms.membership(room_id, caller)? != Some(MembershipState::Join) {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    Ok(())
}

async fn join(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    reason: Option<&str>,
) -> Result<()> {
    if services.rooms.room(room_id)?.is_none() {
        // Joining rooms on other servers needs federation, which this server does not do yet.
        return Err(Error::not_found(
            "No room with this id is known to this server",
        ));
    }
    if services.rooms.membership(room_id, user_id)? == Some(MembershipState::Join) {
        // Already joined: a join is idempotent and changes nothing.
        return Ok(());
    }
    set_membership(
        services,
        room_id,
        user_id,
        user_id,
        MembershipState::Join,
        reason,
    )
    .await
}

fn resolve(services: &Services, target: &RoomOrAliasId) -> Result<OwnedRoomId> {
    match <&RoomId>::try_from(target) {
        Ok(room_id) => Ok(room_id.to_owned()),
        Err(alias) => services
            .rooms
            .alias_room(alias)?
            .ok_or_else(|| Error::not_found("Room alias not found")),
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
    let room_id = resolve(&services, &body.room_id_or_alias)?;
    join(&services, &room_id, &me.user_id, body.reason.as_deref()).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

async fn invite(
    services: Arc<Services>,
    ctx: Ctx,
    body: invite_user::v3::Request,
) -> Result<invite_user::v3::Response> {
    let me = ctx.authed()?;
    require_caller_joined(&services, &body.room_id, &me.user_id)?;
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &body.recipient else {
        return Err(Error::invalid_param(
            "Third-party invites are not supported by this server",
        ));
    };
    let target = &recipient.user_id;
    if target.server_name().as_str() != services.config.server_name {
        return Err(Error::forbidden(
            "Inviting users of other servers needs federation, which is not available yet",
        ));
    }
    if !services.users.exists(target)? {
        return Err(Error::not_found("Unknown user"));
    }
    let current = services.rooms.membership(&body.room_id, target)?;
    if matches!(
        current,
        Some(MembershipState::Join) | Some(MembershipState::Ban)
    ) {
        return Err(Error::forbidden(format!(
            "{target} is {} the room",
            current.map_or("", |m| if m == MembershipState::Join {
                "already in"
            } else {
                "banned from"
            })
        )));
    }
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
    match services.rooms.membership(&body.room_id, &me.user_id)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            set_membership(
                &services,
                &body.room_id,
                &me.user_id,
                &me.user_id,
                MembershipState::Leave,
                body.reason.as_deref(),
            )
            .await?;
        }
        // Leaving a room one has left (or was banned from) changes nothing.
        Some(_) => {}
        None => {
            known_room(&services, &body.room_id)?;
            return Err(Error::forbidden("You are not a member of this room"));
        }
    }
    Ok(leave_room::v3::Response::new())
}

async fn forget(
    services: Arc<Services>,
    ctx: Ctx,
    body: forget_room::v3::Request,
) -> Result<forget_room::v3::Response> {
    let me = ctx.authed()?;
    match services.rooms.membership(&body.room_id, &me.user_id)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Leave the room before forgetting it",
            ))
        }
        Some(_) => {
            services.rooms.forget(&body.room_id, &me.user_id).await?;
            Ok(forget_room::v3::Response::new())
        }
        None => Err(Error::not_found("You have never been in this room")),
    }
}

async fn kick(
    services: Arc<Services>,
    ctx: Ctx,
    body: kick_user::v3::Request,
) -> Result<kick_user::v3::Response> {
    let me = ctx.authed()?;
    require_caller_joined(&services, &body.room_id, &me.user_id)?;
    match services.rooms.membership(&body.room_id, &body.user_id)? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
        _ => {
            return Err(Error::forbidden(format!(
                "{} is not in the room",
                body.user_id
            )));
        }
    }
    set_membership(
        &services,
        &body.room_id,
        &me.user_id,
        &body.user_id,
        MembershipState::Leave,
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
    set_membership(
        &services,
        &body.room_id,
        &me.user_id,
        &body.user_id,
        MembershipState::Ban,
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
    require_caller_joined(&services, &body.room_id, &me.user_id)?;
    if services.rooms.membership(&body.room_id, &body.user_id)? != Some(MembershipState::Ban) {
        return Err(Error::forbidden(format!("{} is not banned", body.user_id)));
    }
    set_membership(
        &services,
        &body.room_id,
        &me.user_id,
        &body.user_id,
        MembershipState::Leave,
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
    let room_id = resolve(&services, &body.room_id_or_alias)?;
    let room = known_room(&services, &room_id)?;
    let version = services.rooms.room_version(&room)?;
    if !version.rules().is_some_and(|r| r.authorization.knocking) {
        return Err(Error::forbidden(format!(
            "Room version {version} does not allow knocking"
        )));
    }
    set_membership(
        &services,
        &room_id,
        &me.user_id,
        &me.user_id,
        MembershipState::Knock,
        body.reason.as_deref(),
    )
    .await?;
    Ok(knock_room::v3::Response::new(room_id))
}
