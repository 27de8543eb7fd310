//! `POST /user/{userId}/openid/request_token` (spec: OpenID): a token a third party exchanges
//! at `GET /_matrix/federation/v1/openid/userinfo` for the user's id. It is an OpenID token
//! only: never an access token (nor the reverse), see `service::expiring_tokens`.

use std::sync::Arc;

use ruma::{
    api::client::account::request_openid_token::v3 as request_token, authentication::TokenType,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(request);
}

async fn request(
    services: Arc<Services>,
    ctx: Ctx,
    body: request_token::Request,
) -> Result<request_token::Response> {
    let me = ctx.authed()?;
    if me.user_id != body.user_id {
        return Err(Error::forbidden(
            "Cannot request an OpenID token for another user",
        ));
    }
    let (token, lifetime) = services.openid_tokens.issue(&me.user_id).await?;
    Ok(request_token::Response::new(
        token,
        TokenType::Bearer,
        services.rooms.server_name().to_owned(),
        lifetime,
    ))
}
