//! Server-Server API handlers: server keys (ours, and as a notary) and the OpenID user-info
//! endpoint, which the spec leaves unauthenticated (third parties call it with the OpenID
//! token, not servers with X-Matrix signatures).

pub mod openid;

use crate::http::Router;

pub fn register_routes(router: &mut Router) {
    openid::routes(router);
}
