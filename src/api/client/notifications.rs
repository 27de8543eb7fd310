//! `GET /notifications` (spec: "Listing notifications"): the events that notified the user,
//! newest first, as stored when each event was persisted, with whether the user has read them.
//!
//! `from` is the `next_token` of an earlier page (a stream position); `limit` defaults to 20
//! and is capped at 100; `only=highlight` keeps the highlights. Each user only ever sees their
//! own notifications.

use std::sync::Arc;

use ruma::{
    api::client::push::get_notifications::v3::{Notification, Request, Response},
    push::Action,
    serde::Raw,
    MilliSecondsSinceUnixEpoch, RoomId, UInt,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{push::notified::notified, rooms::format::Viewer, Services},
};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

pub fn routes(router: &mut Router) {
    router.ruma(list);
}

async fn list(services: Arc<Services>, ctx: Ctx, body: Request) -> Result<Response> {
    let me = ctx.authed()?;
    let from = match body.from.as_deref() {
        None | Some("") => None,
        Some(token) => Some(
            token
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("Unknown pagination token in from"))?,
        ),
    };
    let limit = body
        .limit
        .map_or(DEFAULT_LIMIT, |l| usize::try_from(l).unwrap_or(MAX_LIMIT))
        .clamp(1, MAX_LIMIT);
    let highlights_only = match body.only.as_deref() {
        None | Some("") => false,
        Some("highlight") => true,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown value {other:?} for only; the spec defines \"highlight\""
            )))
        }
    };
    let rooms = services.rooms.notification_rooms(&me.user_id)?;
    let (rows, next) =
        services
            .notifications
            .list(&me.user_id, &rooms, from, limit, highlights_only)?;
    let viewer = Viewer {
        user_id: &me.user_id,
        device_id: Some(me.device_id.as_str()),
    };
    let mut out = Vec::with_capacity(rows.len());
    for (sid, row, read) in rows {
        let Some(event) = notified(&services.rooms, &me.user_id, &row.room_id, sid)? else {
            continue;
        };
        let Ok(room_id) = RoomId::parse(&row.room_id) else {
            continue;
        };
        let Some(mut json) = event.client_event(&services.rooms, Some(viewer)) else {
            continue;
        };
        if let Some(map) = json.as_object_mut() {
            map.remove("room_id");
        }
        let actions: Vec<Action> = serde_json::from_str(&row.actions).unwrap_or_default();
        let event = serde_json::value::to_raw_value(&json)
            .map_err(|e| Error::unknown(format!("cannot serialize event: {e}")))?;
        out.push(Notification::new(
            actions,
            Raw::from_json(event),
            read,
            room_id,
            MilliSecondsSinceUnixEpoch(UInt::try_from(row.ts).unwrap_or(UInt::MAX)),
        ));
    }
    let mut response = Response::new(out);
    response.next_token = next.map(|n| n.to_string());
    Ok(response)
}
