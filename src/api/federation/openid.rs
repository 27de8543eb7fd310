//! `GET /_matrix/federation/v1/openid/userinfo?access_token=…` (spec: Server-Server, OpenID):
//! the user id an OpenID token was issued to, or 401 `M_UNKNOWN_TOKEN`.

use std::sync::Arc;

use ruma::api::federation::openid::get_openid_userinfo::v1 as userinfo;

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(get);
}

/// Unknown and expired tokens are refused alike, and so are tokens of accounts deactivated
/// or locked since: the token vouches for a user who may use the account.
async fn get(
    services: Arc<Services>,
    _: Ctx,
    body: userinfo::Request,
) -> Result<userinfo::Response> {
    let unknown = || {
        Error::new(
            http::StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Access token unknown or expired",
        )
    };
    let found = services
        .openid_tokens
        .find(&body.access_token)?
        .ok_or_else(unknown)?;
    let active = services
        .users
        .get(&found.user_id)?
        .is_some_and(|r| !r.deactivated);
    if !active || services.moderation.status(&found.user_id)?.locked {
        return Err(unknown());
    }
    Ok(userinfo::Response::new(found.user_id))
}
