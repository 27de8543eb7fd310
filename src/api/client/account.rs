//! `whoami`, password change and account deactivation.

use std::sync::Arc;

use ruma::api::client::account::{change_password, deactivate, whoami, ThirdPartyIdRemovalStatus};

use serde_json::json;

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{passwords, Services},
    store::Batch,
};

pub fn routes(router: &mut Router) {
    router.ruma(whoami);
    router.ruma(change_password);
    router.ruma(deactivate);
}

async fn whoami(
    services: Arc<Services>,
    ctx: Ctx,
    _: whoami::v3::Request,
) -> Result<whoami::v3::Response> {
    let me = ctx.authed()?;
    let guest = services.users.get(&me.user_id)?.is_some_and(|u| u.guest);
    let mut response = whoami::v3::Response::new(me.user_id.clone(), guest);
    response.device_id = Some(me.device_id.clone());
    Ok(response)
}

async fn change_password(
    services: Arc<Services>,
    ctx: Ctx,
    body: change_password::v3::Request,
) -> Result<change_password::v3::Response> {
    let me = ctx.authed()?;
    passwords::check_acceptable(&body.new_password)?;
    // Hashed before the auth flow can complete, so that a 429 from busy hashing slots leaves
    // the session usable for the retry; without `auth` the flow only answers its challenge.
    let hash = match body.auth {
        Some(_) => Some(services.users.hash_password(&body.new_password).await?),
        None => None,
    };
    services
        .reauthenticate(
            "change_password",
            &me.user_id,
            ctx.ip,
            &json!({
                "new_password": body.new_password,
                "logout_devices": body.logout_devices,
            }),
            body.auth.as_ref(),
        )
        .await?;
    let hash = hash.ok_or_else(|| Error::unknown("Authentication completed without auth data"))?;
    let current = services
        .users
        .get(&me.user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    let mut batch = Batch::new();
    services
        .users
        .stage_set_password(&mut batch, &me.user_id, &current, hash);
    if body.logout_devices {
        services.sessions.stage_delete_devices(
            &mut batch,
            &me.user_id,
            None,
            Some(&me.device_id),
        )?;
    }
    services.store.commit(batch).await?;
    if body.logout_devices {
        services.e2ee.devices_removed(&me.user_id).await;
    }
    Ok(change_password::v3::Response::new())
}

/// Deactivation keeps the user id reserved forever and removes every way to act as the user:
/// password, devices and tokens.
async fn deactivate(
    services: Arc<Services>,
    ctx: Ctx,
    body: deactivate::v3::Request,
) -> Result<deactivate::v3::Response> {
    let me = ctx.authed()?;
    services
        .reauthenticate(
            "deactivate",
            &me.user_id,
            ctx.ip,
            &json!({ "erase": body.erase }),
            body.auth.as_ref(),
        )
        .await?;
    services.deactivate_user(&me.user_id).await?;
    Ok(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    ))
}
