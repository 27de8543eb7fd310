//! Client-Server API handlers.

pub mod account;
pub mod capabilities;
pub mod device;
pub mod discovery;
pub mod register;
pub mod session;

use crate::http::Router;

pub fn register_routes(router: &mut Router) {
    discovery::routes(router);
    capabilities::routes(router);
    register::routes(router);
    session::routes(router);
    account::routes(router);
    device::routes(router);
}
