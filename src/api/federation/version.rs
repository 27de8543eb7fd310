//! `GET /_matrix/federation/v1/version` (spec: Server-Server, Server Implementation): the
//! software name and version, for other servers' diagnostics and for `hearth check`.

use std::sync::Arc;

use ruma::api::federation::discovery::get_server_version::v1 as version;

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(get);
}

async fn get(_: Arc<Services>, _: Ctx, _: version::Request) -> Result<version::Response> {
    let mut server = version::Server::new();
    server.name = Some("Hearth".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = version::Response::new();
    response.server = Some(server);
    Ok(response)
}
