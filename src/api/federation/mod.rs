//! Server-Server API handlers. Only the OpenID user-info endpoint so far, which the spec
//! leaves unauthenticated (third parties call it with the OpenID token, not servers with
//! X-Matrix signatures).

pub mod media;
pub mod openid;

use crate::http::Router;

pub fn register_routes(router: &mut Router) {
    media::routes(router);
    openid::routes(router);
}
