//! Account data: `GET/PUT /user/{userId}/account_data/{type}` (global) and
//! `GET/PUT /user/{userId}/rooms/{roomId}/account_data/{type}` (per room).
//!
//! Users only see and change their own account data (403 `M_FORBIDDEN` otherwise), and room
//! account data only of rooms they are or were in (403). The server-managed types are refused
//! on `PUT` with 405 `M_BAD_JSON` but read "as normal" (spec: account data, Server Behaviour):
//! `m.push_rules` reads the user's push rules, room `m.fully_read` the read marker.

use std::sync::Arc;

use ruma::{
    api::client::config::{
        get_global_account_data, get_room_account_data, set_global_account_data,
        set_room_account_data,
    },
    serde::Raw,
    RoomId, UserId,
};
use serde_json::value::RawValue;

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(get_global);
    router.ruma(set_global);
    router.ruma(get_room);
    router.ruma(set_room);
}

fn check_own(ctx: &Ctx, user_id: &UserId) -> Result<()> {
    if ctx.authed()?.user_id != user_id {
        return Err(Error::forbidden(
            "Cannot access account data of other users",
        ));
    }
    Ok(())
}

/// Room account data and tags are only for rooms the user has a membership in (joined, or
/// joined before and left, invited...); 403 otherwise.
pub fn check_room(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<()> {
    if services.rooms.membership(room_id, user_id)?.is_none() {
        return Err(Error::forbidden("You have never been in this room"));
    }
    Ok(())
}

fn raw_json<T>(bytes: Vec<u8>) -> Result<Raw<T>> {
    let json = String::from_utf8(bytes)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .ok_or_else(|| Error::unknown("Stored account data is not JSON"))?;
    Ok(Raw::from_json(json))
}

async fn get_global(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_global_account_data::v3::Request,
) -> Result<get_global_account_data::v3::Response> {
    check_own(&ctx, &body.user_id)?;
    let kind = body.event_type.to_string();
    let content = if kind == "m.push_rules" {
        let global = services.push_rules.ruleset(&body.user_id)?;
        serde_json::to_vec(&serde_json::json!({ "global": global }))
            .map_err(|_| Error::unknown("Cannot serialize the push rules"))?
    } else {
        services
            .account_data
            .get(&body.user_id, None, &kind)?
            .ok_or_else(|| Error::not_found(format!("No account data of type {kind}")))?
    };
    Ok(get_global_account_data::v3::Response::new(raw_json(
        content,
    )?))
}

async fn set_global(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_global_account_data::v3::Request,
) -> Result<set_global_account_data::v3::Response> {
    check_own(&ctx, &body.user_id)?;
    let kind = body.event_type.to_string();
    services
        .account_data
        .set(
            &body.user_id,
            None,
            &kind,
            body.data.json().get().as_bytes(),
        )
        .await?;
    Ok(set_global_account_data::v3::Response::new())
}

async fn get_room(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_room_account_data::v3::Request,
) -> Result<get_room_account_data::v3::Response> {
    check_own(&ctx, &body.user_id)?;
    check_room(&services, &body.room_id, &body.user_id)?;
    let kind = body.event_type.to_string();
    let content = services
        .account_data
        .get(&body.user_id, Some(&body.room_id), &kind)?
        .ok_or_else(|| Error::not_found(format!("No room account data of type {kind}")))?;
    Ok(get_room_account_data::v3::Response::new(raw_json(content)?))
}

async fn set_room(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_room_account_data::v3::Request,
) -> Result<set_room_account_data::v3::Response> {
    check_own(&ctx, &body.user_id)?;
    let kind = body.event_type.to_string();
    crate::service::account_data::check_settable(&kind)?;
    check_room(&services, &body.room_id, &body.user_id)?;
    services
        .account_data
        .set(
            &body.user_id,
            Some(&body.room_id),
            &kind,
            body.data.json().get().as_bytes(),
        )
        .await?;
    Ok(set_room_account_data::v3::Response::new())
}
