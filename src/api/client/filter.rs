//! Filters: `POST /user/{userId}/filter` and `GET /user/{userId}/filter/{filterId}`.
//!
//! Users only upload and read their own filters (403 `M_FORBIDDEN` otherwise). A download
//! returns the filter exactly as uploaded. ruma's typed request and response would re-encode
//! the filter through `FilterDefinition`, dropping default values (`"event_format":
//! "client"`) and unknown keys, so both endpoints are raw routes on ruma's paths; the filter is
//! still checked against `FilterDefinition` on upload.

use std::sync::Arc;

use http::StatusCode;
use ruma::{
    api::client::filter::{create_filter, get_filter},
    OwnedUserId,
};
use serde_json::json;

use crate::{
    error::{Error, Result},
    http::{json_response, Incoming, Response, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.raw_ruma::<create_filter::v3::Request, _, _>(create);
    router.raw_ruma::<get_filter::v3::Request, _, _>(get);
}

/// The `{userId}` of the path, which must be the authenticated user.
fn own_user(incoming: &Incoming) -> Result<OwnedUserId> {
    let arg = incoming
        .path_args
        .first()
        .ok_or_else(|| Error::missing_param("Missing user id"))?;
    let user_id = OwnedUserId::try_from(arg.as_str())
        .map_err(|e| Error::invalid_param(format!("Invalid user id: {e}")))?;
    if incoming.ctx.authed()?.user_id != user_id {
        return Err(Error::forbidden("Cannot access filters of other users"));
    }
    Ok(user_id)
}

async fn create(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let user_id = own_user(&incoming)?;
    let filter_id = services
        .filters
        .create(&user_id, incoming.request.body())
        .await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "filter_id": filter_id }).to_string().into_bytes(),
    ))
}

async fn get(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let user_id = own_user(&incoming)?;
    let filter_id = incoming
        .path_args
        .get(1)
        .ok_or_else(|| Error::missing_param("Missing filter id"))?;
    let filter = services
        .filters
        .get_json(&user_id, filter_id)?
        .ok_or_else(|| Error::not_found("Unknown filter"))?;
    Ok(json_response(StatusCode::OK, filter))
}
