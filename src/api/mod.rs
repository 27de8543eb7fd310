//! Request handlers, one module per spec area. Handlers decode (ruma does that), call a
//! service and encode; the routing table is built here.

pub mod client;
pub mod federation;

use crate::http::Router;

/// Every endpoint Hearth serves. Anything not registered here answers 404 `M_UNRECOGNIZED`.
pub fn router() -> Router {
    let mut router = Router::default();
    client::register_routes(&mut router);
    federation::register_routes(&mut router);
    router
}
