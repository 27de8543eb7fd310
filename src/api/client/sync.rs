//! `GET /sync`: initial and incremental sync with long-polling.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::Method;
use ruma::api::client::filter::FilterDefinition;

use crate::{
    error::{Error, Result},
    http::{Auth, Incoming, Response, Router},
    service::{
        sync::{next_typing_lapse, nothing_new, sync_once, Sources, SyncRequest, SyncToken},
        Services,
    },
};

/// Longest long-poll a client may ask for; longer requests are cut to this.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub fn routes(router: &mut Router) {
    for path in ["/_matrix/client/v3/sync", "/_matrix/client/r0/sync"] {
        router.raw(Method::GET, path, Auth::Required, sync);
    }
}

struct Query {
    since: Option<SyncToken>,
    timeout: Duration,
    full_state: bool,
    filter: Option<String>,
    set_presence: String,
}

fn parse_query(query: &str) -> Result<Query> {
    let mut out = Query {
        since: None,
        timeout: Duration::ZERO,
        full_state: false,
        filter: None,
        set_presence: "online".to_owned(),
    };
    for (key, value) in crate::http::query::pairs(query) {
        match key.as_str() {
            "since" => {
                // `{position}_{typing serial}`, or a bare position.
                out.since = Some(
                    SyncToken::parse(&value)
                        .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
                );
            }
            "timeout" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| Error::invalid_param("timeout must be an integer"))?;
                out.timeout = Duration::from_millis(ms).min(MAX_TIMEOUT);
            }
            "full_state" => out.full_state = value == "true",
            "filter" => out.filter = Some(value),
            "set_presence" => {
                if !matches!(value.as_str(), "online" | "offline" | "unavailable") {
                    return Err(Error::invalid_param(
                        "set_presence must be online, offline or unavailable",
                    ));
                }
                out.set_presence = value;
            }
            _ => {}
        }
    }
    Ok(out)
}

async fn sync(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?.clone();
    let query = parse_query(incoming.request.uri().query().unwrap_or(""))?;
    // Not needed past here, and a long-poll would hold it for minutes.
    drop(incoming);
    let filter = match query.filter.as_deref() {
        None => FilterDefinition::default(),
        Some(inline) if inline.trim_start().starts_with('{') => services.filters.inline(inline)?,
        Some(id) => services
            .filters
            .get(&me.user_id, id)?
            .ok_or_else(|| Error::invalid_param("Unknown filter id"))?,
    };
    // Syncing marks the user online unless the client asks otherwise (spec: `set_presence`).
    Box::pin(
        services
            .presence
            .touch(&services.rooms, &me.user_id, &query.set_presence),
    )
    .await?;
    let since_pos = query.since.map(|t| t.pos);
    let mut request = SyncRequest {
        user_id: &me.user_id,
        device_id: me.device_id.as_str(),
        since: since_pos,
        typing_since: query.since.and_then(|t| t.typing),
        full_state: query.full_state,
        filter,
    };
    let sources = Sources {
        rooms: &services.rooms,
        account_data: &services.account_data,
        typing: &services.typing,
        receipts: &services.receipts,
        presence: &services.presence,
        push_rules: &services.push_rules,
        notifications: &services.notifications,
        e2ee: &services.e2ee,
        lazy_members: &services.lazy_members,
    };
    let notify = services.notifier.subscribe(&me.user_id);
    let deadline = Instant::now() + query.timeout;
    let body = loop {
        // Listen before reading, so a write landing while this pass runs still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = services.stream.current();
        // A token from the future (e.g. after restoring an older backup) means "now".
        request.since = since_pos.map(|s| s.min(now));
        let waiting = Instant::now() < deadline && !services.notifier.is_closing();
        // A typing notification lapsing is a change too; look again when one does.
        let wake_at = if waiting && nothing_new(&sources, &request, now) {
            // The client is up to date (typically it asked again right after an answer):
            // wait without a pass, until a change or a typing lapse in one of its rooms.
            next_typing_lapse(&sources, request.user_id)?
        } else {
            // Boxed: a pass's future is large, and held inline it would stay allocated (in
            // every waiting connection's task) for the whole long-poll.
            let result = Box::pin(sync_once(&sources, &request, now)).await?;
            if result.has_updates
                || request.since.is_none()
                || request.full_state
                || Instant::now() >= deadline
                || services.notifier.is_closing()
            {
                break result.body;
            }
            result.wake_at
        };
        let wake = wake_at.map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    let body = body.to_vec();
    Ok(crate::http::json_response(http::StatusCode::OK, body))
}
