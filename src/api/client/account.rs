//! `whoami`, password change and account deactivation.

use std::sync::Arc;

use ruma::api::client::account::{change_password, deactivate, whoami, ThirdPartyIdRemovalStatus};

use serde_json::json;

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        passwords,
        threepids::{self, Purpose},
        uiaa, Services,
    },
    store::{Batch, CommitError},
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

/// Changes the password of the caller, or, without an access token, of the account whose
/// e-mail address the `m.login.email.identity` stage validated (forgotten password).
async fn change_password(
    services: Arc<Services>,
    ctx: Ctx,
    body: change_password::v3::Request,
) -> Result<change_password::v3::Response> {
    let email = services.mailer.is_some();
    let me = ctx.user.as_ref();
    let flows: &[&[&str]] = match (me, email) {
        (Some(_), false) => uiaa::PASSWORD_FLOWS,
        (Some(_), true) => &[&[uiaa::PASSWORD], &[uiaa::EMAIL_IDENTITY]],
        (None, true) => &[&[uiaa::EMAIL_IDENTITY]],
        (None, false) => return Err(Error::missing_token("Missing access token")),
    };
    passwords::check_acceptable(&body.new_password)?;
    // Hashed before the auth flow can complete, so that a 429 from busy hashing slots leaves
    // the session usable for the retry; without `auth` the flow only answers its challenge.
    let hash = match body.auth {
        Some(_) => Some(services.users.hash_password(&body.new_password).await?),
        None => None,
    };
    let request = uiaa::Request {
        kind: "change_password",
        user: me.map(|me| &*me.user_id),
        client: ctx.ip,
        operation: uiaa::operation_digest(&json!({
            "new_password": body.new_password,
            "logout_devices": body.logout_devices,
        })),
        flows,
    };
    let completed = services
        .uiaa
        .authorize(request, body.auth.as_ref(), services.stage_checks())
        .await?;
    let hash = hash.ok_or_else(|| Error::unknown("Authentication completed without auth data"))?;
    // The account: the caller's, or the owner of the validated address (which must be the
    // caller when there is one).
    let email_session = match &completed.email {
        Some(creds) => {
            let session = services.threepids.validated(
                &creds.sid,
                &creds.client_secret,
                Some(Purpose::Password),
            )?;
            Some((creds.sid.clone(), session))
        }
        None => None,
    };
    let user_id = match (&email_session, me) {
        (Some((_, session)), me) => {
            let owner = services
                .threepids
                .owner(&session.medium, &session.address)?
                .filter(|owner| me.is_none_or(|me| me.user_id == *owner));
            owner.ok_or_else(|| {
                Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_THREEPID_NOT_FOUND",
                    "No account (of yours) has this e-mail address",
                )
            })?
        }
        (None, Some(me)) => me.user_id.clone(),
        (None, None) => return Err(Error::missing_token("Missing access token")),
    };
    let current = services
        .users
        .get(&user_id)?
        .ok_or_else(|| Error::not_found("Unknown user"))?;
    let mut batch = Batch::new();
    services
        .users
        .stage_set_password(&mut batch, &user_id, &current, hash);
    if let Some((sid, session)) = &email_session {
        services.threepids.stage_spend(&mut batch, sid, session)?;
    }
    if body.logout_devices {
        // Without an access token every device goes.
        let keep = me.map(|me| &*me.device_id);
        services
            .sessions
            .stage_delete_devices(&mut batch, &user_id, None, keep)?;
    }
    match services.store.commit(batch).await {
        Err(CommitError::Conflict) if email_session.is_some() => {
            return Err(threepids::spent_meanwhile())
        }
        other => other?,
    }
    if body.logout_devices {
        services.e2ee.devices_removed(&user_id).await;
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
