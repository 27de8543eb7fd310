//! Third-party networks (spec: client-server API, "Third-party Networks") and the two
//! client-server endpoints reserved for application services.
//!
//! Protocols, third-party locations and third-party users all come from application services
//! (bridges). Hearth has none, so no protocol exists: the protocol list is empty, every
//! protocol is unknown (404), and no Matrix alias or user maps to a third-party location or
//! user. The reverse lookups still tell apart a Matrix alias or user this server knows not to
//! exist (404, as the spec says for "not found") from one that exists or lives elsewhere (an
//! empty list: it exists, nothing bridges it).
//!
//! `POST /appservice/{appserviceId}/ping` and `PUT /directory/list/appservice/{networkId}/
//! {roomId}` need an application service's `as_token`; with no application services, every
//! token that authenticates is a user's, and the spec answers those 403 `M_FORBIDDEN`.

use std::sync::Arc;

use ruma::api::client::{
    appservice::{request_ping, set_room_visibility},
    thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
        get_user_for_protocol, get_user_for_user_id,
    },
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(protocols);
    router.ruma(protocol);
    router.ruma(location_for_protocol);
    router.ruma(user_for_protocol);
    router.ruma(location_for_alias);
    router.ruma(user_for_user_id);
    router.ruma(appservice_ping);
    router.ruma(appservice_room_visibility);
}

fn unknown_protocol(protocol: &str) -> Error {
    Error::not_found(format!(
        "Unknown protocol {protocol:?}: this server has no application services"
    ))
}

fn not_an_appservice() -> Error {
    Error::forbidden("Only an application service's as_token may call this endpoint")
}

async fn protocols(
    _: Arc<Services>,
    ctx: Ctx,
    _: get_protocols::v3::Request,
) -> Result<get_protocols::v3::Response> {
    ctx.authed()?;
    Ok(get_protocols::v3::Response::new(Default::default()))
}

async fn protocol(
    _: Arc<Services>,
    ctx: Ctx,
    body: get_protocol::v3::Request,
) -> Result<get_protocol::v3::Response> {
    ctx.authed()?;
    Err(unknown_protocol(&body.protocol))
}

async fn location_for_protocol(
    _: Arc<Services>,
    ctx: Ctx,
    body: get_location_for_protocol::v3::Request,
) -> Result<get_location_for_protocol::v3::Response> {
    ctx.authed()?;
    Err(unknown_protocol(&body.protocol))
}

async fn user_for_protocol(
    _: Arc<Services>,
    ctx: Ctx,
    body: get_user_for_protocol::v3::Request,
) -> Result<get_user_for_protocol::v3::Response> {
    ctx.authed()?;
    Err(unknown_protocol(&body.protocol))
}

async fn location_for_alias(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_location_for_room_alias::v3::Request,
) -> Result<get_location_for_room_alias::v3::Response> {
    ctx.authed()?;
    let local = body.alias.server_name() == services.rooms.server_name();
    if local && services.rooms.alias_room(&body.alias)?.is_none() {
        return Err(Error::not_found(format!(
            "Room alias {} not found",
            body.alias
        )));
    }
    Ok(get_location_for_room_alias::v3::Response::new(Vec::new()))
}

async fn user_for_user_id(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_user_for_user_id::v3::Request,
) -> Result<get_user_for_user_id::v3::Response> {
    ctx.authed()?;
    let local = body.userid.server_name() == services.rooms.server_name();
    if local && !services.users.exists(&body.userid)? {
        return Err(Error::not_found(format!("User {} not found", body.userid)));
    }
    Ok(get_user_for_user_id::v3::Response::new(Vec::new()))
}

async fn appservice_ping(
    _: Arc<Services>,
    ctx: Ctx,
    _: request_ping::v1::Request,
) -> Result<request_ping::v1::Response> {
    ctx.authed()?;
    Err(not_an_appservice())
}

async fn appservice_room_visibility(
    _: Arc<Services>,
    ctx: Ctx,
    _: set_room_visibility::v3::Request,
) -> Result<set_room_visibility::v3::Response> {
    ctx.authed()?;
    Err(not_an_appservice())
}
