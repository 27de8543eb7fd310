//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: simplified sliding
//! sync (MSC4186), long-polling on the same notifier as `/sync`.

use std::{sync::Arc, time::Instant};

use http::Method;
use ruma::api::client::sync::sync_events::v5;

use super::sync::MAX_TIMEOUT;
use crate::{
    error::{Error, Result},
    http::{router::parse_raw, Auth, Incoming, Response, Router},
    service::{
        sync::{
            sliding::{self, sliding_sync_once, SlidingRequest},
            Sources,
        },
        Services,
    },
};

pub const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
/// Longest connection id accepted (MSC4186 asks clients to keep it short).
const MAX_CONN_ID: usize = 64;

pub fn routes(router: &mut Router) {
    router.raw(Method::POST, PATH, Auth::Required, sync);
}

async fn sync(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?.clone();
    let body: v5::Request = parse_raw(incoming.request)?;
    sliding::validate(&body)?;
    let conn_id = body.conn_id.as_deref().unwrap_or("");
    if conn_id.len() > MAX_CONN_ID {
        return Err(Error::invalid_param("conn_id is too long"));
    }
    // Syncing marks the user online unless the client asks otherwise.
    services
        .presence
        .touch(&services.rooms, &me.user_id, body.set_presence.as_str())
        .await?;
    let device_id = me.device_id.as_str();
    let resume = services
        .sliding
        .resume(&me.user_id, device_id, conn_id, body.pos.as_deref())
        .ok_or_else(sliding::unknown_pos)?;
    let request = SlidingRequest {
        user_id: &me.user_id,
        device_id,
        conn_id,
        body: &body,
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
    let timeout = body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let notify = services.notifier.subscribe(&me.user_id);
    let result = loop {
        // Listen before reading, so a write landing while this pass runs still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = services.stream.current();
        // Boxed: held inline, a pass's large future would stay allocated for the long-poll.
        let result = Box::pin(sliding_sync_once(&sources, &request, &resume, now)).await?;
        if result.has_updates
            || resume.previous.is_none()
            || Instant::now() >= deadline
            || services.notifier.is_closing()
        {
            break result;
        }
        // A typing notification lapsing is a change too; look again when one does.
        let wake = result.wake_at.map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    services
        .sliding
        .commit(&me.user_id, device_id, conn_id, &resume, result.snapshot);
    let body = serde_json::to_vec(&result.body).map_err(|e| Error::unknown(e.to_string()))?;
    Ok(crate::http::json_response(http::StatusCode::OK, body))
}
