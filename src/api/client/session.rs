//! Login, logout and token refresh.

use std::sync::Arc;

use ruma::{
    api::client::{
        session::{get_login_token, get_login_types, login, logout, logout_all, refresh_token},
        uiaa::UserIdentifier,
    },
    OwnedUserId, UserId,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{sessions::random_device_id, threepids, Services},
    store::{Batch, CommitError},
};

pub fn routes(router: &mut Router) {
    router.ruma(login_types);
    router.ruma_checked(login_body_check, login);
    router.ruma(refresh);
    router.ruma(logout);
    router.ruma(logout_all);
    router.ruma(get_token);
    // Spec (Account locking): logout is the one thing a locked account can still do.
    router.allow_while_locked::<logout::v3::Request>();
    router.allow_while_locked::<logout_all::v3::Request>();
}

/// ruma's login parser indexes the body's `type` without checking that it is there (it
/// panics on `{}`): a body that is not an object with a string `type` is refused here first.
fn login_body_check(body: &[u8]) -> Result<()> {
    if body.is_empty() {
        return Err(Error::not_json("The login request needs a JSON body"));
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        // Not JSON at all: ruma reports that without reaching the login info.
        return Ok(());
    };
    let Some(object) = value.as_object() else {
        return Err(Error::bad_json(
            "The login request body must be a JSON object",
        ));
    };
    match object.get("type") {
        Some(serde_json::Value::String(_)) => Ok(()),
        Some(_) => Err(Error::bad_json("The login `type` must be a string")),
        None => Err(Error::bad_json("The login request needs a `type`")),
    }
}

async fn login_types(
    _: Arc<Services>,
    _: Ctx,
    _: get_login_types::v3::Request,
) -> Result<get_login_types::v3::Response> {
    let password = get_login_types::v3::LoginType::Password(Default::default());
    let mut token = get_login_types::v3::TokenLoginType::new();
    // Logged-in clients can create login tokens (`POST /login/get_token`).
    token.get_login_token = true;
    let token = get_login_types::v3::LoginType::Token(token);
    Ok(get_login_types::v3::Response::new(vec![password, token]))
}

/// The local user a login names: a full user id or a bare localpart (case-insensitively, as
/// clients often capitalise what users type).
fn resolve_user(services: &Services, name: &str) -> Option<OwnedUserId> {
    let server = &services.config.server_name;
    let candidate = if name.starts_with('@') {
        name.to_owned()
    } else {
        format!("@{name}:{server}")
    };
    let user_id = UserId::parse(candidate.to_lowercase()).ok()?;
    (user_id.server_name().as_str() == server.as_str()).then_some(user_id)
}

async fn login(
    services: Arc<Services>,
    ctx: Ctx,
    body: login::v3::Request,
) -> Result<login::v3::Response> {
    let user_id = match &body.login_info {
        login::v3::LoginInfo::Password(password) => {
            login_with_password(&services, &ctx, password).await?
        }
        login::v3::LoginInfo::Token(token) => {
            // Checked again when the login commits (the token is spent in its batch).
            services
                .login_tokens
                .find(&token.token)?
                .ok_or_else(invalid_login_token)?
                .user_id
        }
        _ => {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Unsupported login type",
            ))
        }
    };
    // Spec (Soft logout): a locked account cannot obtain a new access token. Only said once
    // the credentials proved who is asking.
    if services.moderation.status(&user_id)?.locked {
        return Err(Error::user_locked());
    }

    let device_id = body.device_id.clone().unwrap_or_else(random_device_id);
    for _ in 0..4 {
        let mut batch = Batch::new();
        services.users.stage_require_active(&mut batch, &user_id)?;
        if let login::v3::LoginInfo::Token(token) = &body.login_info {
            // Single use: the token is deleted in the login's own batch, guarded on its row,
            // so of two logins with one token only one commits; the other finds it gone.
            let found = services
                .login_tokens
                .find(&token.token)?
                .filter(|found| found.user_id == user_id)
                .ok_or_else(invalid_login_token)?;
            services.login_tokens.stage_spend(&mut batch, &found);
        }
        let name = body.initial_device_display_name.clone();
        let tokens = services.sessions.stage_login(
            &mut batch,
            &user_id,
            &device_id,
            name,
            body.refresh_token,
            ctx.ip,
        )?;
        let committed = services
            .sessions
            .commit_login(batch, &user_id, Some(&tokens))
            .await?;
        match committed {
            Err(CommitError::Conflict) => continue,
            Err(e) => return Err(e.into()),
            Ok(()) => {
                let mut response =
                    login::v3::Response::new(user_id, tokens.access_token, device_id);
                response.refresh_token = tokens.refresh_token;
                response.expires_in = tokens.expires_in;
                return Ok(response);
            }
        }
    }
    Err(CommitError::Conflict.into())
}

/// Spec (Login): an invalid login token is 403 `M_FORBIDDEN`.
fn invalid_login_token() -> Error {
    Error::forbidden("Invalid or expired login token")
}

/// The account a password login names, once the password is checked.
async fn login_with_password(
    services: &Services,
    ctx: &Ctx,
    password: &login::v3::Password,
) -> Result<OwnedUserId> {
    #[allow(deprecated)]
    let (name, user_id) = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(id)), _) => {
            (id.user.clone(), resolve_user(services, &id.user))
        }
        // An e-mail address added to the account (`m.id.thirdparty`, medium `email`).
        (Some(UserIdentifier::Email(email)), _) => {
            let owner = match threepids::canonical_email(&email.address) {
                Ok(address) => services.threepids.owner(threepids::EMAIL, &address)?,
                Err(_) => None,
            };
            (email.address.clone(), owner)
        }
        (Some(_), _) => {
            return Err(Error::forbidden(
                "Only user ids and e-mail addresses identify users here",
            ))
        }
        (None, Some(user)) => (user.clone(), resolve_user(services, user)),
        (None, None) => return Err(Error::missing_param("No identifier given")),
    };
    let invalid = || Error::forbidden("Invalid username or password");
    // Unknown names cost a full password check too, so timing does not reveal accounts.
    let Some(user_id) = user_id else {
        let name = name.to_lowercase();
        services
            .users
            .check_password_of_unknown(&name, ctx.ip, &password.password)
            .await?;
        return Err(invalid());
    };
    if services.users.get(&user_id)?.is_some_and(|r| r.deactivated) {
        return Err(Error::user_deactivated("This account has been deactivated"));
    }
    if !services
        .users
        .check_password(&user_id, ctx.ip, &password.password)
        .await?
    {
        return Err(invalid());
    }
    Ok(user_id)
}

/// `POST /login/get_token`: after the user's password (asked every time: the spec wants
/// explicit consent for each new client), a single-use login token valid for two minutes.
async fn get_token(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_login_token::v1::Request,
) -> Result<get_login_token::v1::Response> {
    let me = ctx.authed()?;
    services
        .reauthenticate(
            "get_login_token",
            &me.user_id,
            ctx.ip,
            &serde_json::json!({}),
            body.auth.as_ref(),
        )
        .await?;
    let (token, lifetime) = services.login_tokens.issue(&me.user_id).await?;
    Ok(get_login_token::v1::Response::new(lifetime, token))
}

async fn refresh(
    services: Arc<Services>,
    _: Ctx,
    body: refresh_token::v3::Request,
) -> Result<refresh_token::v3::Response> {
    // A locked account keeps its session but gets no new tokens until it is unlocked.
    if let Some(owner) = services.sessions.refresh_token_owner(&body.refresh_token)? {
        if services.moderation.status(&owner)?.locked {
            return Err(Error::user_locked());
        }
    }
    let tokens = services.sessions.refresh(&body.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(tokens.access_token);
    response.refresh_token = tokens.refresh_token;
    response.expires_in_ms = tokens.expires_in;
    Ok(response)
}

/// Logging out deletes the device with its tokens (spec: `/logout`).
async fn logout(
    services: Arc<Services>,
    ctx: Ctx,
    _: logout::v3::Request,
) -> Result<logout::v3::Response> {
    let me = ctx.authed()?;
    let which = [me.device_id.clone()];
    services
        .sessions
        .delete_devices(&me.user_id, Some(&which), None)
        .await?;
    Ok(logout::v3::Response::new())
}

async fn logout_all(
    services: Arc<Services>,
    ctx: Ctx,
    _: logout_all::v3::Request,
) -> Result<logout_all::v3::Response> {
    let me = ctx.authed()?;
    services
        .sessions
        .delete_devices(&me.user_id, None, None)
        .await?;
    Ok(logout_all::v3::Response::new())
}
