//! The published room directory: a room's visibility in it, and listing it (this server's,
//! or another server's through its federation `publicRooms`).

use std::sync::Arc;

use ruma::{
    api::client::{
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::Visibility,
    },
    directory::{PublicRoomsChunk, PublicRoomsChunkInit, RoomNetwork},
    room::{JoinRuleKind, RoomType},
    MxcUri, RoomId, ServerName, UInt,
};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    http::{Ctx, Incoming, Response, Router},
    service::{
        federation::queries::DirectoryRequest,
        rooms::directory::{DirectoryPage, DirectoryQuery, DirectoryRoom},
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(get_visibility);
    // A raw route: the spec lets `visibility` default to `public`, which ruma's typed request
    // (a required field) would refuse.
    router.raw_ruma::<set_room_visibility::v3::Request, _, _>(set_visibility);
    router.ruma(list);
    router.ruma(list_filtered);
}

async fn get_visibility(
    services: Arc<Services>,
    _ctx: Ctx,
    body: get_room_visibility::v3::Request,
) -> Result<get_room_visibility::v3::Response> {
    if services.rooms.room(&body.room_id)?.is_none() {
        return Err(Error::not_found("Room not found"));
    }
    let visibility = if services.rooms.is_published(&body.room_id)? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

async fn set_visibility(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    let room_id = incoming
        .path_args
        .first()
        .ok_or_else(|| Error::missing_param("Missing room id"))?;
    let room_id = RoomId::parse(room_id)
        .map_err(|e| Error::invalid_param(format!("Invalid room id: {e}")))?;
    let raw = incoming.request.body();
    let body: Value = if raw.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(raw)
            .map_err(|e| Error::not_json(format!("Request body is not valid JSON: {e}")))?
    };
    let body = body
        .as_object()
        .ok_or_else(|| Error::bad_json("The request body must be a JSON object"))?;
    let publish = match body.get("visibility") {
        None => true,
        Some(Value::String(v)) if v == "public" => true,
        Some(Value::String(v)) if v == "private" => false,
        Some(Value::String(v)) => {
            return Err(Error::invalid_param(format!("Unknown visibility {v}")))
        }
        Some(_) => return Err(Error::bad_json("visibility must be a string")),
    };
    services
        .rooms
        .set_published(&room_id, &me.user_id, publish)
        .await?;
    Ok(crate::http::json_response(
        http::StatusCode::OK,
        b"{}".to_vec(),
    ))
}

/// The other server whose directory is asked for, if any (`server` naming this server is
/// this server's directory). The spec lets anyone list directories, other servers' too; the
/// requests this makes to other servers are bounded by the per-IP rate limit and by the
/// query client's per-destination and overall limits.
fn remote_server<'a>(
    services: &Services,
    server: Option<&'a ServerName>,
) -> Option<&'a ServerName> {
    server.filter(|server| !services.queries.is_local(server))
}

pub(crate) fn limit(limit: Option<UInt>) -> Option<usize> {
    limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
}

fn chunk(room: DirectoryRoom) -> PublicRoomsChunk {
    let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::new_saturating(room.num_joined_members),
        room_id: room.room_id,
        world_readable: room.world_readable,
        guest_can_join: room.guest_can_join,
    }
    .into();
    chunk.name = room.name;
    chunk.topic = room.topic;
    chunk.canonical_alias = room.canonical_alias;
    chunk.avatar_url = room
        .avatar_url
        .map(|u| <&MxcUri>::from(u.as_str()).to_owned());
    chunk.join_rule = JoinRuleKind::from(room.join_rule.as_str());
    chunk.room_type = room.room_type.as_deref().map(RoomType::from);
    chunk
}

pub(crate) fn parts(
    page: DirectoryPage,
) -> (Vec<PublicRoomsChunk>, Option<String>, Option<String>, UInt) {
    (
        page.rooms.into_iter().map(chunk).collect(),
        page.next_batch,
        page.prev_batch,
        UInt::new_saturating(page.total as u64),
    )
}

async fn list(
    services: Arc<Services>,
    _ctx: Ctx,
    body: get_public_rooms::v3::Request,
) -> Result<get_public_rooms::v3::Response> {
    if let Some(server) = remote_server(&services, body.server.as_deref()) {
        let request = DirectoryRequest {
            limit: body.limit,
            since: body.since,
            ..Default::default()
        };
        let remote = services.queries.public_rooms(server, request).await?;
        let mut response = get_public_rooms::v3::Response::new(remote.chunk);
        response.next_batch = remote.next_batch;
        response.prev_batch = remote.prev_batch;
        response.total_room_count_estimate = remote.total_room_count_estimate;
        return Ok(response);
    }
    let query = DirectoryQuery {
        limit: limit(body.limit),
        since: body.since.clone(),
        ..Default::default()
    };
    let (chunk, next_batch, prev_batch, total) = parts(services.rooms.public_rooms(&query)?);
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = Some(total);
    Ok(response)
}

async fn list_filtered(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_public_rooms_filtered::v3::Request,
) -> Result<get_public_rooms_filtered::v3::Response> {
    ctx.authed()?;
    if let Some(server) = remote_server(&services, body.server.as_deref()) {
        let request = DirectoryRequest {
            limit: body.limit,
            since: body.since,
            filter: Some(body.filter),
            room_network: body.room_network,
        };
        let remote = services.queries.public_rooms(server, request).await?;
        let mut response = get_public_rooms_filtered::v3::Response::new();
        response.chunk = remote.chunk;
        response.next_batch = remote.next_batch;
        response.prev_batch = remote.prev_batch;
        response.total_room_count_estimate = remote.total_room_count_estimate;
        return Ok(response);
    }
    let mut response = get_public_rooms_filtered::v3::Response::new();
    // This server bridges no third-party networks: "all networks" is the Matrix one, and a
    // specific third-party network has no rooms here.
    if let RoomNetwork::ThirdParty(_) = body.room_network {
        response.total_room_count_estimate = Some(UInt::MIN);
        return Ok(response);
    }
    let query = DirectoryQuery {
        limit: limit(body.limit),
        since: body.since.clone(),
        search: body
            .filter
            .generic_search_term
            .clone()
            .filter(|t| !t.is_empty()),
        room_types: body
            .filter
            .room_types
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect(),
    };
    let (chunk, next_batch, prev_batch, total) = parts(services.rooms.public_rooms(&query)?);
    response.chunk = chunk;
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = Some(total);
    Ok(response)
}
