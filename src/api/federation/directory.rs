//! `GET` and `POST /_matrix/federation/v1/publicRooms` (spec: Server-Server, Public Room
//! Directory): this server's published rooms, as the client API lists them.
//!
//! This server bridges no third-party networks: `include_all_networks` lists the Matrix
//! rooms, and a specific `third_party_instance_id` has no rooms.

use std::sync::Arc;

use ruma::{
    api::federation::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::RoomNetwork,
    UInt,
};

use crate::{
    api::client::directory::{limit, parts},
    error::Result,
    http::{Ctx, Router},
    service::{federation::answers, rooms::directory::DirectoryQuery, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(list);
    router.ruma(list_filtered);
}

async fn list(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_public_rooms::v1::Request,
) -> Result<get_public_rooms::v1::Response> {
    ctx.origin()?;
    let mut response = get_public_rooms::v1::Response::new();
    if let RoomNetwork::ThirdParty(_) = body.room_network {
        response.total_room_count_estimate = Some(UInt::MIN);
        return Ok(response);
    }
    let query = DirectoryQuery {
        limit: limit(body.limit),
        since: body.since,
        ..Default::default()
    };
    let (chunk, next_batch, prev_batch, total) = parts(answers::public_rooms(&services, query)?);
    response.chunk = chunk;
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = Some(total);
    Ok(response)
}

async fn list_filtered(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_public_rooms_filtered::v1::Request,
) -> Result<get_public_rooms_filtered::v1::Response> {
    ctx.origin()?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    if let RoomNetwork::ThirdParty(_) = body.room_network {
        response.total_room_count_estimate = Some(UInt::MIN);
        return Ok(response);
    }
    let query = DirectoryQuery {
        limit: limit(body.limit),
        since: body.since,
        search: body.filter.generic_search_term.filter(|t| !t.is_empty()),
        room_types: body
            .filter
            .room_types
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect(),
    };
    let (chunk, next_batch, prev_batch, total) = parts(answers::public_rooms(&services, query)?);
    response.chunk = chunk;
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = Some(total);
    Ok(response)
}
