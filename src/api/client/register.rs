//! `POST /register` (accounts, guest accounts and guest upgrades), `GET /register/available`,
//! registration token validity.

use std::sync::Arc;

use rand::RngExt;
use ruma::{
    api::client::account::{
        check_registration_token_validity, get_username_availability, register,
    },
    OwnedUserId, UserId,
};

use crate::{
    config::RegistrationMode,
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        guests::GuestToUpgrade,
        passwords,
        sessions::random_device_id,
        threepids::{self, Purpose},
        uiaa::{self, DUMMY, EMAIL_IDENTITY, REGISTRATION_TOKEN},
        Services,
    },
    store::{Batch, CommitError},
};

pub fn routes(router: &mut Router) {
    router.ruma(register);
    router.ruma(available);
    router.ruma(token_validity);
}

/// The user id for a requested localpart, or `M_INVALID_USERNAME` (spec: user identifiers;
/// new localparts use the strict grammar `[a-z0-9._=\-/+]`).
fn user_id_for(services: &Services, localpart: &str) -> Result<OwnedUserId> {
    let valid = !localpart.is_empty()
        && localpart.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        );
    if !valid {
        return Err(Error::invalid_username(
            "User names may only contain a-z, 0-9 and . _ = - / +",
        ));
    }
    let full = format!("@{localpart}:{}", services.config.server_name);
    if full.len() > 255 {
        return Err(Error::invalid_username(
            "User ID is longer than 255 characters",
        ));
    }
    UserId::parse(full).map_err(|_| Error::invalid_username("Invalid user ID"))
}

fn random_localpart() -> String {
    format!("user{:010}", rand::rng().random_range(0..10_000_000_000u64))
}

async fn register(
    services: Arc<Services>,
    ctx: Ctx,
    body: register::v3::Request,
) -> Result<register::v3::Response> {
    if body.kind == register::RegistrationKind::Guest {
        let guest = services
            .register_guest(body.initial_device_display_name, ctx.ip)
            .await?;
        let mut response = register::v3::Response::new(guest.user_id);
        response.access_token = Some(guest.tokens.access_token);
        response.device_id = Some(guest.device_id);
        return Ok(response);
    }
    // With e-mail configured, a flow that validates an address (which becomes the account's
    // 3PID) is offered beside the usual one; a token-only server still needs its token.
    let email = services.mailer.is_some();
    let flows: &[&[&str]] = match (services.config.registration.mode, email) {
        (RegistrationMode::Closed, _) => {
            return Err(Error::forbidden("Registration is disabled on this server"))
        }
        (RegistrationMode::Open, false) => &[&[DUMMY]],
        (RegistrationMode::Open, true) => &[&[DUMMY], &[EMAIL_IDENTITY]],
        (RegistrationMode::Token, false) => &[&[REGISTRATION_TOKEN]],
        (RegistrationMode::Token, true) => {
            &[&[REGISTRATION_TOKEN], &[EMAIL_IDENTITY, REGISTRATION_TOKEN]]
        }
    };
    if let Some(password) = body.password.as_deref() {
        passwords::check_acceptable(password)?;
    }
    // A guest's upgrade to a full account keeps its user id (spec: Guest Access).
    let mut upgrade = match body.guest_access_token.as_deref() {
        Some(token) => Some(
            services
                .guest_to_upgrade(token, body.username.as_deref(), ctx.ip)
                .await?,
        ),
        None => None,
    };
    // Check the name before authentication, so nobody completes the flow only to be refused.
    let user_id = match (&upgrade, body.username.as_deref()) {
        (Some(guest), _) => guest.user_id.clone(),
        (None, Some(name)) => {
            let user_id = user_id_for(&services, &name.to_lowercase())?;
            if services.users.exists(&user_id)? {
                return Err(Error::user_in_use("That user ID is already taken"));
            }
            user_id
        }
        (None, None) => user_id_for(&services, &random_localpart())?,
    };
    let request = uiaa::Request {
        kind: "register",
        user: None,
        client: ctx.ip,
        // Clients commonly fetch the registration flows with an empty body and send the
        // user name only with the stages, and the stages here prove no identity that another
        // request could borrow: registration sessions are not bound to their parameters.
        operation: uiaa::operation_digest(&serde_json::Value::Null),
        flows,
    };
    // Hashed before the auth flow can complete: a 429 from busy hashing slots then leaves the
    // session usable for the retry. (Without `auth` the flow only answers its challenge.)
    let password_hash = match body.password.as_deref() {
        Some(password) if body.auth.is_some() => {
            Some(services.users.hash_password(password).await?)
        }
        _ => None,
    };
    let completed = services
        .uiaa
        .authorize(request, body.auth.as_ref(), services.stage_checks())
        .await?;
    // The validated address, checked again now that the flow is complete.
    let email_session = match &completed.email {
        Some(creds) => {
            let session = services.threepids.validated(
                &creds.sid,
                &creds.client_secret,
                Some(Purpose::Register),
            )?;
            if services
                .threepids
                .owner(&session.medium, &session.address)?
                .is_some()
            {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_THREEPID_IN_USE",
                    "This e-mail address is already in use",
                ));
            }
            Some((creds.sid.clone(), session))
        }
        None => None,
    };

    let device_id = body.device_id.clone().unwrap_or_else(random_device_id);
    // A conflict is either the name being taken meanwhile (final) or another registration
    // spending a use of the same token (retry while uses remain).
    let mut attempts = 0;
    let tokens = loop {
        attempts += 1;
        let mut batch = Batch::new();
        match &upgrade {
            Some(guest) => services.users.stage_upgrade_guest(
                &mut batch,
                &user_id,
                &guest.record,
                password_hash.clone(),
            ),
            None => {
                services.users.stage_create(
                    &mut batch,
                    &user_id,
                    password_hash.clone(),
                    false,
                    false,
                );
                services.profiles.stage_set_displayname(
                    &mut batch,
                    &user_id,
                    Some(user_id.localpart().to_owned()),
                );
            }
        }
        if let Some(token) = &completed.registration_token {
            services.reg_tokens.stage_use(&mut batch, token)?;
        }
        if let Some((sid, session)) = &email_session {
            services.threepids.stage_spend(&mut batch, sid, session)?;
            services.threepids.stage_add(&mut batch, &user_id, session);
        }
        let tokens = if body.inhibit_login {
            None
        } else {
            let name = body.initial_device_display_name.clone();
            Some(services.sessions.stage_login(
                &mut batch,
                &user_id,
                &device_id,
                name,
                body.refresh_token,
                ctx.ip,
            )?)
        };
        let committed = services
            .sessions
            .commit_login(batch, &user_id, tokens.as_ref())
            .await?;
        match committed {
            Ok(()) => break tokens,
            // The guest's record changed meanwhile: still a guest, retry on it as it is now;
            // upgraded (or deactivated) by someone else, refuse.
            Err(CommitError::Conflict) if upgrade.is_some() && attempts < 8 => {
                match services
                    .users
                    .get(&user_id)?
                    .filter(|r| r.guest && !r.deactivated)
                {
                    Some(record) => {
                        upgrade = Some(GuestToUpgrade {
                            user_id: user_id.clone(),
                            record,
                        });
                        continue;
                    }
                    None => {
                        return Err(Error::forbidden("This guest account was upgraded already"))
                    }
                }
            }
            Err(CommitError::Conflict) if upgrade.is_some() => {
                return Err(CommitError::Conflict.into())
            }
            Err(CommitError::Conflict) if services.users.exists(&user_id)? => {
                return Err(Error::user_in_use("That user ID is already taken"));
            }
            // The session was spent, or the address taken, by another request meanwhile.
            Err(CommitError::Conflict) if email_session.is_some() => {
                return Err(threepids::spent_meanwhile());
            }
            Err(CommitError::Conflict) if attempts < 8 => continue,
            Err(CommitError::Conflict) => return Err(CommitError::Conflict.into()),
            Err(e) => return Err(e.into()),
        }
    };
    if upgrade.is_some() {
        log::info!("upgraded guest {user_id} to a full account");
    } else {
        log::info!("registered {user_id}");
    }

    let mut response = register::v3::Response::new(user_id);
    if let Some(tokens) = tokens {
        response.access_token = Some(tokens.access_token);
        response.device_id = Some(device_id);
        response.refresh_token = tokens.refresh_token;
        response.expires_in = tokens.expires_in;
    }
    Ok(response)
}

async fn available(
    services: Arc<Services>,
    _: Ctx,
    body: get_username_availability::v3::Request,
) -> Result<get_username_availability::v3::Response> {
    let user_id = user_id_for(&services, &body.username.to_lowercase())?;
    if services.users.exists(&user_id)? {
        return Err(Error::user_in_use("That user ID is already taken"));
    }
    Ok(get_username_availability::v3::Response::new(true))
}

async fn token_validity(
    services: Arc<Services>,
    _: Ctx,
    body: check_registration_token_validity::v1::Request,
) -> Result<check_registration_token_validity::v1::Response> {
    if services.config.registration.mode != RegistrationMode::Token {
        return Err(Error::forbidden(
            "This server does not use registration tokens",
        ));
    }
    Ok(check_registration_token_validity::v1::Response::new(
        services.reg_tokens.is_usable(&body.token)?,
    ))
}
