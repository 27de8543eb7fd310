//! Server-Server API handlers. Only the OpenID user-info endpoint so far, which the spec
//! leaves unauthenticated (third parties call it with the OpenID token, not servers with
//! X-Matrix signatures).

pub mod openid;
pub mod send;

use crate::http::Router;

pub fn register_routes(router: &mut Router) {
    openid::routes(router);
    send::routes(router);
}
