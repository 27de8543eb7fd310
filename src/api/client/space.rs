//! `GET /rooms/{roomId}/hierarchy`: the space tree below a room (spec: spaces).

use std::sync::Arc;

use ruma::{
    api::client::space::{get_hierarchy, SpaceHierarchyRoomsChunk},
    serde::Raw,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        rooms::hierarchy::{HierarchyQuery, DEFAULT_LIMIT, MAX_DEPTH, MAX_LIMIT},
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(hierarchy);
}

/// The pagination token: `offset.max_depth.suggested_only`, so that a later page can refuse
/// a changed `max_depth` or `suggested_only` (spec: 400).
fn token(offset: usize, max_depth: u64, suggested_only: bool) -> String {
    format!("{offset}.{max_depth}.{}", u8::from(suggested_only))
}

fn parse_token(token: &str) -> Option<(usize, u64, bool)> {
    let mut parts = token.split('.');
    let offset = parts.next()?.parse().ok()?;
    let depth = parts.next()?.parse().ok()?;
    let suggested = match parts.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    parts.next().is_none().then_some((offset, depth, suggested))
}

async fn hierarchy(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_hierarchy::v1::Request,
) -> Result<get_hierarchy::v1::Response> {
    let me = ctx.authed()?;
    let limit = match body.limit.map(u64::from) {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(Error::invalid_param("limit must be greater than zero")),
        Some(n) => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    let max_depth = body
        .max_depth
        .map_or(MAX_DEPTH, |d| u64::from(d).min(MAX_DEPTH));
    let offset = match body.from.as_deref() {
        None => 0,
        Some(from) => {
            let (offset, depth, suggested) = parse_token(from)
                .ok_or_else(|| Error::invalid_param("Unknown pagination token"))?;
            if depth != max_depth || suggested != body.suggested_only {
                return Err(Error::invalid_param(
                    "suggested_only and max_depth cannot change on paginated requests",
                ));
            }
            offset
        }
    };
    let query = HierarchyQuery {
        suggested_only: body.suggested_only,
        max_depth,
        offset,
        limit,
    };
    let page = services
        .rooms
        .hierarchy(&me.user_id, &body.room_id, query, &*services.federation)
        .await?;
    let mut rooms = Vec::with_capacity(page.rooms.len());
    for room in page.rooms {
        let children = room
            .children_state
            .iter()
            .map(|event| {
                serde_json::value::to_raw_value(event)
                    .map(Raw::from_json)
                    .map_err(|e| Error::unknown(e.to_string()))
            })
            .collect::<Result<_>>()?;
        rooms.push(SpaceHierarchyRoomsChunk::new(room.summary, children));
    }
    let mut response = get_hierarchy::v1::Response::new();
    response.rooms = rooms;
    response.next_batch = page
        .next_offset
        .map(|offset| token(offset, max_depth, body.suggested_only));
    Ok(response)
}
