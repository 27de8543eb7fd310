//! `GET /voip/turnServer`: TURN credentials for calls (spec: client-server API, Voice over IP).
//!
//! Without a configured TURN server the answer is 404 `M_NOT_FOUND`: the spec's 200 response
//! requires credentials and says nothing about the unconfigured case (matrix-spec issue 1795);
//! MSC4166 proposes exactly this error, and clients treat a failed request as "no TURN".
//! The endpoint is not on the spec's list of those guests may call: when guest accounts exist,
//! the guest gate must refuse them here.

use std::{sync::Arc, time::SystemTime};

use ruma::api::client::voip::get_turn_server_info;

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{turn, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(turn_server);
}

async fn turn_server(
    services: Arc<Services>,
    ctx: Ctx,
    _: get_turn_server_info::v3::Request,
) -> Result<get_turn_server_info::v3::Response> {
    let me = ctx.authed()?;
    let creds = turn::credentials(&services.config.turn, &me.user_id, SystemTime::now())
        .ok_or_else(|| Error::not_found("This homeserver offers no TURN server"))?;
    Ok(get_turn_server_info::v3::Response::new(
        creds.username,
        creds.password,
        creds.uris,
        creds.ttl,
    ))
}
