//! Server-Server API handlers, one module per spec area. Routes whose ruma type declares
//! X-Matrix authentication reach their handler only after the router verified the signature
//! (`ctx.origin()` is the verified origin server).

pub mod backfill;
pub mod directory;
pub mod events;
pub mod invite;
pub mod keys;
pub mod media;
pub mod membership;
pub mod openid;
pub mod query;
pub mod send;
pub mod space;
pub mod user;
pub mod version;

use crate::http::Router;

pub fn register_routes(router: &mut Router) {
    keys::routes(router);
    media::routes(router);
    membership::routes(router);
    openid::routes(router);
    send::routes(router);
    version::routes(router);
    query::routes(router);
    user::routes(router);
    directory::routes(router);
    invite::routes(router);
    events::routes(router);
    backfill::routes(router);
    space::routes(router);
}
