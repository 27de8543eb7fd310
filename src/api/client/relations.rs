//! Event relationships: `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`
//! and the thread list `GET /rooms/{roomId}/threads`.

use std::sync::Arc;

use ruma::{
    api::{
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads,
        },
        Direction,
    },
    serde::Raw,
    OwnedEventId, OwnedRoomId, UInt,
};

use super::room::{known_room, raw, viewer};
use crate::{
    error::{Error, Result},
    http::{Authed, Ctx, Router},
    service::{
        rooms::relations::{RelationsQuery, RECURSION_DEPTH},
        Services,
    },
};

/// `/relations` page size when the client gives none, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// `/threads` page size when the client gives none, and the most it may ask for.
const DEFAULT_THREADS: usize = 20;
const MAX_THREADS: usize = 100;

pub fn routes(router: &mut Router) {
    router.ruma(relations);
    router.ruma(relations_of_type);
    router.ruma(relations_of_type_and_event_type);
    router.ruma(threads);
}

fn token(value: Option<&str>) -> Result<Option<u64>> {
    value.map(super::room::pagination_position).transpose()
}

fn limit(value: Option<UInt>, default: usize, max: usize) -> usize {
    value
        .map_or(default, |l| usize::try_from(u64::from(l)).unwrap_or(max))
        .clamp(1, max)
}

/// What every `/relations` variant returns.
struct Page {
    chunk: Vec<Raw<ruma::events::AnyMessageLikeEvent>>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

/// What every `/relations` variant asks: the parent, the relation filter and the paging.
struct PageRequest {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    query: RelationsQuery,
    from: Option<String>,
    to: Option<String>,
    dir: Direction,
    limit: Option<UInt>,
}

/// Reads a page of relations off the async workers (a heavy read).
async fn page(services: Arc<Services>, ctx: Ctx, request: PageRequest) -> Result<Page> {
    let me = ctx.authed()?.clone();
    let reading = services.clone();
    services
        .rooms
        .heavy_read(move || read_page(&reading, &me, request))
        .await
}

fn read_page(services: &Services, me: &Authed, request: PageRequest) -> Result<Page> {
    let PageRequest {
        room_id,
        event_id,
        mut query,
        from,
        to,
        dir,
        limit: limit_value,
    } = request;
    // Unknown, foreign or invisible parent: 404, so that existence does not leak.
    let room = known_room(services, &room_id)?;
    let mut reader = services.rooms.reader(&room_id, &me.user_id)?;
    let parent = services
        .rooms
        .event(&event_id)?
        .filter(|e| e.meta.room_sid == room.sid);
    let parent = reader.visible(parent)?;
    query.from = token(from.as_deref())?;
    query.to = token(to.as_deref())?;
    query.backwards = dir == Direction::Backward;
    query.limit = limit(limit_value, DEFAULT_LIMIT, MAX_LIMIT);
    let result = services.rooms.relations(&parent, &mut reader, &query)?;
    let chunk = result
        .events
        .iter()
        .map(|e| raw(services.rooms.client_event_bundled(e, Some(viewer(me)))?))
        .collect::<Result<_>>()?;
    Ok(Page {
        chunk,
        next_batch: result.next.map(|t| t.to_string()),
        prev_batch: from,
        recursion_depth: query.recurse.then(|| UInt::from(RECURSION_DEPTH)),
    })
}

async fn relations(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_relating_events::v1::Request,
) -> Result<get_relating_events::v1::Response> {
    let query = RelationsQuery {
        recurse: body.recurse,
        ..Default::default()
    };
    let page = page(
        services,
        ctx,
        PageRequest {
            room_id: body.room_id,
            event_id: body.event_id,
            query,
            from: body.from,
            to: body.to,
            dir: body.dir,
            limit: body.limit,
        },
    )
    .await?;
    let mut response = get_relating_events::v1::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.recursion_depth = page.recursion_depth;
    Ok(response)
}

async fn relations_of_type(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_relating_events_with_rel_type::v1::Request,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let query = RelationsQuery {
        rel_type: Some(body.rel_type.to_string()),
        recurse: body.recurse,
        ..Default::default()
    };
    let page = page(
        services,
        ctx,
        PageRequest {
            room_id: body.room_id,
            event_id: body.event_id,
            query,
            from: body.from,
            to: body.to,
            dir: body.dir,
            limit: body.limit,
        },
    )
    .await?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.recursion_depth = page.recursion_depth;
    Ok(response)
}

async fn relations_of_type_and_event_type(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_relating_events_with_rel_type_and_event_type::v1::Request,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let query = RelationsQuery {
        rel_type: Some(body.rel_type.to_string()),
        event_type: Some(body.event_type.to_string()),
        recurse: body.recurse,
        ..Default::default()
    };
    let page = page(
        services,
        ctx,
        PageRequest {
            room_id: body.room_id,
            event_id: body.event_id,
            query,
            from: body.from,
            to: body.to,
            dir: body.dir,
            limit: body.limit,
        },
    )
    .await?;
    let mut response =
        get_relating_events_with_rel_type_and_event_type::v1::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.recursion_depth = page.recursion_depth;
    Ok(response)
}

/// The room's thread roots, newest activity first, with their thread summaries. 403 for a user
/// who cannot read the room (never a member, and it is not world-readable).
async fn threads(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_threads::v1::Request,
) -> Result<get_threads::v1::Response> {
    let me = ctx.authed()?.clone();
    let reading = services.clone();
    services
        .rooms
        .heavy_read(move || threads_page(&reading, &me, &body))
        .await
}

fn threads_page(
    services: &Services,
    me: &Authed,
    body: &get_threads::v1::Request,
) -> Result<get_threads::v1::Response> {
    let room = known_room(services, &body.room_id)?;
    let mut reader = services.rooms.reader(&body.room_id, &me.user_id)?;
    reader.access.require_history()?;
    let participated = match body.include.as_str() {
        "all" => false,
        "participated" => true,
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown include value {other}"
            )))
        }
    };
    let from = token(body.from.as_deref())?;
    let limit = limit(body.limit, DEFAULT_THREADS, MAX_THREADS);
    let page = services.rooms.threads(
        room.sid,
        &mut reader,
        &me.user_id,
        participated,
        from,
        limit,
    )?;
    let chunk = page
        .roots
        .iter()
        .map(|e| raw(services.rooms.client_event_bundled(e, Some(viewer(me)))?))
        .collect::<Result<_>>()?;
    let mut response = get_threads::v1::Response::new(chunk);
    response.next_batch = page.next.map(|t| t.to_string());
    Ok(response)
}
