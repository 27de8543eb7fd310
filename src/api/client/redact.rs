//! `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`: redacting an event.

use std::sync::Arc;

use ruma::api::client::redact::redact_event;

use super::room::require_joined;
use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{rooms::Txn, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(redact);
}

/// Sends an `m.room.redaction` for the event. A retransmission (same device and transaction
/// id for the same event) returns the first redaction's id. 403 if the user is not joined or
/// may not redact the event (not their own and below the `redact` power level), 404 if the
/// event is not in the room.
async fn redact(
    services: Arc<Services>,
    ctx: Ctx,
    body: redact_event::v3::Request,
) -> Result<redact_event::v3::Response> {
    let me = ctx.authed()?;
    let txn = Txn {
        device_id: me.device_id.to_string(),
        scope: format!("redact/{}/{}", body.room_id, body.event_id),
        txn_id: body.txn_id.to_string(),
    };
    if let Some(event_id) = services.rooms.txn_event(&me.user_id, &txn)? {
        return Ok(redact_event::v3::Response::new(event_id));
    }
    let room = require_joined(&services, &body.room_id, &me.user_id)?;
    let target = services.rooms.event(&body.event_id)?;
    if target.is_none_or(|t| t.meta.room_sid != room.sid) {
        return Err(Error::not_found("Event not found"));
    }
    let event_id = services
        .rooms
        .redact(
            &body.room_id,
            &me.user_id,
            body.event_id.clone(),
            body.reason.clone(),
            txn,
        )
        .await?;
    Ok(redact_event::v3::Response::new(event_id))
}
