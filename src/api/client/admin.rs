//! Server administration (spec: Server Administration, Account moderation):
//! `GET /admin/whois/{userId}`, `GET/PUT /admin/lock/{userId}`, `GET/PUT
//! /admin/suspend/{userId}`, and the list of what a suspended account may not do.
//!
//! Server admins are accounts with the `admin` flag (`hearth user create --admin`, `hearth
//! user admin USER on`). Locks and suspensions are enforced by the HTTP layer for every
//! authenticated request (`http::check_moderation`), from the rules declared here.

use std::{collections::BTreeMap, sync::Arc};

use http::Method;
use ruma::{
    api::client::{
        admin::{get_user_info, is_user_locked, is_user_suspended, lock_user, suspend_user},
        knock::knock_room,
        membership::{
            ban_user, invite_user, join_room_by_id, join_room_by_id_or_alias, kick_user, unban_user,
        },
        message::send_message_event,
        profile::{delete_profile_field, set_profile_field},
        redact::redact_event,
        room::{create_room, upgrade_room},
        state::send_state_event,
    },
    EventId, MilliSecondsSinceUnixEpoch, UInt, UserId,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{moderation::Restriction, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(whois);
    router.ruma(get_lock);
    router.ruma(put_lock);
    router.ruma(get_suspend);
    router.ruma(put_suspend);
}

/// What a suspended account may not do (spec: Account suspension, "the recommended set of
/// explicitly forbidden actions"): join or knock, invite, send messages or state (kicks and
/// bans included), create or upgrade rooms, change its profile, upload media, redact other
/// users' events. Reading, `/sync`, receipts, leaving, redacting its own events, keys,
/// devices, logout and deactivation stay open.
pub fn suspension_rules(router: &mut Router) {
    let always = |_: &Services, _: &UserId, _: &[String]| Ok(true);
    router.deny_while_suspended::<join_room_by_id::v3::Request>(always);
    router.deny_while_suspended::<join_room_by_id_or_alias::v3::Request>(always);
    router.deny_while_suspended::<knock_room::v3::Request>(always);
    router.deny_while_suspended::<invite_user::v3::Request>(always);
    router.deny_while_suspended::<kick_user::v3::Request>(always);
    router.deny_while_suspended::<ban_user::v3::Request>(always);
    router.deny_while_suspended::<unban_user::v3::Request>(always);
    router.deny_while_suspended::<send_message_event::v3::Request>(always);
    router.deny_while_suspended::<send_state_event::v3::Request>(always);
    router.deny_while_suspended::<create_room::v3::Request>(always);
    router.deny_while_suspended::<upgrade_room::v3::Request>(always);
    router.deny_while_suspended::<set_profile_field::v3::Request>(always);
    router.deny_while_suspended::<delete_profile_field::v3::Request>(always);
    router.deny_while_suspended::<redact_event::v3::Request>(redacts_someone_else);
    router.deny_path_while_suspended(Method::POST, "/_matrix/media/v3/upload", always);
    router.deny_path_while_suspended(
        Method::PUT,
        "/_matrix/media/v3/upload/{serverName}/{mediaId}",
        always,
    );
    router.deny_path_while_suspended(Method::POST, "/_matrix/media/v1/create", always);
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`: refused when the event is someone else's.
/// An unknown event is left to the handler (404).
fn redacts_someone_else(services: &Services, user_id: &UserId, args: &[String]) -> Result<bool> {
    let Some(event_id) = args.get(1).and_then(|id| EventId::parse(id).ok()) else {
        return Ok(false);
    };
    Ok(services
        .rooms
        .event(&event_id)?
        .is_some_and(|event| event.pdu.sender != user_id))
}

/// Devices → one session each (a device holds one token pair at a time) → the addresses it
/// was used from, with time and user agent. Open to admins and to the user themselves (the
/// spec allows either restriction).
async fn whois(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_user_info::v3::Request,
) -> Result<get_user_info::v3::Response> {
    let me = ctx.authed()?;
    if me.user_id != body.user_id && !services.users.is_admin(&me.user_id)? {
        return Err(Error::forbidden(
            "Only server administrators can look up other users",
        ));
    }
    if body.user_id.server_name() != services.rooms.server_name() {
        return Err(Error::invalid_param(
            "User does not belong to the local server",
        ));
    }
    if !services.users.exists(&body.user_id)? {
        return Err(Error::not_found("User not found"));
    }
    let ms = |ms: u64| UInt::new(ms).map(MilliSecondsSinceUnixEpoch);
    let mut devices = BTreeMap::new();
    for (device_id, record) in services.sessions.devices(&body.user_id)? {
        let mut connections = Vec::new();
        for (ip, seen) in services.sessions.connections(&body.user_id, &device_id)? {
            let mut connection = get_user_info::v3::ConnectionInfo::new();
            connection.ip = Some(ip);
            connection.last_seen = ms(seen.last_seen_ms);
            connection.user_agent = seen.user_agent;
            connections.push(connection);
        }
        if connections.is_empty() && record.last_seen_ip.is_some() {
            // Seen only at login (no request since): what the device record knows.
            let mut connection = get_user_info::v3::ConnectionInfo::new();
            connection.ip = record.last_seen_ip.clone();
            connection.last_seen = record.last_seen_ms.and_then(ms);
            connections.push(connection);
        }
        let mut session = get_user_info::v3::SessionInfo::new();
        session.connections = connections;
        let mut device = get_user_info::v3::DeviceInfo::new();
        device.sessions = vec![session];
        devices.insert(device_id.to_string(), device);
    }
    let mut response = get_user_info::v3::Response::new();
    response.user_id = Some(body.user_id);
    response.devices = devices;
    Ok(response)
}

fn authorize(services: &Services, ctx: &Ctx, target: &UserId, change: bool) -> Result<()> {
    services.moderation.authorize(
        &services.users,
        services.rooms.server_name(),
        &ctx.authed()?.user_id,
        target,
        change,
    )
}

async fn get_lock(
    services: Arc<Services>,
    ctx: Ctx,
    body: is_user_locked::v1::Request,
) -> Result<is_user_locked::v1::Response> {
    authorize(&services, &ctx, &body.user_id, false)?;
    let status = services.moderation.status(&body.user_id)?;
    Ok(is_user_locked::v1::Response::new(status.locked))
}

async fn put_lock(
    services: Arc<Services>,
    ctx: Ctx,
    body: lock_user::v1::Request,
) -> Result<lock_user::v1::Response> {
    authorize(&services, &ctx, &body.user_id, true)?;
    let status = services
        .moderation
        .set(&body.user_id, Restriction::Lock, body.locked)
        .await?;
    Ok(lock_user::v1::Response::new(status.locked))
}

async fn get_suspend(
    services: Arc<Services>,
    ctx: Ctx,
    body: is_user_suspended::v1::Request,
) -> Result<is_user_suspended::v1::Response> {
    authorize(&services, &ctx, &body.user_id, false)?;
    let status = services.moderation.status(&body.user_id)?;
    Ok(is_user_suspended::v1::Response::new(status.suspended))
}

async fn put_suspend(
    services: Arc<Services>,
    ctx: Ctx,
    body: suspend_user::v1::Request,
) -> Result<suspend_user::v1::Response> {
    authorize(&services, &ctx, &body.user_id, true)?;
    let status = services
        .moderation
        .set(&body.user_id, Restriction::Suspend, body.suspended)
        .await?;
    Ok(suspend_user::v1::Response::new(status.suspended))
}
