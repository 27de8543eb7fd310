//! Client-Server API handlers.

pub mod account;
pub mod account_data;
pub mod admin;
pub mod alias;
pub mod backup;
pub mod capabilities;
pub mod context;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod filter;
pub mod keys;
pub mod media;
pub mod membership;
pub mod notifications;
pub mod openid;
pub mod presence;
pub mod profile;
pub mod push;
pub mod pushers;
pub mod receipt;
pub mod redact;
pub mod register;
pub mod relations;
pub mod report;
pub mod room;
pub mod session;
pub mod space;
pub mod sync;
pub mod tag;
pub mod timestamp;
pub mod to_device;
pub mod typing;
pub mod upgrade;
pub mod user_directory;

use crate::http::Router;

pub fn register_routes(router: &mut Router) {
    discovery::routes(router);
    capabilities::routes(router);
    register::routes(router);
    session::routes(router);
    account::routes(router);
    device::routes(router);
    room::routes(router);
    sync::routes(router);
    typing::routes(router);
    receipt::routes(router);
    presence::routes(router);
    tag::routes(router);
    membership::routes(router);
    media::routes(router);
    profile::routes(router);
    account_data::routes(router);
    filter::routes(router);
    push::routes(router);
    notifications::routes(router);
    pushers::routes(router);
    alias::routes(router);
    directory::routes(router);
    upgrade::routes(router);
    space::routes(router);
    report::routes(router);
    timestamp::routes(router);
    user_directory::routes(router);
    redact::routes(router);
    relations::routes(router);
    context::routes(router);
    keys::routes(router);
    to_device::routes(router);
    backup::routes(router);
    openid::routes(router);
    admin::routes(router);
    // Last: it marks routes registered above.
    admin::suspension_rules(router);
}
