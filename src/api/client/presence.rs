//! Presence: `PUT/GET /presence/{userId}/status` (spec: "Presence").
//!
//! Only the user may set their own presence (403). Anyone may read their own; others' only
//! when they share a joined room (403 otherwise), users of other servers included (their
//! presence is what their server sent us); an unknown local user is 404. A user who never set
//! a presence reads as `offline`.

use std::{sync::Arc, time::Duration};

use ruma::{
    api::client::presence::{get_presence, set_presence},
    presence::PresenceState,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        presence::{share_a_room, StatusMsg, View},
        users::now_ms,
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(set_status);
    router.ruma(get_status);
}

async fn set_status(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_presence::v3::Request,
) -> Result<set_presence::v3::Response> {
    let me = ctx.authed()?;
    if me.user_id != body.user_id {
        return Err(Error::forbidden(
            "You cannot set the presence of another user",
        ));
    }
    let state = match body.presence {
        PresenceState::Online => "online",
        PresenceState::Unavailable => "unavailable",
        PresenceState::Offline => "offline",
        _ => {
            return Err(Error::invalid_param(
                "presence must be online, unavailable or offline",
            ))
        }
    };
    let status_msg = match body.status_msg {
        Some(msg) => StatusMsg::Set(Some(msg)),
        None => StatusMsg::Keep,
    };
    services
        .presence
        .set(&services.rooms, &me.user_id, state, status_msg)
        .await?;
    Ok(set_presence::v3::Response::new())
}

async fn get_status(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_presence::v3::Request,
) -> Result<get_presence::v3::Response> {
    let me = ctx.authed()?;
    let user_id = &body.user_id;
    if me.user_id != *user_id {
        // A remote user is known through the rooms they share (their server pushes
        // `m.presence` to ours then), so only a local user can be unknown here.
        let local = user_id.server_name() == services.rooms.server_name();
        if local && !services.users.exists(user_id)? {
            return Err(Error::not_found("Unknown user"));
        }
        if !share_a_room(&services.rooms, &me.user_id, user_id)? {
            return Err(Error::forbidden(
                "You are not allowed to see their presence",
            ));
        }
    }
    let record = services.presence.get(user_id)?;
    let view = View::of(record.as_ref(), now_ms());
    let mut response = get_presence::v3::Response::new(PresenceState::from(view.state.as_str()));
    response.status_msg = view.status_msg;
    response.last_active_ago = view.last_active_ago.map(Duration::from_millis);
    response.currently_active = Some(view.currently_active);
    Ok(response)
}
