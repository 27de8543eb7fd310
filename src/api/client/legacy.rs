//! The deprecated sync endpoints older clients and bridges still call: `GET /events` (the
//! event stream, and peeking with `room_id`), `GET /events/{eventId}`, `GET /initialSync` and
//! `GET /rooms/{roomId}/initialSync`. The reading is in `service::sync::legacy`; this is the
//! query parsing and the long-poll, which waits like `/sync` does.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use ruma::{EventId, OwnedRoomId, RoomId};
use serde_json::json;

use super::{room::viewer, sync::MAX_TIMEOUT};
use crate::{
    error::{Error, Result},
    http::{json_value, Auth, Incoming, Response, Router},
    service::{
        sync::{self, InitialSyncQuery, Sources, SyncToken},
        Services,
    },
};

pub fn routes(router: &mut Router) {
    for version in ["v3", "r0"] {
        let prefix = format!("/_matrix/client/{version}");
        router.raw(
            Method::GET,
            &format!("{prefix}/events"),
            Auth::Required,
            events,
        );
        router.raw(
            Method::GET,
            &format!("{prefix}/events/{{eventId}}"),
            Auth::Required,
            event,
        );
        router.raw(
            Method::GET,
            &format!("{prefix}/initialSync"),
            Auth::Required,
            initial_sync,
        );
        router.raw(
            Method::GET,
            &format!("{prefix}/rooms/{{roomId}}/initialSync"),
            Auth::Required,
            room_initial_sync,
        );
    }
}

fn sources(services: &Services) -> Sources<'_> {
    Sources {
        rooms: &services.rooms,
        account_data: &services.account_data,
        typing: &services.typing,
        receipts: &services.receipts,
        presence: &services.presence,
        push_rules: &services.push_rules,
        notifications: &services.notifications,
        e2ee: &services.e2ee,
        lazy_members: &services.lazy_members,
    }
}

struct EventsQuery {
    from: Option<(String, SyncToken)>,
    timeout: Duration,
    room_id: Option<OwnedRoomId>,
}

fn parse_events_query(query: &str) -> Result<EventsQuery> {
    let mut out = EventsQuery {
        from: None,
        timeout: Duration::ZERO,
        room_id: None,
    };
    for (key, value) in crate::http::query::pairs(query) {
        match key.as_str() {
            "from" => {
                let token = SyncToken::parse(&value)
                    .ok_or_else(|| Error::invalid_param("Invalid from token"))?;
                out.from = Some((value, token));
            }
            "timeout" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| Error::invalid_param("timeout must be an integer"))?;
                out.timeout = Duration::from_millis(ms).min(MAX_TIMEOUT);
            }
            "room_id" => {
                out.room_id = Some(
                    RoomId::parse(&value)
                        .map_err(|e| Error::invalid_param(format!("Invalid room id: {e}")))?,
                );
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `GET /events`: the events after `from` (without it, from now on), waiting up to `timeout`
/// for one. With `room_id`, the events of that room only, which the user may read without
/// being joined when it is `world_readable` (peeking).
async fn events(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?.clone();
    let query = parse_events_query(incoming.request.uri().query().unwrap_or(""))?;
    let start_now = services.stream.current();
    let since = query.from.as_ref().map_or(start_now, |(_, t)| t.pos);
    let start = match &query.from {
        Some((raw, _)) => raw.clone(),
        None => SyncToken {
            pos: since,
            typing: None,
        }
        .to_string(),
    };
    if let Some(room_id) = &query.room_id {
        // Refuse at once rather than after the wait.
        sync::peek_access(&sources(&services), room_id, &me.user_id)?;
    }
    // A peeker is not among the users a write in the room notifies: wait on the stream.
    let peeking = query.room_id.is_some();
    let notify = services.notifier.subscribe(&me.user_id);
    let mut settled = services.stream.watch();
    let deadline = Instant::now() + query.timeout;
    let page = loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        settled.borrow_and_update();
        let now = services.stream.current();
        let reading = services.clone();
        let (user_id, device_id, room_id) = (
            me.user_id.clone(),
            me.device_id.clone(),
            query.room_id.clone(),
        );
        // A token from the future (e.g. after restoring an older backup) means "now".
        let since = since.min(now);
        let page = services
            .rooms
            .heavy_read(move || {
                sync::events_since(
                    &sources(&reading),
                    &user_id,
                    device_id.as_str(),
                    since,
                    now,
                    room_id.as_deref(),
                )
            })
            .await?;
        // A page cut short (`end` before `now`: a long stretch the user may not see) is
        // progress too: the client continues from its `end` at once.
        if !page.chunk.is_empty()
            || page.end < now
            || Instant::now() >= deadline
            || services.notifier.is_closing()
        {
            break page;
        }
        let stream_moved = async {
            if !peeking || settled.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = stream_moved => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    };
    let end = SyncToken {
        pos: page.end,
        typing: None,
    };
    Ok(json_value(
        StatusCode::OK,
        json!({"chunk": page.chunk, "start": start, "end": end.to_string()}),
    ))
}

/// `GET /events/{eventId}`: the event if the user may see it, else 404.
async fn event(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    let arg = incoming
        .path_args
        .first()
        .ok_or_else(|| Error::missing_param("Missing event id"))?;
    let event_id = EventId::parse(arg.as_str())
        .map_err(|e| Error::invalid_param(format!("Invalid event id: {e}")))?;
    let rooms = &services.rooms;
    let event = rooms.event(&event_id)?;
    let room_id = match &event {
        Some(event) => rooms.client_event(event, None)["room_id"]
            .as_str()
            .and_then(|r| RoomId::parse(r).ok()),
        None => None,
    };
    let Some(room_id) = room_id else {
        return Err(Error::not_found("Event not found"));
    };
    let event = rooms.reader(&room_id, &me.user_id)?.visible(event)?;
    let value = rooms.client_event_bundled(&event, Some(viewer(me)))?;
    Ok(json_value(StatusCode::OK, value))
}

/// `GET /initialSync?limit=&archived=`.
async fn initial_sync(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?.clone();
    let mut query = InitialSyncQuery {
        limit: None,
        archived: false,
    };
    for (key, value) in crate::http::query::pairs(incoming.request.uri().query().unwrap_or("")) {
        match key.as_str() {
            "limit" => {
                query.limit = Some(
                    value
                        .parse()
                        .map_err(|_| Error::invalid_param("limit must be a positive integer"))?,
                );
            }
            "archived" => {
                query.archived = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(Error::invalid_param("archived must be true or false")),
                };
            }
            _ => {}
        }
    }
    let reading = services.clone();
    let body = services
        .rooms
        .heavy_read(move || {
            let now = reading.stream.current();
            sync::initial_sync(
                &sources(&reading),
                &me.user_id,
                me.device_id.as_str(),
                &query,
                now,
            )
        })
        .await?;
    Ok(json_value(StatusCode::OK, body))
}

/// `GET /rooms/{roomId}/initialSync`.
async fn room_initial_sync(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?.clone();
    let arg = incoming
        .path_args
        .first()
        .ok_or_else(|| Error::missing_param("Missing room id"))?;
    let room_id = RoomId::parse(arg.as_str())
        .map_err(|e| Error::invalid_param(format!("Invalid room id: {e}")))?;
    let reading = services.clone();
    let body = services
        .rooms
        .heavy_read(move || {
            let now = reading.stream.current();
            sync::room_initial_sync(
                &sources(&reading),
                &me.user_id,
                me.device_id.as_str(),
                &room_id,
                now,
            )
        })
        .await?;
    Ok(json_value(StatusCode::OK, body))
}
