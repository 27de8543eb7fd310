//! Client-Server API handlers.

pub mod account;
pub mod account_data;
pub mod capabilities;
pub mod device;
pub mod discovery;
pub mod filter;
pub mod membership;
pub mod profile;
pub mod push;
pub mod register;
pub mod room;
pub mod session;
pub mod space;

use crate::http::Router;

pub fn register_routes(router: &mut Router) {
    discovery::routes(router);
    capabilities::routes(router);
    register::routes(router);
    session::routes(router);
    account::routes(router);
    device::routes(router);
    room::routes(router);
    membership::routes(router);
    profile::routes(router);
    account_data::routes(router);
    filter::routes(router);
    push::routes(router);
    space::routes(router);
}
