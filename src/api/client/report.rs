//! Reporting content (spec: client-server API, reporting content): events, rooms and users.
//!
//! What may be reported follows the spec: an event only by a user joined to its room who can
//! see it; a room or a user by anyone. Anything unknown (or invisible to the reporter) is a 404
//! `M_NOT_FOUND`, with the same message whether it does not exist or cannot be seen, so a
//! report never reveals more than the reporter could read anyway.

use std::sync::Arc;

use ruma::{
    api::client::{
        reporting::report_user,
        room::{report_content, report_room},
    },
    events::room::member::MembershipState,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{reports::ReportTarget, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(report_event);
    router.ruma(report_a_room);
    router.ruma(report_a_user);
}

async fn report_event(
    services: Arc<Services>,
    ctx: Ctx,
    body: report_content::v3::Request,
) -> Result<report_content::v3::Response> {
    let me = ctx.authed()?;
    let not_found =
        || Error::not_found("The event was not found or you are not joined to the room");
    let room = services.rooms.room(&body.room_id)?.ok_or_else(not_found)?;
    if services.rooms.membership(&body.room_id, &me.user_id)? != Some(MembershipState::Join) {
        return Err(not_found());
    }
    let event = services
        .rooms
        .event(&body.event_id)?
        .filter(|e| e.meta.room_sid == room.sid)
        .ok_or_else(not_found)?;
    if !services
        .rooms
        .reader(&body.room_id, &me.user_id)?
        .may_see(&event)?
    {
        return Err(not_found());
    }
    let target = ReportTarget::Event {
        room_id: body.room_id.to_string(),
        event_id: body.event_id.to_string(),
    };
    services
        .reports
        .add(me.user_id.as_str(), target, body.reason.unwrap_or_default())
        .await?;
    Ok(report_content::v3::Response::new())
}

async fn report_a_room(
    services: Arc<Services>,
    ctx: Ctx,
    body: report_room::v3::Request,
) -> Result<report_room::v3::Response> {
    let me = ctx.authed()?;
    // The reporter need not be joined (spec, v1.13): rooms are seen through invites and the
    // directory too.
    if services.rooms.room(&body.room_id)?.is_none() {
        return Err(Error::not_found("The room was not found"));
    }
    let target = ReportTarget::Room {
        room_id: body.room_id.to_string(),
    };
    services
        .reports
        .add(me.user_id.as_str(), target, body.reason)
        .await?;
    Ok(report_room::v3::Response::new())
}

/// Whether this server knows the user: a local account, or a remote user with a membership
/// in one of its rooms.
fn user_known(services: &Services, user_id: &ruma::UserId) -> Result<bool> {
    if user_id.server_name().as_str() == services.config.server_name {
        return services.users.exists(user_id);
    }
    for membership in [
        MembershipState::Join,
        MembershipState::Invite,
        MembershipState::Knock,
        MembershipState::Leave,
        MembershipState::Ban,
    ] {
        if !services.rooms.rooms_of(user_id, &membership)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn report_a_user(
    services: Arc<Services>,
    ctx: Ctx,
    body: report_user::v3::Request,
) -> Result<report_user::v3::Response> {
    let me = ctx.authed()?;
    // No shared room is needed (spec, v1.14).
    if !user_known(&services, &body.user_id)? {
        return Err(Error::not_found("The user was not found"));
    }
    let target = ReportTarget::User {
        user_id: body.user_id.to_string(),
    };
    services
        .reports
        .add(me.user_id.as_str(), target, body.reason)
        .await?;
    Ok(report_user::v3::Response::new())
}
