//! `GET /_matrix/federation/v1/hierarchy/{roomId}` (spec: Server-Server, "Spaces"): a local
//! space and the children the asking server could peek or join; built in
//! `service::rooms::hierarchy::remote`.

use std::sync::Arc;

use ruma::{
    api::federation::space::{get_hierarchy, SpaceHierarchyParentSummary},
    serde::Raw,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(hierarchy);
}

async fn hierarchy(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_hierarchy::v1::Request,
) -> Result<get_hierarchy::v1::Response> {
    let origin = ctx.origin()?;
    let answer = services
        .rooms
        .hierarchy_for_server(origin, &body.room_id, body.suggested_only)?;
    let children_state = answer
        .room
        .children_state
        .iter()
        .map(|event| {
            serde_json::value::to_raw_value(event)
                .map(Raw::from_json)
                .map_err(|e| Error::unknown(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let mut response = get_hierarchy::v1::Response::new(SpaceHierarchyParentSummary::new(
        answer.room.summary,
        children_state,
    ));
    response.children = answer.children;
    response.inaccessible_children = answer.inaccessible_children;
    Ok(response)
}
